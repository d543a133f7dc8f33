"""Trigger export: calibrate, ONNX (+ onnxruntime check), hls4ml fixed point + C++ emulation.

Starts from a trained autoencoder in a search output directory (the train nodes keep each
fold's model). The calibration and test events are the events that model did not train on:
the threshold is set so that ``rate`` of the background events pass it (background = events
with label 0 if the input has labels, else all events, which a real dataset mostly is);
signal acceptance comes from labelled signal events, or from ``signal_path``.

Nothing beyond HLS C++ emulation is done: no synthesis tool (Vivado/Vitis HLS) is available,
so resources and latency on the FPGA are not estimated; the written HLS project can be
synthesised elsewhere.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from sideband.pipeline.cache import atomic_path, write_json
from sideband.pipeline.config import TriggerConfig
from sideband.pipeline.exceptions import SidebandUserError, optional_import

__all__ = ["export_trigger", "find_models", "format_trigger_report"]

log = logging.getLogger(__name__)


def find_models(run_dir: Path, detector: str = "autoencoder") -> list[dict]:
    """The models of ``detector`` that a finished search kept (results.json lists their sidecars).

    Paths in results.json are relative to the run directory, so a moved or copied run works
    from any working directory.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "results.json").is_file():
        raise SidebandUserError(f"{run_dir}: no results.json; point --run at the output directory of a "
                                "finished 'sideband search'")
    doc = json.loads((run_dir / "results.json").read_text())
    records = []
    for rel in doc.get("models", []):
        side = run_dir / rel
        if not side.is_file():
            raise SidebandUserError(f"{side}: model listed in {run_dir}/results.json is missing; rerun the search "
                                    "with the same --out to recreate it")
        rec = json.loads(side.read_text())
        if rec["detector"] == detector:
            rec["dir"] = str(side.parent)
            rec["events_path"] = str(run_dir / doc["event_table"])
            records.append(rec)
    if not records:
        raise SidebandUserError(f"{run_dir}: no trained '{detector}' model in the run; enable the "
                                f"'{detector}' detector in the config and rerun the search")
    return sorted(records, key=lambda r: (r["window"]["name"], r["fold"]))


def _load_model(rec: dict):
    from sideband.detectors.autoencoder import Autoencoder

    det = Autoencoder.load(Path(rec["dir"]) / rec["model"])
    return det.model_.eval(), det.export_state()


def _macs(model) -> int:
    import torch

    macs = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            macs += mod.in_features * mod.out_features
    return macs + model.scale.in_features  # the elementwise product of the score


def _onnx(model, n_features: int, path: Path) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(model, (torch.zeros(1, n_features),), str(path), input_names=["x"],
                          output_names=["score"], dynamic_axes={"x": {0: "batch"}, "score": {0: "batch"}},
                          dynamo=False)


def _latency(session, X: np.ndarray) -> tuple[float, float]:
    one = X[:1]
    for _ in range(50):
        session.run(None, {"x": one})
    times = []
    for i in range(2000):
        t = time.perf_counter()
        session.run(None, {"x": X[i % len(X):i % len(X) + 1]})
        times.append(time.perf_counter() - t)
    big = np.ascontiguousarray(np.resize(X, (1024, X.shape[1])))
    session.run(None, {"x": big})
    t = time.perf_counter()
    reps = 200
    for _ in range(reps):
        session.run(None, {"x": big})
    return float(np.median(times) * 1e6), float(reps * 1024 / (time.perf_counter() - t))


