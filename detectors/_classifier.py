"""Binary classifiers shared by the weakly supervised detectors and the ceilings.

``hgb``: an ensemble of scikit-learn HistGradientBoosting classifiers (each with its own
seed and early-stopping split), outputs averaged. ``mlp``: a torch multilayer
perceptron trained with class-balanced binary cross-entropy and early stopping, on CUDA
when available. Both take class-balanced sample weights so the output approximates the
likelihood ratio of the two classes.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
from pydantic import Field

from .base import DetectorParams

log = logging.getLogger(__name__)

__all__ = ["ClassifierEnsemble", "ClassifierDetector", "ClassifierParams"]


class ClassifierParams(DetectorParams):
    """Parameters of the detectors built on :class:`ClassifierEnsemble`."""

    model: Literal["hgb", "mlp"] = "hgb"
    n_ensemble: int = Field(default=5, ge=1)
    hgb_params: dict[str, Any] | None = None
    mlp_params: dict[str, Any] | None = None


def _balanced_weights(y: np.ndarray, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Event weights giving each class a total weight of half the events; within a class
    the events keep the ratios of ``sample_weight`` (all equal without it)."""
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    pos = y > 0.5
    w1 = max(float(w[pos].sum()), 1e-12)
    w0 = max(float(w[~pos].sum()), 1e-12)
    return np.where(pos, w * len(y) / (2.0 * w1), w * len(y) / (2.0 * w0))


