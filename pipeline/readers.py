"""Format readers behind :mod:`.io`: pandas HDF5 frames (LHC Olympics features and raw
particles) and ROOT trees, read in chunks into canonical event tables, with the column
checks that name what is wrong with a file (strings, all-NaN or constant columns, inf).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .exceptions import InputFileError
from .features import (
    CANONICAL_COLUMNS,
    EXTENDED_COLUMNS,
    EXTENDED_JET_COLUMNS,
    EXTENDED_STEMS,
    LHCO_FEATURE_COLUMNS,
    cluster_particles,
    events_from_jets,
)

log = logging.getLogger(__name__)

PARTICLE_BRANCHES = (("part_pt", "part_eta", "part_phi"), ("pt", "eta", "phi"))


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
    """Chunked row access to a pandas HDF5 frame (fixed or table format).

    ``non_numeric`` maps each column that does not hold numbers to a description of what it
    holds (``"strings"``, a dtype), so that a reader can name it instead of failing on it.
    """

    def __init__(self, path: Path, key: str):
        import h5py

        self.path, self.key = path, key
        self.non_numeric: dict = {}
        h5 = _open_h5(path)
        try:
            if key not in h5:
                keys = sorted(h5.keys())
                raise InputFileError(
                    f"{path}: no key '{key}' in the HDF5 file (keys present: {keys}); "
                    "set data.key in the config to the right one"
                )
            group = h5[key]
            if not isinstance(group, h5py.Group):
                raise InputFileError(
                    f"{path}: key '{key}' is a plain HDF5 dataset, not a pandas DataFrame; write the "
                    "events with DataFrame.to_hdf(path, key='df')"
                )
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
                    values = group[f"block{b}_values"]
                    if values.ndim == 2 and values.dtype.kind in "fiub":
                        self.blocks.append((f"{key}/block{b}_values", items))
                    else:  # pandas stores strings/objects as one pickled array per block
                        what = "strings" if _decode(values.attrs.get("value_type", b"")) in ("str", "string") \
                            or values.dtype.kind in "OSU" else f"dtype {values.dtype}"
                        self.non_numeric.update({c: what for c in items})
                    cols.extend(items)
                self.columns = cols
                # axis1 is the row index; block0 may be a one-row pickled object block
                self.n_rows = _stored_length(group["axis1"] if "axis1" in group else group["block0_values"])
        except (KeyError, OSError) as exc:
            raise InputFileError(
                f"{path}: HDF5 structure under '{key}' is damaged ({exc}); re-create the file"
            ) from None
        finally:
            h5.close()
        if self.table:
            try:
                first = pd.read_hdf(path, key, start=0, stop=1)
            except Exception as exc:  # pytables raises many types
                raise InputFileError(f"{path}: cannot read table '{key}' ({exc})") from None
            self.columns = list(first.columns)
            words = {c: _dtype_words(first[c].to_numpy()) for c in first.columns}
            self.non_numeric = {c: w for c, w in words.items() if w}

    def read(self, start: int, stop: int) -> pd.DataFrame:
        """Rows ``start:stop``; columns listed in ``non_numeric`` are left out of fixed-format frames."""
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
            return pd.DataFrame(parts, columns=[c for c in self.columns if c in parts])
        except InputFileError:
            raise
        except Exception as exc:
            raise InputFileError(
                f"{self.path}: reading rows {start}-{stop} failed ({exc.__class__.__name__}: "
                f"{exc}); the file is probably truncated, re-create it"
            ) from None


def _stored_length(dataset) -> int:
    """Rows of a PyTables array; an empty one is stored as one dummy element plus a ``shape`` attribute."""
    import re

    shape = dataset.attrs.get("shape")
    if isinstance(shape, bytes):  # a pickled tuple, e.g. b"(I0\ntp0\n."; read, never unpickled
        dims = re.findall(rb"[IL](\d+)", shape)
        if dims:
            return int(dims[0])
    return int(dataset.shape[0])


def _dtype_words(values: np.ndarray) -> str:
    """What a non-numeric column holds, in words ("" for numbers)."""
    kind = values.dtype.kind
    if values.ndim > 1:
        return f"{int(np.prod(values.shape[1:]))} values per event"
    if kind in "fiub":
        return ""
    if kind in "OSUT":
        sample = next((v for v in values if v is not None), None)
        if isinstance(sample, np.ndarray) or hasattr(sample, "__len__") and not isinstance(sample, (str, bytes)):
            return "variable-length arrays"
        return "strings" if kind in "SUT" or isinstance(sample, (str, bytes)) else f"dtype {values.dtype}"
    return f"dtype {values.dtype}"


def _non_numeric_message(path: Path, bad: dict) -> str:
    (col, what), more = next(iter(bad.items())), len(bad) - 1
    also = f" (and {more} more: {sorted(map(str, bad))[:5]})" if more else ""
    if what == "variable-length arrays" or what.endswith("values per event"):
        fix = "store one number per event in it"
    else:
        fix = "convert it with pandas.to_numeric (or fix the writer) and save the file again"
    return f"{path}: column '{col}' holds {what}, not numbers{also}; {fix}"


class _ColumnStats:
    """Whole-file statistics of the input's feature columns, for diagnoses that name the column.

    Each chunk of columns is checked for numbers as it arrives (:meth:`add`); once the file
    is read, :meth:`check` rejects columns that are entirely NaN/inf or constant.
    """

    def __init__(self, path: Path):
        self.path = path
        self.n = 0
        self.nan: dict[str, int] = {}
        self.inf: dict[str, int] = {}
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}

    def add(self, arrays: dict) -> None:
        words = {c: _dtype_words(np.asarray(v)) for c, v in arrays.items()}
        bad = {c: w for c, w in words.items() if w}
        if bad:
            raise InputFileError(_non_numeric_message(self.path, bad))
        for c, v in arrays.items():
            if c == "label":
                continue
            v = np.asarray(v, dtype=np.float64)
            finite = np.isfinite(v)
            self.nan[c] = self.nan.get(c, 0) + int(np.isnan(v).sum())
            self.inf[c] = self.inf.get(c, 0) + int(np.isinf(v).sum())
            if finite.any():
                self.lo[c] = min(self.lo.get(c, np.inf), float(v[finite].min()))
                self.hi[c] = max(self.hi.get(c, -np.inf), float(v[finite].max()))
        self.n += len(next(iter(arrays.values()))) if arrays else 0

    def check(self) -> None:
        if self.n == 0:
            return
        for c in self.nan:
            if c not in self.lo:
                what = "NaN" if self.inf[c] == 0 else "inf" if self.nan[c] == 0 else "NaN or inf"
                raise InputFileError(
                    f"{self.path}: column '{c}' is {what} in all {self.n} events; the column was never "
                    "filled, re-create the file with real values in it"
                )
        if self.n < 2:
            return
        for c in self.lo:
            if self.lo[c] == self.hi[c]:
                raise InputFileError(
                    f"{self.path}: column '{c}' has the same value ({self.lo[c]:g}) in all {self.n} events; "
                    "a constant feature is a placeholder, not a measurement: fill it with the real values"
                )

    def nonfinite(self) -> str:
        """The columns with NaN/inf values, e.g. "tau1j1: 5 NaN, pxj1: 2 inf" ("" if none)."""
        parts = []
        for c in self.nan:
            counts = [f"{n} {w}" for n, w in ((self.nan[c], "NaN"), (self.inf[c], "inf")) if n]
            if counts:
                parts.append(f"{c}: {' and '.join(counts)}")
        return ", ".join(parts)


def _decode(x) -> object:
    if isinstance(x, bytes):
        return x.decode()
    if isinstance(x, np.integer):
        return int(x)
    return x


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


#: Names the reader computes: a file column of that name is not carried (it would be ambiguous).
_COMPUTED = set(CANONICAL_COLUMNS) | set(EXTENDED_COLUMNS)
#: ROOT leaf types of one number per event (carried as extra columns).
_SCALAR_TYPE = re.compile(r"^(std::)?(u?int(8|16|32|64)_t|double|float|bool|(unsigned )?(char|short|int|long( long)?))$")


class _Layout:
    """What a file gives the event table: jet-layout columns (LHCO plus any extended
    N-subjettiness pairs), the user's extra per-event numeric columns carried unchanged, and
    the columns left out with the reason (``ignored``)."""

    def __init__(self, path: Path, names, substructure: str, extra_ok):
        names = [str(n) for n in names]
        stems = [s for s in EXTENDED_STEMS if f"{s}j1" in names and f"{s}j2" in names]
        self.jet_columns = LHCO_FEATURE_COLUMNS + [f"{s}j{i}" for i in (1, 2) for s in stems]
        if substructure == "extended" and len(stems) < len(EXTENDED_STEMS):
            raise InputFileError(
                f"{path}: substructure 'extended' needs particle-level inputs or all {len(EXTENDED_JET_COLUMNS)} "
                f"extended N-subjettiness columns ({EXTENDED_JET_COLUMNS[0]} ...); this file has "
                f"{2 * len(stems)}: read the particle file, or use substructure 'standard'")
        self.has_label = "label" in names
        own = set(self.jet_columns) | {"label"}
        self.ignored = {n: why for n in names if n not in own and (why := extra_ok(n))}
        self.extra = [n for n in names if n not in own and n not in self.ignored]
        clash = [n for n, why in self.ignored.items() if why.startswith("has the name")]
        if clash:
            log.warning("%s: column(s) %s have the names of computed columns and are not carried; "
                        "rename them to use them as features", path, clash)

    def columns(self, substructure: str) -> list[str]:
        """The event table's columns, in order."""
        ext = [c for c in EXTENDED_COLUMNS if f"{c[:-3]}j1" in self.jet_columns or substructure == "extended"]
        return CANONICAL_COLUMNS + ext + self.extra + (["label"] if self.has_label else [])


