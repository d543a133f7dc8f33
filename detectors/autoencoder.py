"""Dense autoencoder (unsupervised): score = reconstruction error.

The network is built so that it can go to a trigger as it is: input standardisation is
folded into a fixed first linear layer, and the score (mean squared error of the
reconstruction in standardised units) is computed inside the model from linear layers and
elementwise products only, so ONNX and hls4ml see one model from raw features to score.
Trained on sideband events by default (``train_on="sidebands"``) or on all events.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from sideband.pipeline.cache import atomic_path

from .base import BaseDetector, DetectorParams, check_fitted, check_inputs, torch_device

__all__ = ["Autoencoder", "Detector", "build_trigger_model"]

log = logging.getLogger(__name__)


def build_trigger_model(n_features: int, hidden: list[int] | tuple[int, ...], latent: int):
    """The torch module: raw features -> score (reconstruction MSE in standardised units)."""
    import torch
    from torch import nn

    class TriggerAutoencoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Linear(n_features, n_features)  # fixed: (x - mean) / std
            self.scale.requires_grad_(False)
            widths = [n_features, *hidden, latent]
            enc, dec = [], []
            for a, b in zip(widths[:-1], widths[1:]):
                enc += [nn.Linear(a, b), nn.ReLU()]
            enc.pop()  # linear latent layer
            back = widths[::-1]
            for a, b in zip(back[:-1], back[1:]):
                dec += [nn.Linear(a, b), nn.ReLU()]
            dec.pop()  # linear output layer
            self.encoder = nn.Sequential(*enc)
            self.decoder = nn.Sequential(*dec)
            # mean over features of -(z - r)(r - z) = mean squared error; two distinct
            # difference nodes keep the graph expressible for hls4ml's merge layers
            self.total = nn.Linear(n_features, 1, bias=False)
            self.total.requires_grad_(False)
            with torch.no_grad():
                self.total.weight.fill_(-1.0 / n_features)

        def set_scaling(self, mean, std):
            with torch.no_grad():
                self.scale.weight.copy_(torch.diag(torch.as_tensor(1.0 / std, dtype=torch.float32)))
                self.scale.bias.copy_(torch.as_tensor(-mean / std, dtype=torch.float32))

        def forward(self, x):
            z = self.scale(x)
            r = self.decoder(self.encoder(z))
            return self.total((z - r) * (r - z))

    return TriggerAutoencoder()


class AutoencoderParams(DetectorParams):
    hidden: list[int] = Field(default=[16], min_length=1)
    latent: int = Field(default=2, ge=1)
    epochs: int = Field(default=60, ge=1)
    batch_size: int = Field(default=1024, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    patience: int = Field(default=6, ge=1)
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    train_on: Literal["sidebands", "all"] = "sidebands"


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
    device : str
        ``auto`` picks CUDA when available.
    random_state : int or None
    """

    name = "autoencoder"
    keeps_model = True
    Params = AutoencoderParams

    def __init__(self, *, hidden=(16,), latent=2, epochs=60, batch_size=1024, lr=3e-3, patience=6,
                 validation_fraction=0.2, train_on="sidebands", device="auto", random_state=None):
        self.hidden = hidden
        self.latent = latent
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.train_on = train_on
        self.device = device
        self.random_state = random_state

    def fit(self, X, m, *, signal_region, y_true=None, X_reference=None, sideband_state=None):
        import torch

        X, m = check_inputs(X, m)
        if self.train_on not in ("sidebands", "all"):
            raise ValueError(f"train_on must be 'sidebands' or 'all', got {self.train_on!r}")
        lo, hi = signal_region
        use = ((m < lo) | (m >= hi)) if self.train_on == "sidebands" else np.ones(len(X), bool)
        Xt = X[use]
        if len(Xt) < 20:
            raise ValueError(f"autoencoder: only {len(Xt)} training events")
        seed = 0 if self.random_state is None else int(self.random_state)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        dev = torch_device(self.device)
        mean, std = Xt.mean(axis=0), Xt.std(axis=0) + 1e-6
        model = build_trigger_model(X.shape[1], list(self.hidden), int(self.latent))
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
                loss = model(batch).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot += float(loss.detach()) * len(batch)
            model.eval()
            with torch.no_grad():
                vl = float(model(val).mean())
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
        self.model_ = model.cpu().eval()
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
        det.model_ = build_trigger_model(state["n_features"], state["hidden"], state["latent"])
        det.model_.load_state_dict(state["state_dict"])
        det.model_.eval()
        det.n_features_ = state["n_features"]
        return det

    def export_state(self) -> dict:
        """What the trigger export needs to rebuild the fitted model."""
        check_fitted(self, "model_")
        return {"detector": self.name, "n_features": self.n_features_, "hidden": list(self.hidden),
                "latent": int(self.latent), "state_dict": self.model_.state_dict()}


Detector = Autoencoder
