import logging

import numpy as np
import pandas as pd
import pytest

from sideband.pipeline.exceptions import InputFileError
from sideband.pipeline.features import LHCO_FEATURE_COLUMNS, jets_to_lhco_frame
from sideband.pipeline.io import detect_format, load_events, read_events
from tests.conftest import lhco_jets, shared_file


def _write_features(path, n=400, seed=0, label=True, fmt="fixed"):
    frame = jets_to_lhco_frame(lhco_jets(n, seed), np.zeros(n) if label else None)
    frame.to_hdf(path, key="df", mode="w", format=fmt)
    return frame


@pytest.mark.parametrize("fmt", ["fixed", "table"])
def test_lhco_features_reader_fixed_and_table(tmp_path, fmt):
    path = tmp_path / "ev.h5"
    _write_features(path, fmt=fmt)
    assert detect_format(path) == "lhco-features"
    events, src = read_events(path, chunk_size=64)  # many chunks
    whole, _ = read_events(path, chunk_size=10_000)
    assert len(events) == 400 and src.n_kept == 400
    pd.testing.assert_frame_equal(events, whole)
    assert events["mjj"].between(2000, 6000).mean() > 0.5
    assert "label" in events


def test_reader_matches_pandas_on_shipped_demo(demo_frame):
    from sideband.pipeline.config import demo_data_path
    from sideband.pipeline.features import events_from_jets

    events, _ = read_events(demo_data_path(), chunk_size=7000)
    expect = events_from_jets({c: demo_frame[c].to_numpy() for c in LHCO_FEATURE_COLUMNS}, demo_frame["label"])
    pd.testing.assert_frame_equal(events, expect)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(InputFileError, match="nope.h5: no such file"):
        read_events(tmp_path / "nope.h5")


