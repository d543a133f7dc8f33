"""Readers: LHC Olympics HDF5 layouts and ROOT trees into the canonical event table.

Supported inputs (``fmt``):

``lhco-features``
    pandas HDF5 (key ``df``) with ``pxj1 pyj1 pzj1 mj1 tau1j1 tau2j1 tau3j1``, the same
    for ``j2``, and an optional ``label``.
``lhco-raw``
    pandas HDF5 with up to 700 particles as (pT, eta, phi) triplets, zero padded, then
    an optional label column; jets are clustered with fastjet.
``root``
    a TTree (or RNTuple) with either the LHCO feature names as flat branches, or jagged particle
    branches (``part_pt``, ``part_eta``, ``part_phi``; or ``pt``, ``eta``, ``phi``) and an
    optional ``label`` branch.

Extra per-event numeric columns of a feature file (or flat numeric branches of a ROOT tree)
are carried into the event table under their own names, so that ``features:`` can name them;
:func:`check_features` checks the names a run needs against a table. ``substructure="extended"``
adds the extended N-subjettiness set (:data:`~.features.EXTENDED_COLUMNS`) to tables read from
particles; a feature file written with those columns (:func:`~.features.jets_to_lhco_frame`)
gives them too.

Files are read in chunks of ``chunk_size`` events, so a large file never sits in
memory twice; the canonical table is cached as Parquet under a key made from the
file's content hash (:func:`load_events`). The format readers and their column checks are in
:mod:`.readers`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import atomic_path, cache_key, file_hash
from .exceptions import ConfigError, InputFileError
from .features import CANONICAL_COLUMNS, EXTENDED_COLUMNS, LHCO_FEATURE_COLUMNS, SUBSTRUCTURE
from .readers import (
    _ColumnStats,
    _features_chunks,
    _features_layout,
    _H5Frame,
    _missing_columns_message,
    _raw_chunks,
    _raw_label,
    _root_chunks,
    _root_layout,
    _root_tree,
)

__all__ = ["EventSource", "detect_format", "iter_events", "read_events", "load_events", "event_columns",
           "check_features", "signal_only", "FORMATS", "SUBSTRUCTURE"]

log = logging.getLogger(__name__)

FORMATS = ("auto", "lhco-features", "lhco-raw", "root")
#: Bumped when the reader accepts or rejects different files, so stale caches are not reused.
#: 3: extra numeric columns of the file are carried into the table. 4: mj1_over_mjj, delta_mj_over_mjj.
READER_VERSION = 4
#: A median mjj above this (GeV) means the file is almost surely in MeV.
MEV_SUSPICION_GEV = 50_000.0


@dataclass(frozen=True)
class EventSource:
    """Where events came from and what was dropped on the way (stored in results)."""

    path: str
    fmt: str
    content_hash: str
    n_read: int
    n_kept: int
    n_nonfinite: int = 0
    n_no_dijet: int = 0
    columns: tuple[str, ...] = field(default_factory=tuple)
    #: The Parquet copy written by :func:`load_events` ("" when not cached).
    table_path: str = ""

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "format": self.fmt,
            "content_hash": self.content_hash,
            "n_read": self.n_read,
            "n_kept": self.n_kept,
            "n_nonfinite_dropped": self.n_nonfinite,
            "n_without_two_jets": self.n_no_dijet,
        }


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise InputFileError(f"{path}: no such file; check the path where it is given "
                             "(--data, --signal or the config's data keys)")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, expected an HDF5 or ROOT file; pass the file inside it")
    if path.stat().st_size == 0:
        raise InputFileError(f"{path}: is empty (0 bytes); the copy or download did not finish, re-create it")

def _signature(path: Path) -> str | None:
    """"root" or "hdf5" from the file's first bytes; None for anything else."""
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(b"root"):
        return "root"
    if magic == b"\x89HDF\r\n\x1a\n":
        return "hdf5"
    return None


