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

Files are read in chunks of ``chunk_size`` events, so a large file never sits in
memory twice; the canonical table is cached as Parquet under a key made from the
file's content hash (:func:`load_events`).
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
from .exceptions import InputFileError
from .features import CANONICAL_COLUMNS, LHCO_FEATURE_COLUMNS, cluster_particles, events_from_jets

__all__ = ["EventSource", "detect_format", "iter_events", "read_events", "load_events", "FORMATS"]

log = logging.getLogger(__name__)

FORMATS = ("auto", "lhco-features", "lhco-raw", "root")
READER_VERSION = 1
PARTICLE_BRANCHES = (("part_pt", "part_eta", "part_phi"), ("pt", "eta", "phi"))
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
        raise InputFileError(f"{path}: no such file; check the path (e.g. the --data argument)")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, expected an HDF5 or ROOT file")


def _open_h5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputFileError(
            f"{path}: not a readable HDF5 file ({exc.__class__.__name__}: {exc}); the file is "
            "corrupt or truncated, re-create or re-download it"
        ) from None


class _H5Frame:
    """Chunked row access to a pandas HDF5 frame (fixed or table format)."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        h5 = _open_h5(path)
        try:
            if key not in h5:
                keys = sorted(h5.keys())
                raise InputFileError(
                    f"{path}: no key '{key}' in the HDF5 file (keys present: {keys}); "
                    "set data.key in the config to the right one"
                )
            group = h5[key]
            self.table = "table" in group
            if self.table:
                self.columns = None
                self.n_rows = int(group["table"].shape[0])
            else:
                nblocks = int(group.attrs.get("nblocks", 0)) or sum(
                    1 for k in group if k.startswith("block") and k.endswith("_values")
                )
                if nblocks == 0:
                    raise InputFileError(
                        f"{path}: key '{key}' is not a pandas DataFrame; write it with "
                        "DataFrame.to_hdf(path, key='df')"
                    )
                self.blocks = []
                cols: list = []
                for b in range(nblocks):
                    items = [_decode(x) for x in group[f"block{b}_items"][:]]
                    self.blocks.append((f"{key}/block{b}_values", items))
                    cols.extend(items)
                self.columns = cols
                self.n_rows = int(group["block0_values"].shape[0])
        except (KeyError, OSError) as exc:
            raise InputFileError(
                f"{path}: HDF5 structure under '{key}' is damaged ({exc}); re-create the file"
            ) from None
        finally:
            h5.close()
        if self.table:
            try:
                self.columns = list(pd.read_hdf(path, key, start=0, stop=1).columns)
            except Exception as exc:  # pytables raises many types
                raise InputFileError(f"{path}: cannot read table '{key}' ({exc})") from None

    def read(self, start: int, stop: int) -> pd.DataFrame:
        try:
            if self.table:
                return pd.read_hdf(self.path, self.key, start=start, stop=stop)
            h5 = _open_h5(self.path)
            with h5:
                parts = {}
                for name, items in self.blocks:
                    values = h5[name][start:stop]
                    for i, col in enumerate(items):
                        parts[col] = values[:, i]
            return pd.DataFrame(parts, columns=self.columns)
        except InputFileError:
            raise
        except Exception as exc:
            raise InputFileError(
                f"{self.path}: reading rows {start}-{stop} failed ({exc.__class__.__name__}: "
                f"{exc}); the file is probably truncated, re-create it"
            ) from None


def _decode(x) -> object:
    if isinstance(x, bytes):
        return x.decode()
    if isinstance(x, np.integer):
        return int(x)
    return x


def detect_format(path: str | os.PathLike, key: str = "df") -> str:
    """Guess the layout of ``path`` from its extension and columns."""
    path = Path(path)
    _check_exists(path)
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(b"root"):
        return "root"
    if magic != b"\x89HDF\r\n\x1a\n":
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


def _missing_columns_message(path: Path, names) -> str:
    import difflib

    names = [str(n) for n in names]
    missing = [c for c in LHCO_FEATURE_COLUMNS if c not in names]
    spare = [n for n in names if n not in LHCO_FEATURE_COLUMNS and n != "label"]
    hints = []
    for c in missing:
        close = [n for n in spare if n.lower() == c.lower()] or difflib.get_close_matches(c, spare, n=1, cutoff=0.6)
        if close:
            hints.append(f"'{close[0]}' -> '{c}'")
    hint = f"; rename {', '.join(hints)}" if hints else "; rename the columns or convert the file"
    return (f"{path}: missing columns {missing} for the LHC Olympics feature layout "
            f"(found {names[:20]}){hint}")


def _label_from(frame: pd.DataFrame) -> np.ndarray | None:
    return frame["label"].to_numpy() if "label" in frame.columns else None


def _features_chunks(path: Path, key: str, chunk_size: int) -> Iterator[tuple[pd.DataFrame, int]]:
    frame = _H5Frame(path, key)
    names = [str(c) for c in frame.columns]
    if any(c not in names for c in LHCO_FEATURE_COLUMNS):
        raise InputFileError(_missing_columns_message(path, names))
    for start in range(0, frame.n_rows, chunk_size):
        df = frame.read(start, min(start + chunk_size, frame.n_rows))
        df.columns = [str(c) for c in df.columns]
        yield events_from_jets({c: df[c].to_numpy() for c in LHCO_FEATURE_COLUMNS}, _label_from(df)), 0


def _raw_chunks(path: Path, key: str, chunk_size: int) -> Iterator[tuple[pd.DataFrame, int]]:
    frame = _H5Frame(path, key)
    ncol = len(frame.columns)
    if ncol % 3 not in (0, 1):
        raise InputFileError(
            f"{path}: {ncol} columns cannot be (pT, eta, phi) triplets plus an optional "
            "label; expected the LHC Olympics raw layout (2100 or 2101 columns)"
        )
    has_label = ncol % 3 == 1
    npart = (ncol - has_label) // 3
    for start in range(0, frame.n_rows, chunk_size):
        values = frame.read(start, min(start + chunk_size, frame.n_rows)).to_numpy()
        trip = values[:, : 3 * npart].reshape(len(values), npart, 3)
        label = values[:, -1] if has_label else None
        yield _particles_to_events(trip[..., 0], trip[..., 1], trip[..., 2], label)


def _particles_to_events(pt, eta, phi, label) -> tuple[pd.DataFrame, int]:
    jets, keep = cluster_particles(pt, eta, phi)
    lab = None if label is None else np.asarray(label)[keep]
    return events_from_jets(jets, lab), int((~keep).sum())


def _root_chunks(path: Path, tree: str | None, chunk_size: int) -> Iterator[tuple[pd.DataFrame, int]]:
    import uproot

    try:
        f = uproot.open(path)
    except Exception as exc:
        raise InputFileError(
            f"{path}: not a readable ROOT file ({exc.__class__.__name__}: {exc}); re-create it"
        ) from None
    with f:
        trees = [k.split(";")[0] for k, c in f.classnames().items() if c in ("TTree", "ROOT::RNTuple")]
        name = tree or (trees[0] if len(trees) == 1 else None)
        if name is None or name not in trees:
            raise InputFileError(
                f"{path}: no TTree '{tree}' (trees present: {sorted(set(trees))}); set "
                "data.tree in the config to one of them"
            )
        t = f[name]
        branches = set(t.keys())
        if set(LHCO_FEATURE_COLUMNS) <= branches:
            cols = LHCO_FEATURE_COLUMNS + (["label"] if "label" in branches else [])
            for arrays in t.iterate(cols, step_size=chunk_size, library="np"):
                jets = {c: arrays[c] for c in LHCO_FEATURE_COLUMNS}
                yield events_from_jets(jets, arrays.get("label")), 0
            return
        for names in PARTICLE_BRANCHES:
            if set(names) <= branches:
                cols = list(names) + (["label"] if "label" in branches else [])
                for arrays in t.iterate(cols, step_size=chunk_size, library="ak"):
                    label = arrays["label"].to_numpy() if "label" in cols else None
                    yield _particles_to_events(*(arrays[n] for n in names), label)
                return
        raise InputFileError(
            f"{path}: tree '{name}' has neither the LHCO jet branches ({LHCO_FEATURE_COLUMNS[:4]} "
            f"...) nor particle branches {PARTICLE_BRANCHES[0]}; found {sorted(branches)[:20]}"
        )


def iter_events(
    path: str | os.PathLike,
    fmt: str = "auto",
    *,
    key: str = "df",
    tree: str | None = None,
    chunk_size: int = 100_000,
) -> Iterator[tuple[pd.DataFrame, int]]:
    """Yield (canonical table chunk, events without two jets) for ``path``."""
    path = Path(path)
    _check_exists(path)
    if fmt not in FORMATS:
        raise InputFileError(f"{path}: unknown format '{fmt}'; choose one of {FORMATS}")
    if fmt == "auto":
        fmt = detect_format(path, key)
    if fmt == "lhco-features":
        yield from _features_chunks(path, key, chunk_size)
    elif fmt == "lhco-raw":
        yield from _raw_chunks(path, key, chunk_size)
    else:
        try:
            yield from _root_chunks(path, tree, chunk_size)
        except InputFileError:
            raise
        except Exception as exc:  # uproot raises OSError, ValueError, DeserializationError ...
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise InputFileError(
                f"{path}: reading the ROOT file failed ({exc.__class__.__name__}: {first}); the "
                "file is probably truncated or corrupt, re-create it"
            ) from None


def _validate(path: Path, events: pd.DataFrame) -> None:
    if len(events) == 0:
        raise InputFileError(f"{path}: holds no events with two jets; check the file")
    mjj = events["mjj"].to_numpy()
    med = float(np.nanmedian(mjj))
    if med > MEV_SUSPICION_GEV:
        raise InputFileError(
            f"{path}: median mjj is {med:.3g}, which looks like MeV; sideband expects GeV: "
            "divide momenta and masses by 1000"
        )
    neg = int(np.sum(events[["mj1", "mj2"]].to_numpy() < -1.0))
    if neg:
        raise InputFileError(
            f"{path}: {neg} negative jet masses (below -1 GeV); the columns are probably "
            "swapped or corrupt, check pxj*/mj* in the file"
        )


def read_events(
    path: str | os.PathLike,
    fmt: str = "auto",
    *,
    key: str = "df",
    tree: str | None = None,
    chunk_size: int = 100_000,
    strict: bool = False,
) -> tuple[pd.DataFrame, EventSource]:
    """Read a whole file into the canonical table (no caching).

    Events with non-finite features (e.g. ``tau1 = 0``) are dropped with one warning
    that counts them; with ``strict=True`` they raise :class:`InputFileError` instead.
    """
    path = Path(path)
    resolved = detect_format(path, key) if fmt == "auto" else fmt
    chunks, n_no_dijet, n_read = [], 0, 0
    for chunk, dropped in iter_events(path, resolved, key=key, tree=tree, chunk_size=chunk_size):
        chunks.append(chunk)
        n_no_dijet += dropped
        n_read += len(chunk) + dropped
    events = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=CANONICAL_COLUMNS)
    finite = np.isfinite(events[CANONICAL_COLUMNS].to_numpy()).all(axis=1)
    n_bad = int((~finite).sum())
    if n_bad:
        msg = f"{path}: {n_bad} of {len(events)} events have NaN/inf features"
        if strict:
            raise InputFileError(msg + "; fix the file or run without --strict to drop them")
        log.warning("%s; dropped them", msg)
        events = events[finite].reset_index(drop=True)
    if n_no_dijet:
        log.warning("%s: %d events have fewer than two jets; dropped them", path, n_no_dijet)
    _validate(path, events)
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
) -> tuple[pd.DataFrame, EventSource]:
    """:func:`read_events` with a Parquet cache keyed by the file's content hash."""
    import dataclasses
    import json

    path = Path(path)
    _check_exists(path)
    digest = file_hash(path)
    if cache_dir is None:
        events, source = read_events(path, fmt, key=key, tree=tree, chunk_size=chunk_size, strict=strict)
        return events, dataclasses.replace(source, content_hash=digest)
    ckey = cache_key("events", READER_VERSION, digest, fmt, key, tree, strict)
    target = Path(cache_dir) / f"events-{ckey}.parquet"
    meta = target.with_suffix(".json")
    if target.exists() and meta.exists():
        info = json.loads(meta.read_text())
        info["columns"] = tuple(info["columns"])
        info["table_path"] = str(target)
        return pd.read_parquet(target), EventSource(**info)
    events, source = read_events(path, fmt, key=key, tree=tree, chunk_size=chunk_size, strict=strict)
    source = dataclasses.replace(source, content_hash=digest, table_path=str(target))
    with atomic_path(target, ".parquet") as tmp:
        events.to_parquet(tmp, index=False)
    info = dataclasses.asdict(source)
    info["columns"] = list(info["columns"])
    with atomic_path(meta, ".json") as tmp:
        tmp.write_text(json.dumps(info))
    return events, source
