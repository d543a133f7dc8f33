"""Dense autoencoder (unsupervised), plain or variational, scored by reconstruction error or by
its latent means.

The network is built so that it can go to a trigger as it is: input standardisation is
folded into a fixed first linear layer, and both scores are computed inside the model from
linear layers and elementwise products only, so ONNX and hls4ml see one model from raw
features to score:

* ``score_type="reconstruction"``: mean squared error of the reconstruction, in standardised
  units (encoder and decoder);
* ``score_type="latent"`` (AXOL1TL style, encoder only; the decoder never goes into firmware):
  the sum of the squared latent means. For a variational autoencoder these are the means of
  the posterior (the KL-like score of AXOL1TL, ``sum mu^2``); a plain autoencoder's latent
  space is not centred, so each latent mean is first standardised with the mean and width it
  has on the training events (a diagonal Mahalanobis distance).

Both scores are available from every fitted model (``score_type`` picks the one ``score``
returns and the trigger exports by default). Trained on sideband events by default
(``train_on="sidebands"``) or on all events.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from sideband.pipeline.cache import atomic_path
from sideband.pipeline.exceptions import RegionError

from .base import (BaseDetector, DetectorParams, check_fitted, check_inputs, torch_device, torch_rng_isolated,
                   torch_seeded)

__all__ = ["SCORE_TYPES", "Autoencoder", "Detector", "build_trigger_model"]

log = logging.getLogger(__name__)

#: What the model's output (the anomaly score, higher = more anomalous) is computed from.
SCORE_TYPES = ("reconstruction", "latent")


def build_trigger_model(n_features: int, hidden: list[int] | tuple[int, ...], latent: int, *,
                        variational: bool = False, score_type: str = "reconstruction"):
    """The torch module: raw features -> score. ``model.kind`` (one of :data:`SCORE_TYPES`)
    says which score ``forward`` computes; it can be switched on a fitted model."""
    import torch
    from torch import nn

    if score_type not in SCORE_TYPES:
        raise ValueError(f"score_type must be one of {SCORE_TYPES}, got {score_type!r}")

    def fixed(a, b, bias=True):
        layer = nn.Linear(a, b, bias=bias)
        layer.requires_grad_(False)
        return layer

    class TriggerAutoencoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.kind = score_type
            self.scale = fixed(n_features, n_features)  # (x - mean) / std
            widths = [n_features, *hidden, latent]
            enc, dec = [], []
            for a, b in zip(widths[:-1], widths[1:]):
                enc += [nn.Linear(a, b), nn.ReLU()]
            enc.pop()  # linear latent layer: the latent means
            back = widths[::-1]
            for a, b in zip(back[:-1], back[1:]):
                dec += [nn.Linear(a, b), nn.ReLU()]
            dec.pop()  # linear output layer
            self.encoder = nn.Sequential(*enc)
            self.decoder = nn.Sequential(*dec)
            # variational: log-variance head beside the latent-mean layer (training only)
            self.logvar = nn.Linear(widths[-2], latent) if variational else None
            # mean over features of -(z - r)(r - z) = mean squared error; two distinct
            # difference nodes keep the graph expressible for hls4ml's merge layers
            self.total = fixed(n_features, 1, bias=False)
            # latent score: sum_k -(a_k)(-a_k) with a = (mu - centre) / width, the same trick
            self.lat_pos = fixed(latent, latent)
            self.lat_neg = fixed(latent, latent)
            self.lat_total = fixed(latent, 1, bias=False)
            with torch.no_grad():
                self.total.weight.fill_(-1.0 / n_features)
                self.lat_total.weight.fill_(-1.0)
            self.set_latent_scaling(np.zeros(latent), np.ones(latent))

        def set_scaling(self, mean, std):
            with torch.no_grad():
                self.scale.weight.copy_(torch.diag(torch.as_tensor(1.0 / std, dtype=torch.float32)))
                self.scale.bias.copy_(torch.as_tensor(-mean / std, dtype=torch.float32))

        def set_latent_scaling(self, centre, width):
            w = torch.diag(torch.as_tensor(1.0 / np.asarray(width), dtype=torch.float32))
            b = torch.as_tensor(-np.asarray(centre) / np.asarray(width), dtype=torch.float32)
            with torch.no_grad():
                self.lat_pos.weight.copy_(w)
                self.lat_pos.bias.copy_(b)
                self.lat_neg.weight.copy_(-w)
                self.lat_neg.bias.copy_(-b)

        def reconstruction(self, x):
            z = self.scale(x)
            r = self.decoder(self.encoder(z))
            return self.total((z - r) * (r - z))

        def latent_means(self, x):
            return self.encoder(self.scale(x))

        def forward(self, x):
            if self.kind == "latent":
                mu = self.encoder(self.scale(x))
                return self.lat_total(self.lat_pos(mu) * self.lat_neg(mu))
            return self.reconstruction(x)

    return TriggerAutoencoder()


def _vae_loss(model, x, beta: float, gen=None):
    """Reconstruction MSE + beta * KL(q(z|x) || N(0, 1)) per event; ``gen``: sample z
    (training), None: decode the means (validation)."""
    import torch

    z = model.scale(x)
    h = model.encoder[:-1](z)
    mu, logvar = model.encoder[-1](h), model.logvar(h)
    code = mu
    if gen is not None:
        eps = torch.randn(mu.shape, generator=gen).to(mu.device)
        code = mu + torch.exp(0.5 * logvar) * eps
    r = model.decoder(code)
    kl = 0.5 * (mu * mu + torch.exp(logvar) - logvar - 1.0).sum(1)
    return ((z - r) ** 2).mean(1) + beta * kl


class AutoencoderParams(DetectorParams):
    hidden: list[int] = Field(default=[16], min_length=1)
    latent: int = Field(default=2, ge=1)
    epochs: int = Field(default=60, ge=1)
    batch_size: int = Field(default=1024, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    patience: int = Field(default=6, ge=1)
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    train_on: Literal["sidebands", "all"] = "sidebands"
    score_type: Literal["reconstruction", "latent"] = "reconstruction"
    variational: bool = False
    beta: float = Field(default=1.0, gt=0)


class Autoencoder(BaseDetector):
    """Dense autoencoder.

    Parameters
    ----------
    hidden : list of int
        Widths of the hidden layers of the encoder (mirrored in the decoder).
    latent : int
        Width of the bottleneck.
    epochs, batch_size, lr, patience, validation_fraction :
        Training (Adam, early stopping on the validation loss; the best epoch is kept).
    train_on : {"sidebands", "all"}
        Which events of the training folds the autoencoder learns.
    score_type : {"reconstruction", "latent"}
        The anomaly score: reconstruction error (encoder + decoder) or the sum of the squared
        latent means (encoder only, AXOL1TL style; standardised latent for a plain autoencoder).
    variational : bool
        Train a variational autoencoder (loss: reconstruction MSE + ``beta`` x KL divergence).
    beta : float
        Weight of the KL term (variational only).
    device : str
        ``auto`` picks CUDA when available.
    random_state : int or None
    """

    name = "autoencoder"
    keeps_model = True
    Params = AutoencoderParams

    def __init__(self, *, hidden=(16,), latent=2, epochs=60, batch_size=1024, lr=3e-3, patience=6,
                 validation_fraction=0.2, train_on="sidebands", score_type="reconstruction", variational=False,
                 beta=1.0, device="auto", random_state=None):
        self.hidden = hidden
        self.latent = latent
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.train_on = train_on
        self.score_type = score_type
        self.variational = variational
        self.beta = beta
        self.device = device
        self.random_state = random_state

    def _loss(self, model, batch, gen=None):
        if self.variational:
            return _vae_loss(model, batch, float(self.beta), gen)
        return model.reconstruction(batch)

    def fit(self, X, m, *, signal_region, y_true=None, X_reference=None, sideband_state=None):
        import torch

        X, m = check_inputs(X, m)
        if self.train_on not in ("sidebands", "all"):
            raise ValueError(f"train_on must be 'sidebands' or 'all', got {self.train_on!r}")
        lo, hi = signal_region
        use = ((m < lo) | (m >= hi)) if self.train_on == "sidebands" else np.ones(len(X), bool)
        Xt = X[use]
        if len(Xt) < 20:
            raise RegionError(f"autoencoder: only {len(Xt)} training events ({self.train_on} of SR {lo:g}-{hi:g} "
                              "GeV), fewer than the 20 it needs; widen the sidebands (regions.sideband_width) or use "
                              "more data")
        seed = 0 if self.random_state is None else int(self.random_state)
        gen = torch.Generator().manual_seed(seed)
        dev = torch_device(self.device)
        mean, std = Xt.mean(axis=0), Xt.std(axis=0) + 1e-6
        with torch_seeded(seed):  # weight initialisation
            model = build_trigger_model(X.shape[1], list(self.hidden), int(self.latent),
                                        variational=bool(self.variational), score_type=self.score_type)
        model.set_scaling(mean, std)
        model.to(dev)
        data = torch.as_tensor(Xt).to(dev)
        perm = torch.randperm(len(data), generator=gen).to(dev)
        n_val = max(1, int(self.validation_fraction * len(data)))
        val, trn = data[perm[:n_val]], data[perm[n_val:]]
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=float(self.lr))
        best, best_state, bad, curve = np.inf, None, 0, {"train": [], "val": []}
        t0 = time.perf_counter()
        for _epoch in range(int(self.epochs)):
            model.train()
            order = torch.randperm(len(trn), generator=gen).to(dev)
            tot = 0.0
            for i in range(0, len(order), int(self.batch_size)):
                batch = trn[order[i:i + int(self.batch_size)]]
                loss = self._loss(model, batch, gen).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot += float(loss.detach()) * len(batch)
            model.eval()
            with torch.no_grad():
                vl = float(self._loss(model, val).mean())
            if not np.isfinite(vl):
                raise FloatingPointError(f"autoencoder validation loss became {vl}; lower lr")
            curve["train"].append(tot / len(trn))
            curve["val"].append(vl)
            if vl < best - 1e-6:
                best, bad = vl, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
                if bad >= int(self.patience):
                    break
        model.load_state_dict(best_state)
        model = model.cpu().eval()
        with torch.no_grad():
            mu = model.latent_means(torch.as_tensor(Xt)).numpy().astype(np.float64)
        if self.variational:  # AXOL1TL: sum of the squared posterior means, as they are
            model.set_latent_scaling(np.zeros(mu.shape[1]), np.ones(mu.shape[1]))
        else:
            model.set_latent_scaling(mu.mean(axis=0), mu.std(axis=0) + 1e-6)
        self.model_ = model
        self.history_ = curve | {"seconds": time.perf_counter() - t0}
        self.n_features_ = X.shape[1]
        return self

    def score(self, X):
        import torch

        check_fitted(self, "model_")
        X, _ = check_inputs(X)
        with torch.no_grad():
            return self.model_(torch.as_tensor(X)).squeeze(1).numpy().astype(np.float64)

    @classmethod
    def uses_torch(cls, params: dict, stage: str = "fit") -> bool:
        return stage == "fit"

    def training_log(self):
        return getattr(self, "history_", [])

    def save(self, path) -> Path:
        """The fitted network as a torch state (``export_state``), read back by :meth:`load`."""
        import torch

        with atomic_path(path, ".pt") as tmp:
            torch.save(self.export_state() | {"params": self.get_params()}, tmp)
        return Path(path)

    @classmethod
    def load(cls, path) -> "Autoencoder":
        import torch

        state = torch.load(path, weights_only=False)
        det = cls(**state["params"])
        with torch_rng_isolated():
            det.model_ = build_trigger_model(state["n_features"], state["hidden"], state["latent"],
                                             variational=bool(state.get("variational", False)),
                                             score_type=det.score_type)
        missing, unexpected = det.model_.load_state_dict(state["state_dict"], strict=False)
        if unexpected or any(not k.startswith("lat_") for k in missing):
            raise ValueError(f"{path}: not an autoencoder state (missing {missing}, unexpected {unexpected})")
        if missing:  # saved before the latent score existed: identity scaling, reconstruction only
            log.warning("%s: no latent scaling stored; the latent score is the raw sum of squared means", path)
        det.model_.eval()
        det.n_features_ = state["n_features"]
        return det

    def export_state(self) -> dict:
        """What the trigger export needs to rebuild the fitted model."""
        check_fitted(self, "model_")
        return {"detector": self.name, "n_features": self.n_features_, "hidden": list(self.hidden),
                "latent": int(self.latent), "variational": bool(self.variational),
                "score_type": self.score_type, "state_dict": self.model_.state_dict()}


Detector = Autoencoder
