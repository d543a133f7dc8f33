"""CATHODE: a conditional density estimate of the sidebands, interpolated into the SR.

1. Sideband stage (once per window): features are preprocessed invertibly (min-max to
   (0, 1) with a margin, logit, standardisation) and a conditional masked autoregressive
   flow p(x | mjj) (nflows; rational-quadratic splines or affine) is trained on sideband
   events with a validation split and early stopping; the best few epochs are kept and
   sampled from in equal shares.
2. Fold stage: mjj values are drawn from a KDE of the SR events' mjj, background is
   sampled from the flow at those masses (``oversampling`` x the SR size), and a
   classifier is trained to tell SR data from the samples. Its output is the score (higher
   = more anomalous); it approximates p_data / p_bkg in the SR.

Reference: A. Hallin et al., Phys. Rev. D 106 (2022) 055006 (arXiv:2109.00546).
"""

from __future__ import annotations

import logging

import numpy as np

from typing import Any

from pydantic import Field, model_validator

from sideband.pipeline.exceptions import RegionError

from ._classifier import ClassifierDetector, ClassifierParams
from ._flow import ConditionalFlow
from .base import BaseDetector, check_inputs, torch_device

__all__ = ["Cathode", "Detector"]

log = logging.getLogger(__name__)
_MARGIN = 0.05
_EPS = 1e-6


class CathodeParams(ClassifierParams):
    flow_params: dict[str, Any] | None = None
    oversampling: float = Field(default=4.0, gt=0)
    sideband_folds: int = Field(default=1, ge=1, le=10)
    flow_per_fold: bool = False

    @model_validator(mode="after")
    def _one_way_to_cross_fit(self):
        if self.flow_per_fold and self.sideband_folds > 1:
            raise ValueError("flow_per_fold already scores each event with a flow that never saw it; "
                             "set sideband_folds: 1 or flow_per_fold: false")
        return self


