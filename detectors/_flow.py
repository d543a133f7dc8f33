"""A conditional density estimator p(x | mjj) behind a small interface (nflows inside).

``ConditionalFlow.fit(x, c)`` / ``sample(c)`` / ``state()`` / ``from_state(state)``: only
this module knows nflows, so another flow library could stand in. Inputs must already be
preprocessed (standardised, unbounded); everything is float32.

nflows 0.14 works with torch 2.13 for masked autoregressive transforms; its
``NaiveLinear.inverse`` uses a removed torch op, so no LU/naive linear layers are used
here (permutations only).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time

import numpy as np

from .base import torch_rng_isolated, torch_seeded

log = logging.getLogger(__name__)

__all__ = ["ConditionalFlow", "log_prob_per_state"]


def _build(n_features: int, p: dict):
    import torch.nn.functional as F
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.autoregressive import (
        MaskedAffineAutoregressiveTransform,
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    )
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.permutations import ReversePermutation

    transforms = []
    for _ in range(int(p["n_transforms"])):
        if p["transform"] == "rq-spline":
            transforms.append(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                features=n_features, hidden_features=int(p["hidden"]), context_features=1,
                num_bins=int(p["n_bins"]), tails="linear", tail_bound=float(p["tail_bound"]),
                num_blocks=int(p["n_blocks"]), use_residual_blocks=False, activation=F.relu))
        elif p["transform"] == "affine":
            transforms.append(MaskedAffineAutoregressiveTransform(
                features=n_features, hidden_features=int(p["hidden"]), context_features=1,
                num_blocks=int(p["n_blocks"]), use_residual_blocks=False, activation=F.relu))
        else:
            raise ValueError(f"flow transform must be 'rq-spline' or 'affine', got {p['transform']!r}")
        transforms.append(ReversePermutation(features=n_features))
    return Flow(CompositeTransform(transforms), StandardNormal([n_features]))


DEFAULTS = {
    "transform": "rq-spline", "n_transforms": 4, "hidden": 64, "n_blocks": 2, "n_bins": 8,
    "tail_bound": 4.0, "epochs": 100, "batch_size": 2048, "lr": 2e-3, "patience": 10,
    "validation_fraction": 0.2, "n_average": 5, "weight_decay": 0.0,
    # Training arithmetic, for measuring on a GPU (benchmarks/gpu.py --flow-variants): "bf16" runs
    # the training forward pass under bfloat16 autocast, compile wraps log_prob in torch.compile.
    # Validation (early stopping, kept epochs) is always fp32 and uncompiled, so NLLs compare.
    "precision": "fp32", "compile": False,
}


def log_prob_per_state(params: dict, n_features: int, states: list[dict], x: np.ndarray,
                       c: np.ndarray) -> np.ndarray:
    """log density of each event (columns) under each of ``states`` (rows): flows built with
    ``params``, evaluated in batches on the CPU in float64."""
    import torch

    with torch_rng_isolated():
        flow = _build(n_features, params)
    flow.eval()
    x = torch.as_tensor(np.asarray(x, np.float32))
    c = torch.as_tensor(np.asarray(c, np.float32).reshape(-1, 1))
    out = np.empty((len(states), len(x)))
    with torch.no_grad():
        for k, state in enumerate(states):
            flow.load_state_dict(state)
            for j in range(0, len(x), 65536):
                out[k, j:j + 65536] = flow.log_prob(x[j:j + 65536], context=c[j:j + 65536]).double().numpy()
    return out


class ConditionalFlow:
    """Masked autoregressive flow conditioned on one variable; keeps the best epochs."""

    def __init__(self, params: dict | None = None, device: str = "cpu", seed: int = 0):
        self.params = {**DEFAULTS, **(params or {})}
        unknown = set(self.params) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown flow parameter(s) {sorted(unknown)}; valid: {sorted(DEFAULTS)}")
        self.device = device
        self.seed = seed
        self.states_: list[dict] = []
        self.history_: dict = {}

    def fit(self, x: np.ndarray, c: np.ndarray) -> "ConditionalFlow":
        import torch

        p = self.params
        gen = torch.Generator().manual_seed(self.seed)
        dev = torch.device(self.device)
        xt = torch.as_tensor(np.asarray(x, np.float32)).to(dev)
        ct = torch.as_tensor(np.asarray(c, np.float32).reshape(-1, 1)).to(dev)
        n = len(xt)
        perm = torch.randperm(n, generator=gen).to(dev)
        n_val = max(1, int(p["validation_fraction"] * n))
        val, trn = perm[:n_val], perm[n_val:]
        with torch_seeded(self.seed):
            flow = _build(x.shape[1], p)
        flow = flow.to(dev)
        if p["precision"] not in ("fp32", "bf16"):
            raise ValueError(f"flow precision must be 'fp32' or 'bf16', got {p['precision']!r}")
        autocast = ((lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)) if p["precision"] == "bf16"
                    else contextlib.nullcontext)
        train_log_prob = torch.compile(flow.log_prob) if p["compile"] else flow.log_prob
        opt = torch.optim.Adam(flow.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
        bs = int(p["batch_size"])
        best: list[tuple[float, int, dict]] = []
        train_curve, val_curve, bad, best_loss, n_nonfinite = [], [], 0, np.inf, 0
        t0 = time.perf_counter()
        for epoch in range(int(p["epochs"])):
            flow.train()
            order = trn[torch.randperm(len(trn), generator=gen).to(dev)]
            tot, cnt = torch.zeros((), device=dev), 0  # summed on the device: no host sync per batch
            for i in range(0, len(order), bs):
                idx = order[i:i + bs]
                with autocast():
                    loss = -train_log_prob(xt[idx], context=ct[idx]).float().mean()
                if not torch.isfinite(loss):
                    n_nonfinite += 1
                    if n_nonfinite > 10:
                        raise FloatingPointError("flow training: more than 10 non-finite batch losses; "
                                                 "lower flow.lr or check the preprocessing")
                    continue
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot += loss.detach() * len(idx)
                cnt += len(idx)
            flow.eval()
            with torch.no_grad():
                vl = float(torch.cat([-flow.log_prob(xt[val[j:j + 8192]], context=ct[val[j:j + 8192]])
                                      for j in range(0, len(val), 8192)]).mean())
            train_curve.append(float(tot) / max(cnt, 1))
            val_curve.append(vl)
            if np.isfinite(vl):
                best.append((vl, epoch, copy.deepcopy({k: v.detach().cpu() for k, v in flow.state_dict().items()})))
                best = sorted(best, key=lambda t: t[0])[: int(p["n_average"])]
            if vl < best_loss - 1e-4:
                best_loss, bad = vl, 0
            else:
                bad += 1
                if bad >= int(p["patience"]):
                    break
        if not best:
            raise FloatingPointError("flow training produced no finite validation loss")
        self.states_ = [s for _, _, s in best]
        self.history_ = {"train_loss": train_curve, "val_loss": val_curve, "epochs": len(val_curve),
                         "best_epochs": [e for _, e, _ in best], "seconds": time.perf_counter() - t0,
                         "nonfinite_batches": n_nonfinite}
        self.n_features_ = x.shape[1]
        return self

    def sample(self, c: np.ndarray, seed: int = 0) -> np.ndarray:
        """One sample per context value, drawn in equal shares from the kept epochs."""
        import torch

        c = np.asarray(c, np.float32).reshape(-1, 1)
        parts = np.array_split(np.arange(len(c)), len(self.states_))
        out = np.empty((len(c), self.n_features_), np.float32)
        with torch_seeded(seed), torch.no_grad():  # nflows draws its noise from torch's global generator
            flow = _build(self.n_features_, self.params)
            flow.eval()
            for state, idx in zip(self.states_, parts):
                flow.load_state_dict(state)
                for j in range(0, len(idx), 65536):
                    sub = idx[j:j + 65536]
                    out[sub] = flow.sample(1, context=torch.as_tensor(c[sub])).squeeze(1).numpy()
        return out

    def log_prob(self, x: np.ndarray, c: np.ndarray) -> np.ndarray:
        """log density of each event under the kept epochs' mixture (the density :meth:`sample`
        draws from), in the flow's input space."""
        from scipy.special import logsumexp

        per_state = log_prob_per_state(self.params, self.n_features_, self.states_, x, c)
        return logsumexp(per_state, axis=0) - np.log(len(self.states_))

    def transform_to_noise(self, x: np.ndarray, c: np.ndarray) -> np.ndarray:
        """The base-space image of each event under the best kept epoch's flow (N(0, 1) for
        events the flow describes)."""
        import torch

        with torch_rng_isolated():
            flow = _build(self.n_features_, self.params)
        flow.load_state_dict(self.states_[0])  # states_ are sorted by validation loss
        flow.eval()
        x = np.asarray(x, np.float32)
        c = np.asarray(c, np.float32).reshape(-1, 1)
        out = np.empty_like(x)
        with torch.no_grad():
            for j in range(0, len(x), 65536):
                out[j:j + 65536] = flow.transform_to_noise(torch.as_tensor(x[j:j + 65536]),
                                                           context=torch.as_tensor(c[j:j + 65536])).numpy()
        return out

    def state(self) -> dict:
        return {"params": self.params, "states": self.states_, "history": self.history_,
                "n_features": self.n_features_, "seed": self.seed}

    @classmethod
    def from_state(cls, state: dict) -> "ConditionalFlow":
        obj = cls(state["params"], seed=state["seed"])
        obj.states_, obj.history_, obj.n_features_ = state["states"], state["history"], state["n_features"]
        return obj
