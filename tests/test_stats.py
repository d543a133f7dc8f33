import numpy as np
import pytest
from scipy import stats

from sideband.pipeline.fits import SQRT_S, fit_dijet, fit_dijet_ftest, make_edges
from sideband.pipeline.stats import discovery_and_limit


def test_discovery_z_matches_asimov_formula_for_known_background():
    # With a negligible background uncertainty, q0 gives Z = sqrt(2 (n ln(n/b) - (n - b))).
    n, b = 10_300, 10_000.0
    r = discovery_and_limit(n, b, 1e-9)
    assert r.z_local == pytest.approx(np.sqrt(2 * (n * np.log(n / b) - (n - b))), rel=1e-3)
    assert r.p0 == pytest.approx(stats.norm.sf(r.z_local), rel=1e-6)


def test_cls_limit_gaussian_regime():
    # n = b, large b: the CLs 95% limit is 1.96 sqrt(b) (CLb = 0.5, CLs+b = 0.025).
    r = discovery_and_limit(10_000, 10_000.0, 1e-9)
    assert r.z_local == 0.0
    assert r.upper_limit == pytest.approx(196.0, rel=0.02)
    assert r.upper_limit_expected == pytest.approx(196.0, rel=0.02)


def test_background_uncertainty_lowers_significance_and_loosens_limit():
    exact = discovery_and_limit(150, 100.0, 1e-9)
    fuzzy = discovery_and_limit(150, 100.0, 15.0)
    assert 0 < fuzzy.z_local < exact.z_local
    assert fuzzy.upper_limit > exact.upper_limit


def test_small_counts_do_not_crash():
    r = discovery_and_limit(0, 0.0, 0.0)
    assert r.z_local == 0.0 and np.isfinite(r.upper_limit)
    assert 2.5 < discovery_and_limit(0, 3.0, 0.5).upper_limit < 4.0  # ~3 events for n = 0


def _dijet(m, p):
    x = m / SQRT_S
    return np.exp(p[0]) * (1 - x) ** p[1] * x ** -(p[2] + (p[3] if len(p) > 3 else 0) * np.log(x))


def _sample_spectrum(params, edges, seed):
    rng = np.random.default_rng(seed)
    fine = np.linspace(edges[0], edges[-1], 20001)
    dens = _dijet(0.5 * (fine[1:] + fine[:-1]), params) * np.diff(fine)
    expected = np.add.reduceat(dens, np.searchsorted(fine, edges[:-1]))
    return rng.poisson(expected), expected


def test_edges_include_signal_region_bounds():
    e = make_edges((2800, 6000), 100, (3350, 3650))
    assert 3350 in e and 3650 in e and e[0] == 2800 and e[-1] == 6000
    assert np.all(np.diff(e) > 0)


def test_dijet_fit_recovers_known_function_and_predicts_sr():
    edges = make_edges((2800, 6000), 100, (3300, 3700))
    truth = np.array([np.log(2e-1), 10.0, 6.0])
    counts, expected = _sample_spectrum(truth, edges, seed=4)
    sr = (edges[:-1] >= 3300) & (edges[1:] <= 3700)
    fit = fit_dijet(edges, counts, ~sr, 3)
    assert fit.converged
    b, sb = fit.predict(sr)
    assert abs(b - expected[sr].sum()) < 3 * sb  # prediction within its uncertainty
    assert stats.chi2.sf(fit.chi2, fit.ndf) > 0.001
    assert np.abs(fit.pulls[~sr]).max() < 5


def test_ftest_keeps_three_parameters_for_three_parameter_truth():
    edges = make_edges((2800, 6000), 100, (3300, 3700))
    counts, _ = _sample_spectrum(np.array([np.log(2e-1), 10.0, 6.0]), edges, seed=7)
    sr = (edges[:-1] >= 3300) & (edges[1:] <= 3700)
    assert fit_dijet_ftest(edges, counts, ~sr).n_params == 3


def test_ftest_adds_a_parameter_when_needed():
    edges = make_edges((2800, 7000), 100, (3300, 3700))
    sr = (edges[:-1] >= 3300) & (edges[1:] <= 3700)
    for seed in (1, 2, 3):
        counts, _ = _sample_spectrum(np.array([np.log(2e-1), 5.0, 8.0, 1.5]), edges, seed=seed)
        assert fit_dijet_ftest(edges, counts, ~sr).n_params >= 4


