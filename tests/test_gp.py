"""The GP background (pipeline.gp): a real model of the counts, not a copy of the dijet fit."""

import json
import logging

import numpy as np
import pytest

from sideband.pipeline.fits import fit_dijet, fit_dijet_ftest
from sideband.pipeline.gp import (
    HYPERPARAMETERS,
    FrateKernel,
    gp_predict,
    gp_predict_batch,
    gp_scan,
)

EDGES = np.geomspace(1100.0, 8000.0, 43)  # 42 bins, widths growing with mass
CENTERS = 0.5 * (EDGES[1:] + EDGES[:-1])
ALL = np.ones(42, bool)


def _shape(p1, p2, p3=0.0):
    """Dijet density (1-x)^p1 x^-(p2 + p3 ln x) integrated over the bins (Simpson)."""
    pts = np.linspace(EDGES[:-1], EDGES[1:], 9)
    x = pts / 13000.0
    w = np.array([1, 4, 2, 4, 2, 4, 2, 4, 1])[:, None] / 24 * np.diff(EDGES)[None, :]
    return ((1 - x) ** p1 * x ** -(p2 + p3 * np.log(x)) * w).sum(0)


def _two_shapes(first_bin=1e8):
    """(1-x)^5 x^-10 plus (1-x)^8 x^-3, equal at 2.5 TeV (benchmarks/gp.py): 7 orders of
    magnitude over the 42 bins, and no 4/5-parameter dijet function describes it."""
    soft, hard = _shape(5.0, 10.0), _shape(8.0, 3.0)
    i = int(np.argmin(np.abs(CENTERS - 2500.0)))
    f = soft + hard * soft[i] / hard[i]
    return f / f[0] * first_bin


@pytest.mark.parametrize("seed", [0, 1])
def test_gp_does_not_collapse_on_a_spectrum_with_residual_structure(seed):
    truth = _two_shapes()
    counts = np.random.default_rng(seed).poisson(truth)
    assert truth.max() / truth.min() > 1e6  # the regime of published spectra
    pred = gp_predict(EDGES, counts, ALL, ALL)
    dijet = fit_dijet_ftest(EDGES, counts, ALL, (4, 5))
    assert pred.converged and pred.at_bound == () and pred.warnings == ()
    assert pred.chi2 / pred.ndf <= 1.5
    assert dijet.chi2 / dijet.ndf > 3 * pred.chi2 / pred.ndf  # the dijet function cannot describe it
    assert pred.summary()["dijet_reference"]["chi2"] == pytest.approx(dijet.chi2)
    # the kernel carries real structure: far above its collapsed value, and the prediction
    # differs from the GP's own 3-parameter mean and from the dijet fit by many standard deviations
    assert pred.hyperparameters["amplitude"] > 1e3 * pred.bounds["amplitude"][0]
    mean3 = fit_dijet(EDGES, counts, ALL, 3).expected
    for other in (mean3, dijet.expected):
        assert np.max(np.abs(pred.expected - other) / np.sqrt(truth)) > 3
    # and it is closer to the truth than the dijet fit
    assert np.sum((pred.expected - truth) ** 2 / truth) < 0.5 * np.sum((dijet.expected - truth) ** 2 / truth)


def test_hyperparameter_at_bound_is_reported(caplog):
    """Counts exactly on the 3-parameter mean: nothing left for the kernel, its amplitude hits
    the lower bound, and that is a warning and a field, not a silent result."""
    counts = _shape(12.0, 5.0)
    counts = counts / counts[0] * 1e6
    with caplog.at_level(logging.WARNING, logger="sideband.pipeline.gp"):
        pred = gp_predict(EDGES, counts, ALL, ALL)
    assert "amplitude" in pred.at_bound
    assert pred.hyperparameters["amplitude"] == pytest.approx(pred.bounds["amplitude"][0], rel=0.02)
    assert any("amplitude" in w and "lower bound" in w for w in pred.warnings)
    assert any("amplitude" in r.getMessage() and "lower bound" in r.getMessage() for r in caplog.records)
    summary = json.loads(json.dumps(pred.summary()))
    assert "amplitude" in summary["at_bound"] and summary["warnings"] == list(pred.warnings)


def test_sideband_prediction_shape_positivity_and_summary():
    counts = np.random.default_rng(4).poisson(_two_shapes(1e6))
    sr = np.abs(CENTERS - 3500) < 350
    pred = gp_predict(EDGES, counts, ~sr, sr)
    assert pred.expected.shape == (42,) and np.all(np.isfinite(pred.expected)) and np.all(pred.expected > 0)
    assert pred.cov.shape == (sr.sum(), sr.sum())
    assert np.allclose(pred.cov, pred.cov.T) and np.all(np.linalg.eigvalsh(pred.cov) > -1e-9 * pred.cov.max())
    assert pred.b == pytest.approx(pred.expected[sr].sum())
    assert pred.sigma == pytest.approx(np.sqrt(pred.cov.sum())) and pred.sigma > 0
    # fitted to the sidebands only: changing the SR counts changes nothing
    other = counts.copy()
    other[sr] *= 3
    assert gp_predict(EDGES, other, ~sr, sr).b == pytest.approx(pred.b, rel=1e-9)
    s = json.loads(json.dumps(pred.summary()))
    assert {"model", "kernel", "hyperparameters", "at_bound", "chi2", "ndf", "p_value", "converged",
            "warnings"} <= set(s)
    assert s["model"] == "gp" and set(s["hyperparameters"]) == set(HYPERPARAMETERS) and 0 <= s["p_value"] <= 1
    # the fast path for pseudo-experiments reproduces the fit on its own counts
    b, sigma = gp_predict_batch(pred, np.stack([counts, counts]))
    assert b == pytest.approx([pred.b] * 2) and sigma == pytest.approx([pred.sigma] * 2)


