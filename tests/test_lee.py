"""Look-elsewhere effect (pipeline/lee.py): toys, the Gross-Vitells tail, bounds, nesting."""

import numpy as np
import pytest
from scipy import stats
from sideband.pipeline.lee import (
    _draw,
    _model,
    _nesting,
    global_significance,
)
from sideband.pipeline.stats import z_on_off, z_on_off_counts


def test_global_significance_is_below_local_and_grows_with_trials():
    from sideband.pipeline.lee import global_significance

    def rows(k):
        return [{"z_local": 3.0, "n_expected_sr": 100.0, "n_expected_sr_unc": 5.0} for _ in range(k)]

    one, many = rows(1), rows(30)
    global_significance(one, n_toys=20_000)
    info = global_significance(many, n_toys=20_000)
    assert one[0]["z_global"] == pytest.approx(3.0, abs=0.3)  # one test: global ~ local
    assert many[0]["z_global"] < one[0]["z_global"] - 0.5  # 30 trials dilute it
    assert info["n_tests"] == 30 and info["max_z_quantiles"]["0.5"] > 1.0


def test_global_significance_never_exceeds_local():
    from sideband.pipeline.lee import global_significance

    rows = [{"z_local": 2.0, "p0": float(stats.norm.sf(2.0)), "z_local_asymptotic": 2.4,
             "n_expected_sr": 30.0, "n_expected_sr_unc": 5.0}]
    global_significance(rows, n_toys=20_000)
    assert rows[0]["p_global"] >= rows[0]["p0"] and rows[0]["z_global"] <= 2.0 + 1e-9


def test_global_toys_draw_nested_selections_as_subsets():
    from sideband.pipeline.lee import _nesting, global_significance

    def rows():
        out = [{"window": "w", "detector": "none", "selection": 1.0, "n_expected_sr": 10_000.0}]
        out += [{"window": "w", "detector": "cwola", "selection": s, "n_expected_sr": 10_000.0 * s}
                for s in (0.8, 0.6, 0.4)]
        for r in out:
            r.update(z_local=2.5, n_expected_sr_unc=0.3 * np.sqrt(r["n_expected_sr"]))
        return out

    nest = dict(_nesting(rows()))
    assert nest == {0: None, 1: 0, 2: 1, 3: 2}
    nested = rows()
    info = global_significance(nested, n_toys=20_000)
    independent = [dict(r, window=f"w{i}") for i, r in enumerate(rows())]  # no shared events
    global_significance(independent, n_toys=20_000)
    assert info["n_tests"] == 4
    # correlated tests are fewer effective trials: a smaller look-elsewhere penalty
    assert nested[0]["z_global"] > independent[0]["z_global"] + 0.05


# The demo search: one window, the inclusive spectrum and 2 detectors x 3 nested selections
# (backgrounds and uncertainties of the demo's results.json).
DEMO = [("none", 1.0, 5994.8, 78.6),
        ("cwola", 0.1, 604.8, 25.1), ("cwola", 0.01, 54.2, 8.38), ("cwola", 0.002, 4.30, 2.52),
        ("autoencoder", 0.1, 631.1, 25.6), ("autoencoder", 0.01, 82.1, 9.92), ("autoencoder", 0.002, 16.7, 4.56)]


def demo_rows(z=None):
    z = z or {}
    return [{"window": "3300-3700", "detector": d, "selection": s, "n_expected_sr": b, "n_expected_sr_unc": u,
             "z_local": z.get((d, s), 0.5)} for d, s, b, u in DEMO]


def chain_rows(z=None):
    """A strongly correlated chain: inclusive and three heavily overlapping selections."""
    out = [{"window": "w", "detector": "none", "selection": 1.0, "n_expected_sr": 10_000.0}]
    out += [{"window": "w", "detector": "cwola", "selection": s, "n_expected_sr": 10_000.0 * s} for s in (0.8, 0.6, 0.4)]
    for r in out:
        r.update(z_local=(z or {}).get((r["detector"], r["selection"]), 0.5),
                 n_expected_sr_unc=0.3 * np.sqrt(r["n_expected_sr"]))
    return out


