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

``--results DIR`` reprints the tables of a finished scan without running anything; repeated
(``--results A --results B``) it pools the points of several finished scans of the same signal
and levels, e.g. one per background file, each split with ``--background-parts``, so the curve
and its crossings run over every independent background sample:

    python benchmarks/sensitivity_curve.py --config CFG --data a.h5 --out runs/a --levels 0,1,2,3 \
        --seeds 4 --background-parts 4
    python benchmarks/sensitivity_curve.py --config CFG --data b.h5 --out runs/b --levels 0,1,2,3 \
        --seeds 4 --background-parts 4
    python benchmarks/sensitivity_curve.py --results runs/a --results runs/b
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
    p.add_argument("--results", action="append", default=None,
                   help="print the tables of this finished scan directory; run nothing (repeat to pool scans)")
    p.add_argument("--json", default=None, help="write curves, crossings and summary to this path")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    return p.parse_args(argv)


def run(args) -> dict:
    """The parsed inject_results.json: read from ``--results`` or produced by a new scan."""
    if args.results:
        results = [json.loads((Path(d) / "inject_results.json").read_text()) for d in args.results]
        return results[0] if len(results) == 1 else pool_scans(results, args.results)
    from sideband.workflows.inject import injection_config, run_injection

    cfg = injection_config(args.config, data=args.data, scheduler=args.scheduler)
    counts = [int(c) for c in args.counts.split(",")] if args.counts else None
    levels = [float(c) for c in args.levels.split(",")] if args.levels else None
    return run_injection(cfg, args.out, counts=counts, seeds=args.seeds, signals=args.signal, levels=levels,
                         background_parts=args.background_parts, progress=args.progress)


def pool_scans(results: list[dict], names: list[str]) -> dict:
    """The points of several finished scans as one: per signal file and S/sqrt(B) level (scans run
    with ``--levels``, whose counts differ a little between background files) or injected count;
    each scan's background parts stay samples of their own. The look-elsewhere must be the same."""
    from sideband.pipeline.sensitivity import sensitivity_curves

    tests = {json.dumps(r["sensitivity"]["look_elsewhere"].get("n_tests")) for r in results}
    if len(tests) > 1:
        raise SystemExit(f"--results: the scans count different look-elsewhere tests ({', '.join(sorted(tests))}); "
                         "pool scans of the same config only")
    canonical: dict[tuple, int] = {}  # (signal name, level) -> the first scan's count
    points, samples = [], set()
    for i, res in enumerate(results):
        level_of = {}
        for plan in res.get("signals", []):
            if plan.get("levels") and plan.get("b_sr"):
                for c in plan["counts"]:  # the plan's level nearest to count x f_SR / sqrt(B_SR)
                    x = c * plan["f_sr"] / plan["b_sr"] ** 0.5
                    level_of[(Path(plan["signal"]).name, c)] = min(plan["levels"], key=lambda lv: abs(lv - x))
        for p in res["points"]:
            q = dict(p)
            key = (Path(p["signal"]).name, level_of.get((Path(p["signal"]).name, p["n_inject"])))
            if key[1] is not None:
                q["n_inject"] = canonical.setdefault(key, p["n_inject"])
            q["signal"] = Path(p["signal"]).name
            part = p.get("background_part")
            samples.add((i, part[0] if part else None))
            points.append(q)
    sens = sensitivity_curves(points)
    sens["band"] = (f"16-84% over the seeds of {len(results)} pooled scans ({', '.join(names)}), "
                    f"{len(samples)} distinct background samples (scan x background part); each scan's own caption: "
                    + " | ".join(sorted({r['sensitivity'].get('band', '') for r in results})))
    sens["look_elsewhere"] = results[0]["sensitivity"]["look_elsewhere"]
    return {"sensitivity": sens, "summary": [], "points": points, "config": None}


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
