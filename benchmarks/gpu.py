"""CPU versus GPU: per-epoch and whole-node times of the torch stages, and the default scan's wall time.

On a machine with a GPU (one command; writes JSON):

    python benchmarks/gpu.py --data ../shared/data/rnd/qcd_features.h5 --json gpu.json [--scan] [--events 1000000]

For each of the CATHODE flow (sideband stage of one window), the autoencoder and the MLP
classifier (one fold each) it trains on the CPU (``--threads`` torch threads) and on CUDA with
the same data and seed and reports seconds per epoch, whole-node seconds and the validation
loss reached (equal-quality check: the GPU speed-up counts only at equal validation loss). With
``--scan`` it also times the default blind scan (benchmarks/scan.py) with ``compute.device``
cpu and auto on ``--events`` events (resampled from ``--data`` when larger than the file).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _inputs(path: str, n: int | None):
    from sideband.pipeline.io import read_events

    ev, _ = read_events(path)
    if n and n != len(ev):
        ev = ev.iloc[np.random.default_rng(0).integers(0, len(ev), n)].reset_index(drop=True)
    feats = ["mj1", "delta_mj", "tau21_j1", "tau21_j2"]
    return ev[feats].to_numpy(np.float32), ev["mjj"].to_numpy()


def _time(fn) -> tuple[float, object]:
    import torch

    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def stages(X, m, device: str) -> dict:
    from sideband.detectors.base import make_detector
    from sideband.pipeline.config import SCAN_FLOW

    sr = (3300.0, 3700.0)
    out = {}
    cath = make_detector("cathode", {"flow_params": dict(SCAN_FLOW), "device": device}, random_state=1)
    sb = (m < sr[0]) | (m >= sr[1])
    wall, state = _time(lambda: cath.fit_sidebands(X[sb], m[sb], signal_region=sr))
    h = state["flow"]["history"]
    out["cathode_flow"] = {"node_s": wall, "epochs": h["epochs"], "s_per_epoch": h["seconds"] / h["epochs"],
                           "best_val_nll": float(min(h["val_loss"]))}
    ae = make_detector("autoencoder", {"hidden": [16], "latent": 2, "device": device}, random_state=1)
    wall, _ = _time(lambda: ae.fit(X, m, signal_region=sr))
    out["autoencoder"] = {"node_s": wall, "epochs": len(ae.history_["val"]),
                          "s_per_epoch": ae.history_["seconds"] / len(ae.history_["val"]),
                          "best_val_loss": float(min(ae.history_["val"]))}
    mlp = make_detector("cwola", {"model": "mlp", "n_ensemble": 1, "device": device}, random_state=1)
    wall, _ = _time(lambda: mlp.fit(X, m, signal_region=sr))
    hist = mlp.training_log()[0]
    out["mlp_classifier"] = {"node_s": wall, "epochs": hist["epochs"], "s_per_epoch": wall / hist["epochs"],
                             "best_val_loss": float(min(hist["validation_loss"]))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--events", type=int, default=None, help="resample the input to this many events")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the CPU runs (default: 2)")
    ap.add_argument("--scan", action="store_true", help="also time the default blind scan, cpu vs auto")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    X, m = _inputs(args.data, args.events)
    result = {"events": len(X), "cpu_threads": args.threads, "cuda": torch.cuda.is_available(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    result["cpu"] = stages(X, m, "cpu")
    if torch.cuda.is_available():
        result["cuda_stages"] = stages(X, m, "cuda")
        for k, v in result["cuda_stages"].items():
            c = result["cpu"][k]
            print(f"{k:<15} cpu {c['s_per_epoch']:.3f} s/epoch, cuda {v['s_per_epoch']:.3f} s/epoch: "
                  f"x{c['s_per_epoch'] / v['s_per_epoch']:.1f}; node {c['node_s']:.0f} s vs {v['node_s']:.0f} s")
    else:
        print("no CUDA device: CPU numbers only")
        for k, c in result["cpu"].items():
            print(f"{k:<15} cpu {c['s_per_epoch']:.3f} s/epoch, node {c['node_s']:.0f} s")
    if args.scan:
        here = Path(__file__).resolve().parent
        data = args.data
        if args.events:
            import pandas as pd

            src = pd.read_hdf(args.data, "df")
            data = f"/tmp/sideband-gpu-{args.events}.h5"
            src.iloc[np.random.default_rng(0).integers(0, len(src), args.events)].reset_index(drop=True).to_hdf(
                data, key="df", mode="w")
        for device in ("cpu", "auto"):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, str(here / "scan.py"), "--data", data, "--device", device, "--out",
                            f"/tmp/sideband-gpu-scan-{device}", "--json", f"/tmp/sideband-gpu-scan-{device}.json"],
                           check=True)
            result[f"scan_{device}"] = json.loads(Path(f"/tmp/sideband-gpu-scan-{device}.json").read_text())
            print(f"default scan, device {device}: {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
