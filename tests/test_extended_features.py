"""Features beyond the standard layout: user columns carried from the input file, and the
extended N-subjettiness set tau_N^beta (N = 1..9, beta = 0.5, 1, 2) from particle inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sideband.pipeline.exceptions import ConfigError, InputFileError
from sideband.pipeline.features import (
    CANONICAL_COLUMNS,
    EXTENDED_BETAS,
    EXTENDED_COLUMNS,
    EXTENDED_JET_COLUMNS,
    EXTENDED_N_MAX,
    LHCO_FEATURE_COLUMNS,
    cluster_particles,
    jets_to_lhco_frame,
    nsubjettiness,
)
from sideband.pipeline.io import check_features, event_columns, load_events, read_events
from tests.conftest import lhco_jets, shared_file


def _with_extra(path, n=300, seed=0, fmt="fixed", **extra):
    frame = jets_to_lhco_frame(lhco_jets(n, seed), np.zeros(n))
    rng = np.random.default_rng(seed + 1)
    for name, kind in extra.items():
        frame[name] = {"noise": rng.normal(size=n), "int": rng.integers(0, 50, n), "str": "tag"}[kind]
    frame.to_hdf(path, key="df", mode="w", format=fmt)
    return frame


# ---- user columns: carried, listed, checked ---------------------------------------------------

@pytest.mark.parametrize("fmt", ["fixed", "table"])
def test_extra_numeric_columns_are_carried_and_strings_are_not(tmp_path, fmt):
    path = tmp_path / "extra.h5"
    frame = _with_extra(path, fmt=fmt, my_var="noise", n_tracks="int", run_tag="str")
    events, src = read_events(path, chunk_size=64)
    assert list(events.columns) == CANONICAL_COLUMNS + ["my_var", "n_tracks", "label"]
    np.testing.assert_allclose(events["my_var"], frame["my_var"].astype(np.float32))
    assert events["my_var"].dtype == np.float32 and events["n_tracks"].dtype.kind == "i"
    assert event_columns(path) == list(events.columns) == list(src.columns)


def test_a_column_named_like_a_computed_one_is_not_carried(tmp_path, caplog):
    path = tmp_path / "clash.h5"
    frame = jets_to_lhco_frame(lhco_jets(100), np.zeros(100))
    frame["mjj"] = 1.0  # would shadow the computed mjj
    frame.to_hdf(path, key="df", mode="w")
    events, _ = read_events(path)
    assert list(events.columns) == CANONICAL_COLUMNS + ["label"] and events["mjj"].min() > 100
    assert "mjj" in caplog.text and "rename" in caplog.text


def test_root_flat_branches_are_carried_but_not_jagged_counts(tmp_path):
    uproot = pytest.importorskip("uproot")
    import awkward as ak

    rng = np.random.default_rng(4)
    jets = lhco_jets(50, seed=4)
    with uproot.recreate(tmp_path / "flat.root") as f:
        f["events"] = jets | {"weight": rng.uniform(0.5, 1.5, 50), "label": np.zeros(50)}
    events, _ = read_events(tmp_path / "flat.root")
    assert list(events.columns) == CANONICAL_COLUMNS + ["weight", "label"]
    pts, etas, phis = [], [], []
    for _ in range(20):
        pts.append(np.r_[rng.uniform(80, 200, 12), rng.uniform(80, 200, 12)])
        etas.append(np.r_[rng.normal(0.3, 0.1, 12), rng.normal(-0.4, 0.1, 12)])
        phis.append(np.r_[rng.normal(0.0, 0.1, 12), rng.normal(3.0, 0.1, 12)])
    with uproot.recreate(tmp_path / "parts.root") as f:
        f.mktree("Events", {"part_pt": "var * float64", "part_eta": "var * float64", "part_phi": "var * float64",
                            "weight": "float64"})
        f["Events"].extend({"part_pt": ak.Array(pts), "part_eta": ak.Array(etas), "part_phi": ak.Array(phis),
                            "weight": np.arange(20.0)})
    events, _ = read_events(tmp_path / "parts.root")
    assert list(events.columns) == CANONICAL_COLUMNS + ["weight"]  # no uproot counter branch (npart_pt)
    np.testing.assert_array_equal(events["weight"], np.arange(20.0))
    assert event_columns(tmp_path / "parts.root") == list(events.columns)


def test_config_accepts_a_file_column_and_names_the_key_and_columns_otherwise(tmp_path):
    from sideband.pipeline.config import config_from_dict

    path = tmp_path / "extra.h5"
    _with_extra(path, my_var="noise")
    cfg = config_from_dict({"features": ["mj1", "my_var"], "data": {"path": str(path)}})
    assert cfg.features == ["mj1", "my_var"]
    with pytest.raises(ConfigError, match=r"features: unknown feature\(s\) \['my_vra'\] \(not in .*extra\.h5\); "
                                          r"choose from \[.*'my_var'\]"):
        config_from_dict({"features": ["mj1", "my_vra"], "data": {"path": str(path)}})
    # the injected signal must carry the column too
    sig = tmp_path / "sig.h5"
    _with_extra(sig)
    with pytest.raises(ConfigError, match=r"unknown feature\(s\) \['my_var'\] \(not in .*sig\.h5\)"):
        config_from_dict({"features": ["my_var"], "data": {"path": str(path), "inject": {"path": str(sig),
                                                                                         "n_events": 5}}})
    for bad, words in ((["mjj"], "defines the regions"), (["label"], "is the truth"), ([], "empty"),
                       (["mj1", "mj1"], "listed twice"),
                       (["mj1", "tau21_j1", "mj1_over_mjj"], r"mj1 and mj1_over_mjj together give mjj")):
        with pytest.raises(ConfigError, match=words):
            config_from_dict({"features": bad})
    with pytest.raises(ConfigError, match=r"detectors\.cwola\.features: delta_mj and delta_mj_over_mjj together"):
        config_from_dict({"detectors": {"cwola": {"features": ["delta_mj", "delta_mj_over_mjj", "tau21_j1"]}}})


def test_load_time_check_names_features_and_the_columns_available(tmp_path):
    path = tmp_path / "extra.h5"
    _with_extra(path, my_var="noise")
    cache = tmp_path / "cache"
    events, _ = load_events(path, cache_dir=cache, features=["mj1", "my_var"])
    with pytest.raises(InputFileError, match=r"extra\.h5: features: \['my_vr'\] not in the event table.*"
                                             r"did you mean 'my_var'.*available: \[.*'my_var'\].*'features'"):
        load_events(path, cache_dir=cache, features=["my_vr"])  # cached table: checked too
    events.loc[3, "my_var"] = np.nan
    with pytest.raises(InputFileError, match=r"column 'my_var' is NaN/inf in 1 of 300 events"):
        check_features(events, ["my_var"], path)


def test_search_uses_a_file_column_and_a_missing_one_is_exit_2(tmp_path, demo_frame, fast_config, capsys):
    import yaml

    from sideband.workflows.cli import main
    from sideband.workflows.search import run_search

    frame = demo_frame.iloc[:12_000].copy()
    # a user feature that carries the signal label's information (a strong discriminant)
    frame["my_var"] = frame["label"] + np.random.default_rng(0).normal(0, 0.3, len(frame))
    path = tmp_path / "data.h5"
    frame.to_hdf(path, key="df", mode="w")
    cfg = fast_config(path, features=["mj1", "my_var"])
    res = run_search(cfg, tmp_path / "out", unblind=True)
    assert [r for r in res["results"] if r["detector"] == "cwola"]
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(cfg.to_dict() | {"features": ["mj1", "my_varr"]}))
    assert main(["search", "--config", str(conf), "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "features" in err and "'my_var'" in err, err


# ---- the extended N-subjettiness set --------------------------------------------------------------

def _brute_force(jet, n, beta):
    """tau_N^beta of one jet (rows of px, py, pz, E) with fastjet's per-jet interface."""
    import fastjet
    import warnings

    pjs = [fastjet.PseudoJet(*map(float, p)) for p in jet]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="dcut and exclusive jets")
        cs = fastjet.ClusterSequence(pjs, fastjet.JetDefinition(fastjet.kt_algorithm, 1.5))
        axes = cs.exclusive_jets(n)
    pt = np.hypot(jet[:, 0], jet[:, 1])
    rap = 0.5 * np.log((jet[:, 3] + jet[:, 2]) / (jet[:, 3] - jet[:, 2]))
    phi = np.arctan2(jet[:, 1], jet[:, 0])
    d = [np.hypot(rap - a.rap(), (phi - a.phi() + np.pi) % (2 * np.pi) - np.pi) for a in axes]
    return float(np.sum(pt * np.min(d, axis=0) ** beta) / pt.sum())