def test_toy_statistic_is_the_on_off_formula():
    rng = np.random.default_rng(3)
    for b, sb in [(5994.8, 78.6), (54.2, 8.38), (4.3, 2.52), (100.0, 1e-4)]:
        tau = b / sb**2
        n, m = rng.poisson(b, 500), rng.poisson(b * tau, 500)
        ok = m > 0
        assert np.allclose(z_on_off_counts(n, m, tau)[ok], z_on_off(n[ok], m[ok] / tau, np.sqrt(m[ok]) / tau),
                           rtol=1e-6, atol=1e-6)
    # no sideband events: the m -> 0 limit of the profile likelihood, sqrt(2 n ln(1 + tau))
    assert z_on_off_counts(np.array([9]), np.array([0]), 0.7)[0] == pytest.approx(np.sqrt(18 * np.log(1.7)))
    assert z_on_off_counts(np.array([0, 3]), np.array([0, 30]), 1.0).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("setup, key", [(demo_rows, ("cwola", 0.01)), (chain_rows, ("cwola", 0.6))])
def test_tail_agrees_with_brute_force_toys_at_global_z3(setup, key):
    u = 3.5 if setup is demo_rows else 3.3  # local Z whose global Z is about 3
    brute = setup({key: u})
    global_significance(brute, n_toys=400_000, max_toys=400_000, seed=1)
    tail = setup({key: u})
    info = global_significance(tail, n_toys=20_000, max_toys=20_000, seed=2)
    b_row = next(r for r in brute if (r["detector"], r["selection"]) == key)
    t_row = next(r for r in tail if (r["detector"], r["selection"]) == key)
    assert b_row["z_global_method"] == "toys" and 2.7 < b_row["z_global"] < 3.3  # 400k toys resolve it
    assert t_row["z_global_method"] == "asymptotic tail (Gross-Vitells, fitted on 20000 toys)"
    assert t_row["z_global"] == pytest.approx(b_row["z_global"], abs=0.15)
    assert t_row["z_global"] < b_row["z_global"] + 0.05  # the upcrossing extrapolation is conservative
    (used,) = info["method"]["tail_thresholds"]
    assert used["upcrossings"] >= 100 and used["u0"] <= u


def test_six_sigma_local_excess_in_the_demo_search_is_a_finite_global_number():
    rows = demo_rows({("cwola", 0.1): 3.7, ("cwola", 0.01): 6.0, ("cwola", 0.002): 2.8})
    for r in rows:
        r["p0"] = float(stats.norm.sf(r["z_local"]))
    info = global_significance(rows, n_toys=20_000, seed=42)
    best = rows[2]
    assert best["z_global_method"].startswith("asymptotic tail (Gross-Vitells")
    assert not best["z_global_is_bound"] and np.isfinite(best["z_global"])
    assert 4.5 < best["z_global"] < 6.0 and best["p_global"] >= best["p0"]
    assert rows[1]["z_global_method"] == "toys" and 2.8 < rows[1]["z_global"] < 3.6
    assert info["n_toys"] > 20_000 and info["n_tests"] == 7  # extended past the configured toys
    assert info["method"]["tail_thresholds"][0]["u0"] > 3.5


def test_bound_and_method_fields():
    # 50 toys cannot reach Z = 3 and cannot measure a tail: a bound, written as one
    rows = [{"z_local": 3.0, "p0": float(stats.norm.sf(3.0)), "n_expected_sr": 100.0, "n_expected_sr_unc": 5.0}]
    global_significance(rows, n_toys=50, max_toys=50)
    assert rows[0]["z_global_is_bound"] and rows[0]["z_global_method"] == "bound: fewer than 1 in 50 toys"
    assert rows[0]["p_global"] == pytest.approx(1 / 50)
    # a local p-value above the look-elsewhere estimate caps it, flagged as a bound
    rows = demo_rows({("cwola", 0.002): 5.2})
    rows[3]["p0"] = 0.0027  # the toy-calibrated local p of a small-count test with asymptotic Z 5.2
    info = global_significance(rows, n_toys=20_000, max_toys=20_000)
    assert rows[3]["p_global"] == 0.0027 and rows[3]["z_global_is_bound"]
    assert rows[3]["z_global_method"].startswith("bound: at most the local Z")
    for r in rows[:3]:
        assert r["z_global_method"] == "toys" and r["z_global_is_bound"] is False
        assert isinstance(r["p_global"], float) and isinstance(r["z_global"], float)
    method = info["method"]
    assert method["n_toys_initial"] == 20_000 and method["min_count"] == 100
    assert set(method) >= {"toys", "tail", "tail_thresholds", "mean_upcrossings", "tail_check"}


