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
  set ``needs_sideband_stage = True`` and implement ``fit_sidebands(X_sb, m_sb, *,
  signal_region) -> state`` (plain, picklable data). The search runs it once per window
  and passes the state to every fold's ``fit`` as ``sideband_state``; without it, ``fit``
  runs the stage itself on the sideband events it is given.

A detector describes itself to the search, which never digs into its attributes:

* ``Params``: a pydantic model of its parameters; a wrong name, type or value is a config
  error naming the key and the allowed values before anything runs;
* ``requires_truth`` / ``truth_kind`` (the benchmark ceilings: not searches, so not trials of
  the look-elsewhere correction), ``needs_sideband_stage`` (``has_sideband_stage(params)``:
  whether these parameters keep the stage as a node of its own), ``uses_torch(params, stage)`` (that
  stage can use a GPU: the search decides the ``device`` and passes it as a parameter);
* ``keeps_model``: the search saves each fold's fitted model (``save(path)``, read back
  with ``Detector.load(path)``) and lists it in results.json (the trigger export uses it);
* ``training_log()``: JSON-serialisable training history (validation curves) for the report.

A new detector is one module ``detectors/<name>.py`` whose attribute ``Detector`` is the
class, plus one entry under ``detectors:`` in the config.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sklearn.base import BaseEstimator

from sideband.pipeline.cache import atomic_path
from sideband.pipeline.exceptions import ConfigError, NotFittedError

__all__ = ["BaseDetector", "DetectorParams", "load_detector_class", "make_detector", "score_events",
           "validate_params", "check_config", "check_fitted", "torch_device", "torch_seeded"]


class DetectorParams(BaseModel):
    """Base of every detector's parameter model: strict types, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    #: torch device; set by the search from ``compute.device`` (``auto``: CUDA when visible).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    random_state: int | None = Field(default=None, ge=0)


class BaseDetector(BaseEstimator):
    """Base class: parameter handling (get_params/set_params/clone) and checks."""

    #: Short name used in configs and results.
    name: ClassVar[str] = "base"
    #: True for the benchmark ceilings that need truth labels or reference samples.
    requires_truth: ClassVar[bool] = False
    #: ``"labels"`` (needs y_true) or ``"reference"`` (needs X_reference) when requires_truth.
    truth_kind: ClassVar[str | None] = None
    #: True when the detector has a fold-independent stage trained on sideband events only.
    needs_sideband_stage: ClassVar[bool] = False
    #: True when the search keeps each fold's fitted model (``save``/``load``) for export.
    keeps_model: ClassVar[bool] = False
    #: True when the score of an event depends on its mjj too: ``score(X, m)`` (LaCATHODE).
    scores_at_mass: ClassVar[bool] = False
    #: The parameter model (validated before anything runs).
    Params: ClassVar[type[DetectorParams]] = DetectorParams

    def fit(self, X, m, *, signal_region, y_true=None, X_reference=None,
            sideband_state=None):  # pragma: no cover
        raise NotImplementedError

    def fit_sidebands(self, X, m, *, signal_region):  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} has no sideband stage")

    def score(self, X) -> np.ndarray:  # pragma: no cover
        """Anomaly score of each event (higher = more anomalous). A detector with
        ``scores_at_mass`` scores an event at its mass: ``score(X, m)``."""
        raise NotImplementedError

    @classmethod
    def uses_torch(cls, params: dict, stage: str = "fit") -> bool:
        """Whether ``stage`` (``"fit"`` or ``"sidebands"``) trains torch models with these
        parameters: those stages can use a GPU, and the search passes them a ``device``."""
        return False

    @classmethod
    def gpu_pays(cls, params: dict, stage: str = "fit") -> bool:
        """Whether ``stage`` trains faster on a GPU than on a CPU worker at these parameters
        (``compute.device: auto`` sends only such stages to GPU workers; ``cuda`` sends every
        torch stage). Measured with benchmarks/gpu.py; False unless a detector says otherwise."""
        return False

    @classmethod
    def has_sideband_stage(cls, params: dict) -> bool:
        """Whether the search runs the sideband stage as its own node for these parameters
        (``needs_sideband_stage`` unless a parameter moves the stage into each fold's ``fit``)."""
        return cls.needs_sideband_stage

    @classmethod
    def stage_identity(cls, params: dict) -> Any:
        """What the sideband stage's output depends on, besides the data, windows, features and
        seed: detectors with equal identities share one stage node (LaCATHODE trains on CATHODE's
        flow when their flow settings agree). JSON-serialisable; by default the detector and all
        its parameters."""
        return [cls.name, params]

    @classmethod
    def fold_identity(cls, params: dict) -> tuple:
        """What the fold nodes compute beyond their parameters, data and stage: a change of
        method under unchanged parameters names itself here so that cached folds are not
        reused. Empty by default."""
        return ()

    def training_log(self) -> Any:
        """JSON-serialisable training history (e.g. validation loss per epoch); empty by default."""
        return []

    def save(self, path: str | Path) -> Path:
        """Write the fitted detector to ``path`` (atomically); read it back with :meth:`load`."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "BaseDetector":
        """A detector written by :meth:`save`."""
        with open(path, "rb") as f:
            det = pickle.load(f)
        if not isinstance(det, cls):
            raise TypeError(f"{path}: holds a {type(det).__name__}, not a {cls.__name__}")
        return det


def score_events(detector: BaseDetector, X, m) -> np.ndarray:
    """``detector``'s scores of events ``X`` at masses ``m`` (passed on only where it uses them)."""
    return detector.score(X, m) if detector.scores_at_mass else detector.score(X)


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


def _find_module(name: str) -> str | None:
    """The module of detector ``name``: ``detectors/<name>.py``, or an importable dotted path
    (``mypackage.mydetector``) for detectors kept outside sideband."""
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        return None
    candidates = [f"sideband.detectors.{name}"] if len(parts) == 1 else [name]
    for mod in candidates:
        try:
            if importlib.util.find_spec(mod) is not None:
                return mod
        except ModuleNotFoundError:
            continue
    return None


def load_detector_class(name: str) -> type[BaseDetector]:
    """The ``Detector`` class of ``detectors/<name>.py`` (or of the importable module ``name``)."""
    module_name = _find_module(name)
    if module_name is None:
        raise ConfigError(
            f"unknown detector '{name}': no module detectors/{name}.py (nor an importable module of that "
            f"name); available: {', '.join(available_detectors())}"
        )
    cls = getattr(importlib.import_module(module_name), "Detector", None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, BaseDetector)):
        raise ConfigError(f"{module_name}: defines no Detector class deriving from BaseDetector")
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