class ClassifierEnsemble:
    """Fit/predict wrapper around the configured model (not a detector itself)."""

    def __init__(self, model: str = "hgb", n_ensemble: int = 5, *, random_state: int = 0,
                 hgb_params: dict | None = None, mlp_params: dict | None = None, device: str = "auto"):
        if model not in ("hgb", "mlp"):
            raise ValueError(f"model must be 'hgb' or 'mlp', got {model!r}")
        self.model = model
        self.n_ensemble = int(n_ensemble)
        self.random_state = random_state
        self.hgb_params = dict(hgb_params or {})
        self.mlp_params = dict(mlp_params or {})
        self.device = device
        self.members_: list = []
        self.history_: list[dict] = []

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "ClassifierEnsemble":
        y = np.asarray(y, dtype=np.float32)
        if len(np.unique(y)) < 2:
            raise ValueError("classifier training needs events of both classes")
        w = _balanced_weights(y, sample_weight)
        rng = np.random.default_rng(self.random_state)
        seeds = rng.integers(0, 2**31 - 1, size=self.n_ensemble)
        self.members_ = []
        for seed in seeds:
            if self.model == "hgb":
                self.members_.append(self._fit_hgb(X, y, w, int(seed)))
            else:
                self.members_.append(self._fit_mlp(X, y, w, int(seed)))
        return self

    def _fit_hgb(self, X, y, w, seed):
        from sklearn.ensemble import HistGradientBoostingClassifier

        params = {"max_iter": 200, "learning_rate": 0.1, "max_leaf_nodes": 31, "early_stopping": True,
                  "validation_fraction": 0.2, "n_iter_no_change": 10, "l2_regularization": 1.0}
        params.update(self.hgb_params)
        clf = HistGradientBoostingClassifier(random_state=seed, **params)
        clf.fit(X, y, sample_weight=w)
        scores = [float(v) for v in getattr(clf, "validation_score_", [])]
        # sklearn's validation_score_ with scoring "loss" (the default) is the *negative* log-loss
        curve = ({"validation_loss": [-v for v in scores]} if params.get("scoring", "loss") == "loss"
                 else {"validation_score": scores})
        self.history_.append({"model": "hgb", "n_iter": int(clf.n_iter_), **curve})
        return clf

    def _fit_mlp(self, X, y, w, seed):
        import torch

        from .base import torch_device, torch_seeded

        p = {"hidden": [64, 64, 64], "epochs": 100, "batch_size": 1024, "lr": 1e-3,
             "patience": 10, "validation_fraction": 0.2, "weight_decay": 0.0}
        p.update(self.mlp_params)
        device = torch_device(self.device)
        gen = torch.Generator().manual_seed(seed)
        mean, std = X.mean(axis=0), X.std(axis=0) + 1e-8
        Xt = torch.as_tensor((X - mean) / std, dtype=torch.float32)
        yt = torch.as_tensor(y, dtype=torch.float32)
        wt = torch.as_tensor(w, dtype=torch.float32)
        perm = torch.randperm(len(Xt), generator=gen)
        n_val = max(1, int(p["validation_fraction"] * len(Xt)))
        val, trn = perm[:n_val], perm[n_val:]
        layers, width = [], X.shape[1]
        with torch_seeded(seed):  # weight initialisation
            for h in p["hidden"]:
                layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
                width = h
            layers.append(torch.nn.Linear(width, 1))
        net = torch.nn.Sequential(*layers).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
        Xd, yd, wd = Xt.to(device), yt.to(device), wt.to(device)
        trn_d, val_d = trn.to(device), val.to(device)
        best, best_state, bad, curve = np.inf, None, 0, []
        for _epoch in range(int(p["epochs"])):
            net.train()
            order = trn_d[torch.randperm(len(trn_d), generator=gen).to(device)]
            for i in range(0, len(order), int(p["batch_size"])):
                idx = order[i:i + int(p["batch_size"])]
                opt.zero_grad()
                loss = (loss_fn(net(Xd[idx]).squeeze(1), yd[idx]) * wd[idx]).mean()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                vl = float((loss_fn(net(Xd[val_d]).squeeze(1), yd[val_d]) * wd[val_d]).mean())
            if not np.isfinite(vl):
                raise FloatingPointError(f"MLP validation loss became {vl} at epoch {_epoch}")
            curve.append(vl)
            if vl < best - 1e-5:
                best, bad = vl, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                bad += 1
                if bad >= int(p["patience"]):
                    break
        net.load_state_dict(best_state)
        net = net.cpu().eval()
        self.history_.append({"model": "mlp", "epochs": len(curve), "validation_loss": curve})
        return (net, mean, std)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Mean probability of class 1 over the ensemble."""
        X = np.asarray(X, dtype=np.float32)
        out = np.zeros(len(X), dtype=np.float64)
        for member in self.members_:
            if self.model == "hgb":
                out += member.predict_proba(X)[:, 1]
            else:
                import torch

                net, mean, std = member
                with torch.no_grad():
                    logits = net(torch.as_tensor((X - mean) / std, dtype=torch.float32)).squeeze(1)
                out += torch.sigmoid(logits).numpy().astype(np.float64)
        return out / max(len(self.members_), 1)


class ClassifierDetector:
    """Mixin for detectors whose score is one :class:`ClassifierEnsemble`'s output.

    Subclasses implement ``fit`` (choosing the two classes) and call
    :meth:`_fit_classifier`; parameters and ``score`` are shared.
    """

    Params = ClassifierParams

    @classmethod
    def uses_torch(cls, params: dict, stage: str = "fit") -> bool:
        return stage == "fit" and params.get("model", "hgb") == "mlp"

    def __init__(self, *, model="hgb", n_ensemble=5, hgb_params=None, mlp_params=None, device="auto",
                 random_state=None):
        self.model = model
        self.n_ensemble = n_ensemble
        self.hgb_params = hgb_params
        self.mlp_params = mlp_params
        self.device = device
        self.random_state = random_state

    def _fit_classifier(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> None:
        seed = 0 if self.random_state is None else int(self.random_state)
        self.classifier_ = ClassifierEnsemble(self.model, self.n_ensemble, random_state=seed,
                                              hgb_params=self.hgb_params, mlp_params=self.mlp_params,
                                              device=self.device).fit(X, y, sample_weight)

    def training_log(self):
        """Validation loss per ensemble member (boosting iterations or epochs)."""
        return list(getattr(getattr(self, "classifier_", None), "history_", []))

    def score(self, X):
        from .base import check_fitted, check_inputs

        check_fitted(self, "classifier_")
        X, _ = check_inputs(X)
        return self.classifier_.predict(X)