def test_vectorised_nsubjettiness_equals_a_per_jet_computation():
    import awkward as ak
    import vector

    vector.register_awkward()
    rng = np.random.default_rng(7)
    jets = []
    for k in (1, 2, 3, 4, 6, 10, 11, 40, 1, 25):  # few constituents: tau_N = 0 for N >= k
        pt, eta, phi = rng.uniform(5, 300, k), rng.normal(0.2, 0.4, k), rng.normal(1.0, 0.4, k)
        jets.append(np.c_[pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta)])
    arr = ak.zip({c: ak.Array([j[:, i] for j in jets]) for i, c in enumerate(("px", "py", "pz", "E"))},
                 with_name="Momentum4D")
    taus = nsubjettiness(arr, EXTENDED_N_MAX, EXTENDED_BETAS)
    assert taus.shape == (len(jets), 3, EXTENDED_N_MAX)
    for j, jet in enumerate(jets):
        for b, beta in enumerate(EXTENDED_BETAS):
            for n in range(1, EXTENDED_N_MAX + 1):
                expect = _brute_force(jet, n, beta) if len(jet) > n else 0.0
                # a constituent that is an axis has dR ~ 1e-16 from rounding; dR^0.5 ~ 1e-8
                assert taus[j, b, n - 1] == pytest.approx(expect, rel=1e-6, abs=1e-9), (j, beta, n)


