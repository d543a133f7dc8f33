"""R-Anode: a signal density fitted against the fixed sideband background finds a weak signal,
and a selection on its score keeps the background's mjj shape."""

import numpy as np
import pytest

from sideband.detectors import make_detector
from sideband.detectors.base import score_events
from sideband.pipeline.metrics import sic_curve

SR = (3300.0, 3700.0)
FLOW = {"transform": "affine", "n_transforms": 2, "hidden": 16, "epochs": 40, "batch_size": 512,
        "lr": 0.005, "patience": 8, "n_average": 1}
SIGNAL_FLOW = {"n_transforms": 2, "hidden": 16, "epochs": 80, "batch_size": 256, "lr": 0.003}


def _events(n, n_signal, seed):
    """Background with a feature whose mean grows with mjj; signal in the SR, narrow in x."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(2800, 4200, n)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    X[:, 0] += (1.5 * (m - 3500) / 700).astype(np.float32)
    ms = rng.uniform(*SR, n_signal)
    Xs = (rng.normal(size=(n_signal, 3)) * 0.3 + [0.5, 1.8, -1.8]).astype(np.float32)
    return np.concatenate([X, Xs]), np.concatenate([m, ms]), np.r_[np.zeros(n), np.ones(n_signal)].astype(bool)


def _ranode(**kw):
    return make_detector("ranode", {"flow_params": FLOW, "signal_flow": SIGNAL_FLOW, "n_ensemble": 1, **kw},
                         random_state=0)


def test_weak_signal_is_found_and_its_fraction_estimated():
    X, m, sig = _events(12000, 60, 1)  # 60 signal among ~3,400 SR events (S/sqrt(B) ~ 1)
    det = _ranode().fit(X, m, signal_region=SR)
    Xt, mt, st = _events(6000, 600, 2)
    in_sr = (mt >= SR[0]) & (mt < SR[1])
    s = score_events(det, Xt[in_sr], mt[in_sr])
    curve = sic_curve(s[st[in_sr]], s[~st[in_sr]], 20)
    assert curve.auc > 0.85 and curve.max_sic > 3, (curve.auc, curve.max_sic)
    true_w = 60 / ((m >= SR[0]) & (m < SR[1])).sum()
    assert 0.2 * true_w < det.signal_fraction_ < 5 * true_w, (det.signal_fraction_, true_w)


def test_background_selection_does_not_sculpt_the_signal_region():
    X, m, _ = _events(8000, 0, 3)
    Xt, mt, _ = _events(8000, 0, 4)
    det = _ranode(signal_fraction=0.01).fit(X, m, signal_region=SR)
    s = score_events(det, Xt, mt)
    cut = np.quantile(s, 0.9)
    sr = (mt >= SR[0]) & (mt < SR[1])
    assert 0.7 < (s[sr] > cut).mean() / (s[~sr] > cut).mean() < 1.3


def test_ranode_needs_the_mass_and_valid_signal_flow_keys():
    X, m, _ = _events(1500, 0, 5)
    det = _ranode(signal_flow=SIGNAL_FLOW | {"epochs": 2}).fit(X, m, signal_region=SR)
    with pytest.raises(ValueError, match="pass m"):
        det.score(X)
    with pytest.raises(ValueError, match="unknown signal_flow parameter"):
        _ranode(signal_flow={"hiden": 8}).fit(X, m, signal_region=SR)
