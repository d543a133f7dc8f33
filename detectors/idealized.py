"""Idealized anomaly detector (benchmark ceiling; needs a pure-background reference).

Signal-region data versus an independent sample of pure background in the same SR (for
example the extra QCD file of the R&D dataset): the classifier CATHODE would train if its
background model were perfect. Same classifier as the other detectors. Score: the
probability of being data rather than reference (higher = more anomalous).
"""

from __future__ import annotations

import numpy as np

from ._classifier import ClassifierDetector
from .base import BaseDetector, check_inputs

__all__ = ["Idealized", "Detector"]


class Idealized(ClassifierDetector, BaseDetector):
    name = "idealized"
    requires_truth = True
    truth_kind = "reference"

    def fit(self, X, m, *, signal_region, y_true=None, X_reference=None, sideband_state=None):
        X, m = check_inputs(X, m)
        if X_reference is None or len(X_reference) == 0:
            raise ValueError("the idealized detector needs X_reference: pure-background SR events")
        X_ref, _ = check_inputs(X_reference)
        lo, hi = signal_region
        in_sr = (m >= lo) & (m < hi)
        Xc = np.concatenate([X[in_sr], X_ref])
        yc = np.r_[np.ones(int(in_sr.sum()), np.float32), np.zeros(len(X_ref), np.float32)]
        self._fit_classifier(Xc, yc)
        return self


Detector = Idealized
