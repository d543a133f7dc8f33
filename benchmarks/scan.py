"""Cost and outcome of the default blind scan: wall time per stage, peak memory, the verdict.

Runs the search in this process's graph engine (default config unless --config) on a local
cluster, records when the last node of each stage finished (load, prepare = CATHODE flows,
train, merge, stats, report) and the summed RSS of the process tree (client, scheduler,
workers; psutil, every 0.5 s), and prints the largest local and global Z with its window.

    python benchmarks/scan.py --data ../shared/data/rnd/qcd_features.h5 --out /tmp/scan-bkg
    python benchmarks/scan.py --data qcd_features.h5 qcd_extra_features.h5 --resample 1000000 \
        --scheduler /tmp/sched.json --out /tmp/scan-1m      # workers started as in docs/cluster.md
    python benchmarks/scan.py --data qcd.h5 --inject ../shared/data/rnd/signal_3500_500_100_features.h5 \
        --n-inject 400 --out /tmp/scan-sig --json scan.json
    python benchmarks/scan.py ... --seed 3 --detectors cathode   # one detector, another injection draw
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path


def _tree_rss() -> tuple[int, int]:
    """Summed and largest single-process RSS of this process and its children (workers)."""
    import psutil

    me = psutil.Process(os.getpid())
    total = largest = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            rss = p.memory_info().rss
        except psutil.Error:
            continue
        total += rss
        largest = max(largest, rss)
    return total, largest


def _worker_peaks(scheduler: str) -> dict[str, float]:
    """Each worker's peak resident set size over its life (VmHWM of /proc/self/status), GiB."""
    from distributed import Client

    def vmhwm() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
        return float("nan")

    kw = {"scheduler_file": scheduler} if Path(scheduler).is_file() else {"address": scheduler}
    with Client(timeout=30, **kw) as client:
        return client.run(vmhwm)