def test_global_z_does_not_decrease_with_local_z():
    z = np.linspace(2.0, 7.0, 30)
    rows = [{"z_local": float(v), "n_expected_sr": 200.0, "n_expected_sr_unc": 10.0} for v in z]
    global_significance(rows, n_toys=20_000, max_toys=20_000)
    zg = np.array([r["z_global"] for r in rows])
    assert np.all(np.diff(zg) >= 0) and zg[-1] > 4.5
    assert {r["z_global_method"].split(" (")[0] for r in rows} == {"toys", "asymptotic tail"}
    # raising one test's local Z never lowers its global Z
    for a, b in [(3.0, 3.4), (4.0, 4.5), (5.5, 6.0)]:
        lo, hi = demo_rows({("cwola", 0.01): a}), demo_rows({("cwola", 0.01): b})
        global_significance(lo, n_toys=20_000, max_toys=100_000)
        global_significance(hi, n_toys=20_000, max_toys=100_000)
        assert hi[2]["z_global"] >= lo[2]["z_global"]


def test_toys_extend_adaptively_within_their_budget_and_are_reproducible():
    quiet = demo_rows()
    assert global_significance(quiet, n_toys=20_000)["n_toys"] == 20_000  # every Z resolved: no more toys
    loud = demo_rows({("cwola", 0.01): 3.7})
    info = global_significance(loud, n_toys=20_000, max_toys=1_000_000)
    assert info["n_toys"] in (40_000, 80_000, 160_000, 320_000)  # doubled until resolved
    assert loud[2]["z_global_method"] == "toys" and info["method"]["n_toys_cap"] == 1_000_000
    many = [{"z_local": 6.0 if i == 0 else 1.0, "n_expected_sr": 50.0, "n_expected_sr_unc": 5.0} for i in range(50)]
    assert global_significance(many, n_toys=1_000, max_draws=1_000_000)["n_toys"] == 20_000  # draws / tests
    again = demo_rows({("cwola", 0.01): 3.7})
    assert global_significance(again, n_toys=20_000, max_toys=1_000_000) == info and again == loud


def test_toys_keep_nested_selections_correlated_and_windows_independent():
    rows = chain_rows() + [dict(r, window="w2") for r in chain_rows()]
    assert dict(_nesting(rows)) == {0: None, 1: 0, 2: 1, 3: 2, 4: None, 5: 4, 6: 5, 7: 6}
    z = _draw(np.random.default_rng(0), _model(rows), 100_000)
    corr = np.corrcoef(z.T)
    assert corr[1, 2] > 0.5 and corr[2, 3] > 0.5  # subsets of the same events
    assert abs(corr[1, 5]) < 0.02 and abs(corr[0, 4]) < 0.02  # other window: independent

def test_toy_counts_of_nested_selections_are_subsets(monkeypatch):
    from sideband.pipeline import lee

    demo = demo_rows()
    nest = dict(_nesting(demo))
    assert nest == {0: None, 1: 0, 2: 1, 3: 2, 4: 0, 5: 4, 6: 5}
    seen = []
    monkeypatch.setattr(lee, "z_on_off_counts", lambda n, m, tau: seen.append(n) or np.zeros(n.shape))
    _draw(np.random.default_rng(0), _model(demo), 50_000)
    (n,) = seen
    for child, parent in nest.items():
        if parent is not None:
            assert np.all(n[:, child] <= n[:, parent])
    # each marginal is still Poisson(b): mean and variance b
    b = np.array([r["n_expected_sr"] for r in demo])
    assert np.allclose(n.mean(axis=0), b, rtol=0.02) and np.allclose(n.var(axis=0), b, rtol=0.05)


def test_a_test_without_an_asymptotic_z_takes_its_local_z_and_unusable_fits_are_not_trials():
    """The correction counts the rows the verdict counts: a NaN asymptotic Z beside a finite toy Z
    is that Z (not 'no excess'); a fit that did not converge is not a trial of the maximum."""
    from sideband.pipeline.verdict import problem

    base = {"n_expected_sr": 100.0, "n_expected_sr_unc": 5.0}
    nan_asym = {**base, "z_local": 3.5, "z_local_asymptotic": float("nan")}
    unconverged = {**base, "z_local": 4.0, "z_local_asymptotic": 4.0, "status": "fit not converged"}
    quiet = {**base, "z_local": 0.0, "z_local_asymptotic": 0.0}
    info = global_significance([nan_asym, unconverged, quiet], n_toys=20_000)
    assert info["n_tests"] == 2
    assert 2.5 < nan_asym["z_global"] <= 3.5 and nan_asym["z_global_method"] == "toys"
    assert "z_global" not in unconverged and problem(unconverged) == "fit not converged"
    neither = {**base, "z_local": float("nan"), "z_local_asymptotic": None}
    assert problem(neither) == "no local Z" and global_significance([neither], n_toys=100)["n_tests"] == 0
