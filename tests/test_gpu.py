"""Training on CUDA agrees with the CPU (marked ``gpu``: out of the default run, skipped without CUDA).

Run on a GPU machine with ``python -m pytest -m gpu``. Tolerances: CUDA kernels are not
bit-identical to the CPU ones (and some are non-deterministic), so trained models agree
statistically, not exactly: validation losses within 5% and score rankings (Spearman) > 0.9.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible)")]


def _data(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.uniform(2800, 4200, n)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    in_sr = (m >= 3300) & (m < 3700)
    X[in_sr & (rng.random(n) < 0.2)] += 1.5
    return X, m


def _spearman(a, b):
    from scipy.stats import spearmanr

    return spearmanr(a, b).statistic


def test_flow_trains_on_cuda_like_on_cpu():
    from sideband.detectors._flow import ConditionalFlow

    X, m = _data()
    c = (np.log(m) - np.log(m).mean()) / np.log(m).std()
    p = {"n_transforms": 2, "hidden": 16, "epochs": 8, "n_average": 1}
    cpu = ConditionalFlow(p, device="cpu", seed=1).fit(X, c)
    gpu = ConditionalFlow(p, device="cuda", seed=1).fit(X, c)
    assert min(gpu.history_["val_loss"]) == pytest.approx(min(cpu.history_["val_loss"]), rel=0.05)


@pytest.mark.parametrize("name,params", [
    ("autoencoder", {"hidden": [8], "latent": 2, "epochs": 10}),
    ("cwola", {"model": "mlp", "n_ensemble": 1, "mlp_params": {"hidden": [16, 16], "epochs": 10}}),
])
def test_torch_detectors_agree_between_cuda_and_cpu(name, params):
    from sideband.detectors.base import make_detector

    X, m = _data()
    scores = {}
    for device in ("cpu", "cuda"):
        det = make_detector(name, params | {"device": device}, random_state=3)
        det.fit(X, m, signal_region=(3300, 3700))
        scores[device] = det.score(X)
    assert _spearman(scores["cpu"], scores["cuda"]) > 0.9


def test_small_search_with_device_cuda(small_h5, fast_config, tmp_path):
    from sideband.workflows.search import run_search

    cfg = fast_config(small_h5, detectors={"autoencoder": {"folds": 2, "params": {"hidden": [8], "epochs": 3}}},
                      compute={"scheduler": "synchronous", "device": "cuda"})
    res = run_search(cfg, tmp_path / "out")
    assert res["device"] == "cuda" and any(r["detector"] == "autoencoder" for r in res["results"])