def _resampled(src: list[Path], n: int, where: Path) -> Path:
    """``n`` events of the ``src`` files drawn with replacement (seed 0), written once in ``where``."""
    import numpy as np
    import pandas as pd

    dest = where / f"{src[0].stem}{'+' if len(src) > 1 else ''}_{n}.h5"
    if not dest.exists():
        frame = pd.concat([pd.read_hdf(p) for p in src], ignore_index=True)
        rows = np.random.default_rng(0).integers(0, len(frame), n)
        tmp = dest.with_suffix(".tmp.h5")
        where.mkdir(parents=True, exist_ok=True)
        frame.iloc[rows].reset_index(drop=True).to_hdf(tmp, key="df", mode="w")
        tmp.replace(dest)
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, nargs="+", help="the input file (several only with --resample)")
    ap.add_argument("--config", default=None, help="default: configs/default.yaml (the blind scan)")
    ap.add_argument("--inject", default=None)
    ap.add_argument("--n-inject", type=int, default=0)
    ap.add_argument("--out", default="/tmp/sideband-scan")
    ap.add_argument("--json", default=None)
    ap.add_argument("--seed", type=int, default=None,
                    help="the config's seed (which signal events are injected, fold splits, network initialisation)")
    ap.add_argument("--detectors", default=None,
                    help="comma-separated detectors to run (default: the config's enabled ones); the look-elsewhere "
                         "count then covers only these")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="compute.device")
    ap.add_argument("--shared-stage", choices=["on", "off"], default=None,
                    help="detectors.cathode.shared_stage (one flow per group of separated windows)")
    ap.add_argument("--gpu-workers", type=int, default=None, help="compute.gpu_workers_per_device")
    ap.add_argument("--progress", action="store_true", help="print each stage's progress (quarters) as it runs")
    ap.add_argument("--scheduler", default=None,
                    help="compute.scheduler: an external scheduler (tcp://host:port or a scheduler file); the "
                         "workers' own peak RSS (VmHWM) is then read from each worker at the end")
    ap.add_argument("--resample", type=int, default=None, metavar="N",
                    help="run on N events drawn with replacement from --data (written once next to --out; "
                         "for cost and memory at scale, not physics: a drawn event repeats ~N/len times)")
    args = ap.parse_args(argv)

    from sideband.pipeline.graph import run_graph
    from sideband.workflows.configure import load_config
    from sideband.workflows.search_graph import build_search_graph

    if args.resample:
        args.data = str(_resampled([Path(p) for p in args.data], args.resample, Path(args.out).parent))
    elif len(args.data) > 1:
        ap.error("several --data files only with --resample")
    else:
        args.data = args.data[0]
    overrides: dict = {"data": {"path": args.data}}
    if args.inject:
        overrides["data"]["inject"] = {"path": args.inject, "n_events": args.n_inject}
    overrides["compute"] = {}
    if args.workers:
        overrides["compute"]["n_workers"] = args.workers
    if args.device:
        overrides["compute"]["device"] = args.device
    if args.scheduler:
        overrides["compute"]["scheduler"] = args.scheduler
    if args.gpu_workers:
        overrides["compute"]["gpu_workers_per_device"] = args.gpu_workers
    if args.shared_stage:
        overrides["detectors"] = {"cathode": {"shared_stage": args.shared_stage == "on"}}
    if args.seed is not None:
        overrides["seed"] = args.seed
    cfg = load_config(args.config, overrides)
    if args.detectors:  # the config's entries, kept and enabled (as in benchmarks/signal_grid.py)
        keep = set(args.detectors.split(","))
        unknown = keep - set(cfg.detectors)
        if unknown:
            ap.error(f"--detectors: {', '.join(sorted(unknown))} not in the config (it has "
                     f"{', '.join(sorted(cfg.detectors))})")
        cfg = cfg.model_copy(update={"detectors": {k: v.model_copy(update={"enabled": True})
                                                   for k, v in cfg.detectors.items() if k in keep}})
    graph, windows = build_search_graph(cfg, args.out, meta={"mode": "benchmark", "seed": cfg.seed}, blind=False)
    stage_end: dict[str, float] = {}
    counts: dict[str, int] = defaultdict(int)
    peak = [0, 0]
    done = threading.Event()
    totals = defaultdict(int)
    for node in graph.nodes.values():
        totals[node.kind] += 1

    def sample():
        last = time.perf_counter()
        while not done.is_set():
            peak[:] = [max(a, b) for a, b in zip(peak, _tree_rss())]
            time.sleep(0.5)
            if args.progress and time.perf_counter() - last >= 60:  # a heartbeat for time-boxed runs
                last = time.perf_counter()
                print(f"[{last - t0:6.0f} s] {sum(counts.values())}/{len(graph)} nodes; peak RSS {peak[0] / 1024**3:.2f}"
                      f" GiB (largest process {peak[1] / 1024**3:.2f} GiB)", flush=True)

    def on_event(ev):
        stage_end[ev.kind] = ev.elapsed_s
        counts[ev.kind] += 1
        n, total = counts[ev.kind], totals[ev.kind]
        if args.progress and (n == total or n * 4 // total > (n - 1) * 4 // total):
            print(f"[{ev.elapsed_s:6.0f} s] {ev.kind}: {n}/{total} nodes; peak RSS {peak[0] / 1024**3:.2f} GiB "
                  f"(largest process {peak[1] / 1024**3:.2f} GiB)", flush=True)

    t0 = time.perf_counter()
    threading.Thread(target=sample, daemon=True).start()
    path = run_graph(graph, cfg.compute, on_event=on_event)
    wall = time.perf_counter() - t0
    done.set()
    workers = _worker_peaks(args.scheduler) if args.scheduler else {}
    doc = json.loads(Path(path).read_text())
    rows = [r for r in doc["results"] if r["detector"] not in doc.get("ceilings", []) and r["z_local"] is not None]
    best = max(rows, key=lambda r: (r.get("z_global") or 0, r["z_local"]))
    out = {"events": doc["n_events"], "injected": doc["n_injected"], "windows": len(windows),
           "nodes": len(graph), "detectors": sorted(cfg.enabled_detectors()), "wall_s": wall,
           "stage_finished_s": stage_end, "stage_nodes": dict(counts), "peak_rss_gib": peak[0] / 1024**3,
           "peak_process_rss_gib": peak[1] / 1024**3, "device": cfg.compute.device,
           "scheduler": args.scheduler, "worker_peak_rss_gib": workers,
           "best": {k: best.get(k) for k in ("window", "detector", "selection", "z_local", "z_global",
                                              "z_global_method", "n_observed_sr", "n_expected_sr",
                                              "n_signal_sr_truth")}}
    print(f"{out['events']} events ({out['injected']} injected), {out['windows']} windows, {out['nodes']} nodes, "
          f"detectors {', '.join(out['detectors'])}")
    print(f"wall {wall:.0f} s; peak RSS (all processes) {out['peak_rss_gib']:.2f} GiB, "
          f"largest single process {out['peak_process_rss_gib']:.2f} GiB")
    if workers:
        print(f"external scheduler {args.scheduler}: {len(workers)} workers, peak RSS per worker (VmHWM) "
              + ", ".join(f"{v:.2f}" for v in sorted(workers.values(), reverse=True)) + " GiB "
              f"(this process and its children: {out['peak_rss_gib']:.2f} GiB)")
    print("stage finished at [s]: " + ", ".join(f"{k} {v:.0f} ({counts[k]} nodes)" for k, v in stage_end.items()))
    per_det = {}
    for r in rows:
        d = r["detector"]
        if d not in per_det or r["z_local"] > per_det[d]["z_local"]:
            per_det[d] = r
    out["best_per_detector"] = {d: {k: r.get(k) for k in ("window", "selection", "z_local", "z_global",
                                                          "n_observed_sr", "n_expected_sr", "n_signal_sr_truth")}
                                for d, r in per_det.items()}
    for d, r in sorted(per_det.items()):
        print(f"  {d:12s} best local Z {r['z_local']:.2f} (global {r.get('z_global') or 0:.2f}) in {r['window']} "
              f"{r['selection']:g}: {r['n_observed_sr']} observed on {r['n_expected_sr']:.1f} expected, "
              f"{r.get('n_signal_sr_truth')} truth signal")
    b = out["best"]
    print(f"best: {b['detector']} {b['selection']:g} in {b['window']} GeV: local Z {b['z_local']:.2f}, "
          f"global Z {b['z_global']:.2f} [{b.get('z_global_method')}]")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
