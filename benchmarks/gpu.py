"""CPU versus GPU: per-epoch and whole-node times of the torch stages, and the default scan's wall time.

On a machine with a GPU (one command; writes JSON):

    python benchmarks/gpu.py --data ../shared/data/rnd/qcd_features.h5 --json gpu.json \
        --scan-events 100000 1000000

For each of the CATHODE flow (sideband stage of one window, 3300-3700 GeV), the autoencoder
and the MLP classifier (one fold each) it trains on each of ``--devices`` (the CPU with
``--threads`` torch threads; CUDA when visible) with the same data and seed and reports seconds
per epoch, whole-node seconds and the validation loss reached: a GPU speed-up counts only at
equal validation loss. ``--flow-batches`` adds CUDA-only flow runs at larger batch sizes (the
validation NLL says whether they stay as accurate). ``--compare other.json`` takes the CPU
numbers from another machine's run of this script (e.g. a 2-core laptop: ``--devices cpu``)
for the speed-up table. ``--scan-events`` times the default blind scan (benchmarks/scan.py,
``compute.device`` from ``--scan-device``) on that many events, resampled from ``--data``
(rows drawn with replacement beyond the file's size: for timing and memory, not physics),
each run stopped after ``--scan-timeout`` seconds with the stages it finished recorded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SR = (3300.0, 3700.0)


def _resample(n_src: int, n: int) -> np.ndarray:
    """``n`` row indices of ``n_src`` (seed 0): without replacement up to the file's size, with it beyond."""
    rng = np.random.default_rng(0)
    return rng.choice(n_src, n, replace=False) if n <= n_src else rng.integers(0, n_src, n)


def _frame(path: str, n: int | None):
    from sideband.pipeline.io import read_events

    ev, _ = read_events(path)
    if n and n != len(ev):
        ev = ev.iloc[_resample(len(ev), n)].reset_index(drop=True)
    return ev


def _inputs(path: str, n: int | None):
    ev = _frame(path, n)
    feats = ["mj1", "delta_mj", "tau21_j1", "tau21_j2"]
    return ev[feats].to_numpy(np.float32), ev["mjj"].to_numpy()


def _time(fn, device: str) -> tuple[float, object]:
    import torch

    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def flow_stage(X, m, device: str, batch_size: int | None = None, extra: dict | None = None) -> dict:
    from sideband.detectors.base import make_detector
    from sideband.pipeline.config import SCAN_FLOW

    params = dict(SCAN_FLOW) | ({"batch_size": batch_size} if batch_size else {}) | (extra or {})
    cath = make_detector("cathode", {"flow_params": params, "device": device}, random_state=1)
    sb = (m < SR[0]) | (m >= SR[1])
    wall, state = _time(lambda: cath.fit_sidebands(X[sb], m[sb], signal_region=SR), device)
    h = state["flow"]["history"]
    return {"node_s": wall, "epochs": h["epochs"], "s_per_epoch": h["seconds"] / h["epochs"],
            "best_val_loss": float(min(h["val_loss"])), "batch_size": params["batch_size"],
            "train_events": int(sb.sum())}


def stages(X, m, device: str) -> dict:
    from sideband.detectors.base import make_detector

    out = {"cathode_flow": flow_stage(X, m, device)}
    ae = make_detector("autoencoder", {"hidden": [16], "latent": 2, "device": device}, random_state=1)
    wall, _ = _time(lambda: ae.fit(X, m, signal_region=SR), device)
    out["autoencoder"] = {"node_s": wall, "epochs": len(ae.history_["val"]),
                          "s_per_epoch": ae.history_["seconds"] / len(ae.history_["val"]),
                          "best_val_loss": float(min(ae.history_["val"]))}
    mlp = make_detector("cwola", {"model": "mlp", "n_ensemble": 1, "device": device}, random_state=1)
    wall, _ = _time(lambda: mlp.fit(X, m, signal_region=SR), device)
    hist = mlp.training_log()[0]
    out["mlp_classifier"] = {"node_s": wall, "epochs": hist["epochs"], "s_per_epoch": wall / hist["epochs"],
                             "best_val_loss": float(min(hist["validation_loss"]))}
    return out


def _one_flow(args) -> dict:
    data, n, device = args
    X, m = _inputs(data, n)
    return flow_stage(X, m, device)


