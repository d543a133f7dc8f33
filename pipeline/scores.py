"""From k fold models' scores to one calibrated, out-of-fold score per event."""

from __future__ import annotations

import numpy as np

from .records import EventTable, FoldScores, WindowScores

__all__ = ["merge_folds"]


def merge_folds(table: EventTable, folds: list[FoldScores]) -> WindowScores:
    """Combine fold scores into one calibrated score per event.

    Each fold model's scores are mapped through its own CDF on its held-out window events
    (so models are comparable); window events get their held-out model's value, events
    outside every training set the mean over fold models.
    """
    n = table.n_events
    sums, counts = np.zeros(n), np.zeros(n)
    held_value = np.full(n, np.nan)
    owner = np.full(n, -1)
    for i, fold in enumerate(folds):
        scores, heldout, train = fold.scores, fold.heldout, fold.train
        if np.any(owner[heldout] >= 0):
            raise RuntimeError("an event is held out by two folds; fold bookkeeping is broken")
        owner[heldout] = i
        ref = np.sort(scores[heldout])
        cdf = np.searchsorted(ref, scores, side="right") / max(len(ref), 1)
        held_value[heldout] = cdf[heldout]
        outside = ~train & ~heldout
        sums[outside] += cdf[outside]
        counts[outside] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        merged = np.where(owner >= 0, held_value, sums / counts)
    return WindowScores(scores=merged, owner=owner, wall_s=float(sum(f.wall_s for f in folds)),
                        histories=tuple(f.history for f in folds),
                        model_paths=tuple(f.model_path for f in folds if f.model_path))
