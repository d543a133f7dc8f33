"""CWoLa hunting: a classifier trained to tell signal-region from sideband events.

With only background, SR and SB events have (nearly) the same substructure
distribution and the classifier learns nothing; a localised signal in the SR makes SR
events distinguishable, and the classifier output ranks them. The score is the
classifier's SR probability (higher = more anomalous). k-folding (so that no event is
scored by a model that trained on it) is done by the pipeline, not here.

Reference: J. H. Collins, K. Howe, B. Nachman, Phys. Rev. Lett. 121 (2018) 241803.
"""

from __future__ import annotations

import numpy as np

from sideband.pipeline.exceptions import RegionError

from ._classifier import ClassifierDetector
from .base import BaseDetector, check_inputs

__all__ = ["CWoLaHunting", "Detector"]


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
    random_state : int or None
        Seed; the same seed gives the same scores on CPU.
    """

    name = "cwola"

    def fit(self, X, m, *, signal_region, y_true=None, X_reference=None, sideband_state=None):
        X, m = check_inputs(X, m)
        lo, hi = signal_region
        in_sr = (m >= lo) & (m < hi)
        if in_sr.all() or not in_sr.any():
            raise RegionError(
                f"CWoLa needs events both inside and outside the SR {lo:g}-{hi:g} GeV; got "
                f"{int(in_sr.sum())} inside and {int((~in_sr).sum())} outside"
            )
        self._fit_classifier(X, in_sr.astype(np.float32))
        self.n_train_ = (int(in_sr.sum()), int((~in_sr).sum()))
        return self


Detector = CWoLaHunting
