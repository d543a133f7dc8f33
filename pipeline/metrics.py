"""Performance metrics of a detector where truth is known: ROC, AUC and SIC.

The significance improvement characteristic SIC(eps_S) = eps_S / sqrt(eps_B) says by how much
a cut on the score multiplies S/sqrt(B). It is evaluated on held-out pure signal and pure
background samples (never on the events a detector trained on). Max SIC is taken only over
thresholds that keep at least ``min_background`` background events, so that it is not set
by a handful of events in the far tail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SicCurve", "sic_curve", "summarise_seeds"]


@dataclass(frozen=True)
class SicCurve:
    """ROC/SIC of one detector on one test set."""

    eps_s: np.ndarray
    eps_b: np.ndarray
    sic: np.ndarray
    auc: float
    max_sic: float
    n_background: int
    n_signal: int
    min_background: int = 50

    def sic_at(self, eps_s: float) -> float:
        """SIC at a fixed signal efficiency (linear interpolation)."""
        return float(np.interp(eps_s, self.eps_s, self.sic))

    def to_dict(self, n_points: int = 60) -> dict:
        """Curve on a grid of eps_S; None where fewer than ``min_background`` events pass."""
        grid = np.linspace(0.01, 1.0, n_points)
        eps_b = np.interp(grid, self.eps_s, self.eps_b)
        sic = [self.sic_at(e) if eb * self.n_background >= self.min_background else None
               for e, eb in zip(grid, eps_b)]
        return {"auc": self.auc, "max_sic": self.max_sic, "n_background": self.n_background,
                "n_signal": self.n_signal, "min_background": self.min_background, "eps_s": grid.tolist(),
                "sic": sic}


def sic_curve(score_signal: np.ndarray, score_background: np.ndarray, min_background: int = 50) -> SicCurve:
    """ROC, AUC and SIC from the scores of pure signal and pure background test events."""
    from sklearn.metrics import roc_auc_score, roc_curve

    s = np.asarray(score_signal, dtype=np.float64)
    b = np.asarray(score_background, dtype=np.float64)
    if len(s) == 0 or len(b) == 0:
        raise ValueError(f"SIC needs signal and background test events; got {len(s)} and {len(b)}")
    y = np.r_[np.ones(len(s)), np.zeros(len(b))]
    scores = np.r_[s, b]
    fpr, tpr, _ = roc_curve(y, scores, drop_intermediate=False)
    auc = float(roc_auc_score(y, scores))
    n_b_pass = np.rint(fpr * len(b))  # a count: fpr * n is not exact in floating point (50/97 * 97 < 50)
    with np.errstate(divide="ignore", invalid="ignore"):
        sic = np.where(fpr > 0, tpr / np.sqrt(fpr), 0.0)
    ok = n_b_pass >= min_background
    max_sic = float(sic[ok].max()) if ok.any() else float("nan")
    order = np.argsort(tpr, kind="stable")
    return SicCurve(eps_s=tpr[order], eps_b=fpr[order], sic=sic[order], auc=auc, max_sic=max_sic,
                    n_background=len(b), n_signal=len(s), min_background=min_background)


def summarise_seeds(values) -> dict:
    """Median and the central 68% band (16th-84th percentiles) over seeds."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return {"median": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    return {"median": float(np.median(v)), "lo": float(np.percentile(v, 16)),
            "hi": float(np.percentile(v, 84)), "n": int(len(v))}
