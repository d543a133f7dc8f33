"""The firmware half of the trigger export: hardware-scaled inputs, per-layer fixed point chosen
from hls4ml's profiling, C++ emulation, and resources/latency (synthesis when a tool is found,
analytic figures otherwise).

Inputs. An L1 board delivers each feature as a fixed-point word: here feature j enters as
``x_j / 2**s_j``, with the power of two ``2**s_j`` (the full scale, e.g. 2048 GeV for a jet
mass) the smallest above its largest value on the calibration events; the input word's
fraction bits then fix the step (for 16 bits, 2048 GeV / 2**15 = 1/16 GeV). The shift is
folded into the fixed standardisation layer, so no layer carries raw GeV (no 16 integer bits).

Precision. The model is first converted at a wide profiling precision with hls4ml's trace on
every layer; the weights (``layer.get_weights()``) and the traced outputs on the calibration
events give each layer's largest magnitude: what hls4ml's ``model.profiling``
(``weights_hlsmodel`` / ``activations_hlsmodel``, which need seaborn for their plots) reads.
:func:`choose_precisions` turns them into ``ap_fixed<W,I>`` types, all ``max_bits`` wide: I
integer bits (sign included) so that the largest magnitude fits (``headroom_bits`` more for
outputs, which the calibration sample may not bound), W - I fraction bits. Outputs saturate
(AP_SAT: an overflowing score stays above the threshold instead of wrapping round); constants
round to nearest. A dense layer's accumulator gets the range of its largest possible partial
sum, sum_i |w_ij| max|x_i| + |b_j| (no overflow, so it wraps), and rounds its products.
Events beyond the calibrated input full scale saturate at it, as on a board.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from sideband.pipeline.config import TriggerConfig
from sideband.pipeline.exceptions import SidebandUserError, optional_import

__all__ = ["choose_precisions", "emulate", "export_hls", "hardware_model", "input_shifts", "int_bits", "parse_fixed",
           "profile_hls", "quantise_inputs", "resources", "synthesis_tool"]

log = logging.getLogger(__name__)

PROFILE_PRECISION = "ap_fixed<40,20>"
PROFILE_EVENTS = 500_000  # the trace keeps every layer's output of every event: profile a random subset
SYNTHESIS_TOOLS = ("vitis_hls", "vivado_hls")
PRECISION_RULE = ("per layer, from hls4ml profiling (trace at " + PROFILE_PRECISION + ") on the calibration events: "
                  "integer bits for the largest |value| (+ headroom_bits for outputs other than the input), "
                  "width max_bits; constants AP_RND_CONV/AP_SAT, outputs AP_RND/AP_SAT (unsigned if never negative), "
                  "accumulators sized for the largest partial sum AP_RND/AP_WRAP")


def input_shifts(X: np.ndarray) -> np.ndarray:
    """Per feature, the power of two ``s`` with ``max|x| <= 2**s`` (the full scale of its word)."""
    top = np.max(np.abs(X), axis=0)
    return np.ceil(np.log2(np.maximum(top, 2.0 ** -8))).astype(int)


def quantise_inputs(X: np.ndarray, shifts: np.ndarray, precision: str) -> np.ndarray:
    """``X / 2**shifts`` on the grid of the input word ``precision`` (rounded, saturated)."""
    width, integer, signed = parse_fixed(precision)
    frac = width - integer
    lo = -(2.0 ** (integer - 1)) if signed else 0.0
    hi = 2.0 ** (integer - 1 if signed else integer) - 2.0 ** -frac
    q = np.round(X / 2.0 ** shifts * 2.0 ** frac) / 2.0 ** frac
    return np.ascontiguousarray(np.clip(q, lo, hi), dtype=np.float32)


def hardware_model(model, shifts: np.ndarray):
    """A copy of ``model`` that takes ``x / 2**shifts``; the encoder-only (latent) score also gets
    its standardisation folded into the first encoder layer (one layer fewer in firmware)."""
    import torch
    from torch import nn

    hw = copy.deepcopy(model).eval()
    with torch.no_grad():
        hw.scale.weight.mul_(torch.as_tensor(2.0 ** shifts, dtype=torch.float32)[None, :])
    if hw.kind != "latent":
        return hw
    first = copy.deepcopy(hw.encoder[0])
    with torch.no_grad():
        first.bias.copy_(first.weight @ hw.scale.bias + first.bias)
        first.weight.copy_(first.weight @ hw.scale.weight)

    class EncoderScore(nn.Module):
        """Encoder-only trigger: sum of the squared (scaled) latent means; no decoder."""

        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(first, *hw.encoder[1:])
            self.lat_pos, self.lat_neg, self.lat_total = hw.lat_pos, hw.lat_neg, hw.lat_total

        def forward(self, x):
            mu = self.encoder(x)
            return self.lat_total(self.lat_pos(mu) * self.lat_neg(mu))

    return EncoderScore().eval()


def parse_fixed(precision: str) -> tuple[int, int, bool]:
    """(width, integer bits, signed) of an ``ap_fixed<W,I,...>`` / ``ap_ufixed<W,I,...>`` string."""
    head, _, rest = precision.strip().partition("<")
    if head not in ("ap_fixed", "ap_ufixed") or not rest.endswith(">"):
        raise SidebandUserError(f"precision {precision!r}: expected ap_fixed<W,I> or ap_ufixed<W,I>")
    parts = [p.strip() for p in rest[:-1].split(",")]
    try:
        width, ibits = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        raise SidebandUserError(f"precision {precision!r}: expected ap_fixed<W,I> with integers W and I, "
                                "e.g. ap_fixed<16,6>") from None
    signed = head == "ap_fixed"
    if not (0 < width <= 64 and int(signed) <= ibits <= width):
        sign = " (the sign bit is one)" if signed else ""
        raise SidebandUserError(f"precision {precision!r}: needs W <= 64 total bits and I integer bits with "
                                f"{int(signed)} <= I <= W{sign}, e.g. ap_fixed<16,6>")
    return width, ibits, signed


def int_bits(max_abs: float, *, signed: bool = True, headroom_bits: int = 0) -> int:
    """Integer bits (the sign bit included when ``signed``) for magnitudes up to ``max_abs``:
    the smallest I with ``max_abs < 2**(I-1)`` (signed) or ``< 2**I``, plus ``headroom_bits``;
    at least 1 (signed) or 0."""
    floor = 1 if signed else 0
    if not max_abs > 0 or not np.isfinite(max_abs):
        return floor + headroom_bits
    return max(floor, math.floor(math.log2(max_abs)) + 1 + int(signed) + headroom_bits)


def choose_precisions(profile: dict[str, dict], *, max_bits: int = 16, headroom_bits: int = 1) -> dict[str, dict]:
    """Per layer, the hls4ml precision of its weights, biases and output from the profiled ranges.

    ``profile[layer]`` holds ``weight``/``bias``/``result``/``accum`` (largest magnitude, or
    None), ``result_min`` (smallest output value) and ``input`` (the input layer: its full scale
    is already the calibration maximum, so no headroom). Outputs that were never negative (ReLU,
    the score) are unsigned. Every type is ``max_bits`` wide; a range that needs more integer bits
    than that is an error.
    """
    out = {}
    for name, p in profile.items():
        types = {}
        for key in ("weight", "bias", "result", "accum"):
            if p.get(key) is None:
                continue
            signed = key != "result" or p.get("result_min", -1.0) < 0
            room = headroom_bits if key == "result" and not p.get("input") else 0
            i = int_bits(p[key], signed=signed, headroom_bits=room)
            if i > max_bits:
                raise SidebandUserError(
                    f"layer {name}: {key} values up to {p[key]:.4g} need {i} integer bits, more than the "
                    f"{max_bits} bits of trigger max_bits; raise it, or headroom_bits={headroom_bits} if above 0")
            mode = {"result": "AP_RND,AP_SAT", "accum": "AP_RND,AP_WRAP"}.get(key, "AP_RND_CONV,AP_SAT")
            types[key] = f"{'ap_fixed' if signed else 'ap_ufixed'}<{max_bits},{i},{mode}>"
        out[name] = types
    return out


def _hls_config(hls4ml, model, n_features: int, tcfg: TriggerConfig, *, default: str, trace: bool):
    cfg = hls4ml.utils.config_from_pytorch_model(model, input_shape=(n_features,), granularity="name",
                                                 default_precision=default, default_reuse_factor=tcfg.reuse_factor)
    for layer in cfg["LayerName"].values():
        layer["Trace"] = trace
        layer["Precision"] = {k: default for k in layer.get("Precision", {"result": None})}
        if "weight" in layer["Precision"]:
            layer["Precision"]["accum"] = "auto" if not trace else default
    return cfg


def _convert(hls4ml, model, cfg, project: Path, tcfg: TriggerConfig):
    if project.exists():
        shutil.rmtree(project)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        hmodel = hls4ml.converters.convert_from_pytorch_model(
            model, hls_config=cfg, output_dir=str(project), backend=tcfg.backend, io_type=tcfg.io_type,
            part=tcfg.part, clock_period=tcfg.clock_period_ns)
        hmodel.compile()  # writes the HLS project and builds its C++ emulation with g++
    return hmodel


def profile_hls(model, X_hw: np.ndarray, tcfg: TriggerConfig, work: Path) -> dict[str, dict]:
    """hls4ml profiling at a wide precision: each layer's largest |weight|, |bias|, |output|
    (traced C++ emulation of ``X_hw``) and smallest output; the input layer from ``X_hw``."""
    hls4ml = optional_import("hls4ml", "trigger", "the hls4ml export (or pass --no-hls)")
    cfg = _hls_config(hls4ml, model, X_hw.shape[1], tcfg, default=PROFILE_PRECISION, trace=True)
    hmodel = _convert(hls4ml, model, cfg, work, tcfg)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        _, trace = hmodel.trace(np.ascontiguousarray(X_hw))
    prof, peak = {}, {}
    for layer in hmodel.get_layers():
        entry = {"class": layer.class_name, "weight": None, "bias": None}
        w = [np.asarray(v.data, dtype=np.float64) for v in layer.get_weights()]
        if w:
            entry["weight"] = float(np.abs(w[0]).max())
            entry["bias"] = float(np.abs(w[1]).max()) if layer.get_attr("use_bias", True) and len(w) > 1 else None
        out = X_hw if layer.class_name in ("Input", "InputLayer") else trace.get(layer.name)
        if out is None:
            continue
        out = np.asarray(out, dtype=np.float64).reshape(len(X_hw), -1)
        peak[layer.name] = np.abs(out).max(axis=0)
        if layer.class_name == "Dense":  # largest partial sum: sum_i |w_ij| max|x_i| + |b_j|
            W = np.abs(w[0]).reshape(int(layer.get_attr("n_in")), int(layer.get_attr("n_out")))
            bias = np.abs(w[1]).ravel() if entry["bias"] is not None else 0.0
            entry["accum"] = float(np.max(peak[layer.get_attr("inputs")[0]] @ W + bias))
        entry["result"] = float(out.__abs__().max())
        entry["result_min"] = float(out.min())
        entry["input"] = layer.class_name in ("Input", "InputLayer")
        prof[layer.name] = entry
    shutil.rmtree(work, ignore_errors=True)
    return prof


def emulate(model, X_hw: np.ndarray, precisions: dict[str, dict] | str, tcfg: TriggerConfig, project: Path):
    """Convert at ``precisions`` (per layer, or one type for all), compile, and return
    (hls4ml model, emulated scores of ``X_hw``)."""
    hls4ml = optional_import("hls4ml", "trigger", "the hls4ml export (or pass --no-hls)")
    uniform = isinstance(precisions, str)
    cfg = _hls_config(hls4ml, model, X_hw.shape[1], tcfg, default=precisions if uniform else PROFILE_PRECISION,
                      trace=False)
    if not uniform:
        cfg["Model"]["Precision"]["default"] = next(iter(precisions.values()))["result"]
        for name, types in precisions.items():
            cfg["LayerName"][name]["Precision"].update(types)
    hmodel = _convert(hls4ml, model, cfg, project, tcfg)
    return hmodel, np.asarray(hmodel.predict(np.ascontiguousarray(X_hw)), dtype=np.float64).ravel()


def _cpp(precision) -> str:
    """``ap_fixed<W,I,...>`` spelling of an hls4ml precision type."""
    return precision.definition_cpp() if hasattr(precision, "definition_cpp") else str(precision)


def _critical_path(layers: dict) -> list[str]:
    """The longest chain of layers from the input to the output (the pipeline's depth)."""
    depth: dict[str, list[str]] = {}
    for name, layer in layers.items():  # hls4ml lists layers in topological order
        before = [depth[i] for i in layer.get_attr("inputs", []) or [] if i in depth]
        depth[name] = max(before, key=len, default=[]) + [name]
    return max(depth.values(), key=len)


def resources(hmodel, tcfg: TriggerConfig) -> dict:
    """Analytic figures from the hls4ml model: per layer the multiplications (non-zero weights;
    hls4ml's ``multiplier_limit`` = ceil(n_in*n_out / reuse) - n_zeros / reuse) and the
    multipliers at the reuse factor, plus a rule-of-thumb pipeline depth (not a synthesis result)."""
    layers = {layer.name: layer for layer in hmodel.get_layers()}
    rows, cycles = [], {}
    reuse = int(tcfg.reuse_factor)
    for name, layer in layers.items():
        cls = layer.class_name
        if cls == "Dense":
            w = np.asarray(next(iter(layer.get_weights())).data)
            mults, n_in = int(np.count_nonzero(w)), int(layer.get_attr("n_in"))
            cycles[name] = reuse + 1  # multiply (initiation interval = reuse) + register of the sum
        elif cls == "Merge" and layer.get_attr("op") == "multiply":
            mults, n_in = int(np.prod(layer.get_output_variable().shape)), 2
            cycles[name] = 1
        else:
            mults, n_in = 0, 0
            cycles[name] = 0 if cls == "InputLayer" else 1
        rows.append({"layer": name, "class": cls, "multiplications": mults,
                     "multipliers": math.ceil(mults / reuse), "adder_tree_depth": math.ceil(math.log2(n_in)) if n_in > 1 else 0})
    path = _critical_path(layers)
    depth = sum(cycles[n] for n in path)
    return {"layers": rows, "multiplications": sum(r["multiplications"] for r in rows),
            "multipliers": sum(r["multipliers"] for r in rows), "reuse_factor": reuse,
            "initiation_interval": reuse, "critical_path": path, "pipeline_depth_cycles_estimate": depth,
            "latency_ns_estimate": depth * float(tcfg.clock_period_ns),
            "estimate_rule": "dense: reuse + 1 cycles, activation/merge: 1 cycle, along the critical path"}


def synthesis_tool() -> str | None:
    """Path of a Vitis/Vivado HLS executable on PATH, or None."""
    for name in SYNTHESIS_TOOLS:
        path = shutil.which(name)
        if path:
            return path
    return None


def synthesise(hmodel) -> dict:
    """Run HLS synthesis (only where :func:`synthesis_tool` finds a tool) and read its report."""
    hls4ml = optional_import("hls4ml", "trigger", "the hls4ml export")
    t0 = time.perf_counter()
    try:
        hmodel.build(csim=False, synth=True, vsynth=False)
        report = hls4ml.report.parse_vivado_report(hmodel.config.get_output_dir())
    except Exception as exc:  # noqa: BLE001 (a tool failure is reported, not fatal: the emulation stands)
        log.warning("HLS synthesis failed: %s", exc)
        return {"synthesis": f"failed: {exc}"}
    return {"synthesis": "run", "synthesis_seconds": time.perf_counter() - t0, "synthesis_report": report}


def _emulation_sample(score: np.ndarray, rate: float, n_random: int, seed: int = 0):
    """Indices to emulate: a random sample plus every event above the threshold of a 10x looser
    rate (all near-threshold events), and the weight that makes each stratum count for its size."""
    n = len(score)
    tail = np.flatnonzero(score > np.quantile(score, 1.0 - min(0.5, 10 * rate)))
    rest = np.setdiff1d(np.random.default_rng(seed).choice(n, size=min(n, n_random), replace=False), tail)
    idx = np.r_[tail, rest]
    weight = np.r_[np.ones(len(tail)), np.full(len(rest), (n - len(tail)) / max(len(rest), 1))]
    return idx, weight


def export_hls(model, X, score, *, threshold: float, rate: float, tcfg: TriggerConfig, opts: dict, out_dir: Path) -> dict:
    """Hardware-scaled inputs, precision (profiled per layer for ``opts["precision"] == "auto"``),
    C++ emulation of a random sample plus every near-threshold event (decision agreement weighted
    back to the whole calibration sample), resources; the report's ``hls_*`` entries."""
    import torch

    t0 = time.perf_counter()
    shifts = input_shifts(X)
    hw = hardware_model(model, shifts)
    idx, weight = _emulation_sample(score, rate, tcfg.emulation_events)
    if opts["precision"] == "auto":
        prof = np.random.default_rng(1).permutation(len(X))[:PROFILE_EVENTS] if len(X) > PROFILE_EVENTS else slice(None)
        X_prof = quantise_inputs(X[prof], shifts, f"ap_fixed<{opts['max_bits']},1>")
        profile = profile_hls(hw, X_prof, tcfg, out_dir / "hls_profile")
        types = choose_precisions(profile, max_bits=opts["max_bits"], headroom_bits=opts["headroom_bits"])
        in_type = types[next(n for n, p in profile.items() if p.get("input"))]["result"]
    else:
        profile, types, in_type = {}, opts["precision"], opts["precision"]
    Xe = quantise_inputs(X[idx], shifts, in_type)
    hmodel, hls_score = emulate(hw, Xe, types, tcfg, out_dir / "hls_project")
    out_type = types if isinstance(types, str) else types[list(hmodel.get_layers())[-1].name]["result"]
    width, integer, _ = parse_fixed(out_type)
    lsb = 2.0 ** (integer - width)
    thr_fixed = float(np.round(threshold / lsb) * lsb)
    f_pass, h_pass = score[idx] > threshold, hls_score > thr_fixed
    agree = float(np.sum(weight * (f_pass == h_pass)) / np.sum(weight))
    with torch.no_grad():
        hw_float = hw(torch.tensor(Xe)).squeeze(1).numpy().astype(np.float64)
    layers = []
    for layer in hmodel.get_layers():
        got = {k[:-2]: _cpp(v.precision) for k, v in layer.types.items() if k in ("weight_t", "bias_t", "result_t", "accum_t")}
        layers.append({"layer": layer.name, "class": layer.class_name, **got,
                       **{f"max_abs_{k}": profile.get(layer.name, {}).get(k) for k in ("weight", "bias", "result")}})
    tool = synthesis_tool()
    res = resources(hmodel, tcfg) | (synthesise(hmodel) if tool else
                                     {"synthesis": "not run: no Vitis/Vivado HLS executable on PATH"})
    lsb_gev = [float(2.0 ** (s + parse_fixed(in_type)[1] - parse_fixed(in_type)[0])) for s in shifts]
    return {"hls_decision_agreement": agree, "hls_status": "C++ emulation" + ("" if tool else " (no synthesis tool here)"),
            "hls_precision": opts["precision"], "hls_max_bits": opts["max_bits"], "hls_reuse_factor": tcfg.reuse_factor,
            "hls_precision_rule": PRECISION_RULE if opts["precision"] == "auto" else "one type for every layer",
            "hls_events": len(idx), "hls_layers": layers, "hls_input_type": in_type,
            "hls_input_full_scale": [float(2.0 ** s) for s in shifts], "hls_input_lsb": lsb_gev,
            "hls_threshold_fixed": thr_fixed, "hls_threshold_lsb": round(thr_fixed / lsb),
            "hls_float_pass": int(f_pass.sum()), "hls_fixed_pass": int(h_pass.sum()),
            "hls_both_pass": int((f_pass & h_pass).sum()),
            **{f"hls_abs_diff_{q}": float(v) for q, v in zip(("p50", "p99", "max"),
                                                             np.percentile(np.abs(hls_score - score[idx]), [50, 99, 100]))},
            "input_quantisation_abs_diff_p99": float(np.percentile(np.abs(hw_float - score[idx]), 99)),
            "hls_seconds": time.perf_counter() - t0, "hls_project": "hls_project", "resources": res}

