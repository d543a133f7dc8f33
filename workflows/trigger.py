"""Trigger export: rate calibration with uncertainties, ONNX (+ onnxruntime check), hls4ml fixed
point chosen per layer from profiling, C++ emulation, resources and latency.

Starts from a trained autoencoder in a search output directory (the train nodes keep each
fold's model). The calibration and test events are the events that model did not train on:
the threshold is set so that ``rate`` of the background events pass it (background = events
with label 0 if the input has labels, else all events, which a real dataset mostly is);
signal acceptance and SIC come from labelled signal events, or from ``signal_path``.

The exported score is the model's own (``score_type``) or the one asked for: the
reconstruction error (encoder + decoder) or the encoder-only latent score (AXOL1TL style);
both are calibrated and compared (max SIC, multiply-accumulates) in the report.

Rates: every acceptance target gets its threshold, the number of calibration events above it
and a Clopper-Pearson interval (the true acceptance of a threshold placed at the k-th highest
of n background scores is Beta(k, n - k + 1)-distributed, whose central interval this is), and
the rate in Hz for an input rate (40 MHz bunch crossings by default; for preselected data such
as the R&D dijet sample, the rate of the preselection) divided by the L1 pre-scale. Fewer
than ``min_events_above`` calibration events above a threshold give a warning.

The firmware half (hardware-scaled inputs, profiling, per-layer precision, emulation,
resources) is :mod:`sideband.workflows.trigger_hls`. HLS synthesis runs only where a
Vitis/Vivado HLS executable is on PATH; otherwise the report gives hls4ml's analytic figures
and says that synthesis was not run.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from sideband.pipeline.cache import atomic_path, write_json
from sideband.pipeline.config import TriggerConfig
from sideband.pipeline.exceptions import SidebandUserError, optional_import

from . import trigger_hls as fw

__all__ = ["clopper_pearson", "export_trigger", "find_models", "format_trigger_report", "rate_table"]

log = logging.getLogger(__name__)

#: Settings read from the ``trigger:`` config section when it has them, else these defaults.
DEFAULTS = {"precision": "auto", "max_bits": 16, "headroom_bits": 1, "input_rate_hz": 40e6, "prescale": 1.0,
            "rate_targets": [1e-2, 1e-3, 1e-4, 1e-5], "min_events_above": 10}
CL = 0.6827  # central interval, one standard deviation


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


def clopper_pearson(k: int, n: int, cl: float = CL) -> tuple[float, float]:
    """Central Clopper-Pearson interval of a binomial proportion (k of n) at confidence ``cl``."""
    from scipy.stats import beta

    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    a = (1.0 - cl) / 2
    lo = float(beta.ppf(a, k, n - k + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(1 - a, k + 1, n - k)) if k < n else 1.0
    return lo, hi


def rate_table(background: np.ndarray, targets, *, signal: np.ndarray | None = None, input_rate_hz: float = 40e6,
               prescale: float = 1.0, min_events_above: int = 10) -> tuple[list[dict], list[str]]:
    """Per acceptance target: threshold, events above it, acceptance with its Clopper-Pearson
    interval, rate in Hz (``acceptance * input_rate_hz / prescale``), signal acceptance; and the
    warnings (too few calibration events above a threshold)."""
    b = np.sort(np.asarray(background, dtype=np.float64))
    n = len(b)
    rows, notes = [], []
    for target in sorted({float(t) for t in targets}, reverse=True):
        threshold = float(np.quantile(b, 1.0 - target))
        k = int(n - np.searchsorted(b, threshold, side="right"))
        lo, hi = clopper_pearson(k, n)
        hz = float(input_rate_hz) / float(prescale)
        rows.append({"target": target, "threshold": threshold, "n_above": k, "n_background": n, "acceptance": k / n,
                     "acceptance_lo": lo, "acceptance_hi": hi, "rate_hz": k / n * hz, "rate_hz_lo": lo * hz,
                     "rate_hz_hi": hi * hz,
                     "signal_acceptance": None if signal is None else float(np.mean(signal > threshold))})
        if k < min_events_above:
            notes.append(f"acceptance {target:g}: only {k} of {n} calibration events above the threshold "
                         f"(< {min_events_above}): acceptance {k / n:.2g} in [{lo:.2g}, {hi:.2g}] at {CL:.1%} CL; "
                         "calibrate on more background events")
    for note in notes:
        log.warning(note)
    return rows, notes


def _setting(name: str, value, tcfg: TriggerConfig):
    if value is not None:
        return value
    return getattr(tcfg, name, DEFAULTS[name])


def _graph_figures(module, n_features: int) -> dict:
    """Parameters, multiply-accumulates (dense n_in x n_out plus elementwise products) and the
    non-zero-weight multiplications of the layers ``module.forward`` uses."""
    import operator

    import torch
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    gm = symbolic_trace(module)
    ShapeProp(gm).propagate(torch.zeros(1, n_features))
    params = macs = nonzero = 0
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(sub := gm.get_submodule(node.target), torch.nn.Linear):
            if node.target not in ("total", "lat_total"):  # fixed sums (weights -1/n, -1): not parameters
                params += sum(p.numel() for p in sub.parameters())
            macs += sub.in_features * sub.out_features
            nonzero += int(torch.count_nonzero(sub.weight))
        elif node.op == "call_function" and node.target is operator.mul:
            macs += node.meta["tensor_meta"].shape.numel()
            nonzero += node.meta["tensor_meta"].shape.numel()
    return {"params": params, "macs": macs, "multiplications": nonzero}


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


def _scores(model, kind: str, X: np.ndarray) -> np.ndarray:
    import torch

    model.kind = kind
    with torch.no_grad():
        return model(torch.tensor(X)).squeeze(1).numpy().astype(np.float64)


def _load(rec: dict, signal_path: str | None):
    """The fitted model, its calibration events (not trained on) and the signal events."""
    from sideband.detectors.autoencoder import Autoencoder

    det = Autoencoder.load(Path(rec["dir"]) / rec["model"])
    feats = rec["features"]
    events = pd.read_parquet(rec["events_path"])
    trained = np.unpackbits(np.load(Path(rec["dir"]) / rec["train_mask"]))[:rec["n_events"]].astype(bool)
    X = events[feats].to_numpy(np.float32)[~trained]
    labels = events["label"].to_numpy()[~trained] if "label" in events else None
    bkg = labels < 0.5 if labels is not None else np.ones(len(X), bool)
    X_sig = None
    if signal_path:
        from sideband.pipeline.io import read_events, signal_only

        X_sig = signal_only(read_events(signal_path)[0], signal_path, "--signal")[0][feats].to_numpy(np.float32)
    elif labels is not None and (labels > 0.5).any():
        X_sig = X[labels > 0.5]
    return det, X[bkg], X_sig


def export_trigger(run_dir: str | Path, out_dir: str | Path, *, rate: float = 1e-3, detector: str = "autoencoder",
                   window: str | None = None, fold: int = 0, signal_path: str | None = None,
                   trigger_cfg: TriggerConfig | dict | None = None, hls: bool = True, score: str | None = None,
                   precision: str | None = None, max_bits: int | None = None, headroom_bits: int | None = None,
                   input_rate_hz: float | None = None, prescale: float | None = None, rate_targets=None,
                   min_events_above: int | None = None) -> dict:
    """Export one fold's trained model; returns the report (also written as trigger_report.json).

    ``score``: ``"reconstruction"``, ``"latent"`` or None (the model's ``score_type``). The other
    keyword arguments override the ``trigger:`` config section (see ``DEFAULTS``):
    ``precision="auto"`` chooses each layer's ``ap_fixed<max_bits,I>`` from hls4ml profiling;
    an ``ap_fixed<W,I>`` string uses that type everywhere.
    """
    from sideband.pipeline.metrics import sic_curve

    optional_import("onnx", "trigger", "sideband export-trigger")
    ort = optional_import("onnxruntime", "trigger", "sideband export-trigger")
    if not 0 < rate < 1:
        raise SidebandUserError(f"--rate {rate}: must be a background acceptance in (0, 1), e.g. 1e-3")
    if score not in (None, "reconstruction", "latent"):
        raise SidebandUserError(f"--score {score}: choose 'reconstruction' or 'latent'")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else {}
    if trigger_cfg is None:
        trigger_cfg = (results.get("config") or {}).get("trigger") or {}
    tcfg = trigger_cfg if isinstance(trigger_cfg, TriggerConfig) else TriggerConfig(**trigger_cfg)
    opts = {k: _setting(k, v, tcfg) for k, v in [
        ("precision", precision), ("max_bits", max_bits), ("headroom_bits", headroom_bits),
        ("input_rate_hz", input_rate_hz), ("prescale", prescale), ("rate_targets", rate_targets),
        ("min_events_above", min_events_above)]}
    if opts["prescale"] < 1 or opts["input_rate_hz"] <= 0:
        raise SidebandUserError(f"prescale {opts['prescale']} must be >= 1 and input rate {opts['input_rate_hz']} "
                                "Hz > 0")
    if not 4 <= opts["max_bits"] <= 64 or any(not 0 < t < 1 for t in opts["rate_targets"]):
        raise SidebandUserError(f"max_bits {opts['max_bits']} must be in [4, 64] and rate targets "
                                f"{opts['rate_targets']} in (0, 1)")
    if opts["precision"] != "auto":
        fw.parse_fixed(opts["precision"])  # a malformed type fails here, before any work
    models = find_models(run_dir, detector)
    records = [r for r in models if (window is None or r["window"]["name"] == window) and r["fold"] == fold]
    if not records:
        folds: dict[str, list[int]] = {}
        for r in models:
            folds.setdefault(r["window"]["name"], []).append(r["fold"])
        groups: dict[tuple, list[str]] = {}  # windows grouped by their folds: one group in a usual run
        for w, fs in folds.items():
            groups.setdefault(tuple(sorted(fs)), []).append(w)
        listed = "; ".join(f"--window {', '.join(ws)} with --fold {', '.join(map(str, fs))}"
                           for fs, ws in groups.items())
        raise SidebandUserError(f"{run_dir}: no {detector} model for window {window} fold {fold}; "
                                f"the run has {listed}")
    rec = records[0]
    det, X, X_sig = _load(rec, signal_path)
    model, feats = det.model_.eval(), rec["features"]
    kind = score or det.score_type

    comparison = {}
    for k in ("reconstruction", "latent"):
        b = _scores(model, k, X)
        s = None if X_sig is None else _scores(model, k, X_sig)
        thr = float(np.quantile(b, 1.0 - rate))
        comparison[k] = _graph_figures(fw.hardware_model(model, np.zeros(len(feats))), len(feats)) | {
            "max_sic": None if s is None else sic_curve(s, b).max_sic,
            "signal_acceptance": None if s is None else float(np.mean(s > thr))}
    score_b = _scores(model, kind, X)
    score_s = None if X_sig is None else _scores(model, kind, X_sig)
    menu, notes = rate_table(score_b, [*opts["rate_targets"], rate], signal=score_s,
                             input_rate_hz=opts["input_rate_hz"], prescale=opts["prescale"],
                             min_events_above=opts["min_events_above"])
    at = next(r for r in menu if r["target"] == float(rate))

    out_dir.mkdir(parents=True, exist_ok=True)
    # The report, written last, marks a complete export: a stale one must not describe the files
    # an interrupted re-export leaves behind (a new ONNX model beside an old HLS project).
    (out_dir / "trigger_report.json").unlink(missing_ok=True)
    onnx_path = out_dir / "trigger_model.onnx"
    with atomic_path(onnx_path, ".onnx") as tmp:
        _onnx(model, len(feats), tmp)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_diff = float(np.max(np.abs(session.run(None, {"x": X})[0].ravel() - score_b)))
    lat_us, throughput = _latency(session, X)

    report = {
        "detector": detector, "window": rec["window"]["name"], "fold": fold, "features": feats, "score": kind,
        "variational": bool(det.variational), **comparison[kind], "score_comparison": comparison,
        "rate": rate, "threshold": at["threshold"], "background_acceptance": at["acceptance"],
        "background_acceptance_interval": [at["acceptance_lo"], at["acceptance_hi"]],
        "rate_hz": at["rate_hz"], "rate_hz_interval": [at["rate_hz_lo"], at["rate_hz_hi"]],
        "input_rate_hz": opts["input_rate_hz"], "prescale": opts["prescale"], "interval_cl": CL,
        "rate_menu": menu, "warnings": notes, "n_calibration_background": len(X),
        "signal_acceptance": at["signal_acceptance"], "n_signal": None if X_sig is None else len(X_sig),
        "onnx_max_abs_diff": onnx_diff, "latency_us_batch1": lat_us, "throughput_per_s": throughput,
        "onnx_model": onnx_path.name,
    }
    if hls:
        report.update(fw.export_hls(model, X, score_b, threshold=at["threshold"], rate=rate, tcfg=tcfg,
                                    opts=opts, out_dir=out_dir))
    else:
        report.update({"hls_decision_agreement": None, "hls_status": "skipped (--no-hls)"})
    write_json(out_dir / "trigger_report.json", report)
    return report


def _short(t: str | None) -> str:
    """``ap_fixed<16,6,AP_RND,AP_SAT,0>`` -> ``<16,6>``, ``ap_ufixed<...>`` -> ``u<16,5>``."""
    if not t or "fixed<" not in t:
        return "-"  # no such constant (ap_uint<1>: a layer without bias)
    w, i = t.split("<", 1)[1].split(",")[:2]
    return f"{'u' if 'ufixed' in t else ''}<{w},{i.rstrip('>')}>"


def format_trigger_report(r: dict) -> str:
    from sideband.pipeline.report import fmt_value as f

    lo, hi = r["background_acceptance_interval"]
    hz_lo, hz_hi = r["rate_hz_interval"]
    lines = [
        f"trigger export: {r['detector']} (window {r['window']}, fold {r['fold']}), features {', '.join(r['features'])}",
        f"  score                           {r['score']}{' (variational)' if r['variational'] else ''}",
        f"  parameters                      {r['params']}",
        f"  multiply-accumulates / event    {r['macs']}  ({r['multiplications']} with non-zero weights)",
        f"  threshold (score >)             {r['threshold']:.5g}",
        (f"  background acceptance           {r['background_acceptance']:.3g}  [{lo:.2g}, {hi:.2g}] (target "
         f"{r['rate']:g}; {r['n_calibration_background']} events; {r['interval_cl']:.1%} Clopper-Pearson)"),
        (f"  rate                            {r['rate_hz']:.4g} Hz  [{hz_lo:.3g}, {hz_hi:.3g}]  (input "
         f"{r['input_rate_hz'] / 1e6:g} MHz, pre-scale {r['prescale']:g})"),
        f"  signal acceptance               {f(r['signal_acceptance'], '.3g')}",
        "  scores compared:                max SIC   signal acc.   MACs",
    ]
    for kind, c in r["score_comparison"].items():
        lines.append(f"    {kind:<29} {f(c['max_sic'], '.3g'):<9} {f(c['signal_acceptance'], '.3g'):<13} {c['macs']}")
    lines.append(f"  rate menu: {'target':<8} {'threshold':<10} {'above':<6} {'acceptance [68.3% CL]':<30} "
                 f"{'rate [Hz] [68.3% CL]':<28} signal acc.")
    for m in r["rate_menu"]:
        acc = f"{m['acceptance']:.2e} [{m['acceptance_lo']:.1e}, {m['acceptance_hi']:.1e}]"
        hz = f"{m['rate_hz']:.3g} [{m['rate_hz_lo']:.2g}, {m['rate_hz_hi']:.2g}]"
        lines.append(f"             {m['target']:<8g} {m['threshold']:<10.4g} {m['n_above']:<6d} {acc:<30} {hz:<28} "
                     f"{f(m['signal_acceptance'], '.3g')}")
    lines += [f"  WARNING: {w}" for w in r["warnings"]]
    lines += [
        f"  ONNX max |score diff| vs torch  {r['onnx_max_abs_diff']:.2e}",
        f"  onnxruntime latency, batch 1    {r['latency_us_batch1']:.1f} us",
        f"  onnxruntime throughput, b 1024  {r['throughput_per_s']:.3g} events/s",
        f"  hls4ml decision agreement       {f(r['hls_decision_agreement'], '.5f')}  ({r['hls_status']})",
    ]
    if not r.get("hls_layers"):
        return "\n".join(lines)
    res = r["resources"]
    steps = ", ".join(f"{n} {s:g} (step {q:.3g})" for n, s, q in
                      zip(r["features"], r["hls_input_full_scale"], r["hls_input_lsb"], strict=True))
    lines += [
        (f"    events passing: float {r['hls_float_pass']}, fixed point {r['hls_fixed_pass']}, both "
         f"{r['hls_both_pass']} (of {r['hls_events']} emulated: all near the threshold + a random sample)"),
        (f"    |score diff| p50/p99/max {r['hls_abs_diff_p50']:.2e} / {r['hls_abs_diff_p99']:.2e} / "
         f"{r['hls_abs_diff_max']:.2e}; threshold in firmware {r['hls_threshold_fixed']:.6g} "
         f"({r['hls_threshold_lsb']} LSB)"),
        f"    inputs {r['hls_input_type']}, full scale: {steps}",
        (f"    precision {r['hls_precision']} (max {r['hls_max_bits']} bits), reuse {r['hls_reuse_factor']}; per layer: "
         "weight / bias / output [accumulator]  (profiled max |w|, max |out|)"),
    ]
    for L in r["hls_layers"]:
        types = " / ".join(_short(L.get(k)) for k in ("weight", "bias", "result"))
        acc = f" [{_short(L['accum'])}]" if "accum" in L else ""
        lines.append(f"      {L['layer']:<10} {L['class']:<10} {types + acc:<36} ({f(L['max_abs_weight'], '.3g')}, "
                     f"{f(L['max_abs_result'], '.3g')})")
    lines += [
        (f"    resources: {res['multiplications']} multiplications -> {res['multipliers']} multipliers at reuse "
         f"{res['reuse_factor']} (initiation interval {res['initiation_interval']})"),
        (f"    latency: ~{res['pipeline_depth_cycles_estimate']} cycles ~{res['latency_ns_estimate']:.0f} ns "
         f"(rule of thumb, {res['estimate_rule']})"),
        f"    synthesis: {res['synthesis']}",
    ]
    return "\n".join(lines)