def detect_format(path: str | os.PathLike, key: str = "df") -> str:
    """Guess the layout of ``path`` from its extension and columns."""
    path = Path(path)
    _check_exists(path)
    kind = _signature(path)
    if kind == "root":
        return "root"
    if kind is None:
        raise InputFileError(
            f"{path}: neither HDF5 nor ROOT (unrecognised file signature); sideband reads "
            "LHC Olympics HDF5 files and ROOT TTrees"
        )
    frame = _H5Frame(path, key)
    names = {str(c) for c in frame.columns}
    if set(LHCO_FEATURE_COLUMNS) <= names:
        return "lhco-features"
    if len(frame.columns) in (2100, 2101) or all(isinstance(c, int) for c in frame.columns):
        return "lhco-raw"
    raise InputFileError(_missing_columns_message(path, names))


def iter_events(
    path: str | os.PathLike,
    fmt: str = "auto",
    *,
    key: str = "df",
    tree: str | None = None,
    chunk_size: int = 100_000,
    substructure: str = "standard",
) -> Iterator[tuple[pd.DataFrame, int]]:
    """Yield (canonical table chunk, events without two jets) for ``path``."""
    yield from _iter_events(Path(path), fmt, key, tree, chunk_size, _ColumnStats(Path(path)),
                            substructure=substructure)


def _check_substructure(substructure: str) -> None:
    if substructure not in SUBSTRUCTURE:
        raise ConfigError(f"substructure: {substructure!r} is not one of {list(SUBSTRUCTURE)}; choose "
                          "'extended' for tau_N^beta (N = 1..9, beta = 0.5, 1, 2) or 'standard'")


def _resolve_format(path: Path, fmt: str, key: str) -> str:
    """The layout of ``path``: ``fmt`` checked against the file's signature, or detected."""
    _check_exists(path)
    if fmt not in FORMATS:
        raise InputFileError(f"{path}: unknown format '{fmt}'; choose one of {FORMATS}")
    if fmt == "auto":
        return detect_format(path, key)
    kind = _signature(path)
    if kind is not None and (kind == "root") != (fmt == "root"):
        raise InputFileError(
            f"{path}: is {'a ROOT' if kind == 'root' else 'an HDF5'} file but the format is set to "
            f"'{fmt}'; set data.format to 'auto' (or to the file's layout)"
        )
    return fmt


def _iter_events(path: Path, fmt: str, key: str, tree: str | None, chunk_size: int,
                 stats: _ColumnStats, *, substructure: str = "standard") -> Iterator[tuple[pd.DataFrame, int]]:
    _check_substructure(substructure)
    fmt = _resolve_format(path, fmt, key)
    if fmt == "lhco-features":
        yield from _features_chunks(path, key, chunk_size, stats, substructure)
    elif fmt == "lhco-raw":
        yield from _raw_chunks(path, key, chunk_size, substructure)
    else:
        try:
            yield from _root_chunks(path, tree, chunk_size, stats, substructure)
        except InputFileError:
            raise
        except Exception as exc:  # uproot raises OSError, ValueError, DeserializationError ...
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise InputFileError(
                f"{path}: reading the ROOT file failed ({exc.__class__.__name__}: {first}); the "
                "file is probably truncated or corrupt, re-create it"
            ) from None


def _validate(path: Path, events: pd.DataFrame, n_read: int, n_no_dijet: int, n_nonfinite: int) -> None:
    if len(events) == 0:
        if n_read == 0:
            raise InputFileError(f"{path}: holds no events (0 rows); write the events into the file")
        if n_no_dijet == n_read:
            raise InputFileError(
                f"{path}: none of its {n_read} events has two jets (anti-kT R=1.0, pT > 20 GeV, "
                "|eta| < 2.5); check the particle columns (pT, eta, phi in GeV)"
            )
        raise InputFileError(
            f"{path}: no event left: {n_nonfinite} of {n_read} have NaN/inf features and "
            f"{n_no_dijet} fewer than two jets; fix the columns named in the warnings"
        )
    mjj = events["mjj"].to_numpy()
    med = float(np.nanmedian(mjj))
    if med > MEV_SUSPICION_GEV:
        raise InputFileError(
            f"{path}: median mjj is {med:.3g}, which looks like MeV; sideband expects GeV: "
            "divide momenta and masses by 1000"
        )
    masses = events[["mj1", "mj2"]].to_numpy()
    neg = int(np.sum(masses < -1.0))
    if neg:
        raise InputFileError(
            f"{path}: {neg} negative jet masses (below -1 GeV, smallest {masses.min():.4g}); the "
            "columns are probably swapped or corrupt, check pxj*/mj* in the file"
        )


