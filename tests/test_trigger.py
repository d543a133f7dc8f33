"""Autoencoder trigger export: calibration and rates with uncertainties, ONNX agreement, hls4ml
precision from profiling, C++ emulation, the encoder-only (latent) score."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sideband.detectors.autoencoder import Autoencoder
from sideband.pipeline.exceptions import SidebandUserError
from sideband.workflows.cli import main
from sideband.workflows.trigger import clopper_pearson, export_trigger, find_models, rate_table
from sideband.workflows.trigger_hls import choose_precisions, int_bits, parse_fixed

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


@pytest.fixture(scope="module")
def latent_export(exported):
    run, _ = exported
    return export_trigger(run, run / "trigger-latent", rate=0.02, score="latent", max_bits=12,
                          trigger_cfg={"emulation_events": 2000})


def _calibration_scores(run: Path) -> np.ndarray:
    """Float scores of the events the fold-0 model did not train on (background only)."""
    rec = find_models(run)[0]
    det = Autoencoder.load(Path(rec["dir"]) / rec["model"])
    events = pd.read_parquet(rec["events_path"])
    trained = np.unpackbits(np.load(Path(rec["dir"]) / rec["train_mask"]))[:rec["n_events"]].astype(bool)
    keep = ~trained & (events["label"].to_numpy() < 0.5)
    return det.score(events[rec["features"]].to_numpy(np.float32)[keep])


def test_report_fields(exported):
    _, rep = exported
    for field in ("params", "macs", "threshold", "background_acceptance", "signal_acceptance",
                  "onnx_max_abs_diff", "hls_decision_agreement", "latency_us_batch1", "throughput_per_s"):
        assert rep[field] is not None, field
    # 4 -> 8 -> 2 -> 8 -> 4 dense layers, plus the fixed scaling layer
    assert rep["params"] == (4 * 4 + 4) + (4 * 8 + 8) + (8 * 2 + 2) + (2 * 8 + 8) + (8 * 4 + 4)
    assert rep["macs"] == 16 + 32 + 16 + 16 + 32 + 4 + 4
    assert rep["score"] == "reconstruction"


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
    assert rep["hls_decision_agreement"] >= 0.995
    assert rep["hls_both_pass"] >= 0.95 * rep["hls_float_pass"] > 0
    assert rep["hls_abs_diff_p99"] < 0.05
    assert (run / "trigger" / "hls_project").is_dir()


def test_default_export_precision_is_profiled_and_at_most_16_bits(exported):
    _, rep = exported
    assert rep["hls_precision"] == "auto" and rep["hls_max_bits"] == 16
    checked = 0
    for layer in rep["hls_layers"]:
        for key in ("weight", "bias", "result", "accum"):
            if layer.get(key, "ap_uint<1>") != "ap_uint<1>":
                assert parse_fixed(layer[key])[0] <= 16, (layer["layer"], key, layer[key])
        top = layer["max_abs_result"]
        _, integer, signed = parse_fixed(layer["result"])
        assert top < 2.0 ** (integer - 1 if signed else integer), layer  # the profiled range fits
        room = 0 if layer["class"] == "Input" else 1
        assert integer == int_bits(top, signed=signed, headroom_bits=room), layer  # and no more than that
        checked += 1
    assert checked == len(rep["hls_layers"]) == 12
    # raw GeV would need 12+ integer bits; hardware-scaled inputs need none
    assert parse_fixed(rep["hls_input_type"])[1] <= 1
    assert rep["hls_input_full_scale"][0] == 2.0 ** np.ceil(np.log2(rep["hls_input_full_scale"][0]))


def test_profiled_ranges_are_those_of_the_calibration_events(exported):
    run, rep = exported
    score = _calibration_scores(run)
    assert len(score) == rep["n_calibration_background"]
    out = rep["hls_layers"][-1]
    assert out["layer"] == "total"
    assert out["max_abs_result"] == pytest.approx(score.max(), rel=2e-3)


def test_choose_precisions_from_a_profile():
    profile = {"x": {"result": 0.74, "result_min": 0.0, "input": True},
               "dense": {"weight": 1.5, "bias": 0.3, "result": 5.3, "result_min": -2.0, "accum": 9.0},
               "relu": {"result": 5.3, "result_min": 0.0},
               "score": {"weight": 0.25, "result": 3.4, "result_min": 0.0, "accum": 40.0}}
    got = choose_precisions(profile, max_bits=16, headroom_bits=1)
    assert got["x"] == {"result": "ap_ufixed<16,0,AP_RND,AP_SAT>"}
    assert got["dense"] == {"weight": "ap_fixed<16,2,AP_RND_CONV,AP_SAT>", "bias": "ap_fixed<16,1,AP_RND_CONV,AP_SAT>",
                            "result": "ap_fixed<16,5,AP_RND,AP_SAT>", "accum": "ap_fixed<16,5,AP_RND,AP_WRAP>"}
    assert got["relu"] == {"result": "ap_ufixed<16,4,AP_RND,AP_SAT>"}
    assert got["score"]["result"] == "ap_ufixed<16,3,AP_RND,AP_SAT>"
    narrow = choose_precisions(profile, max_bits=8, headroom_bits=0)
    assert narrow["dense"]["result"] == "ap_fixed<8,4,AP_RND,AP_SAT>"  # same range, fewer fraction bits
    assert choose_precisions(profile, max_bits=7)["score"]["accum"] == "ap_fixed<7,7,AP_RND,AP_WRAP>"  # integers
    with pytest.raises(SidebandUserError, match="layer score: accum values up to 40 need 7 integer bits, more than"):
        choose_precisions(profile, max_bits=6)


@pytest.mark.parametrize("bad", ["ap_fixed<16>", "ap_fixed<a,6>", "ap_fixed<8,12>", "ap_fixed<80,6>",
                                 "ap_fixed<16,0>"])
def test_a_malformed_precision_is_a_user_error(bad):
    assert parse_fixed("ap_fixed<16, 6>") == (16, 6, True) and parse_fixed("ap_ufixed<16,0,AP_RND>") == (16, 0, False)
    with pytest.raises(SidebandUserError, match=r"precision .*ap_fixed<16,6>"):
        parse_fixed(bad)


def test_int_bits_holds_the_range_and_no_more():
    assert int_bits(1.99) == 2 and int_bits(2.0) == 3  # signed: [-2, 2) and [-4, 4)
    assert int_bits(1.99, signed=False) == 1 and int_bits(0.5, signed=False) == 0
    assert int_bits(0.01) == 1 and int_bits(0.0) == 1 and int_bits(3.0, headroom_bits=2) == 5
    for top in np.geomspace(1e-3, 1e4, 60):
        i = int_bits(top)
        assert 2.0 ** (i - 2) <= top < 2.0 ** (i - 1) or i == 1


def test_clopper_pearson_closed_forms_and_coverage():
    n, a = 1000, (1 - 0.6827) / 2
    assert clopper_pearson(0, n) == (0.0, pytest.approx(1 - a ** (1 / n)))
    assert clopper_pearson(n, n) == (pytest.approx(a ** (1 / n)), 1.0)
    lo, hi = clopper_pearson(5, n)
    assert lo < 5 / n < hi
    # an exact interval covers at least its confidence level, for small counts too
    rng = np.random.default_rng(1)
    for p, size in [(1e-3, 4000), (1e-4, 40_000), (0.02, 500)]:
        ks = rng.binomial(size, p, 3000)
        cover = np.mean([lo <= p <= hi for lo, hi in (clopper_pearson(int(k), size) for k in ks)])
        assert 0.6827 <= cover < 0.95, (p, cover)
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)


def test_rate_table_rates_in_hz_and_warnings():
    rng = np.random.default_rng(0)
    bkg, sig = rng.normal(size=20_000), rng.normal(2.0, 1.0, 1000)
    rows, notes = rate_table(bkg, [1e-2, 1e-3, 1e-5], signal=sig, input_rate_hz=40e6, prescale=4.0,
                             min_events_above=10)
    assert [r["target"] for r in rows] == [1e-2, 1e-3, 1e-5]
    for r in rows:
        assert r["acceptance"] == r["n_above"] / 20_000
        assert r["rate_hz"] == pytest.approx(r["acceptance"] * 10e6)
        assert r["rate_hz_lo"] <= r["rate_hz"] <= r["rate_hz_hi"]
        assert r["acceptance_lo"] <= r["target"] <= r["acceptance_hi"]
    assert rows[0]["n_above"] == 200 and rows[0]["signal_acceptance"] > 0.2
    assert rows[2]["n_above"] == 1 and rows[2]["rate_hz_hi"] > 9 * rows[2]["rate_hz_lo"]  # 1 event: wide
    assert len(notes) == 1 and notes[0].startswith("acceptance 1e-05: only 1 of 20000")


def test_export_reports_a_rate_menu_down_to_1e_5(exported):
    _, rep = exported
    targets = [r["target"] for r in rep["rate_menu"]]
    assert targets == [0.02, 1e-2, 1e-3, 1e-4, 1e-5]
    assert rep["rate_hz"] == pytest.approx(rep["background_acceptance"] * 40e6)
    lo, hi = rep["rate_hz_interval"]
    assert lo < rep["rate_hz"] < hi
    assert any(w.startswith("acceptance 1e-05") for w in rep["warnings"])  # a few thousand events only


def test_latent_export_is_encoder_only(exported, latent_export):
    _, recon = exported
    rep = latent_export
    assert rep["score"] == "latent"
    names = [layer["layer"] for layer in rep["hls_layers"]]
    assert not any(n.startswith(("decoder", "scale")) for n in names)  # standardisation folded in
    assert rep["macs"] == 4 * 8 + 8 * 2 + 2 * 2 + 2 * 2 + 2 + 2
    assert rep["score_comparison"]["reconstruction"]["macs"] == recon["macs"]
    for kind in ("reconstruction", "latent"):
        assert rep["score_comparison"][kind]["max_sic"] > 0
    assert rep["hls_decision_agreement"] >= 0.995
    assert all(parse_fixed(layer["result"])[0] <= 12 for layer in rep["hls_layers"])


def test_bad_arguments_are_user_errors(exported, tmp_path):
    run, _ = exported
    with pytest.raises(SidebandUserError, match="--score kl"):
        export_trigger(run, tmp_path, rate=0.01, score="kl")
    with pytest.raises(SidebandUserError, match="prescale 0.5"):
        export_trigger(run, tmp_path, rate=0.01, prescale=0.5)
    window = find_models(run)[0]["window"]["name"]
    with pytest.raises(SidebandUserError, match=f"no autoencoder model for window {window} fold 7; "
                                                f"the run has --window {window} with --fold 0, 1$"):
        export_trigger(run, tmp_path, rate=0.01, window=window, fold=7)


def test_an_interrupted_re_export_leaves_no_stale_report(exported, tmp_path, monkeypatch):
    """The report marks a complete export: one cut off after the new ONNX model does not keep the
    old report beside it."""
    import sideband.workflows.trigger as trig

    run, _ = exported
    out = tmp_path / "t"
    out.mkdir()
    (out / "trigger_report.json").write_text("{}")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trig, "_latency", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_trigger(run, out, rate=0.02, hls=False)
    assert (out / "trigger_model.onnx").exists() and not (out / "trigger_report.json").exists()


def test_export_from_a_run_without_autoencoder_is_a_user_error(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{}")
    assert main(["export-trigger", "--run", str(tmp_path)]) == 2
    assert "no trained 'autoencoder' model" in capsys.readouterr().err
    assert main(["export-trigger", "--run", str(tmp_path), "--rate", "2"]) == 2
    assert "--rate 2.0" in capsys.readouterr().err


def test_signal_file_with_labels_gives_its_signal_events_only(exported, tmp_path, small_h5):
    """--signal with a labelled mixed file (LHC Olympics R&D style): only label-1 events are signal."""
    from sideband.workflows.trigger import _load

    run, _ = exported
    rec = find_models(run)[0]
    frame = pd.read_hdf(small_h5)
    frame["label"] = (np.arange(len(frame)) < 123).astype(float)
    mixed = tmp_path / "mixed.h5"
    frame.to_hdf(mixed, key="df", mode="w")
    _, _, X_sig = _load(rec, str(mixed))
    assert len(X_sig) == 123
    frame["label"] = 0.0
    frame.to_hdf(tmp_path / "bkg.h5", key="df", mode="w")
    with pytest.raises(SidebandUserError, match="labelled background"):
        _load(rec, str(tmp_path / "bkg.h5"))
