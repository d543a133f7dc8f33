import json

import pytest
import yaml

from sideband.workflows.cli import main


@pytest.fixture
def fast_yaml(tmp_path):
    path = tmp_path / "fast.yaml"
    path.write_text(yaml.safe_dump({
        "seed": 1, "stats": {"selections": [0.1]}, "regions": {"signal_region": [3300, 3700]},
        "detectors": {"cwola": {"folds": 2, "params": {"n_ensemble": 1, "hgb_params": {"max_iter": 20}}}},
    }))
    return path


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "search" in capsys.readouterr().out


def test_search_command_prints_table_and_writes_results(small_h5, fast_yaml, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["search", "--config", str(fast_yaml), "--data", str(small_h5), "--out", str(out),
                 "--scheduler", "synchronous", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Z_local" in printed and "cwola" in printed and "none" in printed
    assert "BLINDED" in printed and " blind " in printed
    res = json.loads((out / "results.json").read_text())
    assert {r["detector"] for r in res["results"]} == {"none", "cwola"}
    assert res["blinded"] and all(r["z_local"] is None for r in res["results"])
    code = main(["search", "--config", str(fast_yaml), "--data", str(small_h5), "--out", str(out),
                 "--scheduler", "synchronous", "--no-progress", "--unblind"])
    assert code == 0 and "BLINDED" not in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert not res["blinded"] and all(r["z_local"] is not None for r in res["results"])


def test_injection_flags(small_h5, fast_yaml, tmp_path, demo_frame):
    sig = tmp_path / "sig.h5"
    demo_frame[demo_frame.label == 1].to_hdf(sig, key="df", mode="w")
    out = tmp_path / "out"
    assert main(["search", "--config", str(fast_yaml), "--data", str(small_h5), "--out", str(out),
                 "--scheduler", "synchronous", "--no-progress", "--inject", str(sig), "--n-inject", "50",
                 "--unblind"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["n_injected"] == 50
    assert res["n_events"] == 12_000 + 50


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    code = main(["search", "--data", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "o"),
                 "--scheduler", "synchronous"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("sideband: error:") and "missing.h5: no such file" in err
    assert len(err.splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("detectors: {cwola: {folds: 1}}\n")
    assert main(["search", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "folds" in capsys.readouterr().err
