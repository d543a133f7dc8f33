"""The efficiency-ratio background (pipeline/ratio.py), its pseudo-experiments, and the sparse
F-test ladder of pipeline/fits.py."""

import numpy as np
import pytest
from scipy import special, stats

from sideband.pipeline.fits import _ftest_choice, fit_dijet, ladder, make_edges, predict_background
from sideband.pipeline.ratio import ratio_predict, ratio_predict_batch
from sideband.pipeline.stats import z_on_off
from sideband.pipeline.toys import toy_p_value, toy_p_value_ratio

EDGES = make_edges((2800, 6000), 100, (3300, 3700))
SR = (EDGES[:-1] >= 3300) & (EDGES[1:] <= 3700)
MID = 0.5 * (EDGES[1:] + EDGES[:-1])
#: an inclusive spectrum like the demo's (26k events in the fit range)
TOTAL = np.round(26000 * np.exp(-(MID - 2800) / 620) * (1 - np.exp(-(MID - 2700) / 300)) / 5.6).astype(float)


def _eps(eff: float, slope: float = 0.3) -> np.ndarray:
    t = (2 * MID - EDGES[0] - EDGES[-1]) / (EDGES[-1] - EDGES[0])
    lin = special.logit(eff) + slope * t
    return special.expit(lin)


def test_prediction_is_unbiased_and_its_uncertainty_covers():
    rng = np.random.default_rng(1)
    eps = _eps(0.01)
    passed = rng.binomial(TOTAL.astype(int), eps, size=(2000, len(TOTAL)))
    b, sigma, chosen, _ = ratio_predict_batch(EDGES, TOTAL, passed, ~SR, SR)
    truth = (TOTAL * eps)[SR].sum()
    pull = (b - truth) / sigma
    assert np.isfinite(pull).mean() > 0.99
    assert abs(np.nanmean(pull)) < 0.15
    assert 0.8 < np.nanstd(pull) < 1.2
    assert set(np.unique(chosen)) <= {1, 2, 3}


def test_single_and_batch_agree():
    rng = np.random.default_rng(2)
    passed = rng.binomial(TOTAL.astype(int), _eps(0.002)).astype(float)
    one = ratio_predict(EDGES, TOTAL, passed, ~SR, SR)
    b, sigma, _, _ = ratio_predict_batch(EDGES, TOTAL, passed[None], ~SR, SR)
    assert one.b == pytest.approx(b[0]) and one.sigma == pytest.approx(sigma[0])
    assert 0 < one.fit.p_value <= 1


def test_tight_selection_with_signal_is_significant_where_the_free_shape_is_not():
    """A 0.2% selection with 14 sideband events and 37 in the SR (like the demo's CWoLa selection):
    the dijet function fitted to the selected spectrum alone leaves the background's rise into
    the SR free; the efficiency through the inclusive spectrum constrains it."""
    counts = np.zeros(len(TOTAL))
    counts[:4] = [1, 1, 3, 4]
    counts[SR] = [2, 8, 10, 17]
    counts[np.where(SR)[0][-1] + 1:][:5] = [0, 1, 0, 1, 1]
    n = counts[SR].sum()
    dijet = predict_background(EDGES, counts, ~SR, SR)
    ratio = ratio_predict(EDGES, TOTAL, counts, ~SR, SR)
    z_ratio = toy_p_value_ratio(EDGES, TOTAL, counts, ~SR, SR, z_on_off(n, ratio.b, ratio.sigma), n_toys=4000,
                                seed=0)["z"]
    z_dijet = toy_p_value(EDGES, counts, ~SR, SR, z_on_off(n, dijet.b, dijet.sigma), n_toys=4000, seed=0)["z"]
    assert z_ratio > 4.5
    assert z_ratio > z_dijet + 1.0


def test_toy_p_values_are_calibrated_at_small_background():
    rng = np.random.default_rng(3)
    eps = _eps(0.002)
    zs = []
    for _ in range(150):
        passed = rng.binomial(TOTAL.astype(int), eps).astype(float)
        pred = ratio_predict(EDGES, TOTAL, passed, ~SR, SR)
        z = z_on_off(passed[SR].sum(), pred.b, pred.sigma)
        zs.append(toy_p_value_ratio(EDGES, TOTAL, passed, ~SR, SR, z, n_toys=1000, seed=int(rng.integers(1e6)),
                                    enough=20)["z"])
    zs = np.array(zs)
    nominal = stats.norm.sf(1)
    assert abs((zs > 1).mean() - nominal) < 3 * np.sqrt(nominal * (1 - nominal) / len(zs))


def test_ftest_dispersion_floor_keeps_sparse_spectra_simple():
    """dev / ndf far below 1 (sparse bins) must not make a 1-event deviance gain significant."""
    dev = {4: np.array([5.18]), 5: np.array([3.91])}
    conv = {4: np.array([True]), 5: np.array([True])}
    assert _ftest_choice([4, 5], dev, conv, n_fit=24, alpha=0.05)[0] == 4
    dev = {4: np.array([80.0]), 5: np.array([40.0])}  # a real improvement still climbs
    assert _ftest_choice([4, 5], dev, conv, n_fit=24, alpha=0.05)[0] == 5


def test_sparse_ladder_starts_at_three_parameters():
    assert list(ladder((4, 5), [50, 5000])) == [3, 4]
    rng = np.random.default_rng(4)
    counts = rng.poisson(0.002 * TOTAL).astype(float)
    assert predict_background(EDGES, counts, ~SR, SR).fit.n_params == 3
    big = rng.poisson(TOTAL).astype(float)
    assert predict_background(EDGES, big, ~SR, SR).fit.n_params >= 4
    assert fit_dijet(EDGES, big, ~SR, 3).converged
