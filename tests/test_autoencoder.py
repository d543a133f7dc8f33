"""Autoencoder scores: reconstruction error, and the encoder-only latent score (plain or variational)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from sideband.detectors.autoencoder import Autoencoder
from sideband.pipeline.exceptions import ConfigError
from sideband.workflows.configure import config_from_dict

TINY = {"hidden": [8], "latent": 2, "epochs": 15, "batch_size": 128, "random_state": 4}


def _data(n=3000, seed=0):
    """Correlated background in 4 features (a 2-d latent structure); signal off that structure."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    X = np.c_[z, z @ [[1.0, 0.5], [-0.5, 1.0]]] + 0.1 * rng.normal(size=(n, 4))
    m = rng.uniform(2800, 4200, n)
    signal = rng.random(n) < 0.1
    X[signal] = rng.normal(size=(signal.sum(), 4)) * 2.5 + [3.0, -3.0, 3.0, 3.0]
    return X.astype(np.float32), m, signal


@pytest.fixture(scope="module")
def fitted():
    X, m, signal = _data()
    fit = {}
    for name, extra in [("plain", {}), ("latent", {"score_type": "latent"}),
                        ("vae", {"score_type": "latent", "variational": True, "beta": 0.5})]:
        fit[name] = Autoencoder(**TINY, **extra, train_on="all").fit(X, m, signal_region=(3300, 3700))
    return X, signal, fit


def test_params_model_lists_every_init_argument():
    assert set(Autoencoder.Params.model_fields) == set(Autoencoder().get_params())


def test_score_type_is_validated_by_the_config():
    with pytest.raises(ConfigError, match="score_type"):
        config_from_dict({"detectors": {"autoencoder": {"params": {"score_type": "kl"}}}})
    cfg = config_from_dict({"detectors": {"autoencoder": {"params": {"score_type": "latent", "variational": True}}}})
    assert cfg.detectors["autoencoder"].params["score_type"] == "latent"


def test_latent_score_is_the_standardised_squared_latent_means(fitted):
    X, _, fit = fitted
    det = fit["latent"]
    with torch.no_grad():
        mu = det.model_.latent_means(torch.tensor(X)).numpy().astype(np.float64)
    a = (mu - mu.mean(axis=0)) / mu.std(axis=0)  # trained on all events: X is its training sample
    np.testing.assert_allclose(det.score(X), (a ** 2).sum(axis=1), rtol=1e-3, atol=1e-4)
    assert det.score(X).mean() == pytest.approx(det.latent, rel=1e-3)


def test_variational_latent_score_is_the_sum_of_squared_posterior_means(fitted):
    """AXOL1TL: sum of mu^2, as they are (the KL term has already centred them)."""
    X, _, fit = fitted
    det = fit["vae"]
    with torch.no_grad():
        mu = det.model_.latent_means(torch.tensor(X)).numpy().astype(np.float64)
    np.testing.assert_allclose(det.score(X), (mu ** 2).sum(axis=1), rtol=1e-4, atol=1e-5)
    assert det.model_.logvar is not None and fit["plain"].model_.logvar is None


def test_every_score_finds_an_off_structure_signal(fitted):
    X, signal, fit = fitted
    for name, det in fit.items():
        assert roc_auc_score(signal, det.score(X)) > 0.8, name


def test_both_scores_from_one_model(fitted):
    """The latent scaling is fitted whatever score_type is: the export can compare the two."""
    X, _, fit = fitted
    plain, latent = fit["plain"].model_, fit["latent"].model_
    with torch.no_grad():
        recon = plain.reconstruction(torch.tensor(X)).squeeze(1).numpy()
        plain.kind = "latent"
        lat = plain(torch.tensor(X)).squeeze(1).numpy()
        plain.kind = "reconstruction"
    np.testing.assert_allclose(fit["plain"].score(X), recon, rtol=1e-6)
    assert lat.mean() == pytest.approx(2.0, rel=1e-3)
    assert latent.kind == "latent"


def test_save_and_load_keep_the_score(fitted, tmp_path):
    X, _, fit = fitted
    for name, det in fit.items():
        det.save(tmp_path / f"{name}.model")
        back = Autoencoder.load(tmp_path / f"{name}.model")
        assert back.get_params() == det.get_params()
        np.testing.assert_array_equal(back.score(X), det.score(X))


def test_unknown_score_type_is_refused_at_fit():
    X, m, _ = _data(200)
    with pytest.raises(ValueError, match="score_type"):
        Autoencoder(hidden=[4], epochs=1, score_type="kl").fit(X, m, signal_region=(3300, 3700))
