import numpy as np
import pytest

from sideband.pipeline.features import CANONICAL_COLUMNS, cluster_particles, events_from_jets
from tests.conftest import lhco_jets


def test_mjj_of_back_to_back_massless_jets():
    # Two massless 1.5 TeV jets back to back at eta = 0: mjj = 3 TeV exactly.
    jets = {"pxj1": [1500.0], "pyj1": [0.0], "pzj1": [0.0], "mj1": [0.0],
            "pxj2": [-1500.0], "pyj2": [0.0], "pzj2": [0.0], "mj2": [0.0]}
    for i in (1, 2):
        jets |= {f"tau1j{i}": [0.4], f"tau2j{i}": [0.2], f"tau3j{i}": [0.1]}
    ev = events_from_jets({k: np.array(v) for k, v in jets.items()})
    assert list(ev.columns) == CANONICAL_COLUMNS
    assert ev["mjj"].iloc[0] == pytest.approx(3000.0, rel=1e-6)
    assert ev["tau21_j1"].iloc[0] == pytest.approx(0.5)
    assert ev.dtypes.eq(np.float32).all()


def test_jets_are_ordered_by_mass():
    jets = lhco_jets(500, seed=1)
    ev = events_from_jets(jets)
    assert (ev["mj1"] <= ev["mj2"]).all()
    np.testing.assert_allclose(ev["delta_mj"], ev["mj2"] - ev["mj1"], rtol=1e-4, atol=1e-3)
    lighter_is_2 = jets["mj2"] < jets["mj1"]
    expect = np.where(lighter_is_2, jets["tau2j2"] / jets["tau1j2"], jets["tau2j1"] / jets["tau1j1"])
    np.testing.assert_allclose(ev["tau21_j1"], expect, rtol=1e-5)
    # the jet masses in units of m_jj (inputs whose pass rate varies less with m_jj)
    np.testing.assert_allclose(ev["mj1_over_mjj"], ev["mj1"] / ev["mjj"], rtol=1e-5)
    np.testing.assert_allclose(ev["delta_mj_over_mjj"], ev["delta_mj"] / ev["mjj"], rtol=1e-4, atol=1e-6)


def test_zero_tau1_gives_nan_not_inf():
    jets = lhco_jets(3)
    jets["tau1j1"][0] = 0.0
    jets["mj1"][0], jets["mj2"][0] = 10.0, 100.0  # jet 1 is the lighter one
    ev = events_from_jets(jets)
    assert np.isnan(ev["tau21_j1"].iloc[0])
    assert np.isfinite(ev["tau21_j1"].iloc[1:]).all()


def test_clustering_two_collimated_sprays():
    # Two sprays of 10 particles around eta=0, phi=0 and phi=pi: two jets, back to back.
    rng = np.random.default_rng(0)
    n = 10
    pt = np.concatenate([rng.uniform(50, 200, n), rng.uniform(50, 200, n)])
    eta = np.concatenate([rng.normal(0, 0.1, n), rng.normal(0, 0.1, n)])
    phi = np.concatenate([rng.normal(0, 0.1, n), rng.normal(np.pi - 0.2, 0.1, n)])
    pad = lambda a: np.concatenate([a, np.zeros(5)])[None, :]  # noqa: E731 - zero padding as in LHCO
    jets, keep = cluster_particles(pad(pt), pad(eta), pad(phi))
    assert keep.tolist() == [True]
    total = pt.sum()
    jet_pt = np.hypot(jets["pxj1"], jets["pyj1"]) + np.hypot(jets["pxj2"], jets["pyj2"])
    assert jet_pt[0] == pytest.approx(total, rel=0.05)
    for i in (1, 2):
        t1, t2, t3 = jets[f"tau1j{i}"][0], jets[f"tau2j{i}"][0], jets[f"tau3j{i}"][0]
        assert 0 < t3 <= t2 <= t1 < 1


def test_event_with_one_jet_is_not_kept():
    pt = np.array([[500.0, 300.0, 0.0]])
    eta = np.array([[0.0, 0.05, 0.0]])
    phi = np.array([[0.0, 0.05, 0.0]])
    jets, keep = cluster_particles(pt, eta, phi)
    assert keep.tolist() == [False]
    assert len(jets["pxj1"]) == 0


def test_extended_and_extra_columns_follow_the_canonical_ones_with_label_last():
    jets = lhco_jets(50, seed=3)
    rng = np.random.default_rng(3)
    for i in (1, 2):
        jets[f"tau5_b0.5j{i}"] = rng.uniform(0, 0.1, 50)
    ev = events_from_jets(jets, np.zeros(50), {"my_var": rng.normal(size=50), "n_tracks": np.arange(50)})
    assert list(ev.columns) == CANONICAL_COLUMNS + ["tau5_b0.5_j1", "tau5_b0.5_j2", "my_var", "n_tracks", "label"]
    lighter_is_2 = jets["mj2"] < jets["mj1"]
    np.testing.assert_allclose(ev["tau5_b0.5_j1"], np.where(lighter_is_2, jets["tau5_b0.5j2"], jets["tau5_b0.5j1"]),
                               rtol=1e-6)
    assert ev["my_var"].dtype == np.float32 and ev["n_tracks"].dtype.kind == "i"
