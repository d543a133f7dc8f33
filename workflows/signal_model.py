"""A signal template through the trained selections: its events, checked, read and scored.

``sideband search --signal-model FILE`` (``stats.signal_model``) names a file of signal
events (LHC Olympics feature layout, or any layout the readers take). The search reads it
once (:func:`load_template`, a graph node), scores it per (window, detector) with the fold
models that window trained (:func:`score_template`, a graph node), and the statistics node
(:func:`sideband.pipeline.evaluate.evaluate_window`) turns the scores into the template's
efficiency through each selection, limits on produced signal events and the expected
discovery significance.

Scoring template events with the trained models is legitimate: the template is a separate
file whose events were never in any training set, so every fold model sees them as unseen
events, exactly like the data events outside the window. They get the score such events get
(:func:`sideband.pipeline.scores.merge_folds`: each fold model's score mapped through that
model's CDF on its own held-out window events, one model per event), so the template's scores
and the data's are on one scale and the data's selection threshold applies.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from sideband.detectors.base import load_detector_class, score_events
from sideband.pipeline.cache import atomic_path, cache_key, file_hash
from sideband.pipeline.exceptions import InputFileError, SidebandUserError
from sideband.pipeline.records import EventTable, FoldScores, WindowScores
from sideband.pipeline.scores import merge_folds
from sideband.pipeline.table import read_table

__all__ = ["check_signal_model", "load_template", "score_template", "template_identity", "TEMPLATE_VERSION"]

#: Bumped when the template nodes' outputs change meaning, so stale caches are not reused.
TEMPLATE_VERSION = 1
_FLAG = "--signal-model (stats.signal_model)"


def check_signal_model(path: str) -> None:
    """Fail with one line naming the flag when ``path`` is not a readable event file.

    Cheap (the file's signature and column names, no events): the search calls it while it
    builds the graph, before anything trains. Problems found only by reading every event
    (e.g. no signal-labelled event) come from :func:`load_template`, also a user error.
    """
    from sideband.pipeline.io import detect_format

    p = Path(path)
    if not p.exists():
        raise SidebandUserError(f"{_FLAG} {path}: no such file; pass an existing signal template "
                                "(LHC Olympics features HDF5 of signal events, e.g. signal_3500_500_100_features.h5)")
    if not p.is_file():
        raise SidebandUserError(f"{_FLAG} {path}: not a file; pass the signal template file itself")
    try:
        detect_format(p)
    except InputFileError as exc:
        raise SidebandUserError(f"{_FLAG}: {exc}; pass an LHC Olympics features HDF5 of signal events") from None
    except OSError as exc:
        raise SidebandUserError(f"{_FLAG} {path}: cannot be read ({exc.strerror or exc}); check the file and "
                                "its permissions") from None


def template_identity(path: str) -> str:
    """What identifies a template in cache keys: its content hash (a moved file still hits the cache)."""
    return file_hash(path)


def load_template(path: str, *, cache_dir: str) -> EventTable:
    """The template's signal events as an event table (Parquet under ``cache_dir``).

    Events labelled background (``label`` 0), if the file has labels, are left out: the
    template stands for the signal only. Its ``sources`` say how many were read and dropped.
    """
    from sideband.pipeline.io import load_events, signal_only

    events, source = load_events(path, "auto", cache_dir=Path(cache_dir) / "events")
    events, n_background = signal_only(events, path, _FLAG)
    key = cache_key("template", TEMPLATE_VERSION, source.content_hash)
    target = Path(cache_dir) / f"signal-template-{key}.parquet"
    if not target.exists():
        with atomic_path(target, ".parquet") as tmp:
            events.to_parquet(tmp, index=False)
    info = source.to_dict() | {"role": "signal model", "n_background_dropped": n_background}
    return EventTable(path=str(target), sources=(info,), n_events=len(events))


def _fold_model_scores(sidecar: str, detector: str, events: pd.DataFrame) -> np.ndarray:
    """Raw scores of the template events by one saved fold model (its sidecar JSON names it)."""
    side = Path(sidecar)
    info = json.loads(side.read_text())
    det = load_detector_class(detector).load(side.parent / info["model"])
    X = events[list(info["features"])].to_numpy(np.float32, copy=True)
    return np.asarray(score_events(det, X, events["mjj"].to_numpy()), dtype=np.float64)


def score_template(template: EventTable, folds: list[FoldScores], *, detector: str) -> WindowScores:
    """Score the template events with one (window, detector)'s fold models, calibrated as
    :func:`~sideband.pipeline.scores.merge_folds` calibrates data events no model trained on.

    The template events are appended to the data as events outside every training set and
    the fold scores go through ``merge_folds`` itself, so each template event gets one fold
    model's CDF value on that model's own held-out events (model ``index % k``): the score a
    data event outside the window gets, and a statistic distributed as the data's held-out
    scores, so the template's pass fraction is the efficiency of the selection tested. Legitimate because no template event was ever trained on
    (a separate file). Returns a ``WindowScores`` of the template events (``owner`` -1: no
    fold holds them out); NaN scores and no ``model_paths`` when the folds kept no models
    (detectors whose training saves none), which the statistics node reports per row.
    """
    t0 = time.perf_counter()
    n = template.n_events
    if not folds or any(f.model_path is None for f in folds):
        return WindowScores(scores=np.full(n, np.nan), owner=np.full(n, -1), wall_s=0.0)
    events = read_table(template)
    extended = []
    for fold in folds:
        raw = _fold_model_scores(fold.model_path, detector, events)
        extended.append(dataclasses.replace(
            fold, scores=np.concatenate([fold.scores, raw]), heldout=np.concatenate([fold.heldout, np.zeros(n, bool)]),
            train=np.concatenate([fold.train, np.zeros(n, bool)])))
    n_data = len(folds[0].scores)
    merged = merge_folds(dataclasses.replace(template, n_events=n_data + n), extended)
    return WindowScores(scores=merged.scores[n_data:], owner=merged.owner[n_data:], wall_s=time.perf_counter() - t0,
                        model_paths=tuple(f.model_path for f in folds))