def _why_not(name: str, what: str = "") -> str:
    """Why a non-layout column is not carried ("" if it is)."""
    if name in _COMPUTED:
        return "has the name of a computed column"
    return f"holds {what}, not one number per event" if what else ""


def _features_layout(path: Path, frame: _H5Frame, substructure: str = "standard") -> _Layout:
    names = [str(c) for c in frame.columns]
    if any(c not in names for c in LHCO_FEATURE_COLUMNS):
        raise InputFileError(_missing_columns_message(path, names))
    words = {str(c): w for c, w in frame.non_numeric.items()}
    layout = _Layout(path, names, substructure, lambda n: _why_not(n, words.get(n, "")))
    bad = {c: w for c, w in words.items() if c in layout.jet_columns + ["label"]}
    if bad:
        raise InputFileError(_non_numeric_message(path, bad))
    return layout


def _features_chunks(path: Path, key: str, chunk_size: int, stats: _ColumnStats,
                     substructure: str = "standard") -> Iterator[tuple[pd.DataFrame, int]]:
    frame = _H5Frame(path, key)
    layout = _features_layout(path, frame, substructure)
    for start in range(0, frame.n_rows, chunk_size):
        df = frame.read(start, min(start + chunk_size, frame.n_rows))
        df.columns = [str(c) for c in df.columns]
        jets = {c: df[c].to_numpy() for c in layout.jet_columns}
        yield _jets_to_events(jets, _label_from(df), stats, {c: df[c].to_numpy() for c in layout.extra}), 0