def read_events(
    path: str | os.PathLike,
    fmt: str = "auto",
    *,
    key: str = "df",
    tree: str | None = None,
    chunk_size: int = 100_000,
    strict: bool = False,
    substructure: str = "standard",
    features: list[str] | tuple[str, ...] | None = None,
) -> tuple[pd.DataFrame, EventSource]:
    """Read a whole file into the canonical table (no caching).

    Events with non-finite features (e.g. ``tau1 = 0``) are dropped with one warning
    that counts them and names the columns; with ``strict=True`` they raise
    :class:`InputFileError` instead. A feature column that holds no numbers, only NaN/inf,
    or one value throughout is an :class:`InputFileError` naming the column. The file's
    extra numeric columns are carried unchanged (not checked, not dropped on NaN: a run
    checks the ones it uses, ``features``, with :func:`check_features`).
    ``substructure="extended"`` adds :data:`~.features.EXTENDED_COLUMNS` (particle inputs).
    """
    path = Path(path)
    _check_substructure(substructure)
    resolved = detect_format(path, key) if fmt == "auto" else fmt
    stats = _ColumnStats(path)
    chunks, n_no_dijet, n_read = [], 0, 0
    for chunk, dropped in _iter_events(path, resolved, key, tree, chunk_size, stats, substructure=substructure):
        chunks.append(chunk)
        n_no_dijet += dropped
        n_read += len(chunk) + dropped
    stats.check()
    events = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=CANONICAL_COLUMNS)
    computed = CANONICAL_COLUMNS + [c for c in EXTENDED_COLUMNS if c in events]
    values = events[computed].to_numpy(dtype=np.float64)
    finite = np.isfinite(values).all(axis=1)
    n_bad = int((~finite).sum())
    if n_bad:
        where = stats.nonfinite()
        if not where:  # undefined ratios (e.g. tau1 = 0), not NaN/inf in the file
            bad_cols = (~np.isfinite(values)).sum(axis=0)
            where = "computed " + ", ".join(f"{c}: {n}" for c, n in zip(computed, bad_cols) if n) \
                + "; e.g. tau1 = 0 leaves tau21 undefined"
        msg = f"{path}: {n_bad} of {len(events)} events have NaN/inf features ({where})"
        if strict:
            raise InputFileError(msg + "; fix the file or run without --strict to drop them")
        log.warning("%s; dropped them", msg)
        events = events[finite].reset_index(drop=True)
    if n_no_dijet:
        log.warning("%s: %d events have fewer than two jets; dropped them", path, n_no_dijet)
    _validate(path, events, n_read, n_no_dijet, n_bad)
    source = EventSource(
        path=str(path),
        fmt=resolved,
        content_hash="",
        n_read=n_read,
        n_kept=len(events),
        n_nonfinite=n_bad,
        n_no_dijet=n_no_dijet,
        columns=tuple(events.columns),
    )
    if features:
        check_features(events, features, path)
    return events, source


