"""The one protocol every detector follows (scikit-learn estimator style).

* ``__init__`` stores its keyword arguments unchanged and does nothing else; models,
  scalers, generators and the torch device are built in :meth:`Detector.fit` and stored
  as trailing-underscore attributes. An unfitted detector is cheap to clone and ship.
* ``fit(X, m, *, signal_region, y_true=None, X_reference=None, sideband_state=None)``
  returns ``self``.
  ``X`` holds the substructure features (never mjj), ``m`` the dijet mass in GeV of the
  same events, ``signal_region`` the (low, high) SR bounds in GeV. Detectors that need
  truth (the supervised and idealized ceilings) take it through the keyword arguments
  and declare ``requires_truth = True``.
* ``score(X)`` returns one anomaly score per event: **higher means more anomalous**.
* ``random_state`` is stored unchanged and turned into generators inside ``fit``.
* Detectors with an expensive stage that sees sideband events only (the CATHODE flow)
  set ``has_sideband_stage = True`` and implement ``fit_sidebands(X_sb, m_sb, *,
  signal_region) -> state`` (plain, picklable data). The pipeline runs it once per window
  and passes the state to every fold's ``fit`` as ``sideband_state``; without it, ``fit``
  runs the stage itself on the sideband events it is given.

A new detector is one module ``detectors/<name>.py`` whose attribute ``Detector`` is the
class, plus one entry under ``detectors:`` in the config.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from sideband.pipeline.exceptions import ConfigError, NotFittedError

__all__ = ["BaseDetector", "load_detector_class", "make_detector", "check_fitted", "torch_device"]


class BaseDetector(BaseEstimator):
    """Base class: parameter handling (get_params/set_params/clone) and checks."""

    #: Short name used in configs and results.
    name: ClassVar[str] = "base"
    #: True for the benchmark ceilings that need truth labels or reference samples.
    requires_truth: ClassVar[bool] = False
    #: ``"labels"`` (needs y_true) or ``"reference"`` (needs X_reference) when requires_truth.
    truth_kind: ClassVar[str | None] = None
    #: True when the detector has a fold-independent stage trained on sideband events only.
    has_sideband_stage: ClassVar[bool] = False

    def fit(self, X, m, *, signal_region, y_true=None, X_reference=None,
            sideband_state=None):  # pragma: no cover
        raise NotImplementedError

    def fit_sidebands(self, X, m, *, signal_region):  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} has no sideband stage")

    def score(self, X) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


def check_fitted(detector: BaseDetector, attribute: str) -> None:
    """Raise :class:`NotFittedError` when ``detector`` has not been fitted."""
    if not hasattr(detector, attribute):
        raise NotFittedError(
            f"this {type(detector).__name__} is not fitted yet; call fit(X, m, "
            "signal_region=...) before score(X)"
        )


def check_inputs(X, m=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate the arrays a detector receives (2-D finite features, matching mjj)."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (events x features), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X holds NaN or inf; the readers drop such events, check your inputs")
    if m is not None:
        m = np.asarray(m, dtype=np.float64)
        if m.shape != (len(X),):
            raise ValueError(f"m must have one entry per event ({len(X)}), got shape {m.shape}")
    return X, m


def load_detector_class(name: str) -> type[BaseDetector]:
    """The detector class of module ``detectors.<name>`` (its ``Detector`` attribute)."""
    if not name.isidentifier() or importlib.util.find_spec(f"sideband.detectors.{name}") is None:
        raise ConfigError(
            f"unknown detector '{name}': no module detectors/{name}.py; available: "
            f"{', '.join(available_detectors())}"
        )
    module = importlib.import_module(f"sideband.detectors.{name}")
    cls = getattr(module, "Detector", None)
    if cls is None or not issubclass(cls, BaseDetector):
        raise ConfigError(f"detectors/{name}.py defines no Detector class deriving from BaseDetector")
    return cls


def available_detectors() -> list[str]:
    """Modules of ``detectors`` that define a ``Detector`` (event scorers)."""
    import pkgutil

    import sideband.detectors as detectors

    names = []
    for m in pkgutil.iter_modules(detectors.__path__):
        if m.name.startswith("_") or m.name == "base":
            continue
        if hasattr(importlib.import_module(f"sideband.detectors.{m.name}"), "Detector"):
            names.append(m.name)
    return sorted(names)


def make_detector(name: str, params: dict, random_state: int | None = None) -> BaseDetector:
    """Build a detector from its config entry; unknown parameters are a ConfigError."""
    cls = load_detector_class(name)
    valid = set(cls().get_params())
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ConfigError(
            f"detectors.{name}: unknown parameter(s) {unknown}; valid ones are {sorted(valid)}"
        )
    params = dict(params)
    if "random_state" in valid and random_state is not None:
        params.setdefault("random_state", random_state)
    return cls(**params)


def torch_device(requested: str = "auto"):
    """``cuda`` when asked for or available (``auto``), else ``cpu``."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
