"""The bad-input catalogue: each case gives exit code 2, one clear line, and leaves earlier outputs."""

import numpy as np
import pytest
import yaml

from sideband.pipeline.features import jets_to_lhco_frame
from tests.conftest import lhco_jets
from sideband.workflows.cli import main

FAST = {"seed": 1, "stats": {"selections": [0.1]}, "regions": {"signal_region": [3300, 3700]},
        "detectors": {"cwola": {"folds": 2, "params": {"n_ensemble": 1, "hgb_params": {"max_iter": 10}}}},
        "compute": {"scheduler": "synchronous"}}


def _frame(n=600, seed=0, mjj_scale=1.0):
    frame = jets_to_lhco_frame(lhco_jets(n, seed))
    return frame


def _h5(path, frame, key="df"):
    frame.to_hdf(path, key=key, mode="w")
    return path


def _config(tmp_path, **changes):
    raw = yaml.safe_load(yaml.safe_dump(FAST))
    for k, v in changes.items():
        raw[k] = v
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(tmp_path, capsys, data, *extra, config=None):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    earlier = out / "results.json"
    earlier.write_text('{"from": "an earlier run"}\n')
    args = ["search", "--config", str(config or _config(tmp_path)), "--out", str(out), "--no-progress"]
    if data is not None:
        args += ["--data", str(data)]
    code = main(args + list(extra))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("sideband: error:") and len(err.splitlines()) == 1, err
    assert earlier.read_text() == '{"from": "an earlier run"}\n'  # nothing already computed is lost
    return err


def test_missing_file(tmp_path, capsys):
    assert "nope.h5: no such file" in _run(tmp_path, capsys, tmp_path / "nope.h5")


def test_truncated_hdf5(tmp_path, capsys, small_h5):
    bad = tmp_path / "trunc.h5"
    bad.write_bytes(small_h5.read_bytes()[:200_000])
    err = _run(tmp_path, capsys, bad)
    assert "trunc.h5" in err and ("truncated" in err or "corrupt" in err)


def test_garbage_file(tmp_path, capsys):
    bad = tmp_path / "events.h5"
    bad.write_bytes(b"\x00" * 1000)
    assert "events.h5: neither HDF5 nor ROOT" in _run(tmp_path, capsys, bad)


def test_truncated_root(tmp_path, capsys):
    import uproot

    path = tmp_path / "ev.root"
    jets = lhco_jets(300)
    with uproot.recreate(path) as f:
        f.mktree("events", {k: "float64" for k in jets})
        f["events"].extend(jets)
    path.write_bytes(path.read_bytes()[:3000])
    err = _run(tmp_path, capsys, path)
    assert "ev.root" in err and "truncated or corrupt" in err


def test_wrong_hdf5_key(tmp_path, capsys):
    err = _run(tmp_path, capsys, _h5(tmp_path / "k.h5", _frame(), key="events"))
    assert "k.h5: no key 'df'" in err and "['events']" in err and "data.key" in err


def test_wrong_root_tree(tmp_path, capsys):
    import uproot

    path = tmp_path / "t.root"
    jets = lhco_jets(100)
    with uproot.recreate(path) as f:
        f.mktree("events", {k: "float64" for k in jets})
        f["events"].extend(jets)
    cfg = _config(tmp_path, data={"tree": "Delphes"})
    err = _run(tmp_path, capsys, path, config=cfg)
    assert "t.root: no TTree 'Delphes'" in err and "events" in err


def test_missing_column(tmp_path, capsys):
    err = _run(tmp_path, capsys, _h5(tmp_path / "c.h5", _frame().drop(columns=["tau2j2"])))
    assert "c.h5: missing columns ['tau2j2']" in err


def test_misspelled_column(tmp_path, capsys):
    err = _run(tmp_path, capsys, _h5(tmp_path / "c.h5", _frame().rename(columns={"mj1": "mJ1"})))
    assert "missing columns ['mj1']" in err and "rename 'mJ1' -> 'mj1'" in err


def test_negative_masses(tmp_path, capsys):
    frame = _frame()
    frame.loc[:20, "mj1"] = -50.0
    err = _run(tmp_path, capsys, _h5(tmp_path / "neg.h5", frame))
    assert "neg.h5: 21 negative jet masses" in err


