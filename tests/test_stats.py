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
        assert float(z_on_off(n, b, s)) == pytest.approx(discovery_and_limit(n, b, s, limit=False).z_local, abs=2e-3)
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
    b, s = predict_background_batch(edges, toys, ~sr, sr, start=start)
    for i, c in enumerate(toys):
        ref = predict_background(edges, c, ~sr, sr)
        assert b[i] == pytest.approx(ref.b, rel=1e-5)
        assert s[i] == pytest.approx(ref.sigma, rel=1e-4)


@pytest.mark.parametrize("cl", [0.90, 0.95])
def test_cls_band_follows_the_gaussian_formula(cl):
    # n = b, large known b: the CLs limit at N standard deviations of the background-only
    # expectation is sigma (Phi^-1(1 - alpha Phi(N)) + N), alpha = 1 - cl (Cowan et al. 2011, eq. 89);
    # the observed limit equals the median there.
    r = discovery_and_limit(10_000, 10_000.0, 1e-9, cl=cl)
    alpha = 1.0 - cl
    formula = [100.0 * (stats.norm.isf(alpha * stats.norm.cdf(k)) + k) for k in (-2, -1, 0, 1, 2)]
    assert r.upper_limit_expected_band == pytest.approx(formula, rel=0.03)
    assert r.upper_limit_expected == r.upper_limit_expected_band[2]
    assert r.upper_limit == pytest.approx(formula[2], rel=0.02)


@pytest.mark.parametrize("n_obs,b,sigma_b", [(42, 4.3, 2.5), (144, 54.2, 8.4), (0, 3.0, 0.5), (5, 5.0, 2.0),
                                             (0, 0.0, 0.0), (17436, 17523.44208577393, 131.5), (750, 604.8, 25.1)])
def test_observed_limit_moves_with_cl_and_band_is_ordered(n_obs, b, sigma_b):
    # pyhf's upper_limit(scan=None) ignores its level (scikit-hep/pyhf#2563): stats.cl must not
    loose, tight = discovery_and_limit(n_obs, b, sigma_b, cl=0.90), discovery_and_limit(n_obs, b, sigma_b, cl=0.95)
    for r in (loose, tight):
        band = r.upper_limit_expected_band
        assert r.status == "ok" and np.all(np.isfinite(band)) and np.isfinite(r.upper_limit)
        assert 0 < band[0] <= band[1] <= band[2] <= band[3] <= band[4]
    assert loose.upper_limit < 0.99 * tight.upper_limit
    assert all(a < 0.99 * c for a, c in zip(loose.upper_limit_expected_band, tight.upper_limit_expected_band))
    assert loose.z_local == tight.z_local  # the discovery test does not depend on the CL


def test_a_strong_excess_gives_an_observed_limit_above_the_expected_band():
    r = discovery_and_limit(42, 4.3, 2.5)
    assert r.upper_limit > r.upper_limit_expected_band[4] and r.upper_limit > 42 - 4.3 - 2 * 2.5


def test_statistics_change_no_global_pyhf_state(monkeypatch):
    import pyhf

    before = pyhf.get_backend()

    def refuse(*args, **kwargs):
        raise AssertionError("library code called pyhf.set_backend")

    monkeypatch.setattr(pyhf, "set_backend", refuse)
    r = discovery_and_limit(150, 100.0, 15.0)
    discovery_and_limit(3, 1.0, 1e-9)  # the model without a nuisance parameter too
    assert np.isfinite(r.upper_limit) and r.z_local > 0
    after = pyhf.get_backend()
    assert after[0] is before[0] and after[1] is before[1]


def test_invalid_confidence_level_is_refused():
    with pytest.raises(ValueError, match="cl=1.5"):
        discovery_and_limit(10, 5.0, 1.0, cl=1.5)


