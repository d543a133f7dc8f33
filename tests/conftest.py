"""Shared fixtures: small inputs built from the shipped demo data, and ../shared paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sideband.pipeline.config import demo_data_path

SHARED = Path(os.environ.get("SIDEBAND_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data" / "rnd"


def shared_file(name: str) -> Path:
    """Path of a ../shared/data/rnd file, or skip the test with the reason."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"needs {path} (the R&D dataset in ../shared/data); absent on this machine")
    return path


@pytest.fixture(scope="session")
def demo_frame() -> pd.DataFrame:
    return pd.read_hdf(demo_data_path(), "df")


@pytest.fixture(scope="session")
def small_h5(tmp_path_factory, demo_frame) -> Path:
    """12,000 demo events (with its injected signal) in the LHC Olympics feature layout."""
    path = tmp_path_factory.mktemp("data") / "small.h5"
    demo_frame.iloc[:12_000].to_hdf(path, key="df", mode="w")
    return path


@pytest.fixture
def fast_config():
    """A tiny, fast search configuration (2 folds, one small boosted-tree model)."""
    from sideband.workflows.configure import config_from_dict

    def make(data_path, **extra):
        raw = {
            "seed": 3,
            "data": {"path": str(data_path)},
            "regions": {"signal_region": [3300, 3700]},  # one window (the default is the scan)
            "stats": {"selections": [0.1, 0.02]},
            "detectors": {"cwola": {"folds": 2, "params": {"n_ensemble": 1, "hgb_params": {"max_iter": 30}}}},
            "compute": {"scheduler": "synchronous"},
        }
        for k, v in extra.items():
            raw[k] = v
        return config_from_dict(raw)

    return make


def lhco_jets(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random but physical two-jet events in the LHC Olympics feature layout."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in (1, 2):
        pt = rng.uniform(1200, 2000, n)
        phi = rng.uniform(-np.pi, np.pi, n) + (np.pi if i == 2 else 0)
        eta = rng.uniform(-1, 1, n)
        out[f"pxj{i}"], out[f"pyj{i}"], out[f"pzj{i}"] = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        out[f"mj{i}"] = rng.uniform(20, 500, n)
        t1 = rng.uniform(0.05, 0.5, n)
        out[f"tau1j{i}"], out[f"tau2j{i}"], out[f"tau3j{i}"] = t1, t1 * rng.uniform(0.2, 0.9, n), t1 * 0.1
    return out