@pytest.fixture(scope="module")
def extended_qcd():
    """The first 300 events of the shared QCD particle file, clustered with the extended set."""
    raw = pd.read_hdf(shared_file("qcd_particles.h5"), "df", stop=300).to_numpy()
    trip = raw[:, :2100].reshape(len(raw), 700, 3)
    jets, keep = cluster_particles(trip[..., 0], trip[..., 1], trip[..., 2], substructure="extended")
    return jets, keep, raw[keep, -1]


def test_beta_1_and_n_up_to_3_reproduce_the_feature_file(extended_qcd):
    jets, keep, _ = extended_qcd
    ref = pd.read_hdf(shared_file("qcd_particles_features.h5"), "df", stop=300)[keep]
    assert keep.all()
    for i in (1, 2):
        for n in (1, 2, 3):
            np.testing.assert_allclose(jets[f"tau{n}_b1j{i}"], ref[f"tau{n}j{i}"], rtol=1e-9, atol=1e-15)
            np.testing.assert_array_equal(jets[f"tau{n}_b1j{i}"], jets[f"tau{n}j{i}"])


def test_tau_n_falls_with_n(extended_qcd):
    jets, _, _ = extended_qcd
    for i in (1, 2):
        for beta in EXTENDED_BETAS:
            tau = np.stack([jets[f"tau{n}_b{beta:g}j{i}"] for n in range(1, EXTENDED_N_MAX + 1)], axis=1)
            assert (tau >= 0).all() and (tau[:, 0] > 0).all()
            assert (np.diff(np.median(tau, axis=0)) < 0).all()  # the typical jet: strictly falling
            if beta == 2.0:  # per jet: with beta = 2 the kT axes act like centroids
                assert (np.diff(tau, axis=1) <= 1e-12).all()
    # exclusive kT axes are not minimised: for beta <= 1 tau_{N+1} > tau_N happens (as for the
    # file's own tau2 > tau1 in about 7% of jets); the test records that it stays a minority
    t1, t2 = jets["tau1_b1j1"], jets["tau2_b1j1"]
    assert 0 < np.mean(t2 > t1) < 0.2