def _jets_to_events(jets: dict, label, stats: _ColumnStats, extra: dict | None = None) -> pd.DataFrame:
    """The canonical table of one chunk of file columns, after checking they hold numbers."""
    stats.add(jets if label is None else jets | {"label": label})
    return events_from_jets(jets, label, extra)


def _raw_label(path: Path, frame: _H5Frame) -> bool:
    """Whether a raw particle frame ends with a label column (checks the layout)."""
    if frame.non_numeric:
        raise InputFileError(_non_numeric_message(path, {str(c): w for c, w in frame.non_numeric.items()}))
    ncol = len(frame.columns)
    if ncol % 3 not in (0, 1):
        raise InputFileError(
            f"{path}: {ncol} columns cannot be (pT, eta, phi) triplets plus an optional "
            "label; expected the LHC Olympics raw layout (2100 or 2101 columns)"
        )
    return ncol % 3 == 1


def _raw_chunks(path: Path, key: str, chunk_size: int,
                substructure: str = "standard") -> Iterator[tuple[pd.DataFrame, int]]:
    frame = _H5Frame(path, key)
    has_label = _raw_label(path, frame)
    npart = (len(frame.columns) - has_label) // 3
    for start in range(0, frame.n_rows, chunk_size):
        values = frame.read(start, min(start + chunk_size, frame.n_rows)).to_numpy()
        trip = values[:, : 3 * npart].reshape(len(values), npart, 3)
        label = values[:, -1] if has_label else None
        yield _particles_to_events((trip[..., 0], trip[..., 1], trip[..., 2]), label, substructure)


