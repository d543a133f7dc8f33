"""The detector protocol, checked once for every detector module."""

import numpy as np
import pytest
from sklearn.base import clone

from detectors import available_detectors, make_detector
from pipeline.exceptions import ConfigError, NotFittedError

#: Smallest settings that still train for real, per detector.
TINY = {
    "cwola": {"n_ensemble": 1, "hgb_params": {"max_iter": 10}},
}


def _data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.uniform(2800, 4200, n)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    in_sr = (m >= 3300) & (m < 3700)
    X[in_sr, 0] += 1.5  # an SR-only feature shift the weak supervision can find
    return X, m, in_sr


@pytest.fixture(params=available_detectors())
def detector_name(request):
    if request.param not in TINY:
        pytest.fail(f"detector {request.param} has no TINY settings in tests/test_detectors.py")
    return request.param


def test_init_stores_params_unchanged(detector_name):
    det = make_detector(detector_name, TINY[detector_name], random_state=5)
    params = det.get_params()
    for k, v in TINY[detector_name].items():
        assert params[k] == v
    assert params["random_state"] == 5
    assert not [a for a in vars(det) if a.endswith("_")], "__init__ must not build fitted state"
    clone(det)


def test_fit_returns_self_and_scores_every_event(detector_name):
    X, m, in_sr = _data()
    det = make_detector(detector_name, TINY[detector_name], random_state=1)
    assert det.fit(X, m, signal_region=(3300, 3700)) is det
    s = det.score(X)
    assert s.shape == (len(X),) and np.isfinite(s).all()


def test_higher_score_means_more_anomalous(detector_name):
    X, m, in_sr = _data(2000)
    det = make_detector(detector_name, TINY[detector_name], random_state=1).fit(X, m, signal_region=(3300, 3700))
    Xt, _, sr_t = _data(2000, seed=9)
    s = det.score(Xt)
    assert s[sr_t].mean() > s[~sr_t].mean()


def test_unfitted_detector_says_so(detector_name):
    det = make_detector(detector_name, TINY[detector_name])
    with pytest.raises(NotFittedError, match="not fitted yet"):
        det.score(np.zeros((3, 4), dtype=np.float32))


def test_same_seed_same_scores(detector_name):
    X, m, _ = _data()
    a = make_detector(detector_name, TINY[detector_name], random_state=3).fit(X, m, signal_region=(3300, 3700))
    b = make_detector(detector_name, TINY[detector_name], random_state=3).fit(X, m, signal_region=(3300, 3700))
    np.testing.assert_array_equal(a.score(X), b.score(X))


def test_unknown_detector_and_parameter():
    with pytest.raises(ConfigError, match="unknown detector 'cwolla'.*cwola"):
        make_detector("cwolla", {})
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['n_trees'\]"):
        make_detector("cwola", {"n_trees": 3})


def test_cwola_mlp_option_trains():
    X, m, in_sr = _data(1500)
    det = make_detector("cwola", {"model": "mlp", "n_ensemble": 1, "mlp_params": {"epochs": 20, "hidden": [16], "batch_size": 128}},
                        random_state=0).fit(X, m, signal_region=(3300, 3700))
    s = det.score(X)
    assert s[in_sr].mean() > s[~in_sr].mean()