def test_corrupt_hdf5(tmp_path):
    path = tmp_path / "bad.h5"
    _write_features(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated
    with pytest.raises(InputFileError, match="bad.h5"):
        read_events(path)


def test_not_hdf5_or_root(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("hello")
    with pytest.raises(InputFileError, match="neither HDF5 nor ROOT"):
        read_events(path)


def test_wrong_key(tmp_path):
    path = tmp_path / "ev.h5"
    jets_to_lhco_frame(lhco_jets(50)).to_hdf(path, key="events", mode="w")
    with pytest.raises(InputFileError, match=r"no key 'df'.*\['events'\]"):
        read_events(path)
    assert len(read_events(path, key="events")[0]) == 50


def test_missing_columns(tmp_path):
    path = tmp_path / "ev.h5"
    frame = jets_to_lhco_frame(lhco_jets(50)).rename(columns={"mj1": "mass_j1"})
    frame.to_hdf(path, key="df", mode="w")
    with pytest.raises(InputFileError, match=r"missing columns \['mj1'\].*rename 'mass_j1' -> 'mj1'"):
        read_events(path)


def test_mev_is_detected(tmp_path):
    path = tmp_path / "mev.h5"
    frame = jets_to_lhco_frame(lhco_jets(100))
    for c in frame.columns:
        if c[:2] in ("px", "py", "pz") or c.startswith("mj"):
            frame[c] *= 1000.0
    frame.to_hdf(path, key="df", mode="w")
    with pytest.raises(InputFileError, match="looks like MeV"):
        read_events(path)


def test_nonfinite_rows_dropped_with_count(tmp_path, caplog):
    path = tmp_path / "nan.h5"
    frame = jets_to_lhco_frame(lhco_jets(100))
    frame.loc[[3, 7], "tau1j1"] = 0.0  # tau21 undefined
    frame.loc[[3, 7], "mj1"] = 1.0  # make sure jet 1 is the lighter one
    frame.loc[11, "pxj2"] = np.nan
    frame.to_hdf(path, key="df", mode="w")
    with caplog.at_level(logging.WARNING):
        events, src = read_events(path)
    assert len(events) == 97 and src.n_nonfinite == 3
    assert "3 of 100 events have NaN/inf" in caplog.text and "nan.h5" in caplog.text
    with pytest.raises(InputFileError, match="3 of 100"):
        read_events(path, strict=True)


def test_parquet_cache_keyed_by_content(tmp_path):
    path = tmp_path / "ev.h5"
    _write_features(path, n=200, seed=1)
    cache = tmp_path / "cache"
    a, sa = load_events(path, cache_dir=cache)
    files = sorted(cache.glob("*.parquet"))
    assert len(files) == 1
    b, sb = load_events(path, cache_dir=cache)  # cache hit
    pd.testing.assert_frame_equal(a, b)
    assert sa == sb
    _write_features(path, n=150, seed=2)  # new content, same name
    c, _ = load_events(path, cache_dir=cache)
    assert len(c) == 150 and len(list(cache.glob("*.parquet"))) == 2


@pytest.mark.parametrize("layout", ["TTree", "RNTuple"])
def test_root_flat_jet_branches(tmp_path, layout):
    uproot = pytest.importorskip("uproot")
    jets = lhco_jets(300, seed=5)
    path = tmp_path / "flat.root"
    branches = {k: v for k, v in jets.items()} | {"label": np.ones(300)}
    with uproot.recreate(path) as f:
        if layout == "TTree":
            f.mktree("events", {k: "float64" for k in branches})
            f["events"].extend(branches)
        else:
            f["events"] = branches
    h5 = tmp_path / "same.h5"
    jets_to_lhco_frame(jets, np.ones(300)).to_hdf(h5, key="df", mode="w")
    events, src = read_events(path, chunk_size=100)
    assert src.fmt == "root"
    pd.testing.assert_frame_equal(events, read_events(h5)[0])


def test_root_jagged_particles_and_wrong_tree(tmp_path):
    uproot = pytest.importorskip("uproot")
    import awkward as ak

    rng = np.random.default_rng(2)
    pts, etas, phis = [], [], []
    for _ in range(20):
        n = 12
        pts.append(np.r_[rng.uniform(80, 200, n), rng.uniform(80, 200, n)])
        etas.append(np.r_[rng.normal(0.3, 0.1, n), rng.normal(-0.4, 0.1, n)])
        phis.append(np.r_[rng.normal(0.0, 0.1, n), rng.normal(3.0, 0.1, n)])
    path = tmp_path / "parts.root"
    with uproot.recreate(path) as f:
        f["Events"] = {"part_pt": ak.Array(pts), "part_eta": ak.Array(etas), "part_phi": ak.Array(phis)}
    events, src = read_events(path, tree="Events")
    assert len(events) == 20 and src.fmt == "root"
    assert (events["pt_j1"] > 500).all()
    with pytest.raises(InputFileError, match="no TTree 'Delphes'"):
        read_events(path, tree="Delphes")


def test_raw_particles_reproduce_feature_file():
    raw = shared_file("qcd_particles.h5")
    ref = shared_file("qcd_particles_features.h5")
    events, src = read_events(raw, chunk_size=250)
    expect, _ = read_events(ref)
    assert src.fmt == "lhco-raw" and src.n_no_dijet == 0
    n = 1000
    pd.testing.assert_frame_equal(events.iloc[:n], expect.iloc[:n], rtol=1e-5)


# ---- diagnoses that name the column, the problem and the file ------------------------------

def _frame(n=200, seed=0):
    return jets_to_lhco_frame(lhco_jets(n, seed))


@pytest.mark.parametrize("fmt", ["fixed", "table"])
def test_string_feature_column_is_named_not_called_truncated(tmp_path, fmt):
    path = tmp_path / "s.h5"
    frame = _frame()
    frame["tau2j1"] = frame["tau2j1"].astype(str)
    frame.to_hdf(path, key="df", mode="w", format=fmt)
    with pytest.raises(InputFileError, match=r"s\.h5: column 'tau2j1' holds strings, not numbers.*to_numeric") as exc:
        read_events(path)
    assert "truncated" not in str(exc.value)


def test_unused_string_column_is_ignored_and_all_rows_are_read(tmp_path):
    # a string block stored before the numbers used to cut the frame to one row
    path = tmp_path / "extra.h5"
    frame = _frame(300)
    frame.insert(0, "run_tag", "2018B")
    frame.to_hdf(path, key="df", mode="w")
    events, src = read_events(path, chunk_size=64)
    assert len(events) == 300 and src.n_read == 300


@pytest.mark.parametrize(("value", "words"), [(np.nan, "is NaN in all 200 events"), (np.inf, "is inf in all 200")])
def test_all_nonfinite_column_is_named(tmp_path, value, words):
    path = tmp_path / "nan.h5"
    _frame().assign(tau3j2=value).to_hdf(path, key="df", mode="w")
    with pytest.raises(InputFileError, match=rf"nan\.h5: column 'tau3j2' {words}.*re-create") as exc:
        read_events(path)
    assert "two jets" not in str(exc.value)


def test_constant_column_is_named(tmp_path):
    path = tmp_path / "const.h5"
    _frame().assign(mj2=80.0).to_hdf(path, key="df", mode="w")
    with pytest.raises(InputFileError, match=r"const\.h5: column 'mj2' has the same value \(80\) in all 200 events"):
        read_events(path)


def test_constant_label_is_fine(tmp_path):
    path = tmp_path / "sig.h5"
    jets_to_lhco_frame(lhco_jets(50), np.ones(50)).to_hdf(path, key="df", mode="w")
    events, _ = read_events(path)
    assert (events["label"] == 1).all()


def test_nonfinite_warning_and_strict_error_name_the_columns(tmp_path, caplog):
    path = tmp_path / "inf.h5"
    frame = _frame(100)
    frame.loc[:3, "pxj1"] = np.inf
    frame.loc[10, "tau2j2"] = np.nan
    frame.to_hdf(path, key="df", mode="w")
    with caplog.at_level(logging.WARNING):
        events, src = read_events(path)
    assert len(events) == 95 and src.n_nonfinite == 5
    assert "5 of 100 events have NaN/inf features (pxj1: 4 inf, tau2j2: 1 NaN)" in caplog.text
    with pytest.raises(InputFileError, match=r"pxj1: 4 inf, tau2j2: 1 NaN\).*without --strict"):
        read_events(path, strict=True)


def test_undefined_ratios_are_named_by_the_derived_column(tmp_path):
    path = tmp_path / "tau.h5"
    frame = _frame(100)
    frame.loc[[3, 7], "tau1j1"] = 0.0
    frame.loc[[3, 7], "mj1"] = 1.0  # jet 1 stays the lighter one
    frame.to_hdf(path, key="df", mode="w")
    with pytest.raises(InputFileError, match=r"2 of 100 events .*tau21_j1: 2.*tau1 = 0"):
        read_events(path, strict=True)


def test_empty_inputs(tmp_path):
    (tmp_path / "zero.h5").write_bytes(b"")
    with pytest.raises(InputFileError, match=r"zero\.h5: is empty \(0 bytes\)"):
        read_events(tmp_path / "zero.h5")
    _frame().iloc[:0].to_hdf(tmp_path / "rows.h5", key="df", mode="w")
    with pytest.raises(InputFileError, match=r"rows\.h5: holds no events \(0 rows\)"):
        read_events(tmp_path / "rows.h5")
    with pytest.raises(InputFileError, match="is a directory"):
        load_events(tmp_path, cache_dir=tmp_path / "cache")


def test_plain_hdf5_dataset_and_format_mismatch(tmp_path):
    import h5py

    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["df"] = np.zeros((5, 14))
    with pytest.raises(InputFileError, match="key 'df' is a plain HDF5 dataset.*to_hdf"):
        read_events(path)
    good = tmp_path / "good.h5"
    _frame().to_hdf(good, key="df", mode="w")
    with pytest.raises(InputFileError, match="is an HDF5 file but the format is set to 'root'.*data.format"):
        read_events(good, "root")


def test_root_jagged_branch_and_several_trees(tmp_path):
    uproot = pytest.importorskip("uproot")
    import awkward as ak

    jets = lhco_jets(30)
    jets["mj1"] = ak.Array([[m] * (1 + i % 2) for i, m in enumerate(jets["mj1"])])
    with uproot.recreate(tmp_path / "j.root") as f:
        f["events"] = jets
    with pytest.raises(InputFileError, match="column 'mj1' holds variable-length arrays.*one number per event"):
        read_events(tmp_path / "j.root")
    with uproot.recreate(tmp_path / "two.root") as f:
        f["a"] = lhco_jets(5)
        f["b"] = lhco_jets(5)
    with pytest.raises(InputFileError, match=r"holds several trees \['a', 'b'\]; set data.tree"):
        read_events(tmp_path / "two.root")
    assert len(read_events(tmp_path / "two.root", tree="b")[0]) == 5


def test_event_table_of_another_hdf5_key_in_the_same_file_is_another_table(tmp_path):
    """One file read under two keys into one cache: each run analyses its own key's events."""
    from sideband.pipeline.config import DataConfig
    from sideband.pipeline.table import load_table, read_table

    path = tmp_path / "two.h5"
    for key, n, seed in (("a", 500, 1), ("b", 800, 2)):
        jets_to_lhco_frame(lhco_jets(n, seed=seed)).to_hdf(path, key=key, mode="a")
    cache = tmp_path / "cache"
    tables = {key: load_table(DataConfig(path=str(path), key=key), str(cache), seed=0) for key in ("a", "b")}
    assert tables["a"].path != tables["b"].path
    for key, n in (("a", 500), ("b", 800)):
        assert tables[key].n_events == n and len(read_table(tables[key])) == n


def test_repeated_events_are_counted_and_flagged(tmp_path, caplog):
    """Copies of events make k-fold detectors test on their training events (a resampled file found
    local Z 37 in pure background): a warning with the count, an error with data.strict."""
    from sideband.pipeline.config import DataConfig
    from sideband.pipeline.table import load_table

    frame = jets_to_lhco_frame(lhco_jets(400, seed=3))
    path = tmp_path / "twice.h5"
    pd.concat([frame, frame.iloc[:50]], ignore_index=True).to_hdf(path, key="df", mode="w")
    with caplog.at_level(logging.WARNING):
        table = load_table(DataConfig(path=str(path)), str(tmp_path / "c1"), seed=0)
    assert table.sources[0]["n_duplicates"] == 50 and "50 of 450 events" in caplog.text
    with pytest.raises(InputFileError, match="repeat another event exactly"):
        load_table(DataConfig(path=str(path), strict=True), str(tmp_path / "c2"), seed=0)
    clean = tmp_path / "once.h5"
    frame.to_hdf(clean, key="df", mode="w")
    assert load_table(DataConfig(path=str(clean)), str(tmp_path / "c3"), seed=0).sources[0]["n_duplicates"] == 0
