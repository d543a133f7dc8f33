"""Pseudo-experiment p-values for the Gaussian-process background (toys.toy_p_value_gp)."""

import numpy as np
from scipy import stats

from sideband.pipeline.fits import make_edges
from sideband.pipeline.gp import gp_predict
from sideband.pipeline.stats import z_on_off
from sideband.pipeline.toys import toy_p_value_gp

EDGES = make_edges((2800, 6000), 100, (3300, 3700))
SR = (EDGES[:-1] >= 3300) & (EDGES[1:] <= 3700)
MID = 0.5 * (EDGES[1:] + EDGES[:-1])
SHAPE = 26000 * np.exp(-(MID - 2800) / 620) * (1 - np.exp(-(MID - 2700) / 300)) / 5.6 * 0.01  # B(SR) ~ 56


def _z(counts, seed):
    pred = gp_predict(EDGES, counts, ~SR, SR)
    z = float(z_on_off(counts[SR].sum(), pred.b, pred.sigma))
    return z, toy_p_value_gp(pred, z, n_toys=2000, seed=seed)


def test_gp_toys_are_calibrated_under_background_only():
    rng = np.random.default_rng(0)
    zs = np.array([_z(rng.poisson(SHAPE).astype(float), i)[1]["z"] for i in range(30)])
    nominal = stats.norm.sf(1)
    assert abs((zs > 1).mean() - nominal) <= 3 * np.sqrt(nominal * (1 - nominal) / len(zs))


def test_gp_toys_keep_the_power_of_a_clear_excess():
    rng = np.random.default_rng(1)
    counts = rng.poisson(SHAPE).astype(float)
    counts[SR] += np.array([8, 18, 18, 8])  # 52 signal events on B ~ 56
    z_asym, toy = _z(counts, 0)
    assert toy["n_toys"] > 0 and toy["null"].startswith("GP posterior")
    assert z_asym > 2.5
    assert abs(toy["z"] - z_asym) < 0.6