def export_trigger(run_dir: str | Path, out_dir: str | Path, *, rate: float = 1e-3, detector: str = "autoencoder",
                   window: str | None = None, fold: int = 0, signal_path: str | None = None,
                   trigger_cfg: TriggerConfig | dict | None = None, hls: bool = True) -> dict:
    """Export one fold's trained model; returns the report (also written as trigger_report.json)."""
    import torch

    optional_import("onnx", "trigger", "sideband export-trigger")
    ort = optional_import("onnxruntime", "trigger", "sideband export-trigger")

    if not 0 < rate < 1:
        raise SidebandUserError(f"--rate {rate}: must be a background acceptance in (0, 1), e.g. 1e-3")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else {}
    if trigger_cfg is None:
        trigger_cfg = (results.get("config") or {}).get("trigger") or {}
    tcfg = trigger_cfg if isinstance(trigger_cfg, TriggerConfig) else TriggerConfig(**trigger_cfg)
    records = find_models(run_dir, detector)
    if window is not None:
        records = [r for r in records if r["window"]["name"] == window]
    records = [r for r in records if r["fold"] == fold]
    if not records:
        raise SidebandUserError(f"{run_dir}: no {detector} model for window {window} fold {fold}")
    rec = records[0]
    model, state = _load_model(rec)
    feats = rec["features"]
    events = pd.read_parquet(rec["events_path"])
    trained = np.unpackbits(np.load(Path(rec["dir"]) / rec["train_mask"]))[:rec["n_events"]].astype(bool)
    X = events[feats].to_numpy(np.float32)[~trained]
    labels = events["label"].to_numpy()[~trained] if "label" in events else None
    with torch.no_grad():
        score = model(torch.tensor(X)).squeeze(1).numpy()
    bkg = labels < 0.5 if labels is not None else np.ones(len(X), bool)
    if bkg.sum() < 10 / rate:
        log.warning("only %d background events to calibrate a rate of %g", int(bkg.sum()), rate)
    threshold = float(np.quantile(score[bkg], 1.0 - rate))
    bkg_acc = float(np.mean(score[bkg] > threshold))
    sig_scores = None
    if signal_path:
        from sideband.pipeline.io import read_events

        sig, _ = read_events(signal_path)
        with torch.no_grad():
            sig_scores = model(torch.tensor(sig[feats].to_numpy(np.float32))).squeeze(1).numpy()
    elif labels is not None and (labels > 0.5).any():
        sig_scores = score[labels > 0.5]
    sig_acc = float(np.mean(sig_scores > threshold)) if sig_scores is not None else None

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "trigger_model.onnx"
    with atomic_path(onnx_path, ".onnx") as tmp:
        _onnx(model, len(feats), tmp)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_score = session.run(None, {"x": X})[0].ravel()
    onnx_diff = float(np.max(np.abs(onnx_score - score)))
    lat_us, throughput = _latency(session, X)

    report = {
        "detector": detector, "window": rec["window"]["name"], "fold": fold, "features": feats,
        "params": int(sum(p.numel() for n, p in model.named_parameters() if not n.startswith("total"))),
        "macs": _macs(model), "rate": rate, "threshold": threshold, "background_acceptance": bkg_acc,
        "n_calibration_background": int(bkg.sum()),
        "signal_acceptance": sig_acc, "n_signal": None if sig_scores is None else int(len(sig_scores)),
        "onnx_max_abs_diff": onnx_diff, "latency_us_batch1": lat_us, "throughput_per_s": throughput,
        "onnx_model": onnx_path.name,
    }
    if hls:
        report.update(_hls(model, X, score, threshold, tcfg, out_dir))
    else:
        report.update({"hls_decision_agreement": None, "hls_status": "skipped (--no-hls)"})
    write_json(out_dir / "trigger_report.json", report)
    return report


def _hls(model, X, score, threshold, tcfg: TriggerConfig, out_dir: Path) -> dict:
    hls4ml = optional_import("hls4ml", "trigger", "the hls4ml export (or pass --no-hls)")
    n = min(len(X), tcfg.emulation_events)
    Xe = np.ascontiguousarray(X[:n])
    project = out_dir / "hls_project"
    if project.exists():
        shutil.rmtree(project)
    cfg = hls4ml.utils.config_from_pytorch_model(model, input_shape=(X.shape[1],), granularity="model",
                                                 default_precision=tcfg.precision,
                                                 default_reuse_factor=tcfg.reuse_factor)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hmodel = hls4ml.converters.convert_from_pytorch_model(
            model, hls_config=cfg, output_dir=str(project), backend=tcfg.backend, io_type=tcfg.io_type,
            part=tcfg.part, clock_period=tcfg.clock_period_ns)
        hmodel.compile()  # writes the HLS project and builds its C++ emulation with g++
        hls_score = np.asarray(hmodel.predict(Xe), dtype=np.float64).ravel()
    diff = hls_score - score[:n]
    agree = float(np.mean((hls_score > threshold) == (score[:n] > threshold)))
    q = np.percentile(np.abs(diff), [50, 90, 99, 100])
    return {"hls_decision_agreement": agree, "hls_status": "C++ emulation (no synthesis tool here)",
            "hls_precision": tcfg.precision, "hls_reuse_factor": tcfg.reuse_factor, "hls_events": n,
            "hls_abs_diff_p50": float(q[0]), "hls_abs_diff_p90": float(q[1]), "hls_abs_diff_p99": float(q[2]),
            "hls_abs_diff_max": float(q[3]), "hls_seconds": time.perf_counter() - t0,
            "hls_project": project.name}


def format_trigger_report(r: dict) -> str:
    from sideband.pipeline.report import fmt_value as f

    lines = [
        f"trigger export: {r['detector']} (window {r['window']}, fold {r['fold']}), features {', '.join(r['features'])}",
        f"  parameters                      {r['params']}",
        f"  multiply-accumulates / event    {r['macs']}",
        f"  threshold (score >)             {r['threshold']:.5g}",
        f"  background acceptance           {r['background_acceptance']:.3g}  (target {r['rate']:g}, "
        f"{r['n_calibration_background']} events)",
        f"  signal acceptance               {f(r['signal_acceptance'], '.3g')}",
        f"  ONNX max |score diff| vs torch  {r['onnx_max_abs_diff']:.2e}",
        f"  onnxruntime latency, batch 1    {r['latency_us_batch1']:.1f} us",
        f"  onnxruntime throughput, b 1024  {r['throughput_per_s']:.3g} events/s",
        f"  hls4ml decision agreement       {f(r['hls_decision_agreement'], '.4f')}  ({r['hls_status']})",
    ]
    if r.get("hls_abs_diff_p99") is not None:
        lines.append(f"  hls4ml |score diff| p50/p99/max {r['hls_abs_diff_p50']:.2e} / {r['hls_abs_diff_p99']:.2e} / "
                     f"{r['hls_abs_diff_max']:.2e}  ({r['hls_precision']}, reuse {r['hls_reuse_factor']})")
    return "\n".join(lines)