def test_extended_columns_through_the_readers_and_a_feature_file(tmp_path, extended_qcd):
    jets, _, label = extended_qcd
    raw = tmp_path / "parts.h5"
    pd.read_hdf(shared_file("qcd_particles.h5"), "df", stop=300).to_hdf(raw, key="df", mode="w")
    events, _ = read_events(raw, substructure="extended", chunk_size=150)
    assert list(events.columns) == CANONICAL_COLUMNS + EXTENDED_COLUMNS + ["label"]
    standard, _ = read_events(raw)
    pd.testing.assert_frame_equal(events[standard.columns], standard)
    np.testing.assert_allclose(events["tau21_j1"], events["tau2_b1_j1"] / events["tau1_b1_j1"], rtol=1e-6)
    # mass-ordered like tau21_j1: j1 is the lighter jet
    lighter2 = jets["mj2"] < jets["mj1"]
    np.testing.assert_allclose(events["tau7_b0.5_j1"], np.where(lighter2, jets["tau7_b0.5j2"], jets["tau7_b0.5j1"]),
                               rtol=1e-6)
    # written once to a feature file, the set is read back without clustering
    feats = tmp_path / "feats.h5"
    frame = jets_to_lhco_frame(jets, label)
    assert list(frame.columns) == LHCO_FEATURE_COLUMNS + EXTENDED_JET_COLUMNS + ["label"]
    frame.to_hdf(feats, key="df", mode="w")
    again, _ = read_events(feats, substructure="extended")
    pd.testing.assert_frame_equal(again, events, rtol=1e-6)
    assert event_columns(raw, substructure="extended") == list(events.columns) == event_columns(feats)


def test_extended_needs_particles_or_the_columns(tmp_path):
    path = tmp_path / "std.h5"
    _with_extra(path)
    with pytest.raises(InputFileError, match=r"std\.h5: substructure 'extended' needs particle-level inputs"):
        read_events(path, substructure="extended")
    with pytest.raises(ConfigError, match="substructure: 'full' is not one of"):
        read_events(path, substructure="full")


def test_data_substructure_key_gives_the_search_the_extended_set(tmp_path):
    from sideband.pipeline.config import DataConfig
    from sideband.pipeline.table import load_table, read_table
    from sideband.workflows.configure import config_from_dict

    raw = tmp_path / "parts.h5"
    pd.read_hdf(shared_file("qcd_particles.h5"), "df", stop=200).to_hdf(raw, key="df", mode="w")
    feats = ["mj1", "tau5_b0.5_j1", "tau9_b2_j2"]
    with pytest.raises(ConfigError, match=r"features: unknown feature\(s\) \['tau5_b0.5_j1', 'tau9_b2_j2'\].*"
                                          r"data.substructure: extended"):
        config_from_dict({"features": feats, "data": {"path": str(raw)}})
    cfg = config_from_dict({"features": feats, "data": {"path": str(raw), "substructure": "extended"}})
    table = load_table(cfg.data, str(tmp_path / "cache"), seed=1, features=feats)
    events = read_table(table, ["mjj", *feats])
    assert len(events) > 100 and np.isfinite(events.to_numpy()).all()
    assert (events["tau9_b2_j2"] <= events["tau5_b0.5_j1"] * 10).all()  # read, not zeros
    assert events["tau9_b2_j2"].std() > 0
    with pytest.raises(ConfigError, match="data.substructure"):
        config_from_dict({"data": {"substructure": "full"}})
    assert DataConfig().substructure == "standard"


def test_large_chunks_are_clustered_in_batches_with_the_same_result(monkeypatch):
    """fastjet's multi-event call slows super-linearly with events: chunks are clustered in
    batches of CLUSTER_BATCH, which must not change a single feature."""
    import numpy as np

    from sideband.pipeline import features

    rng = np.random.default_rng(5)
    n, k = 60, 40
    pt = rng.exponential(50.0, (n, k)) * (rng.random((n, k)) < 0.8)
    pt[:, :2] = 1300.0
    eta = rng.normal(0, 1, (n, k))
    phi = rng.uniform(-np.pi, np.pi, (n, k))
    phi[:, 1] = phi[:, 0] + np.pi
    whole, keep = features.cluster_particles(pt, eta, phi, substructure="extended")
    monkeypatch.setattr(features, "CLUSTER_BATCH", 7)
    batched, keep_b = features.cluster_particles(pt, eta, phi, substructure="extended")
    assert keep.sum() > 0 and np.array_equal(keep, keep_b)
    for col, values in whole.items():
        np.testing.assert_array_equal(np.asarray(values), batched[col], err_msg=col)
