"""The event table of a run: the input file (plus injected signal) as one canonical table."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import atomic_path, cache_key, file_hash
from .config import DataConfig, demo_data_path
from .exceptions import InputFileError, RegionError
from .records import EventTable

__all__ = ["load_table", "data_identity", "read_table", "table_columns", "split_part", "TABLE_VERSION"]

#: Bumped whenever the table's meaning changes, so stale caches are not reused.
#: 2: the input file's extra numeric columns are carried (usable as features).
TABLE_VERSION = 2

log = logging.getLogger(__name__)


def _input_path(data: DataConfig) -> str:
    return data.path or str(demo_data_path())


def data_identity(data: DataConfig) -> dict:
    """What identifies the input: content hashes, not paths (a moved file still hits the cache)."""
    path = _input_path(data)
    ident = data.model_dump(mode="json", exclude={"path", "chunk_size", "inject", "reference"})
    if data.reference:
        ident["reference"] = file_hash(data.reference) if Path(data.reference).is_file() else data.reference
    ident["hash"] = file_hash(path) if Path(path).is_file() else path
    if data.inject:
        inj = data.inject
        ident["inject"] = {"hash": file_hash(inj.path) if Path(inj.path).is_file() else inj.path,
                           "n": inj.n_events, "format": inj.format}
    return ident


def read_table(table: EventTable, columns: list[str] | None = None) -> pd.DataFrame:
    """The events of ``table`` (only ``columns`` when given)."""
    return pd.read_parquet(table.path, columns=columns)


def table_columns(table: EventTable) -> list[str]:
    """The columns of ``table`` (from the Parquet schema; no data read)."""
    import pyarrow.parquet as pq

    return pq.read_schema(table.path).names


def _check_regions(path: str, events: pd.DataFrame, signal_regions) -> None:
    m_lo, m_hi = float(events["mjj"].min()), float(events["mjj"].max())
    for lo, hi in signal_regions:
        if hi <= m_lo or lo >= m_hi:
            raise RegionError(
                f"{path}: signal region {lo:g}-{hi:g} GeV lies outside the data's mjj range "
                f"{m_lo:.0f}-{m_hi:.0f} GeV; move regions.signal_region / scan_centers into it"
            )


def _inject(events: pd.DataFrame, sig: pd.DataFrame, data: DataConfig, seed: int, signal_regions) -> pd.DataFrame:
    inj = data.inject
    sm = sig["mjj"].to_numpy()
    if signal_regions and not any(np.any((sm >= lo) & (sm < hi)) for lo, hi in signal_regions):
        raise InputFileError(
            f"{inj.path}: none of its {len(sig)} signal events falls in a signal region "
            f"({', '.join(f'{lo:g}-{hi:g}' for lo, hi in signal_regions)} GeV); inject a signal "
            "that peaks there or move the window"
        )
    if inj.n_events > len(sig):
        raise InputFileError(
            f"{inj.path}: asked to inject {inj.n_events} events but the file holds "
            f"{len(sig)}; lower data.inject.n_events"
        )
    rng = np.random.default_rng([seed, 7])
    pick = np.sort(rng.choice(len(sig), size=inj.n_events, replace=False))
    sig = sig.iloc[pick].copy()
    if "label" not in sig:
        sig["label"] = np.float32(1.0)
    if "label" not in events:
        events = events.assign(label=np.float32(0.0))
    return pd.concat([events, sig], ignore_index=True)


def split_part(n_events: int, parts: int, part: int) -> np.ndarray:
    """Rows (sorted) of part ``part`` of ``parts`` disjoint random parts of ``n_events`` rows.

    The partition depends on the row count and ``parts`` only (a fixed permutation, not the run's
    seed): every run and seed splitting the same file gets the same parts, so different parts hold
    different events. Part sizes differ by at most one.
    """
    order = np.random.default_rng([n_events, parts, 0x5B1]).permutation(n_events)
    return np.sort(order[part::parts])


def _check_duplicates(path: str, events: pd.DataFrame, strict: bool) -> int:
    """Events that repeat another event exactly (every column but the label): real collisions do
    not, and a k-fold detector tests on copies of its training events. The default scan of 1M
    events drawn with replacement from 240k background events found local Z 37 (CWoLa and
    CATHODE, 0.2% selections) in pure background. A warning, an error with ``data.strict``."""
    n_dup = int(events.duplicated(subset=[c for c in events.columns if c != "label"]).sum())
    if n_dup:
        msg = (f"{path}: {n_dup} of {len(events)} events ({n_dup / len(events):.2%}) repeat another event exactly; "
               "the detectors would test on copies of their training events and find excesses that are not there "
               "(a file resampled, or read twice?); remove the duplicates")
        if strict:
            raise InputFileError(msg)
        log.warning("%s (data.strict: true makes this an error)", msg)
    return n_dup


def load_table(data: DataConfig, cache_dir: str, seed: int, signal_regions: list | tuple = (),
               features: list | tuple = ()) -> EventTable:
    """Read the input (plus injected signal) into one canonical Parquet table under ``cache_dir``.

    Fails with a user error when a signal region lies outside the data's mjj range, an
    injected signal file has no event in any signal region, or a column named in ``features``
    is missing from (or NaN in) the data, the injected signal or the reference sample.
    """
    from .io import load_events

    path = _input_path(data)

    def load(file, fmt):
        return load_events(file, fmt, cache_dir=Path(cache_dir) / "events", key=data.key, tree=data.tree,
                           chunk_size=data.chunk_size, strict=data.strict, substructure=data.substructure,
                           features=list(features) or None)

    events, source = load(path, data.format)
    sources, read = [source.to_dict() | {"n_duplicates": _check_duplicates(path, events, data.strict)}], [source]
    if data.split is not None:
        n_file = len(events)
        events = events.iloc[split_part(n_file, data.split.parts, data.split.part)].reset_index(drop=True)
        sources[0]["split"] = {"parts": data.split.parts, "part": data.split.part, "n_file": n_file,
                               "n_kept": len(events)}
    _check_regions(path, events, signal_regions)
    n_injected = 0
    if data.inject and data.inject.n_events > 0:
        sig, sig_source = load(data.inject.path, data.inject.format)
        n_before = len(events)
        events = _inject(events, sig, data, seed, signal_regions)
        n_injected = len(events) - n_before
        sources.append(sig_source.to_dict() | {"injected": n_injected})
        read.append(sig_source)
    # the events-cache file of each source names its content and the reader options (HDF5 key, tree,
    # substructure, strict, reader version): the same file read another way is another table
    key = cache_key("load", TABLE_VERSION, [Path(s.table_path).name or s.content_hash for s in read], n_injected, seed,
                    *([data.split.model_dump()] if data.split else []))
    target = Path(cache_dir) / f"table-{key}.parquet"
    if not target.exists():
        with atomic_path(target, ".parquet") as tmp:
            events.to_parquet(tmp, index=False)
    reference_path = None
    if data.reference:
        _, ref_source = load(data.reference, "auto")
        sources.append(ref_source.to_dict() | {"role": "reference"})
        reference_path = ref_source.table_path  # the event cache's Parquet copy
    return EventTable(path=str(target), sources=tuple(sources), n_events=len(events), n_injected=n_injected,
                      reference_path=reference_path)
