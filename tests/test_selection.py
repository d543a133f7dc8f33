"""Selections keep a fraction of the *sideband* events: a signal cannot move the cut or take
the sideband events that fix the background fit (pipeline.evaluate.selection_threshold)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sideband.pipeline.config import FitConfig, StatsConfig
from sideband.pipeline.evaluate import evaluate_window, selection_threshold
from sideband.pipeline.records import EventTable, WindowScores
from sideband.pipeline.regions import make_windows

SR, FIT = (3300.0, 3700.0), (2800.0, 6000.0)
EFFS = [0.1, 0.01, 0.002]


def _falling_mjj(rng, n):
    """A steeply falling dijet-like spectrum over the fit range (inverse-CDF of m^-8)."""
    a, b, k = FIT[0] ** -7, FIT[1] ** -7, -1 / 7
    return (a + rng.random(n) * (b - a)) ** k


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """40,000 background events with a score that ignores mjj, 150 signal events at 3.5 TeV
    scored above every background event (a detector that has found them)."""
    rng = np.random.default_rng(11)
    n_b, n_s = 40_000, 150
    mjj = np.concatenate([_falling_mjj(rng, n_b), rng.normal(3500.0, 60.0, n_s)])
    label = np.r_[np.zeros(n_b), np.ones(n_s)]
    score = np.concatenate([rng.random(n_b), 1.0 + rng.random(n_s)])
    path = tmp_path_factory.mktemp("sel") / "table.parquet"
    pd.DataFrame({"mjj": mjj, "label": label}).to_parquet(path)
    table = EventTable(path=str(path), sources=(), n_events=len(mjj))
    return table, mjj, score


def _evaluate(table, score, *, blind=False):
    (w,) = make_windows(SR, FIT)
    scores = WindowScores(scores=score, owner=np.zeros(len(score), dtype=int), wall_s=0.0)
    return evaluate_window(table, scores, window=w, detector="toy", fit=FitConfig(),
                           stats=StatsConfig(selections=EFFS, p_value="asymptotic", global_toys=0),
                           blind=blind, seed=1).rows


def test_threshold_is_the_sideband_quantile_and_none_without_a_cut():
    score = np.arange(1000.0)
    side = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    assert selection_threshold(score, side, 1.0) is None
    assert selection_threshold(score, side, 0.1) == pytest.approx(np.quantile(score[:500], 0.9))
    with pytest.raises(ValueError, match="no sideband events"):
        selection_threshold(score, np.zeros(1000, bool), 0.1)


def test_a_strong_signal_neither_moves_the_cut_nor_takes_the_sideband_events(toy):
    table, mjj, score = toy
    in_fit = (mjj >= FIT[0]) & (mjj < FIT[1])
    n_sb = int(np.sum(in_fit & ~((mjj >= SR[0]) & (mjj < SR[1]))))
    rows = _evaluate(table, score)
    for r in rows:
        assert r.n_selected_sidebands == pytest.approx(r.selection * n_sb, abs=2)
    tight = rows[-1]
    # 0.2% of the fit range would be ~80 events, all taken by the 150 signal events, leaving no
    # sideband event to fit; 0.2% of the sidebands keeps ~60 there, and the signal stands out.
    assert tight.n_selected_sidebands >= 50 and tight.n_signal_sr_truth >= 140
    assert tight.z_local > 5 and tight.n_expected_sr < 30
    # Blind: the SR events' scores do not enter the cut, so the prediction is unchanged when they change.
    in_sr = (mjj >= SR[0]) & (mjj < SR[1])
    other = score.copy()
    other[in_sr] = np.random.default_rng(5).random(int(in_sr.sum()))
    blind_rows = _evaluate(table, other, blind=True)
    for a, b in zip(rows, blind_rows):
        assert b.n_selected_sidebands == a.n_selected_sidebands
        assert b.n_expected_sr == pytest.approx(a.n_expected_sr, rel=1e-9)
        assert b.n_observed_sr is None


def test_events_outside_every_training_set_pass_a_cut_as_often_as_held_out_events():
    """Events no fold model trained on (sidebands beyond ``sideband_width``, signal templates) are
    cut on the threshold set on the window's held-out scores, so they must get the same kind of
    score: one model's calibrated value. A mean over five correlated models is narrower and passed
    about a third as often at a 1% cut."""
    from sideband.pipeline.records import EventTable, FoldScores
    from sideband.pipeline.scores import merge_folds

    rng = np.random.default_rng(7)
    n_window, n_outside, k = 20_000, 20_000, 5
    n = n_window + n_outside
    x = rng.normal(size=n)  # what every model sees, plus its own noise (model-to-model correlation 0.8)
    fold_of = np.full(n, -1)
    fold_of[:n_window] = rng.integers(0, k, n_window)
    folds = []
    for i in range(k):
        heldout = fold_of == i
        train = (fold_of >= 0) & ~heldout
        scores = np.where(train, np.nan, x + 0.5 * rng.normal(size=n))
        folds.append(FoldScores(scores=scores, heldout=heldout, train=train, wall_s=0.0))
    merged = merge_folds(EventTable(path="unused", sources=(), n_events=n), folds).scores
    assert not np.isnan(merged).any()
    for eff in (0.01, 0.002):
        cut = np.quantile(merged[:n_window], 1 - eff)
        passed = np.mean(merged[n_window:] > cut)
        assert abs(passed - eff) < 4 * np.sqrt(eff / n_outside) + eff * 0.15, (eff, passed)
    # deterministic: the same folds give the same scores
    np.testing.assert_array_equal(merged, merge_folds(EventTable(path="unused", sources=(), n_events=n), folds).scores)
