"""R-Anode: a density of the signal alone, fitted on SR data against CATHODE's fixed background.

CATHODE (``cathode.py``) learns p_data / p_bkg in the SR with a classifier on data versus
background samples; with a weak signal the classifier has to find the few signal events
among many. R-Anode instead writes the SR data density as a mixture

    p_data(x | m) = w p_sig(x) + (1 - w) p_bkg(x | m),

takes p_bkg from the sideband flow (CATHODE's sideband stage, interpolated into the SR and
kept fixed), and fits only p_sig (a small unconditional flow) and the signal fraction w by
maximising the mixture likelihood of the SR training events. Because the background is not
re-learnt from the SR, all of the flow's capacity goes to the residual, which the paper finds
more sensitive than CATHODE and the idealized classifier at low signal fractions.

1. Sideband stage: CATHODE's conditional flow p(x | mjj), cross-fitted (``sideband_folds``,
   default 3): each flow is trained on the sideband events outside its fold and gives p_bkg
   for the events in it, so that no event is scored with a flow trained on it (shared with
   CATHODE and LaCATHODE when flow settings and folds agree).
2. Fold stage: log p_bkg(x | m) of every SR training event (the mixture of the flow's kept
   epochs); ``n_ensemble`` signal flows, each fitted by the mixture likelihood with its own
   seed and validation split, early stopping on the validation mixture NLL. ``w`` is learnt
   (a sigmoid, started at ``signal_fraction_init``) unless ``signal_fraction`` fixes it.
3. Score: log p_sig(x) - log p_bkg(x | m), averaged over the ensemble, each event at its own
   mass (``scores_at_mass``). Where p_bkg describes the background (the sidebands and, by
   interpolation, the SR), background scores do not depend on mjj. With one flow they did:
   the sideband events were its training set, scored lower than SR events, and a cut set on
   the sidebands passed too much SR background (background-only local Z > 1 in 38% of tests).

Where the background flow mismodels the SR, the signal flow absorbs the mismodelling (w grows):
the score then approaches p_data / p_bkg, CATHODE's target, not a background-only artefact.

Reference: R. Das, G. Kasieczka, D. Shih, "Residual ANODE", arXiv:2312.11629 (2023); ANODE:
B. Nachman, D. Shih, Phys. Rev. D 101 (2020) 075042 (arXiv:2001.04990).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import numpy as np
from pydantic import Field

from .base import DetectorParams, check_fitted, check_inputs, torch_device, torch_seeded
from .cathode import Cathode

__all__ = ["RAnode", "Detector"]

log = logging.getLogger(__name__)

#: The signal flow: small (it models a few hundred events), affine by default.
#: Patience is long: with a signal of a few percent the validation NLL first rises while the
#: flow moves from its N(0, 1) start towards the residual (on the test toy the best epoch was
#: ~90 of 100; patience 10 stopped it at epoch 11 with a max SIC of 2.1 instead of 8.8).
SIGNAL_FLOW = {"transform": "affine", "n_transforms": 3, "hidden": 32, "n_blocks": 2, "n_bins": 8,
               "tail_bound": 4.0, "epochs": 100, "batch_size": 256, "lr": 1e-3, "patience": 40,
               "validation_fraction": 0.2, "weight_decay": 1e-4}


class RAnodeParams(DetectorParams):
    flow_params: dict[str, Any] | None = None
    signal_flow: dict[str, Any] | None = None
    signal_fraction: float | None = Field(default=None, gt=0, lt=1)
    signal_fraction_init: float = Field(default=0.02, gt=0, lt=1)
    n_ensemble: int = Field(default=1, ge=1)
    sideband_folds: int = Field(default=3, ge=1, le=10)


class RAnode(Cathode):
    """Residual ANODE detector.

    Parameters
    ----------
    flow_params : dict
        The background (sideband) flow, as CATHODE's (``detectors._flow.DEFAULTS``).
    signal_flow : dict
        The signal flow and its training (keys of ``SIGNAL_FLOW``).
    signal_fraction : float or None
        Fix w, the signal fraction of the SR training events; None learns it.
    signal_fraction_init : float
        Starting value of a learnt w. The fit leaves w near this start: on the R&D SR with 0.77%
        injected signal, starts of 0.002 / 0.005 / 0.02 / 0.05 ended at 0.0031 / 0.0052 / 0.0208
        / 0.0347, on pure background at 0.0020 / 0.0048 / 0.0191 / 0.0477, and on the test toy
        (1.7% of a narrow signal) 0.002 / 0.1 ended at 0.0020 / 0.092. The likelihood trades w
        against the spread of p_sig: setting w after each epoch to its maximum-likelihood value
        for the signal flow as it is (tried, not kept) ended at 0.0024 / 0.074 on the toy. So
        the learnt w is not a measurement of the signal fraction, and this start acts as a
        setting (README).
    n_ensemble : int
        Signal flows whose log densities are averaged in the score. 1 by default: in the search
        (R&D, 190 / 400 injected, 5 seeds, 3 background flows) three flows gave median local Z
        1.43 / 4.86 and global 0.00 / 4.12 against 2.00 / 5.26 and 0.00 / 4.51 with one, at
        three times the signal-flow cost (README).
    sideband_folds : int
        Background flows, each trained on the sideband events outside its fold and giving
        p_bkg for the events in it (CATHODE's ``sideband_folds``). 3 by default: with one
        flow the sideband events, its training set, get a higher p_bkg (a lower score) than
        SR events, and a cut set on the sidebands passes too much SR background; with 2 each
        flow sees half the sidebands and the search lost reach (R&D, 300 injected, 5 seeds:
        median global Z 1.58 with 2 flows, 2.64 with 3; README).
    device : str
        torch device of both flows (``auto``: CUDA when available).
    random_state : int or None
    """

    name = "ranode"
    scores_at_mass = True
    Params = RAnodeParams

    @classmethod
    def uses_torch(cls, params: dict, stage: str = "fit") -> bool:
        return True

    def __init__(self, *, flow_params=None, signal_flow=None, signal_fraction=None, signal_fraction_init=0.02,
                 n_ensemble=1, device="auto", random_state=None, sideband_folds=3):
        self.flow_params = flow_params
        self.signal_flow = signal_flow
        self.signal_fraction = signal_fraction
        self.signal_fraction_init = signal_fraction_init
        self.n_ensemble = n_ensemble
        self.sideband_folds = sideband_folds
        self.device = device
        self.random_state = random_state

    def _signal_params(self) -> dict:
        p = {**SIGNAL_FLOW, **(self.signal_flow or {})}
        unknown = set(p) - set(SIGNAL_FLOW)
        if unknown:
            raise ValueError(f"unknown signal_flow parameter(s) {sorted(unknown)}; valid: {sorted(SIGNAL_FLOW)}")
        return p

    def _log_bkg(self, X, x, m) -> np.ndarray:
        """log p_bkg of events ``X`` (``x``: already in the flow's space, ``_forward``) at their
        masses ``m``, each from the background flow not trained on it."""
        c = self._context(m, self.prep_)
        return self._per_fold(X, lambda flow, rows: flow.log_prob(x[rows], c[rows]))

    def fit(self, X, m, *, signal_region, y_true=None, X_reference=None, sideband_state=None):
        X, m = check_inputs(X, m)
        in_sr = self._load_stage(X, m, signal_region, sideband_state)
        x = self._forward(X[in_sr], self.prep_)
        log_bkg = self._log_bkg(X[in_sr], x, m[in_sr])
        ok = np.isfinite(log_bkg)
        if not ok.all():
            log.warning("R-Anode: %d of %d SR events have a non-finite background density; left out",
                        int((~ok).sum()), len(ok))
        p = self._signal_params()
        self.members_, self.history_ = [], []
        for k in range(int(self.n_ensemble)):
            state, hist = self._fit_signal_flow(x[ok], log_bkg[ok], p, seed=self._seed() * 1000 + k)
            self.members_.append(state)
            self.history_.append(hist)
        self.signal_fraction_ = float(np.mean([h["signal_fraction"] for h in self.history_]))
        return self

    def _fit_signal_flow(self, x: np.ndarray, log_bkg: np.ndarray, p: dict, seed: int) -> tuple[dict, dict]:
        """One signal flow by the mixture likelihood; returns its best state and its history."""
        import torch

        from ._flow import _build

        gen = torch.Generator().manual_seed(seed)
        dev = torch.device(str(torch_device(self.device)))
        xt = torch.as_tensor(x).to(dev)
        lb = torch.as_tensor(log_bkg, dtype=torch.float32).to(dev)
        zero = torch.zeros((len(xt), 1), device=dev)
        perm = torch.randperm(len(xt), generator=gen).to(dev)
        n_val = max(1, int(p["validation_fraction"] * len(xt)))
        val, trn = perm[:n_val], perm[n_val:]
        with torch_seeded(seed):
            flow = _build(x.shape[1], p)
        flow = flow.to(dev)
        w0 = float(self.signal_fraction or self.signal_fraction_init)
        logit_w = torch.nn.Parameter(torch.tensor(np.log(w0) - np.log1p(-w0), dtype=torch.float32, device=dev),
                                     requires_grad=self.signal_fraction is None)
        params = list(flow.parameters()) + ([logit_w] if self.signal_fraction is None else [])
        opt = torch.optim.Adam(params, lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))

        def nll(idx):
            log_s = flow.log_prob(xt[idx], context=zero[idx])
            w = torch.sigmoid(logit_w)
            return -torch.logaddexp(torch.log(w) + log_s, torch.log1p(-w) + lb[idx]).mean()

        bs, best, best_state, bad, curve = int(p["batch_size"]), np.inf, None, 0, []
        t0 = time.perf_counter()
        for _ in range(int(p["epochs"])):
            flow.train()
            order = trn[torch.randperm(len(trn), generator=gen).to(dev)]
            for i in range(0, len(order), bs):
                loss = nll(order[i:i + bs])
                if not torch.isfinite(loss):
                    continue
                opt.zero_grad()
                loss.backward()
                opt.step()
            flow.eval()
            with torch.no_grad():
                vl = float(nll(val))
            curve.append(vl)
            if vl < best - 1e-4:
                best, bad = vl, 0
                best_state = (copy.deepcopy({k: v.detach().cpu() for k, v in flow.state_dict().items()}),
                              float(torch.sigmoid(logit_w.detach())))
            else:
                bad += 1
                if bad >= int(p["patience"]):
                    break
        if best_state is None:
            raise FloatingPointError("R-Anode: the signal flow produced no finite validation loss; lower signal_flow.lr")
        state, w = best_state
        return state, {"val_loss": curve, "epochs": len(curve), "seconds": time.perf_counter() - t0,
                       "signal_fraction": w}

    def training_log(self):
        """Each signal flow's validation mixture NLL and fitted w, then the background flow's."""
        rows = [{"model": f"signal flow {k}", "epochs": h["epochs"], "validation_loss": h["val_loss"],
                 "signal_fraction": h["signal_fraction"]} for k, h in enumerate(getattr(self, "history_", []))]
        flow = getattr(self, "flow_history_", None)
        return rows + ([{"model": "flow", "epochs": flow.get("epochs"), "validation_loss": flow.get("val_loss")}]
                       if flow else [])

    def score(self, X, m=None):
        check_fitted(self, "members_")
        if m is None:
            raise ValueError("R-Anode scores an event against the background density at its mass: pass m (mjj)")
        from ._flow import log_prob_per_state

        X, m = check_inputs(X, m)
        x = self._forward(X, self.prep_)
        log_sig = log_prob_per_state(self._signal_params(), X.shape[1], self.members_, x, np.zeros(len(x)))
        s = log_sig.mean(axis=0) - self._log_bkg(X, x, m)
        lowest = np.nanmin(s[np.isfinite(s)]) if np.isfinite(s).any() else 0.0
        return np.where(np.isfinite(s), s, lowest)  # an event no flow describes is not an anomaly


Detector = RAnode