def concurrent_flows(data: str, n: int | None, k: int, device: str = "cuda") -> dict:
    """``k`` flows trained at once in ``k`` processes on one device (as ``k`` GPU workers would)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    with ProcessPoolExecutor(k, mp_context=mp.get_context("spawn")) as pool:
        runs = list(pool.map(_one_flow, [(data, n, device)] * k))
    return {"processes": k, "wall_s": time.perf_counter() - t0, "runs": runs,
            "mean_s_per_epoch": float(np.mean([r["s_per_epoch"] for r in runs]))}


def speedups(cpu: dict, gpu: dict) -> dict:
    """Per-epoch and whole-node CPU/GPU ratios with the relative validation-loss difference."""
    out = {}
    for k, g in gpu.items():
        c = cpu.get(k)
        if c:
            out[k] = {"per_epoch": c["s_per_epoch"] / g["s_per_epoch"], "node": c["node_s"] / g["node_s"],
                      "val_loss_cpu": c["best_val_loss"], "val_loss_gpu": g["best_val_loss"]}
    return out


def run_scan(data: str, n: int, device: str, timeout: float, workdir: Path) -> dict:
    """benchmarks/scan.py on ``n`` events in a subprocess; its progress lines are kept when it times out."""
    path = workdir / f"events-{n}.h5"
    if not path.exists():
        import pandas as pd

        src = pd.read_hdf(data, "df")  # the file's own layout, resampled by rows
        src.iloc[_resample(len(src), n)].reset_index(drop=True).to_hdf(path, key="df", mode="w")
        del src
    out_json = workdir / f"scan-{n}-{device}.json"
    cmd = [sys.executable, "-u", str(Path(__file__).resolve().parent / "scan.py"), "--data", str(path),
           "--device", device, "--out", str(workdir / f"scan-{n}-{device}"), "--json", str(out_json), "--progress"]
    t0 = time.perf_counter()
    log = workdir / f"scan-{n}-{device}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            rc = None
    wall = time.perf_counter() - t0
    res = {"events": n, "device": device, "wall_s": wall, "timed_out": rc is None, "returncode": rc,
           "log_tail": log.read_text().splitlines()[-25:]}
    if rc == 0 and out_json.exists():
        res |= {"scan": json.loads(out_json.read_text())}
    print(f"default scan, {n} events, device {device}: "
          + (f"{wall:.0f} s" if rc == 0 else f"stopped after {wall:.0f} s (rc {rc})"), flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--events", type=int, default=None, help="resample the stage inputs to this many events")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the CPU runs (default: 2)")
    ap.add_argument("--devices", default=None, help="comma list of cpu, cuda (default: cpu, and cuda if visible)")
    ap.add_argument("--flow-batches", type=int, nargs="*", default=[], help="extra CUDA flow runs at these batch sizes")
    ap.add_argument("--flow-variants", nargs="*", default=[],
                    help="flow runs with bf16 autocast and/or torch.compile: bf16, compile, bf16+compile "
                         "(on CUDA when visible; validation NLL in fp32, compare with the fp32 run)")
    ap.add_argument("--concurrent", type=int, nargs="*", default=[],
                    help="also train K flows at once in K processes on CUDA (GPU workers sharing a GPU)")
    ap.add_argument("--compare", default=None, help="JSON of another run whose CPU numbers to compare with")
    ap.add_argument("--scan-events", type=int, nargs="*", default=[], help="time the default scan on these sizes")
    ap.add_argument("--scan-device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--scan-timeout", type=float, default=3600.0)
    ap.add_argument("--workdir", default="/tmp/sideband-gpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    devices = [d for d in args.devices.split(",") if d] if args.devices is not None else ["cpu"] + (["cuda"] if cuda else [])
    result = {"events": None, "cpu_threads": args.threads, "cuda": cuda, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if cuda else None, "stages": {}}
    if devices:
        X, m = _inputs(args.data, args.events)
        result["events"] = len(X)
        for dev in devices:
            result["stages"][dev] = stages(X, m, dev)
            for k, v in result["stages"][dev].items():
                print(f"{dev:<5} {k:<15} {v['s_per_epoch']:.3f} s/epoch x {v['epochs']} epochs, node {v['node_s']:.1f} s,"
                      f" best validation loss {v['best_val_loss']:.4f}", flush=True)
        if "cuda" in devices:
            for bs in args.flow_batches:
                r = flow_stage(X, m, "cuda", bs)
                result["stages"].setdefault("cuda_flow_batches", {})[str(bs)] = r
                print(f"cuda  flow batch {bs}: {r['s_per_epoch']:.3f} s/epoch x {r['epochs']} epochs, node "
                      f"{r['node_s']:.1f} s, best validation NLL {r['best_val_loss']:.4f}", flush=True)
    if args.flow_variants:
        X, m = _inputs(args.data, args.events)
        dev = "cuda" if cuda else "cpu"
        for variant in args.flow_variants:
            parts = set(variant.split("+"))
            if not parts <= {"bf16", "compile"}:
                ap.error(f"--flow-variants: unknown variant {variant!r} (bf16, compile, bf16+compile)")
            extra = {"precision": "bf16" if "bf16" in parts else "fp32", "compile": "compile" in parts}
            r = flow_stage(X, m, dev, extra=extra)
            result.setdefault("flow_variants", {})[f"{dev}:{variant}"] = r
            print(f"{dev:<5} flow {variant}: {r['s_per_epoch']:.3f} s/epoch x {r['epochs']} epochs, node "
                  f"{r['node_s']:.1f} s, best validation NLL (fp32) {r['best_val_loss']:.4f}", flush=True)
    for k in args.concurrent:
        r = concurrent_flows(args.data, args.events, k, "cuda" if cuda else "cpu")
        result.setdefault("concurrent_flows", []).append(r)
        print(f"{k} flows at once: {r['mean_s_per_epoch']:.3f} s/epoch each, all done in {r['wall_s']:.1f} s", flush=True)
    cpu = result["stages"].get("cpu")
    if args.compare:
        cpu = json.loads(Path(args.compare).read_text())["stages"]["cpu"]
        result["compared_cpu_from"] = args.compare
    if cpu and "cuda" in result["stages"]:
        result["speedup"] = speedups(cpu, result["stages"]["cuda"])
        for k, s in result["speedup"].items():
            print(f"speed-up {k:<15} x{s['per_epoch']:.1f} per epoch, x{s['node']:.1f} per node "
                  f"(validation loss cpu {s['val_loss_cpu']:.4f}, cuda {s['val_loss_gpu']:.4f})", flush=True)
    if args.scan_events:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        result["scans"] = [run_scan(args.data, n, args.scan_device, args.scan_timeout, work)
                           for n in args.scan_events]
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
