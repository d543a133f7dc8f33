"""The training nodes of a search: a detector's sideband stage, and one fold's fit and scores.

They sit above ``detectors/`` (they build detectors by name) and below the graph builder
(:mod:`.search_graph`). Inputs and outputs are records (:mod:`sideband.pipeline.records`).
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sideband.detectors.base import BaseDetector, make_detector, score_events
from sideband.pipeline.cache import atomic_path, write_json
from sideband.pipeline.cluster import limit_threads
from sideband.pipeline.evaluate import node_seed
from sideband.pipeline.exceptions import ConfigError, RegionError
from sideband.pipeline.records import EventTable, FoldScores, SidebandStage
from sideband.pipeline.regions import Window, assign_folds, check_window_counts
from sideband.pipeline.table import read_table, table_columns

__all__ = ["DetectorSpec", "fit_sideband_stage", "train_fold"]


@dataclass(frozen=True)
class DetectorSpec:
    """One configured detector as the training nodes need it (the device already decided)."""

    name: str
    params: dict
    features: tuple[str, ...]
    n_folds: int
    threads: int = 1

    def build(self, random_state: int) -> BaseDetector:
        return make_detector(self.name, self.params, random_state=random_state)


def fit_sideband_stage(table: EventTable, *, spec: DetectorSpec, windows: tuple[Window, ...], seed: int,
                       state_path: str) -> SidebandStage:
    """Run a detector's sideband stage (e.g. the CATHODE flow) on sideband events only.

    ``windows``: the windows the stage serves (one, or a group of
    :func:`sideband.pipeline.regions.stage_groups`): the union of their sidebands minus every
    one of their SRs, so the stage serves each of them without having seen its SR.
    """
    limit_threads(spec.threads)
    t0 = time.perf_counter()
    events = read_table(table, ["mjj", *spec.features])
    m = events["mjj"].to_numpy()
    sb = np.zeros(len(m), dtype=bool)
    for w in windows:
        sb |= w.in_window(m)
    for w in windows:
        sb &= ~w.in_sr(m)
    name = "+".join(w.name for w in windows)
    det = spec.build(node_seed(seed, "prepare", name))
    first = windows[0]  # every event passed lies outside each SR of the group, this one included
    state = det.fit_sidebands(events[list(spec.features)].to_numpy(np.float32)[sb], m[sb],
                              signal_region=(first.sr_lo, first.sr_hi))
    wall = time.perf_counter() - t0
    state["wall_s"] = wall
    with atomic_path(state_path, ".pkl") as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
    return SidebandStage(path=str(state_path), detector=spec.name, window=name, wall_s=wall)


def _truth_inputs(det: BaseDetector, table: EventTable, events: pd.DataFrame, w: Window,
                  features: list[str], train: np.ndarray) -> dict:
    """y_true / X_reference for the benchmark ceilings (empty for other detectors)."""
    if det.truth_kind == "labels":
        if "label" not in events:
            raise ConfigError(f"detector {det.name} needs truth labels, but the input has no 'label' column")
        y = events["label"].to_numpy()[train]
        if not np.any(y[w.in_sr(events["mjj"].to_numpy()[train])] > 0.5):
            raise RegionError(f"detector {det.name}: no signal-labelled events in SR {w.name} GeV to learn from; "
                              "disable it for background-only data")
        return {"y_true": y}
    if det.truth_kind == "reference":
        ref = pd.read_parquet(table.reference_path, columns=["mjj", *features])
        in_sr = w.in_sr(ref["mjj"].to_numpy())
        if not in_sr.any():
            raise RegionError(f"{table.reference_path}: reference sample has no events in SR {w.name} GeV")
        return {"X_reference": ref[features].to_numpy(np.float32)[in_sr]}
    return {}


def _save_model(det: BaseDetector, spec: DetectorSpec, window: Window, fold: int, model_path: str,
                trained: np.ndarray) -> str:
    """Save the fitted model with a sidecar that says what it is (read by the trigger export)."""
    path = Path(model_path)
    det.save(path.with_suffix(".model"))
    with atomic_path(path.with_suffix(".train.npy"), ".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.packbits(trained))
    sidecar = path.with_suffix(".json")
    write_json(sidecar, {"detector": spec.name, "window": window.to_dict(), "fold": fold, "n_folds": spec.n_folds,
                         "features": list(spec.features), "params": spec.params,
                         "model": path.with_suffix(".model").name, "train_mask": path.with_suffix(".train.npy").name,
                         "n_events": int(len(trained))})
    return str(sidecar)


def train_fold(table: EventTable, stage: SidebandStage | None, *, spec: DetectorSpec, window: Window, fold: int,
               seed: int, model_path: str | None = None) -> FoldScores:
    """Fit the detector on the window's events outside ``fold``; score every other event.

    Scores are NaN for the training events. With ``model_path`` (detectors that keep their
    models, and every detector when a signal template is to be scored) the fitted model is
    saved there with a sidecar JSON.
    """
    limit_threads(spec.threads)
    t0 = time.perf_counter()
    features = list(spec.features)
    truth = ["label"] if "label" in table_columns(table) else []
    events = read_table(table, ["mjj", *features, *truth])  # not the whole table: the columns it needs
    m = events["mjj"].to_numpy()
    X = events[features].to_numpy(np.float32)
    source = ", ".join(s["path"] for s in table.sources)
    check_window_counts(window, m, spec.n_folds, source=source)
    win_idx = np.flatnonzero(window.in_window(m))
    folds = assign_folds(window.in_sr(m[win_idx]), spec.n_folds, seed)
    train, held = win_idx[folds != fold], win_idx[folds == fold]
    det = spec.build(node_seed(seed, fold, window.name))
    extra = _truth_inputs(det, table, events, window, features, train)
    if stage is not None:
        if window.name not in stage.window.split("+"):
            raise ValueError(f"sideband stage {stage.window} does not serve window {window.name}")
        with open(stage.path, "rb") as f:
            extra["sideband_state"] = pickle.load(f)
    det.fit(X[train], m[train], signal_region=(window.sr_lo, window.sr_hi), **extra)
    scores = np.full(len(events), np.nan, dtype=np.float64)
    scorable = np.ones(len(events), dtype=bool)
    scorable[train] = False
    scores[scorable] = score_events(det, X[scorable], m[scorable])
    heldout = np.zeros(len(events), dtype=bool)
    heldout[held] = True
    saved = _save_model(det, spec, window, fold, model_path, ~scorable) if model_path else None
    return FoldScores(scores=scores, heldout=heldout, train=~scorable, wall_s=time.perf_counter() - t0,
                      history=det.training_log(), model_path=saved)
