"""Typed records passed between the stages of a search, and the one helper that stores them.

Every record is a frozen dataclass. :func:`save_record` writes one atomically: records with
array fields go to NPZ (arrays as arrays, everything else as one JSON document), the others
to JSON; :func:`load_record` reads either back into the same type. The graph engine uses the
pair to cache node outputs, so a re-run reads records instead of recomputing them.

Paths inside records are stored relative to the directory that holds the record when they
lie below it, and resolved against it again on loading: a run directory can be moved.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .cache import atomic_path

__all__ = [
    "EventTable",
    "SidebandStage",
    "FoldScores",
    "WindowScores",
    "TestResult",
    "WindowTests",
    "save_record",
    "load_record",
    "record_types",
]

_TYPES: dict[str, type] = {}


def _register(cls):
    _TYPES[cls.__name__] = cls
    return cls


def record_types() -> dict[str, type]:
    """Name -> class of every record type (what :func:`load_record` can read)."""
    return dict(_TYPES)


@_register
@dataclass(frozen=True)
class EventTable:
    """The canonical event table of a run (Parquet) and where its events came from."""

    path: str
    sources: tuple[dict, ...]
    n_events: int
    n_injected: int = 0
    #: Event-cache Parquet of a pure-background reference sample (idealized ceiling), if any.
    reference_path: str | None = None

    _paths: ClassVar[tuple[str, ...]] = ("path", "reference_path")


@_register
@dataclass(frozen=True)
class SidebandStage:
    """A detector's fold-independent sideband stage (e.g. CATHODE's flow), stored as a file."""

    path: str
    detector: str
    window: str  #: the window's name; a stage shared by several windows joins their names with '+'
    wall_s: float = 0.0

    _paths: ClassVar[tuple[str, ...]] = ("path",)


@_register
@dataclass(frozen=True)
class FoldScores:
    """One fold's model applied to every event it did not train on (NaN for its training events)."""

    scores: np.ndarray
    heldout: np.ndarray
    train: np.ndarray
    wall_s: float
    history: Any = None
    #: Saved model (``Detector.save``) for detectors whose models the run keeps.
    model_path: str | None = None

    _paths: ClassVar[tuple[str, ...]] = ("model_path",)


@_register
@dataclass(frozen=True)
class WindowScores:
    """Calibrated out-of-fold score of every event for one (window, detector)."""

    scores: np.ndarray
    owner: np.ndarray
    wall_s: float
    histories: tuple = ()
    model_paths: tuple = ()

    _paths: ClassVar[tuple[str, ...]] = ("model_paths",)


@_register
@dataclass(frozen=True)
class TestResult:
    """One counting experiment: a (window, detector, selection) and every number reported.

    Fields that a blind run does not compute (observed counts, Z, p0, observed limit) are
    None there. ``fit`` is the background fit's summary; ``p0_toys`` the pseudo-experiment
    record behind a toy-based p-value.
    """

    window: str
    sr: tuple[float, float]
    detector: str
    selection: float
    n_selected: int | None
    n_selected_sidebands: int
    n_observed_sr: int | None
    n_expected_sr: float | None = None
    n_expected_sr_unc: float | None = None
    n_expected_sr_unc_fit: float | None = None
    n_expected_sr_unc_function: float | None = None
    z_local: float | None = None
    z_local_asymptotic: float | None = None
    p0: float | None = None
    p_value_method: str | None = None
    p0_toys: dict | None = None
    upper_limit: float | None = None
    upper_limit_expected: float | None = None
    #: "asymptotic" (pyhf) or "counting" (exact Poisson CLs, below stats.toys_below)
    limit_method: str | None = None
    upper_limit_expected_band: tuple | None = None
    fit: dict | None = None
    status: str = "ok"
    n_signal_sr_truth: int | None = None
    gp: dict | None = None
    #: Warnings a reader must see: "fit p < 0.01 (...)", "fit failed", "fit not converged", ...
    flags: tuple[str, ...] = ()
    # --- signal model (``stats.signal_model``); all None without one -------------------------
    #: Events of the signal template, and how many of them fall in the SR and pass the selection.
    signal_template_events: int | None = None
    signal_template_passed: int | None = None
    #: passed / events, with its binomial standard error sqrt(eff (1 - eff) / events).
    signal_efficiency: float | None = None
    signal_efficiency_unc: float | None = None
    #: Produced signal events assumed for the expected Z, and efficiency x that: SR signal events.
    signal_events: float | None = None
    signal_expected_sr: float | None = None
    #: Median expected discovery Z of that signal on this test's fitted background (Asimov data
    #: set in the test's pyhf model, closed form: ``evaluate._expected_z``).
    signal_z_expected: float | None = None
    #: CLs upper limits on PRODUCED signal events (SR limits / efficiency): observed (None when
    #: blind), median expected, and expected at -2..+2 sigma.
    signal_upper_limit: float | None = None
    signal_upper_limit_expected: float | None = None
    signal_upper_limit_expected_band: tuple | None = None
    #: Why a signal-model number is missing (zero efficiency, no saved models, failed fit).
    signal_note: str | None = None

    __test__: ClassVar[bool] = False  # not a pytest test class

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sr"] = list(self.sr)
        return d


