"""CWoLa hunting: a classifier trained to tell signal-region from sideband events.

With only background, SR and SB events have (nearly) the same substructure
distribution and the classifier learns nothing; a localised signal in the SR makes SR
events distinguishable, and the classifier output ranks them. The score is the
classifier's SR probability (higher = more anomalous). k-folding (so that no event is
scored by a model that trained on it) is done by the pipeline, not here.

Reference: J. H. Collins, K. Howe, B. Nachman, Phys. Rev. Lett. 121 (2018) 241803.
"""

from __future__ import annotations

import logging

import numpy as np

from sideband.pipeline.exceptions import RegionError

from ._classifier import ClassifierDetector, ClassifierParams
from .base import BaseDetector, check_inputs

__all__ = ["CWoLaHunting", "CWoLaParams", "Detector", "balanced_sideband_weights"]

log = logging.getLogger(__name__)


class CWoLaParams(ClassifierParams):
    balance_sidebands: bool = False


def balanced_sideband_weights(m: np.ndarray, signal_region: tuple[float, float]) -> np.ndarray | None:
    """Weights of the sideband events (1 in the SR) that give the sidebands the SR's mean mjj.

    The events of each side share one weight, the two chosen so that the weighted mean mjj
    of the sidebands equals the SR's: a feature that varies linearly with mjj then has the
    same background mean in both classes, so the classifier cannot learn the trend. With the
    fit range as sidebands the mean is set by the steep spectrum: in the lowest windows the
    sidebands lie mostly above the SR, in the highest mostly below, and the classifier's
    SR-like direction is the features' trend with mjj (which pointed towards one signal and
    away from another, depending on the mass units of the inputs). This removes the trend's
    first order only: with a strong trend the SR's values still span a narrower range than the
    two sides together. None when one side is empty (no balance possible). The sidebands' total
    weight equals their event count."""
    lo, hi = signal_region
    low, high, sr = m < lo, m >= hi, (m >= lo) & (m < hi)
    if not low.any() or not high.any() or not sr.any():
        return None
    m_sr, m_low, m_high = float(m[sr].mean()), float(m[low].mean()), float(m[high].mean())
    f_low = (m_high - m_sr) / (m_high - m_low)  # in (0, 1): m_low < lo <= m_sr < hi <= m_high
    n_sb = int(low.sum() + high.sum())
    w = np.ones(len(m))
    w[low] = f_low * n_sb / low.sum()
    w[high] = (1.0 - f_low) * n_sb / high.sum()
    return w


class CWoLaHunting(ClassifierDetector, BaseDetector):
    """SR-vs-SB classifier.

    Parameters
    ----------
    model : {"hgb", "mlp"}
        An ensemble of HistGradientBoosting classifiers, or a torch MLP ensemble.
    n_ensemble : int
        Number of ensemble members (different seeds and validation splits).
    hgb_params, mlp_params : dict
        Extra keyword arguments of the models (e.g. ``max_iter``, ``hidden``).
    device : str
        torch device for the MLP (``auto`` picks CUDA when available).
    balance_sidebands : bool
        Weight the two sidebands so that their mean mjj equals the SR's
        (:func:`balanced_sideband_weights`); logged with the effective number of sideband
        events. Without a sideband on each side the events keep equal weights (logged).
    random_state : int or None
        Seed; the same seed gives the same scores on CPU.
    """

    name = "cwola"
    Params = CWoLaParams

    def __init__(self, *, model="hgb", n_ensemble=5, hgb_params=None, mlp_params=None, device="auto",
                 balance_sidebands=False, random_state=None):
        super().__init__(model=model, n_ensemble=n_ensemble, hgb_params=hgb_params, mlp_params=mlp_params,
                         device=device, random_state=random_state)
        self.balance_sidebands = balance_sidebands

    def fit(self, X, m, *, signal_region, y_true=None, X_reference=None, sideband_state=None):
        X, m = check_inputs(X, m)
        lo, hi = signal_region
        in_sr = (m >= lo) & (m < hi)
        if in_sr.all() or not in_sr.any():
            raise RegionError(
                f"CWoLa needs events both inside and outside the SR {lo:g}-{hi:g} GeV; got "
                f"{int(in_sr.sum())} inside and {int((~in_sr).sum())} outside"
            )
        weights = None
        if self.balance_sidebands:
            weights = balanced_sideband_weights(m, signal_region)
            if weights is None:
                log.warning("CWoLa SR %g-%g GeV: sidebands on one side only; events keep equal weights",
                            lo, hi)
            else:
                sb = weights[~in_sr]
                log.info("CWoLa SR %g-%g GeV: balanced sidebands, %d events weigh as %.0f", lo, hi,
                         len(sb), sb.sum() ** 2 / (sb**2).sum())
        self._fit_classifier(X, in_sr.astype(np.float32), weights)
        self.n_train_ = (int(in_sr.sum()), int((~in_sr).sum()))
        return self


Detector = CWoLaHunting