def _particles_to_events(particles, label, substructure: str = "standard",
                         extra: dict | None = None) -> tuple[pd.DataFrame, int]:
    jets, keep = cluster_particles(*particles, substructure=substructure)
    lab = None if label is None else np.asarray(label)[keep]
    kept = {c: np.asarray(v)[keep] for c, v in (extra or {}).items()}
    return events_from_jets(jets, lab, kept), int((~keep).sum())


def _root_tree(f, path: Path, tree: str | None):
    """The events tree of an open ROOT file (named by ``tree`` or the only one)."""
    trees = [k.split(";")[0] for k, c in f.classnames().items() if c in ("TTree", "ROOT::RNTuple")]
    if not trees:
        raise InputFileError(
            f"{path}: holds no TTree or RNTuple (objects present: {sorted(f.keys())[:10]}); "
            "write the events as a TTree"
        )
    name = tree or (trees[0] if len(set(trees)) == 1 else None)
    if name is None:
        raise InputFileError(
            f"{path}: holds several trees {sorted(set(trees))}; set data.tree in the config "
            "to the one with the events"
        )
    if name not in trees:
        raise InputFileError(
            f"{path}: no TTree '{tree}' (trees present: {sorted(set(trees))}); set "
            "data.tree in the config to one of them"
        )
    return f[name], name


def _root_layout(path: Path, t, name: str, substructure: str = "standard") -> tuple[list[str] | None, _Layout]:
    """(particle branches or None for the jet layout, the layout) of a ROOT tree."""
    types = t.typenames()
    counters = set()
    for b in t.keys():  # uproot's count branches of jagged ones (TTree only)
        count = getattr(t[b], "count_branch", None)
        if count is not None:
            counters.add(count.name)
    branches = set(types)
    parts = next((list(n) for n in PARTICLE_BRANCHES if set(n) <= branches), None)
    if not set(LHCO_FEATURE_COLUMNS) <= branches:
        if parts is None:
            raise InputFileError(
                f"{path}: tree '{name}' has neither the LHCO jet branches ({LHCO_FEATURE_COLUMNS[:4]} "
                f"...) nor particle branches {PARTICLE_BRANCHES[0]}; found {sorted(branches)[:20]}"
            )
        names = [b for b in types if b not in parts and b not in counters]
        # particle trees: the extended set is computed, never read from branches
        return parts, _Layout(path, names, "standard", _root_why(types))
    names = [b for b in types if b not in counters]
    return None, _Layout(path, names, substructure, _root_why(types))


def _root_why(types: dict):
    return lambda b: _why_not(b, "" if _SCALAR_TYPE.match(types[b].strip()) else f"type {types[b]}")


def _root_chunks(path: Path, tree: str | None, chunk_size: int, stats: _ColumnStats,
                 substructure: str = "standard") -> Iterator[tuple[pd.DataFrame, int]]:
    import uproot

    try:
        f = uproot.open(path)
    except Exception as exc:
        raise InputFileError(
            f"{path}: not a readable ROOT file ({exc.__class__.__name__}: {exc}); re-create it"
        ) from None
    with f:
        t, name = _root_tree(f, path, tree)
        parts, layout = _root_layout(path, t, name, substructure)
        label = ["label"] if layout.has_label else []
        if parts is None:
            for arrays in t.iterate(layout.jet_columns + layout.extra + label, step_size=chunk_size, library="np"):
                jets = {c: arrays[c] for c in layout.jet_columns}
                yield _jets_to_events(jets, arrays.get("label"), stats, {c: arrays[c] for c in layout.extra}), 0
            return
        for arrays in t.iterate(parts + layout.extra + label, step_size=chunk_size, library="ak"):
            lab = arrays["label"].to_numpy() if label else None
            extra = {c: arrays[c].to_numpy() for c in layout.extra}
            yield _particles_to_events(tuple(arrays[n] for n in parts), lab, substructure, extra)