@_register
@dataclass(frozen=True)
class WindowTests:
    """Output of the statistics stage for one (window, detector): its tests and what the report shows."""

    rows: tuple[TestResult, ...]
    spectra: tuple[dict, ...]
    timing: dict
    training: dict | None = None
    metrics: dict | None = None
    model_paths: tuple = ()

    _paths: ClassVar[tuple[str, ...]] = ("model_paths",)


# ----------------------------------------------------------------------------- storage
def _rel(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    p, b = Path(value).resolve(), base.resolve()
    return os.path.relpath(p, b) if p.is_relative_to(b) else str(value)


def _abs(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    p = Path(value)
    return str(p if p.is_absolute() else base / p)


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__record__": type(obj).__name__,
                **{f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, dict):
        return {k: _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return {"__float__": repr(obj)}
    return obj


def _from_jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, dict):
        if "__float__" in obj and len(obj) == 1:
            return float(obj["__float__"])
        if "__record__" in obj:
            cls = _TYPES[obj["__record__"]]
            return _build(cls, {k: _from_jsonable(v) for k, v in obj.items() if k != "__record__"})
        return {k: _from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_jsonable(v) for v in obj]
    return obj


def _build(cls, values: dict):
    """Instantiate ``cls`` from stored values; lists become tuples where the field is a tuple."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        if isinstance(v, list) and "tuple" in str(f.type):
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def _with_paths(record, convert, base: Path):
    """``record`` with ``convert(path, base)`` applied to its path fields (``_paths``: a path, or a
    tuple of paths)."""
    changes = {}
    for name in getattr(type(record), "_paths", ()):
        value = getattr(record, name)
        if isinstance(value, tuple):
            changes[name] = tuple(convert(v, base) for v in value)
        elif value is not None:
            changes[name] = convert(value, base)
    return dataclasses.replace(record, **changes) if changes else record


def save_record(record, path: str | os.PathLike) -> Path:
    """Write ``record`` (a registered frozen dataclass) to ``path`` atomically (.npz or .json)."""
    path = Path(path)
    if type(record).__name__ not in _TYPES:
        raise TypeError(f"{type(record).__name__} is not a record type")
    record = _with_paths(record, _rel, path.parent)
    arrays = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)
              if isinstance(getattr(record, f.name), np.ndarray)}
    doc = _to_jsonable(dataclasses.replace(record, **{k: None for k in arrays}) if arrays else record)
    text = json.dumps(doc, allow_nan=False)
    if path.suffix == ".npz":
        with atomic_path(path, ".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, __meta__=np.array(text), **arrays)
    else:
        if arrays:
            raise ValueError(f"{path}: {type(record).__name__} holds arrays; store it as .npz")
        with atomic_path(path, ".json") as tmp:
            tmp.write_text(text + "\n")
    return path


def load_record(path: str | os.PathLike):
    """Read a record written by :func:`save_record`; relative paths resolve against its folder."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as z:
            doc = json.loads(str(z["__meta__"]))
            doc.update({k: z[k] for k in z.files if k != "__meta__"})
    else:
        doc = json.loads(path.read_text())
    return _with_paths(_from_jsonable(doc), _abs, path.parent)