def test_reproducible_for_a_fixed_seed():
    counts = np.random.default_rng(7).poisson(_two_shapes(1e5))
    a = gp_predict(EDGES, counts, ALL, ALL, seed=3)
    b = gp_predict(EDGES, counts, ALL, ALL, seed=3)
    assert np.array_equal(a.expected, b.expected) and a.hyperparameters == b.hyperparameters
    assert a.summary() == b.summary()


def test_sideband_prediction_covers_the_truth():
    """20 pseudo-spectra: the SR prediction's pull (b - truth) / sigma is calibrated."""
    truth = _two_shapes(1e6)
    sr = np.abs(CENTERS - 3500) < 350
    rng = np.random.default_rng(11)
    pulls = [(p.b - truth[sr].sum()) / p.sigma for p in
             (gp_predict(EDGES, rng.poisson(truth), ~sr, sr, reference=False) for _ in range(20))]
    assert np.all(np.isfinite(pulls))
    assert abs(np.mean(pulls)) < 0.7 and 0.4 < np.std(pulls) < 1.6 and np.mean(np.abs(pulls) < 2) >= 0.8


def test_scan_finds_a_resonance_and_not_where_there_is_none():
    truth = _two_shapes(1e6)
    sr = np.abs(CENTERS - 3500) < 350
    bump = 0.5 * np.diff(np.vectorize(__import__("math").erf)((EDGES - 3500) / (0.05 * 3500 * np.sqrt(2))))
    n_sig = 5 * np.sqrt(truth[sr].sum())
    counts = np.random.default_rng(2).poisson(truth + n_sig * bump)
    scan = gp_scan(gp_predict(EDGES, counts, ALL, ALL), [2000.0, 3500.0, 5000.0])
    assert scan[1].z_local > 3 and scan[1].z_local > max(scan[0].z_local, scan[2].z_local)
    assert abs(scan[1].signal - n_sig) < 3 * scan[1].signal_unc


@pytest.mark.parametrize("change,match", [
    (lambda c, f: (np.where(np.arange(42) == 5, -1, c), f), ">= 0"),
    (lambda c, f: (c, np.arange(42) < 5), "fit bins"),
    (lambda c, f: (c, f[:-1]), "one entry per bin"),
])
def test_unusable_input_is_a_value_error(change, match):
    counts, fit = change(np.full(42, 100.0), ALL)
    with pytest.raises(ValueError, match=match):
        gp_predict(EDGES, counts, fit, ALL)


def test_kernel_gradient_matches_finite_differences():
    k = FrateKernel(amplitude=2.0, decay=0.7, length_slope=0.3, x0=1.0)
    X = np.linspace(1.0, 6.0, 9)[:, None]
    _, grad = k(X, eval_gradient=True)
    for i in range(len(k.theta)):
        d = np.zeros(len(k.theta))
        d[i] = 1e-6
        num = (k.clone_with_theta(k.theta + d)(X) - k.clone_with_theta(k.theta - d)(X)) / 2e-6
        assert np.allclose(num, grad[..., i], rtol=1e-5, atol=1e-9 * np.abs(grad[..., i]).max())
    assert np.allclose(np.diag(k(X)), k.diag(X))


def test_a_test_whose_gp_hyperparameter_sits_at_a_bound_is_flagged_in_its_row():
    """The bound is a finding the user sees in results.json and the report, not only in the log."""
    from sideband.pipeline.config import FitConfig, StatsConfig
    from sideband.pipeline.evaluate import _test
    from sideband.pipeline.records import TestResult

    counts = np.round(_shape(12.0, 5.0) / _shape(12.0, 5.0)[0] * 1e6)
    sr = np.abs(CENTERS - 3500) < 350
    base = TestResult(window="3150-3850", sr=(3150.0, 3850.0), detector="none", selection=1.0, n_selected=None,
                      n_selected_sidebands=int(counts[~sr].sum()), n_observed_sr=int(counts[sr].sum()))
    row, _ = _test(base, EDGES, counts, sr, fit=FitConfig(background="gp"), stats_cfg=StatsConfig(), blind=True,
                   seed=0)
    assert any(f.startswith("GP hyperparameter at bound:") and "amplitude" in f for f in row.flags)
