"""From k fold models' scores to one calibrated, out-of-fold score per event."""

from __future__ import annotations

import numpy as np

from .records import EventTable, FoldScores, WindowScores

__all__ = ["merge_folds"]


def merge_folds(table: EventTable, folds: list[FoldScores]) -> WindowScores:
    """Combine fold scores into one calibrated score per event.

    Each fold model's scores are mapped through its own CDF on its held-out window events
    (so models are comparable, each uniform on its held-out events); a window event gets its
    held-out model's value. An event outside every training set gets the value of *one* fold
    model too, model ``index % k``: a mean over models would be a different statistic (narrower
    than any one model's, so a cut on it passes a different fraction), and those events are cut
    on the same threshold as the window's (sidebands beyond ``regions.sideband_width``; signal
    templates, :func:`sideband.workflows.signal_model.score_template`).
    """
    n = table.n_events
    held_value = np.full(n, np.nan)
    owner = np.full(n, -1)
    k = len(folds)
    chosen = np.arange(n) % max(k, 1)
    other = np.full(n, np.nan)
    for i, fold in enumerate(folds):
        scores, heldout, train = fold.scores, fold.heldout, fold.train
        if np.any(owner[heldout] >= 0):
            raise RuntimeError("an event is held out by two folds; fold bookkeeping is broken")
        owner[heldout] = i
        ref = np.sort(scores[heldout])
        cdf = np.searchsorted(ref, scores, side="right") / max(len(ref), 1)
        held_value[heldout] = cdf[heldout]
        mine = ~train & ~heldout & (chosen == i)
        other[mine] = cdf[mine]
    merged = np.where(owner >= 0, held_value, other)
    return WindowScores(scores=merged, owner=owner, wall_s=float(sum(f.wall_s for f in folds)),
                        histories=tuple(f.history for f in folds),
                        model_paths=tuple(f.model_path for f in folds if f.model_path))
