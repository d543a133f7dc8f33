"""Sensitivity curves a paper would show: median global and local Z over seeds vs injected S/sqrt(B).

Runs ``sideband inject`` (the whole injection scan of the config: every signal x injected count
x seed, all detectors, in one Dask graph; cached, so an interrupted run resumes) and prints,
per detector and S/sqrt(B) in the SR before selection, the median global Z (look-elsewhere
over the blind scan of ``regions.scan``: the number of tests is printed) and the median local
Z (best selection) with their 16-84% bands over seeds, then the S/sqrt(B) where the median
global (and local) Z crosses 3 and 5 with its bootstrap uncertainty. ``--json`` writes the
curves, the crossings and the summary rows. The paper setting (long: 25 points, five
detectors, CATHODE flows; hours on a few cores):

    python benchmarks/sensitivity_curve.py --config configs/injection.yaml --out inject-rnd \
        --json sensitivity_curve.json

``--results DIR`` reprints the tables of a finished scan without running anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "injection.yaml"))
    p.add_argument("--out", default="inject-rnd", help="output directory of the injection scan")
    p.add_argument("--data", default=None, help="background file (default: data.path of the config)")
    p.add_argument("--signal", action="append", default=None, help="signal file (default: injection.signals)")
    p.add_argument("--counts", default=None, help="comma-separated injected counts (default: injection.counts)")
    p.add_argument("--levels", default=None, help="comma-separated S/sqrt(B) in the SR instead of --counts")
    p.add_argument("--seeds", type=int, default=None, help="seeds per point (default: injection.seeds)")
    p.add_argument("--background-parts", type=int, default=None, metavar="P",
                   help="seed k analyses part k mod P of P disjoint parts of the background (independent samples)")
    p.add_argument("--scheduler", default=None, help="compute.scheduler: synchronous, an address, ...")
    p.add_argument("--results", default=None, help="print the tables of this finished scan directory; run nothing")
    p.add_argument("--json", default=None, help="write curves, crossings and summary to this path")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    return p.parse_args(argv)


def run(args) -> dict:
    """The parsed inject_results.json: read from ``--results`` or produced by a new scan."""
    if args.results:
        return json.loads((Path(args.results) / "inject_results.json").read_text())
    from sideband.workflows.inject import injection_config, run_injection

    cfg = injection_config(args.config, data=args.data, scheduler=args.scheduler)
    counts = [int(c) for c in args.counts.split(",")] if args.counts else None
    levels = [float(c) for c in args.levels.split(",")] if args.levels else None
    return run_injection(cfg, args.out, counts=counts, seeds=args.seeds, signals=args.signal, levels=levels,
                         background_parts=args.background_parts, progress=args.progress)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from sideband.pipeline.sensitivity import format_sensitivity

    t0 = time.time()
    res = run(args)
    sens = res["sensitivity"]
    lee = sens["look_elsewhere"]
    windows = lee.get("scan_windows") or []
    sys.stdout.write(f"global Z: look-elsewhere over {lee['n_tests']} tests (blind scan of {len(windows)} windows "
                     f"x detectors x selections + inclusive; ceilings in their own toy run)\n\n")
    sys.stdout.write(format_sensitivity(sens) + "\n")
    if not args.results:
        sys.stdout.write(f"\nwall {time.time() - t0:.0f} s; scan: {args.out}/inject_results.json, "
                         f"{args.out}/report.html\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"sensitivity": sens, "summary": res["summary"],
                                               "config": res.get("config")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