def test_mev_instead_of_gev(tmp_path, capsys):
    frame = _frame()
    for c in frame.columns:
        if c[:2] in ("px", "py", "pz") or c.startswith("mj"):
            frame[c] *= 1000
    err = _run(tmp_path, capsys, _h5(tmp_path / "mev.h5", frame))
    assert "mev.h5" in err and "looks like MeV" in err and "divide" in err


def test_nan_features_strict(tmp_path, capsys, demo_frame):
    frame = demo_frame.iloc[:3000].copy()
    frame.loc[:4, "tau1j1"] = np.nan
    err = _run(tmp_path, capsys, _h5(tmp_path / "nan.h5", frame), "--strict")
    assert "nan.h5: 5 of 3000 events have NaN/inf" in err and "--strict" in err


def test_empty_signal_region(tmp_path, capsys, demo_frame):
    frame = demo_frame.iloc[:4000]
    events_mjj = _mjj(frame)
    frame = frame[(events_mjj < 3300) | (events_mjj > 3700)]
    err = _run(tmp_path, capsys, _h5(tmp_path / "nosr.h5", frame))
    assert "signal region of window 3300-3700 GeV holds 0 events" in err and "nosr.h5" in err


def test_empty_sidebands(tmp_path, capsys, demo_frame):
    frame = demo_frame.iloc[:4000]
    mjj = _mjj(frame)
    frame = frame[(mjj >= 3300) & (mjj < 3700)]
    cfg = _config(tmp_path, fit={"range": [3300, 4000]}, regions={"signal_region": [3300, 3700],
                                                                 "sideband_width": 300})
    err = _run(tmp_path, capsys, _h5(tmp_path / "nosb.h5", frame), config=cfg)
    assert "sidebands of window 3300-3700 GeV holds 0 events" in err


def test_too_few_events_for_folds(tmp_path, capsys, demo_frame):
    frame = demo_frame.iloc[:60]
    cfg = _config(tmp_path, detectors={"cwola": {"folds": 10}})
    err = _run(tmp_path, capsys, _h5(tmp_path / "few.h5", frame), config=cfg)
    assert "fewer than the 20 needed for 10 folds" in err


def test_signal_file_without_events_in_sr(tmp_path, capsys, small_h5, demo_frame):
    sig = demo_frame[demo_frame.label == 1]
    sig = sig[_mjj(sig) < 3000]
    assert len(sig) > 0
    err = _run(tmp_path, capsys, small_h5, "--inject", str(_h5(tmp_path / "lowsig.h5", sig)), "--n-inject",
               str(len(sig)))
    assert "lowsig.h5: none of its" in err and "3300-3700" in err


def test_injecting_more_than_the_file_holds(tmp_path, capsys, small_h5, demo_frame):
    sig = _h5(tmp_path / "sig.h5", demo_frame[demo_frame.label == 1])
    err = _run(tmp_path, capsys, small_h5, "--inject", str(sig), "--n-inject", "100000")
    assert "sig.h5: asked to inject 100000 events" in err


def test_config_unknown_key(tmp_path, capsys, small_h5):
    cfg = _config(tmp_path, regoins={"signal_region": [3300, 3700]})
    err = _run(tmp_path, capsys, small_h5, config=cfg)
    assert "cfg.yaml" in err and "regoins: unknown key" in err


def test_config_wrong_type(tmp_path, capsys, small_h5):
    cfg = _config(tmp_path, stats={"selections": "ten percent"})
    err = _run(tmp_path, capsys, small_h5, config=cfg)
    assert "stats.selections: Input should be a valid list" in err


def test_window_outside_data_range(tmp_path, capsys, small_h5):
    cfg = _config(tmp_path, fit={"range": [2800, 12000]}, regions={"signal_region": [10000, 10400]})
    err = _run(tmp_path, capsys, small_h5, config=cfg)
    assert "signal region 10000-10400 GeV lies outside the data's mjj range" in err


def test_unwritable_output_directory(tmp_path, capsys, small_h5):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["search", "--config", str(_config(tmp_path)), "--data", str(small_h5),
                 "--out", str(blocker / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "output directory is not writable" in err and "--out" in err


def _mjj(frame):
    from sideband.pipeline.features import LHCO_FEATURE_COLUMNS, events_from_jets

    return events_from_jets({c: frame[c].to_numpy() for c in LHCO_FEATURE_COLUMNS})["mjj"].to_numpy()