def test_on_off_formula_matches_pyhf():
    from sideband.pipeline.stats import z_on_off

    for n, b, s in [(130, 100.0, 10.0), (20, 5.0, 2.0), (10_300, 10_000.0, 50.0), (3, 5.0, 1.0)]:
        assert float(z_on_off(n, b, s)) == pytest.approx(discovery_and_limit(n, b, s).z_local, abs=2e-3)
    # a negligible uncertainty gives the known-background formula (no cancellation at tiny sigma_b)
    for n, b in [(17_700, 17_477.0), (40, 30.0)]:
        exact = np.sqrt(2 * (n * np.log(n / b) - (n - b)))
        for s in (1e-2, 1e-4, 1e-6):
            assert float(z_on_off(n, b, s)) == pytest.approx(exact, rel=1e-3)


def test_function_choice_uncertainty_covers_a_too_simple_function():
    from sideband.pipeline.fits import predict_background

    # truth has 4 parameters: the 3-parameter function is biased; the alternative shows it
    edges = make_edges((2800, 6000), 100, (3300, 3700))
    sr = (edges[:-1] >= 3300) & (edges[1:] <= 3700)
    counts, expected = _sample_spectrum(np.array([np.log(2e-1), 5.0, 8.0, 1.5]), edges, seed=2)
    pred = predict_background(edges, counts, ~sr, sr, n_params_options=(3,))
    assert pred.fit.n_params == 3 and pred.sigma_function > 0
    assert pred.sigma == pytest.approx(np.hypot(pred.sigma_fit, pred.sigma_function))
    assert abs(pred.b - expected[sr].sum()) < 3 * pred.sigma


def test_limit_falls_back_to_a_grid_when_root_finding_fails():
    # for this input pyhf's CLs is NaN at mu = 0, so toms748 fails and the grid scan must answer
    r = discovery_and_limit(17436, 17523.44208577393, 131.5)
    assert np.isfinite(r.upper_limit) and r.status == "ok"
    assert r.upper_limit == pytest.approx(discovery_and_limit(17436, 17523.44208577393, 131.9).upper_limit, rel=0.02)


def _four_param_toys(scale, n_toys, seed):
    edges = make_edges((2800, 6000), 100, (3300, 3700))
    sr = (edges[:-1] >= 3300) & (edges[1:] <= 3700)
    _, expected = _sample_spectrum(np.array([np.log(2e-1), 5.0, 8.0, 1.5]), edges, seed=0)
    toys = np.random.default_rng(seed).poisson(expected * scale, size=(n_toys, len(expected)))
    return edges, sr, expected * scale, toys


@pytest.mark.parametrize("scale", [1.0, 0.002])
def test_batched_prediction_is_the_same_procedure(scale):
    from sideband.pipeline.fits import predict_background, predict_background_batch

    edges, sr, expected, toys = _four_param_toys(scale, 40, seed=11)
    start = {p: fit_dijet(edges, expected, ~sr, p).params for p in (4, 5)}
    b, s = predict_background_batch(edges, toys, ~sr, sr, start)
    for i, c in enumerate(toys):
        ref = predict_background(edges, c, ~sr, sr)
        assert b[i] == pytest.approx(ref.b, rel=1e-5)
        assert s[i] == pytest.approx(ref.sigma, rel=1e-4)


def test_toy_p_value_matches_asymptotics_at_large_counts_and_is_reproducible():
    from sideband.pipeline.toys import toy_p_value

    edges, sr, _, toys = _four_param_toys(1.0, 1, seed=12)
    counts = toys[0]
    r = toy_p_value(edges, counts, ~sr, sr, 1.5, n_toys=4000, seed=1, enough=10**9)
    assert r["n_toys"] == 4000 and not r["bound"]
    # ~3e4 events in the SR: the asymptotic formula holds, p = P(Z > 1.5) within 4 binomial errors
    assert r["p0"] == pytest.approx(stats.norm.sf(1.5), abs=4 * np.sqrt(0.067 * 0.933 / 4000))
    assert toy_p_value(edges, counts, ~sr, sr, 1.5, n_toys=4000, seed=1, enough=10**9) == r
    far = toy_p_value(edges, counts, ~sr, sr, 9.0, n_toys=1000, seed=1)
    assert far["bound"] and far["p0"] == pytest.approx(1e-3) and far["z"] == pytest.approx(stats.norm.isf(1e-3))
    assert toy_p_value(edges, counts, ~sr, sr, 0.0)["p0"] == 1.0  # no excess: nothing to compute
    # stops early once enough pseudo-experiments reach a small Z
    assert toy_p_value(edges, counts, ~sr, sr, 0.2, n_toys=10_000, seed=1)["n_toys"] == 500