def event_folds(X: np.ndarray, k: int) -> np.ndarray:
    """A fold in [0, k) for each event, from its feature values alone: the same event gets
    the same fold in every call and in any order, so the sideband stage and the scores agree
    on which flow saw which event (FNV-1a over the float32 bytes, mixed)."""
    b = np.ascontiguousarray(X, dtype=np.float32).view(np.uint32).astype(np.uint64)
    h = np.full(len(b), 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(b.shape[1]):
            h = (h ^ b[:, j]) * np.uint64(0x100000001B3)
    h ^= h >> np.uint64(29)
    return (h % np.uint64(k)).astype(np.int64)


class Cathode(ClassifierDetector, BaseDetector):
    """CATHODE detector.

    Parameters
    ----------
    flow_params : dict
        Flow architecture and training (see ``detectors._flow.DEFAULTS``): ``transform``
        (``rq-spline`` | ``affine``), ``n_transforms``, ``hidden``, ``n_bins``, ``epochs``,
        ``batch_size``, ``lr``, ``patience``, ``validation_fraction``, ``n_average``,
        ``precision`` (``fp32`` | ``bf16``), ``compile``.
    oversampling : float
        Synthetic background events per SR data event.
    sideband_folds : int
        1: one flow on all sideband events. k > 1: k flows, flow j trained on the sideband
        events outside fold j (``event_folds``) and used for the events in it, so that no
        event's density, latent or score comes from a flow trained on it. With one flow the
        sideband events, its training set, look more background-like than unseen events, and a
        cut set on the sidebands passes more SR background than it should (an excess on
        background alone). R-Anode's score and LaCATHODE's latent read the flow at each event;
        CATHODE's classifier learns the flow's samples, which carry an imprint of its training
        events: with one flow, unseen background passed 1.055x the nominal 10% of a selection
        set on the sidebands, with two 0.999x (``benchmarks/cathode_training_events.py``). For k > 1 CATHODE trains
        k classifiers, classifier j on the SR data against flow j's samples, scoring the events of
        fold j, each calibrated to the CDF of its scores on the fold's sideband training events.
    flow_per_fold : bool
        False: the search trains the flow once per window, on all its sideband events, as a
        node of its own shared by the window's folds. True: each fold's ``fit`` trains its own
        flow on the sideband events of its training set, so the events the fold scores (its
        held-out sideband and SR events alike) were seen by neither its flow nor its
        classifier; ``folds`` flows per window, each on (folds - 1) / folds of the sidebands.
    model, n_ensemble, hgb_params, mlp_params :
        The data-vs-samples classifier (as for CWoLa).
    device : str
        torch device of the flow (``auto``: CUDA when available).
    random_state : int or None
    """

    name = "cathode"
    needs_sideband_stage = True
    Params = CathodeParams

    @classmethod
    def uses_torch(cls, params: dict, stage: str = "fit") -> bool:
        return stage == "sidebands" or bool(params.get("flow_per_fold")) or super().uses_torch(params, stage)

    @classmethod
    def has_sideband_stage(cls, params: dict) -> bool:
        return not params.get("flow_per_fold", False)

    @classmethod
    def gpu_pays(cls, params: dict, stage: str = "fit") -> bool:
        # The sideband flow: 1.8x per epoch on an H200 over 2 CPU cores at batch 4096, equal
        # validation NLL (benchmarks/gpu.py; measured with the lighter flow that SCAN_FLOW had
        # before, 3 transforms of width 48). The classifiers are boosted trees or small MLPs
        # (the MLP ran 0.6x on the GPU, launch-bound) and stay on CPU workers under auto.
        return stage == "sidebands" or (stage == "fit" and bool(params.get("flow_per_fold")))

    @classmethod
    def stage_identity(cls, params: dict) -> Any:
        # the sideband stage is the flow alone: its settings, where it trains, and the code that
        # trains it (a subclass inheriting fit_sidebands, as LaCATHODE does, shares the stage),
        # the number of cross-fitted flows and a seed the user set in params.random_state (each
        # recorded only when not the default: older stages stay valid)
        ident = [cls.fit_sidebands.__qualname__, params.get("flow_params"), params.get("device", "auto")]
        folds = params.get("sideband_folds", cls.Params.model_fields["sideband_folds"].default)
        extra = {**({"sideband_folds": folds} if folds != 1 else {}),
                 **({"random_state": params["random_state"]} if params.get("random_state") is not None else {})}
        return ident + [extra] if extra else ident

    @classmethod
    def fold_identity(cls, params: dict) -> tuple:
        # k > 1 trains one classifier per flow (was: one classifier on all flows' samples)
        folds = params.get("sideband_folds", cls.Params.model_fields["sideband_folds"].default)
        return ("classifier per flow",) if folds > 1 and cls.fit is Cathode.fit else ()

    def __init__(self, *, flow_params=None, oversampling=4.0, model="hgb", n_ensemble=5, hgb_params=None,
                 mlp_params=None, device="auto", random_state=None, sideband_folds=1, flow_per_fold=False):
        self.flow_params = flow_params
        self.oversampling = oversampling
        self.sideband_folds = sideband_folds
        self.flow_per_fold = flow_per_fold
        self.model = model
        self.n_ensemble = n_ensemble
        self.hgb_params = hgb_params
        self.mlp_params = mlp_params
        self.device = device
        self.random_state = random_state

    # -- preprocessing -----------------------------------------------------------------
    @staticmethod
    def _prep_params(X, m):
        lo, hi = X.min(axis=0), X.max(axis=0)
        span = np.maximum(hi - lo, 1e-6)
        lo, hi = lo - _MARGIN * span, hi + _MARGIN * span
        z = Cathode._logit((X - lo) / (hi - lo))
        logm = np.log(m)
        return {"lo": lo, "hi": hi, "mean": z.mean(axis=0), "std": z.std(axis=0) + 1e-8,
                "m_mean": float(logm.mean()), "m_std": float(logm.std() + 1e-8)}

    @staticmethod
    def _logit(u):
        u = np.clip(u, _EPS, 1 - _EPS)
        return np.log(u) - np.log1p(-u)

    @staticmethod
    def _forward(X, p):
        return ((Cathode._logit((X - p["lo"]) / (p["hi"] - p["lo"])) - p["mean"]) / p["std"]).astype(np.float32)

    @staticmethod
    def _inverse(Z, p):
        z = Z * p["std"] + p["mean"]
        return (p["lo"] + (p["hi"] - p["lo"]) / (1.0 + np.exp(-z))).astype(np.float32)

    @staticmethod
    def _context(m, p):
        return ((np.log(m) - p["m_mean"]) / p["m_std"]).astype(np.float32)

    def _seed(self) -> int:
        return 0 if self.random_state is None else int(self.random_state)

    # -- stages ------------------------------------------------------------------------
    def fit_sidebands(self, X, m, *, signal_region):
        """Train the flow(s) on sideband events; returns a picklable state."""
        X, m = check_inputs(X, m)
        lo, hi = signal_region
        sb = (m < lo) | (m >= hi)
        if sb.sum() < 100:
            raise RegionError(f"{self.name}: the sidebands of SR {lo:g}-{hi:g} GeV hold {int(sb.sum())} events, fewer "
                              "than the 100 its flow needs to train; set regions.sideband_width wider or use more data")
        prep = self._prep_params(X[sb], m[sb])
        x, c = self._forward(X[sb], prep), self._context(m[sb], prep)
        k = int(self.sideband_folds)
        fold = event_folds(X[sb], k) if k > 1 else np.full(len(x), -1)
        states = []
        for j in range(k):
            flow = ConditionalFlow(self.flow_params, device=str(torch_device(self.device)), seed=self._seed() + j)
            flow.fit(x[fold != j], c[fold != j])
            log.info("CATHODE flow %d/%d: %d epochs in %.1fs", j + 1, k, flow.history_["epochs"],
                     flow.history_["seconds"])
            states.append(flow.state())
        out = {"prep": prep, "flow": states[0], "n_sideband": int(sb.sum())}
        return {**out, "flows": states} if k > 1 else out

    def _load_stage(self, X, m, signal_region, sideband_state) -> np.ndarray:
        """Take the sideband stage (trained here when not given): sets ``prep_``, ``flow_`` and
        ``flow_history_``; returns the SR mask of the events (at least 10 in it)."""
        lo, hi = signal_region
        if sideband_state is None:
            sideband_state = self.fit_sidebands(X, m, signal_region=signal_region)
        self.prep_ = sideband_state["prep"]
        self.flows_ = [ConditionalFlow.from_state(st) for st in sideband_state.get("flows", [sideband_state["flow"]])]
        self.flow_ = self.flows_[0]
        self.flow_history_ = sideband_state["flow"]["history"]
        in_sr = (m >= lo) & (m < hi)
        if in_sr.sum() < 10:
            raise RegionError(f"{self.name}: SR {lo:g}-{hi:g} GeV holds {int(in_sr.sum())} training events, fewer than "
                              "the 10 it needs; widen the window (regions.scan.width) or use more data")
        return in_sr

    def _per_fold(self, X, fn) -> np.ndarray:
        """``fn(flow, rows)`` for the events ``X[rows]``, each with the sideband flow that was
        not trained on it (``sideband_folds``); one flow: all events at once."""
        if len(self.flows_) == 1:
            return fn(self.flows_[0], slice(None))
        fold = event_folds(X, len(self.flows_))
        parts = [(np.flatnonzero(fold == j), flow) for j, flow in enumerate(self.flows_)]
        res = [fn(flow, rows) for rows, flow in parts]
        out = np.empty((len(X),) + res[0].shape[1:], dtype=res[0].dtype)
        for (rows, _), r in zip(parts, res):
            out[rows] = r
        return out

    def fit(self, X, m, *, signal_region, y_true=None, X_reference=None, sideband_state=None):
        X, m = check_inputs(X, m)
        in_sr = self._load_stage(X, m, signal_region, sideband_state)
        n_sr, n = int(in_sr.sum()), int(round(self.oversampling * in_sr.sum()))
        # one flow: one classifier. k cross-fitted flows: classifier j learns the SR data against
        # flow j's samples and scores the events of fold j; its scores are mapped to their CDF on
        # fold j's sideband events here (seen by neither flow j nor classifier j), so the k
        # classifiers share one scale
        k = len(self.flows_)
        X_sb = X[~in_sr]
        sb_fold = event_folds(X_sb, k) if k > 1 else None
        self.classifiers_, self.calibration_, self.n_samples_ = [], [], 0
        for j in range(k):
            samples = self.sample_background(m[in_sr], self.prep_, n, flows=[j])
            self.n_samples_ += len(samples)
            self._fit_classifier(np.concatenate([X[in_sr], samples]),
                                 np.r_[np.ones(n_sr, np.float32), np.zeros(len(samples), np.float32)])
            if k == 1:
                break
            ref = self.classifier_.predict(X_sb[sb_fold == j])
            if len(ref) < 100:
                raise RegionError(f"{self.name}: fold {j} of the sidebands holds {len(ref)} training events, fewer "
                                  "than the 100 its score calibration needs; lower sideband_folds or use more data")
            self.classifiers_.append(self.classifier_)
            self.calibration_.append(np.sort(ref))
        return self

    def score(self, X):
        if not getattr(self, "classifiers_", None):
            return super().score(X)
        X, _ = check_inputs(X)

        def calibrated(j, rows):
            raw = self.classifiers_[j].predict(X[rows])
            ref = self.calibration_[j]
            # the CDF, interpolated, plus a negligible monotone term so that equal CDF values
            # beyond the reference's ends keep their order
            return np.interp(raw, ref, (np.arange(len(ref)) + 0.5) / len(ref)) + 1e-6 * raw

        fold = event_folds(X, len(self.classifiers_))
        out = np.empty(len(X))
        for j in range(len(self.classifiers_)):
            rows = np.flatnonzero(fold == j)
            out[rows] = calibrated(j, rows)
        return out

    def training_log(self):
        """The classifier members' validation curves, then the flow's (trained once per window)."""
        flow = getattr(self, "flow_history_", None)
        extra = [{"model": "flow", "epochs": flow.get("epochs"), "validation_loss": flow.get("val_loss")}] if flow else []
        clfs = getattr(self, "classifiers_", None)
        members = [h for c in clfs for h in c.history_] if clfs else super().training_log()
        return members + extra

    def sample_background(self, m_sr, prep, n, flows=None):
        """``n`` synthetic SR background events: mjj from a KDE of ``m_sr``, x from the flows
        numbered in ``flows`` (default: all, an equal share from each)."""
        from scipy.stats import gaussian_kde

        use = list(range(len(self.flows_))) if flows is None else list(flows)
        rng = np.random.default_rng(self._seed() + 7919 * use[0])
        kde = gaussian_kde(np.log(m_sr))
        m_s = np.exp(kde.resample(n, seed=rng).ravel())
        lo, hi = float(np.min(m_sr)), float(np.max(m_sr))
        m_s = np.clip(m_s, lo, hi)  # stay inside the SR
        c = self._context(m_s, prep)
        parts = np.array_split(np.arange(n), len(use))
        z = np.concatenate([self.flows_[j].sample(c[rows], seed=self._seed() + j) for j, rows in zip(use, parts)])
        bound = float(self.flow_.params["tail_bound"]) * 3
        finite = np.isfinite(z).all(axis=1)
        n_bad = int((~finite).sum())
        if n_bad:
            log.warning("CATHODE: %d of %d flow samples were non-finite and dropped", n_bad, n)
            if n_bad > 0.01 * n:
                raise FloatingPointError(f"CATHODE: {n_bad} of {n} flow samples non-finite; retrain the flow")
        z = np.clip(z[finite], -bound, bound)
        self.n_nonfinite_samples_ = n_bad
        return self._inverse(z, prep)


Detector = Cathode
