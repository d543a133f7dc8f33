"""Format readers behind :mod:`.io`: pandas HDF5 frames (LHC Olympics features and raw
particles) and ROOT trees, read in chunks into canonical event tables, with the column
checks that name what is wrong with a file (strings, all-NaN or constant columns, inf).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .exceptions import InputFileError
from .features import LHCO_FEATURE_COLUMNS, cluster_particles, events_from_jets

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


def _features_chunks(path: Path, key: str, chunk_size: int,
                     stats: _ColumnStats) -> Iterator[tuple[pd.DataFrame, int]]:
    frame = _H5Frame(path, key)
    names = [str(c) for c in frame.columns]
    if any(c not in names for c in LHCO_FEATURE_COLUMNS):
        raise InputFileError(_missing_columns_message(path, names))
    bad = {str(c): w for c, w in frame.non_numeric.items() if str(c) in LHCO_FEATURE_COLUMNS + ["label"]}
    if bad:
        raise InputFileError(_non_numeric_message(path, bad))
    for start in range(0, frame.n_rows, chunk_size):
        df = frame.read(start, min(start + chunk_size, frame.n_rows))
        df.columns = [str(c) for c in df.columns]
        yield _jets_to_events({c: df[c].to_numpy() for c in LHCO_FEATURE_COLUMNS}, _label_from(df), stats), 0


def _jets_to_events(jets: dict, label, stats: _ColumnStats) -> pd.DataFrame:
    """The canonical table of one chunk of file columns, after checking they hold numbers."""
    stats.add(jets if label is None else jets | {"label": label})
    return events_from_jets(jets, label)


def _raw_chunks(path: Path, key: str, chunk_size: int) -> Iterator[tuple[pd.DataFrame, int]]:
    frame = _H5Frame(path, key)
    if frame.non_numeric:
        raise InputFileError(_non_numeric_message(path, {str(c): w for c, w in frame.non_numeric.items()}))
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


def _root_chunks(path: Path, tree: str | None, chunk_size: int,
                 stats: _ColumnStats) -> Iterator[tuple[pd.DataFrame, int]]:
    import uproot

    try:
        f = uproot.open(path)
    except Exception as exc:
        raise InputFileError(
            f"{path}: not a readable ROOT file ({exc.__class__.__name__}: {exc}); re-create it"
        ) from None
    with f:
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
        t = f[name]
        branches = set(t.keys())
        if set(LHCO_FEATURE_COLUMNS) <= branches:
            cols = LHCO_FEATURE_COLUMNS + (["label"] if "label" in branches else [])
            for arrays in t.iterate(cols, step_size=chunk_size, library="np"):
                jets = {c: arrays[c] for c in LHCO_FEATURE_COLUMNS}
                yield _jets_to_events(jets, arrays.get("label"), stats), 0
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
