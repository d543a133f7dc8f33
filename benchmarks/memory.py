"""Peak memory of a search on a large input (default 1,000,000 events).

Builds an LHC Olympics feature file of ``--events`` events by resampling the R&D QCD files
(rows drawn with replacement; for memory and streaming, not physics), then runs
``sideband search`` on it twice:

1. ``--scheduler synchronous`` (one process) under ``/usr/bin/time -v``: its "Maximum
   resident set size" is the peak of the whole search;
2. the default LocalCluster, sampling the summed RSS of the process tree (client,
   scheduler and workers) every 0.2 s with psutil.

    python benchmarks/memory.py --events 1000000 --workdir /tmp/sideband-mem
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def make_file(path: Path, n: int, data_dir: Path, chunk: int = 200_000) -> None:
    src = pd.concat([pd.read_hdf(data_dir / "qcd_features.h5"), pd.read_hdf(data_dir / "qcd_extra_features.h5")],
                    ignore_index=True)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(src), n)
    frame = src.iloc[rows].reset_index(drop=True)
    frame.to_hdf(path, key="df", mode="w")
    del frame


def tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        p = psutil.Process(proc.pid)
        for q in [p, *p.children(recursive=True)]:
            try:
                total += q.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--workdir", default="/tmp/sideband-mem")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "rnd"))
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"events_{args.events}.h5"
    if not data.exists():
        make_file(data, args.events, Path(args.data_dir))
    print(f"input: {data} ({data.stat().st_size / 1e6:.0f} MB, {args.events} events)")
    base = [sys.executable, "-m", "sideband.workflows.cli", "search", "--data", str(data), "--no-progress"]

    t0 = time.perf_counter()
    run = subprocess.run(["/usr/bin/time", "-v", *base, "--scheduler", "synchronous", "--out", str(work / "sync")],
                         cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        print(run.stderr[-3000:])
        return 1
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    print(f"synchronous: peak RSS {peak_kb / 1024**2:.2f} GiB (/usr/bin/time -v), wall {wall:.0f} s")

    t0 = time.perf_counter()
    proc = subprocess.Popen([*base, "--out", str(work / "cluster")], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    proc.wait()
    th.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr.read()[-3000:])
        return 1
    print(f"LocalCluster: peak summed RSS of all processes {peak[0] / 1024**3:.2f} GiB (psutil), wall {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
