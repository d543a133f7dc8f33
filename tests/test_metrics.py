import numpy as np
import pytest

from sideband.pipeline.metrics import sic_curve, summarise_seeds


def test_perfect_and_random_classifiers():
    rng = np.random.default_rng(0)
    perfect = sic_curve(rng.uniform(1, 2, 1000), rng.uniform(0, 1, 10_000), min_background=50)
    assert perfect.auc == pytest.approx(1.0)
    # perfect separation: max SIC when exactly 50 background events pass: 1 / sqrt(50 / 10000)
    assert perfect.max_sic == pytest.approx(1 / np.sqrt(50 / 10_000), rel=0.02)
    rand = sic_curve(rng.uniform(0, 1, 5000), rng.uniform(0, 1, 5000))
    assert rand.auc == pytest.approx(0.5, abs=0.02)
    assert rand.sic_at(0.5) == pytest.approx(np.sqrt(0.5), rel=0.05)


def test_gaussian_shift_matches_analytic_auc():
    from scipy.stats import norm

    rng = np.random.default_rng(1)
    c = sic_curve(rng.normal(1.0, 1, 20_000), rng.normal(0.0, 1, 20_000))
    assert c.auc == pytest.approx(norm.cdf(1 / np.sqrt(2)), abs=0.01)
    # at eps_S = 0.5 the cut is at x = 1: eps_B = 1 - Phi(1)
    assert c.sic_at(0.5) == pytest.approx(0.5 / np.sqrt(norm.sf(1.0)), rel=0.03)


def test_min_background_guards_max_sic():
    s = np.r_[np.full(10, 10.0), np.zeros(990)]
    b = np.r_[np.full(2, 10.0), np.zeros(9998) - 1]
    assert sic_curve(s, b, min_background=50).max_sic < 1.5  # the 2-event tail does not count
    with pytest.raises(ValueError, match="needs signal and background"):
        sic_curve([], b)


def test_seed_summary():
    out = summarise_seeds([1.0, 2.0, 3.0, None, float("nan")])
    assert out["median"] == 2.0 and out["n"] == 3 and out["lo"] < 2.0 < out["hi"]


def test_curve_for_reports_hides_the_few_event_tail():
    rng = np.random.default_rng(2)
    c = sic_curve(rng.normal(1.5, 1, 2000), rng.normal(0, 1, 2000), min_background=50)
    d = c.to_dict()
    kept = [v for v in d["sic"] if v is not None]
    assert d["sic"][0] is None and kept  # lowest eps_S: fewer than 50 background events pass
    assert max(kept) <= c.max_sic + 1e-9


@pytest.mark.parametrize("n_b", [97, 161, 167, 1000])
def test_max_sic_counts_exactly_min_background_events(n_b):
    """The cut that keeps exactly min_background background events counts (fpr * n is a count:
    50 / 97 * 97 < 50 in floating point)."""
    b = np.arange(n_b, dtype=float)
    s = np.full(100, n_b + 1.0)  # every signal event above every background event
    b_top = b[-50:]  # scores of the 50 highest background events: the cut at b_top[0] keeps 50
    c = sic_curve(np.r_[s[:50], b_top[0] + 0.5 * np.ones(50)], b, min_background=50)
    assert c.max_sic == pytest.approx(1.0 / np.sqrt(50 / n_b))
