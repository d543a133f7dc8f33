"""Autoencoder trigger export: calibration, ONNX agreement, hls4ml emulation."""

import json

import pytest
import yaml

from sideband.workflows.cli import main

AE_ONLY = {"seed": 2, "stats": {"selections": [0.1]}, "regions": {"signal_region": [3300, 3700]},
           "detectors": {"autoencoder": {"folds": 2, "params": {"hidden": [8], "latent": 2, "epochs": 10}}},
           "compute": {"scheduler": "synchronous"}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, small_h5):
    tmp = tmp_path_factory.mktemp("trigger")
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(AE_ONLY))
    run = tmp / "run"
    assert main(["search", "--config", str(cfg), "--data", str(small_h5), "--out", str(run), "--no-progress"]) == 0
    assert main(["export-trigger", "--run", str(run), "--rate", "0.02"]) == 0
    return run, json.loads((run / "trigger" / "trigger_report.json").read_text())


def test_report_fields(exported):
    _, rep = exported
    for field in ("params", "macs", "threshold", "background_acceptance", "signal_acceptance",
                  "onnx_max_abs_diff", "hls_decision_agreement", "latency_us_batch1", "throughput_per_s"):
        assert rep[field] is not None, field
    # 4 -> 8 -> 2 -> 8 -> 4 dense layers, plus the fixed scaling layer
    assert rep["params"] == (4 * 4 + 4) + (4 * 8 + 8) + (8 * 2 + 2) + (2 * 8 + 8) + (8 * 4 + 4)
    assert rep["macs"] == 16 + 32 + 16 + 16 + 32 + 4 + 4


def test_threshold_calibrated_to_the_rate(exported):
    _, rep = exported
    n = rep["n_calibration_background"]
    assert abs(rep["background_acceptance"] - 0.02) <= 1.0 / n + 1e-9
    assert 0.0 <= rep["signal_acceptance"] <= 1.0 and rep["n_signal"] > 0


def test_onnx_matches_torch(exported):
    run, rep = exported
    assert rep["onnx_max_abs_diff"] < 1e-4
    assert (run / "trigger" / "trigger_model.onnx").stat().st_size > 0


def test_hls4ml_emulation_agrees_with_float_model(exported):
    run, rep = exported
    assert rep["hls_decision_agreement"] >= 0.99
    assert rep["hls_abs_diff_p99"] < 0.05
    assert (run / "trigger" / "hls_project").is_dir()


def test_export_from_a_run_without_autoencoder_is_a_user_error(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{}")
    assert main(["export-trigger", "--run", str(tmp_path)]) == 2
    assert "no trained 'autoencoder' model" in capsys.readouterr().err
    assert main(["export-trigger", "--run", str(tmp_path), "--rate", "2"]) == 2
    assert "--rate 2.0" in capsys.readouterr().err