def _describe(err: dict) -> str:
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return "unknown parameter (typo?)"
    if err["type"] == "literal_error":
        return msg.replace("Input should be", "must be")
    return msg[0].lower() + msg[1:] if msg else msg


def validate_params(name: str, params: dict) -> dict:
    """``params`` checked against detector ``name``'s ``Params``; a ConfigError names each problem.

    Returns the parameters as given (defaults stay with the detector class).
    """
    cls = load_detector_class(name)
    try:
        cls.Params.model_validate(dict(params))
    except ValidationError as exc:
        valid = sorted(cls.Params.model_fields)
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            got = "" if err["type"] == "extra_forbidden" else f" (got {err.get('input')!r})"
            problems.append(f"detectors.{name}.params.{loc}: {_describe(err)}{got}")
        raise ConfigError("; ".join(problems) + f"; valid parameters: {', '.join(valid)}") from None
    return dict(params)


def check_config(cfg) -> None:
    """The detector part of a search config: names, parameter values, needed inputs.

    Raises ConfigError naming the key. Used as the ``check`` of the config loader.
    """
    enabled = [n for n, d in cfg.detectors.items() if d.enabled]
    if not enabled:
        raise ConfigError("detectors: no detector is enabled, so the search would only fit the inclusive "
                          f"spectrum; enable one of {', '.join(available_detectors())}")
    for name, det in cfg.detectors.items():
        cls = load_detector_class(name)
        validate_params(name, det.params)
        if det.shared_stage and not cls.has_sideband_stage(det.params):
            raise ConfigError(f"detectors.{name}.shared_stage: {name} has no sideband stage to share with these "
                              "parameters; remove the key (it applies to detectors such as cathode, without "
                              "flow_per_fold)")
        if det.enabled and cls.truth_kind == "reference" and not cfg.data.reference:
            raise ConfigError(f"detectors.{name} needs a pure-background reference sample; "
                              "set data.reference to its file (e.g. qcd_extra_features.h5)")


def make_detector(name: str, params: dict, random_state: int | None = None) -> BaseDetector:
    """Build a detector from its config entry; invalid parameters are a ConfigError."""
    cls = load_detector_class(name)
    params = validate_params(name, params)
    if "random_state" in cls.Params.model_fields and random_state is not None:
        params.setdefault("random_state", random_state)
    return cls(**params)


def torch_device(requested: str = "auto"):
    """The torch device for a detector's ``device`` parameter (decided by the search).

    ``cpu`` never touches CUDA; ``auto`` picks CUDA only when it is visible; ``cuda`` is CUDA.
    """
    import torch

    if requested == "cpu":
        return torch.device("cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


_TORCH_RNG = threading.Lock()


@contextmanager
def torch_seeded(seed: int):
    """torch's process-wide generator, seeded, for one block at a time.

    Weight initialisation (torch.nn and nflows layers) and nflows' sampling draw from that
    generator. Dask threads of one worker process (``compute.processes: false``,
    ``threads_per_worker`` > 1, ``dask worker --nthreads`` > 1) run several training nodes at
    once and would reseed each other's stream between seed and draw, so a seed would not fix the
    result; the block runs under a lock. Everything else draws from its own ``torch.Generator``.
    """
    import torch

    with _TORCH_RNG:
        torch.manual_seed(int(seed))
        yield


@contextmanager
def torch_rng_isolated():
    """For building a torch module whose initial weights are overwritten at once (a saved state is
    loaded into it): its draws take nothing from a :func:`torch_seeded` block running in another
    thread, and torch's process-wide generator is left as it was."""
    import torch

    with _TORCH_RNG, torch.random.fork_rng(devices=[]):
        yield