def test_limit_plot_draws_bands_and_blind_rows(tmp_path):
    from sideband.pipeline.limitplot import plot_limits

    rows = []
    for lo in (3000, 3400, 3800):
        for det, sel in (("none", 1.0), ("cwola", 0.1), ("cwola", 0.01)):
            r = discovery_and_limit(40, 30.0, 4.0)
            rows.append({"window": f"{lo}-{lo + 400}", "sr": [lo, lo + 400], "detector": det, "selection": sel,
                         "upper_limit": None if lo == 3400 else r.upper_limit,  # one blind window
                         "upper_limit_expected": r.upper_limit_expected,
                         "upper_limit_expected_band": list(r.upper_limit_expected_band)})
    path = plot_limits(rows, tmp_path / "plots" / "limits.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no row has an expected limit"):
        plot_limits([dict(rows[0], upper_limit_expected=None)], tmp_path / "x.png")


@pytest.mark.parametrize("b,n,exact", [(0.01, 0, 3.00), (0.5, 0, 3.00), (2.0, 2, 4.82), (5.0, 5, 6.33)])
def test_counting_limits_are_the_exact_poisson_cls(b, n, exact):
    """At small background the counting CLs gives the textbook limits (no background
    uncertainty); the asymptotic formulae are too strong there (1.94, 2.21, 4.18, 5.75)."""
    from sideband.pipeline.stats import counting_cls_limits

    r = discovery_and_limit(n, b, 0.0, counting=True)
    assert r.limit_method == "counting" and r.upper_limit == pytest.approx(exact, abs=0.01)
    assert discovery_and_limit(n, b, 0.0).upper_limit < exact - 0.5  # the asymptotic answer
    obs, band = counting_cls_limits(n, b, 0.0)
    assert obs == pytest.approx(r.upper_limit) and band == sorted(band)
    if b < 0.05:  # nearly every background-only outcome is n = 0: the whole band is 3.00
        assert band == pytest.approx([3.0] * 5, abs=0.01)


def test_counting_limits_survive_a_deep_deficit():
    """No event on 900 expected: P(N <= 0) = e^-900 underflows as a plain probability (the stats node
    crashed with ZeroDivisionError); CLs gives the s = 3.00 of a zero count."""
    from sideband.pipeline.stats import counting_cls_limits

    obs, band = counting_cls_limits(0, 900.0, 30.0)
    assert obs == pytest.approx(3.0, abs=0.01) and 50 < band[2] < 120


def test_counting_limits_cover_at_small_background():
    """Coverage of the 95% CL limits with a true signal of 2.5 events on a background of 0.05 +- 0.02:
    the counting limit covers; the asymptotic one excludes the true signal whenever n = 0 (~8%)."""
    from sideband.pipeline.stats import counting_cls_limits

    rng = np.random.default_rng(3)
    s_true, b, sigma_b = 2.5, 0.05, 0.02
    ns = rng.poisson(s_true + b, 4000)
    for method, limit in (("counting", lambda n: counting_cls_limits(n, b, sigma_b)[0]),
                          ("asymptotic", lambda n: discovery_and_limit(int(n), b, sigma_b).upper_limit)):
        limits = {n: limit(n) for n in np.unique(ns)}
        coverage = np.mean([limits[n] >= s_true for n in ns])
        assert (coverage >= 0.95) == (method == "counting"), (method, coverage)


def test_expected_limits_do_not_move_with_the_observed_count():
    """The expected band is pre-fit: the same at n = 0, n = b and n = 4b (pyhf's band on the observed
    data followed the excess: 6.8 / 9.0 / 13.7 for b = 10 +- 3)."""
    bands = [discovery_and_limit(n, 10.0, 3.0).upper_limit_expected_band for n in (0, 10, 40)]
    for band in bands[1:]:
        assert band == pytest.approx(bands[0], rel=1e-4)
    assert discovery_and_limit(40, 10.0, 3.0).upper_limit > bands[0][4]  # the observed limit does move
