"""Fully supervised classifier (benchmark ceiling; needs truth labels).

Trained on signal-region events to separate labelled signal from background, with the
same classifier as CWoLa and CATHODE so that the comparison is fair. It is the best any
detector can do with these features and this much signal. Score: signal probability.
"""

from __future__ import annotations

import numpy as np

from ._classifier import ClassifierDetector
from .base import BaseDetector, check_inputs

__all__ = ["Supervised", "Detector"]


class Supervised(ClassifierDetector, BaseDetector):
    name = "supervised"
    requires_truth = True
    truth_kind = "labels"

    def fit(self, X, m, *, signal_region, y_true=None, X_reference=None, sideband_state=None):
        X, m = check_inputs(X, m)
        if y_true is None:
            raise ValueError("the supervised detector needs truth labels (y_true); the input has none")
        y = np.asarray(y_true, dtype=np.float32)
        lo, hi = signal_region
        in_sr = (m >= lo) & (m < hi)
        self._fit_classifier(X[in_sr], y[in_sr])
        return self


Detector = Supervised
