"""Event generation with Pythia 8 + FastJet (a few dozen events per process)."""

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pythia8mc")

from sideband.pipeline.features import LHCO_FEATURE_COLUMNS  # noqa: E402
from sideband.pipeline.io import read_events  # noqa: E402
from sideband.workflows.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    for args in (["qcd", "--events", "30", "--chunk-size", "15", "--seed", "11"],
                 ["signal", "--events", "20", "--seed", "21"]):
        assert main(["generate", *args, "--out", str(out), "--scheduler", "synchronous", "--no-progress"]) == 0
    return out


@pytest.mark.parametrize("name,n,label", [("qcd", 30, 0.0), ("signal", 20, 1.0)])
def test_layouts(generated, name, n, label):
    feats = pd.read_hdf(generated / f"{name}_features.h5", "df")
    assert list(feats.columns) == LHCO_FEATURE_COLUMNS + ["label"] and len(feats) == n
    assert (feats["label"] == label).all()
    raw = pd.read_hdf(generated / f"{name}_particles.h5", "df")
    assert raw.shape == (n, 2101) and raw.dtypes.eq(np.float32).all()
    pts = raw.to_numpy()[:, :2100:3]
    assert (np.diff(pts, axis=1) <= 0).all()  # sorted by pT, zero padded
    events, _ = read_events(generated / f"{name}_features.h5")
    assert (events[["pt_j1", "pt_j2"]].max(axis=1) > 1200).all()  # the trigger-like selection
    meta = json.loads((generated / f"{name}_meta.json").read_text())
    assert meta["events_kept"] == n and meta["events_tried"] >= n and meta["cross_section_pb"] > 0
    assert meta["generator"].startswith("pythia8mc") and meta["seeds"]


def test_root_file_and_raw_file_reproduce_the_features(generated):
    # raw (massless) and ROOT particles give the same events; the massive features differ slightly
    raw, _ = read_events(generated / "qcd_particles.h5")
    root, _ = read_events(generated / "qcd.root")
    pd.testing.assert_frame_equal(raw, root, rtol=1e-5)
    feats, _ = read_events(generated / "qcd_features.h5")
    np.testing.assert_allclose(raw["mjj"], feats["mjj"], rtol=0.02)


def test_signal_is_a_resonance(generated):
    sig, _ = read_events(generated / "signal_features.h5")
    assert 2500 < np.median(sig["mjj"]) < 3800
    assert np.median(sig["mj2"]) > 250  # the heavy jet carries X (500 GeV)


def test_same_seed_same_events(generated, tmp_path):
    assert main(["generate", "qcd", "--events", "15", "--seed", "11", "--out", str(tmp_path),
                 "--scheduler", "synchronous", "--no-progress"]) == 0
    again = pd.read_hdf(tmp_path / "qcd_features.h5", "df")
    first = pd.read_hdf(generated / "qcd_features.h5", "df").iloc[:15]  # chunk 1 of the first run, seed 11
    pd.testing.assert_frame_equal(again, first)


def test_metadata_rebuilds_the_sample(generated):
    """The events of a seed depend on the chunk size: the metadata records it, and sideband's version."""
    meta = json.loads((generated / "qcd_meta.json").read_text())
    assert meta["process"]["chunk_size"] == 15 and meta["seeds"] == [11, 12] and meta["sideband"]


def test_generated_files_go_through_the_search(generated, tmp_path):
    from sideband.pipeline.config import DataConfig
    from sideband.pipeline.table import load_table

    data = DataConfig(path=str(generated / "qcd_features.h5"), chunk_size=1000, strict=True,
                      inject={"path": str(generated / "signal.root"), "n_events": 10})
    table = load_table(data, str(tmp_path), seed=1)
    assert table.n_events == 40 and table.n_injected == 10


def test_bad_signal_masses_are_user_errors(tmp_path, capsys):
    assert main(["generate", "signal", "--events", "5", "--m-res", "500", "--out", str(tmp_path),
                 "--scheduler", "synchronous"]) == 2
    assert "--m-res 500 must exceed" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["0", "-2", "899999999"])
def test_seeds_outside_pythias_range_are_user_errors(tmp_path, capsys, seed):
    """0 is a time-based seed in Pythia, negative seeds all give its default stream and seeds above
    9e8 are refused: none of them would make the sample its metadata says."""
    assert main(["generate", "qcd", "--events", "30", "--chunk-size", "10", "--seed", seed, "--out", str(tmp_path),
                 "--scheduler", "synchronous", "--no-progress"]) == 2
    assert f"--seed {seed}: chunk seeds must lie in 1..900000000" in capsys.readouterr().err


def test_demo_mixture(tmp_path):
    assert main(["generate", "demo", "--events", "12", "--n-signal", "4", "--seed", "31", "--chunk-size", "6",
                 "--out", str(tmp_path), "--name", "demo_events", "--scheduler", "synchronous", "--no-progress"]) == 0
    demo = pd.read_hdf(tmp_path / "demo_events_features.h5", "df")
    assert len(demo) == 16 and int(demo["label"].sum()) == 4
    assert demo["label"].iloc[:12].sum() < 4  # shuffled, not stacked
    meta = json.loads((tmp_path / "demo_events_meta.json").read_text())
    assert meta["process"]["qcd_events"] == 12 and meta["process"]["signal_events"] == 4
