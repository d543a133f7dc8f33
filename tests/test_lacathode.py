"""LaCATHODE: a selection on its score keeps the background's mjj shape where CWoLa sculpts it."""

import numpy as np
import pytest

from sideband.detectors import make_detector
from sideband.detectors.base import score_events

SR = (3300.0, 3700.0)
FLOW = {"transform": "affine", "n_transforms": 2, "hidden": 16, "epochs": 40, "batch_size": 512,
        "lr": 0.005, "patience": 8, "n_average": 1}
HGB = {"n_ensemble": 2, "hgb_params": {"max_iter": 40}}


def _background(n, seed):
    """Background only, with a feature whose mean grows with mjj (like the lighter jet mass)."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(2800, 4200, n)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    X[:, 0] += (1.5 * (m - 3500) / 700).astype(np.float32)
    X[:, 1] += (1.2 * ((m - 3500) / 700) ** 2).astype(np.float32)
    return X, m


def _efficiency_by_region(det, X, m, q=0.9):
    s = score_events(det, X, m)
    cut = np.quantile(s, q)
    sr = (m >= SR[0]) & (m < SR[1])
    return (s[sr] > cut).mean(), (s[~sr] > cut).mean()


def test_latent_selection_does_not_sculpt_the_signal_region():
    X, m = _background(6000, 1)
    Xt, mt = _background(6000, 2)
    la = make_detector("lacathode", HGB | {"oversampling": 2.0, "flow_params": FLOW}, random_state=0)
    la.fit(X, m, signal_region=SR)
    cw = make_detector("cwola", HGB, random_state=0).fit(X, m, signal_region=SR)
    la_sr, la_sb = _efficiency_by_region(la, Xt, mt)
    cw_sr, cw_sb = _efficiency_by_region(cw, Xt, mt)
    # CWoLa learns the SR from the mass-correlated features: its top 10% is SR-enriched
    assert cw_sr / cw_sb > 1.5
    # in latent space background is N(0, 1) at every mass: the SR keeps its share
    assert 0.7 < la_sr / la_sb < 1.3, (la_sr, la_sb)


def test_latent_detector_needs_the_mass_to_score():
    X, m = _background(1500, 3)
    la = make_detector("lacathode", HGB | {"oversampling": 1.0, "flow_params": FLOW | {"epochs": 2}}, random_state=0)
    la.fit(X, m, signal_region=SR)
    with pytest.raises(ValueError, match="pass m"):
        la.score(X)