def load_events(
    path: str | os.PathLike,
    fmt: str = "auto",
    *,
    cache_dir: str | os.PathLike | None = None,
    key: str = "df",
    tree: str | None = None,
    chunk_size: int = 100_000,
    strict: bool = False,
    substructure: str = "standard",
    features: list[str] | tuple[str, ...] | None = None,
) -> tuple[pd.DataFrame, EventSource]:
    """:func:`read_events` with a Parquet cache keyed by the file's content hash (and the
    options that change the table); ``features`` are checked on the cached table too."""
    import dataclasses
    import json

    path = Path(path)
    _check_exists(path)
    digest = file_hash(path)
    if cache_dir is None:
        events, source = read_events(path, fmt, key=key, tree=tree, chunk_size=chunk_size, strict=strict,
                                     substructure=substructure, features=features)
        return events, dataclasses.replace(source, content_hash=digest)
    ckey = cache_key("events", READER_VERSION, digest, fmt, key, tree, strict, substructure)
    target = Path(cache_dir) / f"events-{ckey}.parquet"
    meta = target.with_suffix(".json")
    if target.exists() and meta.exists():
        info = json.loads(meta.read_text())
        info["columns"] = tuple(info["columns"])
        info["table_path"] = str(target)
        events = pd.read_parquet(target)
        if features:
            check_features(events, features, path)
        return events, EventSource(**info)
    events, source = read_events(path, fmt, key=key, tree=tree, chunk_size=chunk_size, strict=strict,
                                 substructure=substructure, features=features)
    source = dataclasses.replace(source, content_hash=digest, table_path=str(target))
    with atomic_path(target, ".parquet") as tmp:
        events.to_parquet(tmp, index=False)
    info = dataclasses.asdict(source)
    info["columns"] = list(info["columns"])
    with atomic_path(meta, ".json") as tmp:
        tmp.write_text(json.dumps(info))
    return events, source


def signal_only(events: pd.DataFrame, path, what: str) -> tuple[pd.DataFrame, int]:
    """The signal events of a file given as signal (``what``: the option that named it): those
    labelled 1 where the file has labels (a mixed file, e.g. LHC Olympics R&D), else all; and
    how many labelled background were left out. A file whose events are all background is a
    user error."""
    if "label" not in events:
        return events, 0
    is_signal = events["label"].to_numpy() > 0.5
    if not is_signal.any():
        raise InputFileError(f"{what} {path}: all {len(events)} events are labelled background (label 0); "
                                "pass a file of signal events or one with signal labelled 1")
    return events[is_signal].reset_index(drop=True), int((~is_signal).sum())


def event_columns(
    path: str | os.PathLike,
    fmt: str = "auto",
    *,
    key: str = "df",
    tree: str | None = None,
    substructure: str = "standard",
) -> list[str]:
    """The columns :func:`read_events` gives for ``path``, from the file's header (no events read)."""
    path = Path(path)
    _check_substructure(substructure)
    fmt = _resolve_format(path, fmt, key)
    if fmt == "lhco-features":
        return _features_layout(path, _H5Frame(path, key), substructure).columns(substructure)
    if fmt == "lhco-raw":
        label = _raw_label(path, _H5Frame(path, key))
        return CANONICAL_COLUMNS + EXTENDED_COLUMNS * (substructure == "extended") + ["label"] * label
    import uproot

    try:
        f = uproot.open(path)
    except Exception as exc:
        raise InputFileError(f"{path}: not a readable ROOT file ({exc.__class__.__name__}: {exc}); re-create it") from None
    with f:
        t, name = _root_tree(f, path, tree)
        return _root_layout(path, t, name, substructure)[1].columns(substructure)


def check_features(events: pd.DataFrame, features, source: str | os.PathLike) -> None:
    """Raise :class:`InputFileError` when a column named in ``features`` is not in ``events``
    (naming the key ``features`` and the columns there are) or, for a column carried from the
    file, holds NaN/inf (the reader drops such events only for the columns it computes)."""
    import difflib

    available = [c for c in events.columns if c not in ("mjj", "label")]
    missing = [f for f in features if f not in available]
    if missing:
        close = {f: m for f in missing if (m := difflib.get_close_matches(f, available, n=1, cutoff=0.75))}
        hint = "".join(f"; '{f}': did you mean '{m[0]}'?" for f, m in close.items())
        raise InputFileError(
            f"{source}: features: {missing} not in the event table read from this file{hint}; columns "
            f"available: {available}; fix the key 'features' in the config, or add the column(s) to the file"
        )
    own = set(CANONICAL_COLUMNS) | set(EXTENDED_COLUMNS)
    for f in features:
        if f in own:
            continue
        n_bad = int((~np.isfinite(events[f].to_numpy(dtype=np.float64))).sum())
        if n_bad:
            raise InputFileError(
                f"{source}: features: column '{f}' is NaN/inf in {n_bad} of {len(events)} events; fill those "
                "values in the file, remove those events, or leave the column out of 'features'"
            )
