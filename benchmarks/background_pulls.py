"""Calibration of the selections on background alone, per background sample.

Reads the background-only points (no injected signal) of finished injection scans
(``sideband inject`` / ``benchmarks/sensitivity_curve.py --counts 0``) and prints, per
background sample (content hash of the input file), detector and selection: the mean and
spread over seeds of the signed pull (observed - expected) / sqrt(expected + uncertainty^2) in
the SR and of observed / expected - 1, and how many tests had local Z > 1 and > 2.

Seeds of one sample share its events (a seed changes the training and folds, not the data), so
a sample's mean pull carries that sample's own fluctuation: a method is calibrated when its
pulls scatter around 0 over independent samples, not over the seeds of one. Run the scan once
per sample (``--data FILE``) and pass all the scan directories:

    python benchmarks/sensitivity_curve.py --config CFG --out runs/a --counts 0 --seeds 5
    python benchmarks/sensitivity_curve.py --config CFG --data other_background.h5 --out runs/b --counts 0 --seeds 5
    python benchmarks/background_pulls.py runs/a runs/b [--detector cathode] [--json pulls.json]

or split one file into P disjoint parts, one per seed (``--background-parts P``: P independent
samples at 1/P of the statistics):

    python benchmarks/sensitivity_curve.py --config CFG --out runs/p --counts 0 --seeds 10 --background-parts 10

The second table summarises each (window, detector, selection) over the samples, and the global
Z of the background-only points is counted against its nominal rate. ``--random N`` adds a
control: the same points' events cut at the same efficiencies on N random scores each (no
detector), which measures the background fit's own calibration on these spectra.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path


def background_points(scan_dirs: list[Path]) -> list[dict]:
    """The results.json of every background-only point under ``scan_dirs/points``."""
    docs = []
    for d in scan_dirs:
        for res in sorted(Path(d).glob("points/*/results.json")):
            doc = json.loads(res.read_text())
            if int(doc.get("n_injected") or 0) == 0:
                docs.append(doc | {"scan": str(d), "_path": str(res)})
    return docs


def _sample(doc: dict) -> str:
    data = [s for s in doc.get("inputs", []) if s.get("role") != "reference"]
    return ", ".join(f"{Path(s['path']).name} ({s['content_hash'][:8]})"
                     + (f" part {s['split']['part']}/{s['split']['parts']}" if s.get("split") else "")
                     for s in data) or "?"


def _mean_sd(v: list[float]) -> tuple[float, float]:
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0


def pulls(docs: list[dict], detector: str | None = None) -> list[dict]:
    """One row per (scan, sample, window, detector, selection) with the pulls of its seeds."""
    groups: dict[tuple, list[dict]] = {}
    for doc in docs:
        for t in doc["results"]:
            if t.get("status") != "ok" or t["detector"] in ("none",) or (detector and t["detector"] != detector):
                continue
            exp, unc, obs = t["n_expected_sr"], t["n_expected_sr_unc"] or 0.0, t["n_observed_sr"]
            if not exp or exp <= 0:
                continue
            groups.setdefault((doc.get("scan", ""), _sample(doc), t["window"], t["detector"], t["selection"]), []).append(
                {"seed": doc.get("seed"), "pull": (obs - exp) / math.sqrt(exp + unc ** 2), "ratio": obs / exp - 1,
                 "z_local": t.get("z_local") or 0.0})
    rows = []
    for (scan, sample, window, det, sel), v in sorted(groups.items(), key=lambda kv: (*kv[0][:4], -kv[0][4])):
        pm, ps = _mean_sd([x["pull"] for x in v])
        rm, rs = _mean_sd([x["ratio"] for x in v])
        rows.append({"scan": scan, "sample": sample, "window": window, "detector": det, "selection": sel, "n_seeds": len(v),
                     "pull_mean": pm, "pull_sd": ps, "ratio_mean": rm, "ratio_sd": rs,
                     "z_above_1": sum(x["z_local"] > 1 for x in v), "z_above_2": sum(x["z_local"] > 2 for x in v),
                     "seeds": v})
    return rows


def across_samples(rows: list[dict]) -> list[dict]:
    """Per (window, detector, selection): the spread of the samples' mean pulls over independent
    samples (a calibrated method scatters around 0 with sd ~1 for one seed per sample)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["window"], r["detector"], r["selection"]), []).append(r)
    out = []
    for (window, det, sel), v in sorted(groups.items(), key=lambda kv: (*kv[0][:2], -kv[0][2])):
        pm, ps = _mean_sd([r["pull_mean"] for r in v])
        rm, rs = _mean_sd([r["ratio_mean"] for r in v])
        out.append({"window": window, "detector": det, "selection": sel, "n_samples": len({r["sample"] for r in v}),
                    "pull_mean": pm, "pull_sd": ps, "ratio_mean": rm, "ratio_sd": rs,
                    "z_above_1": sum(r["z_above_1"] for r in v), "z_above_2": sum(r["z_above_2"] for r in v),
                    "n_tests": sum(r["n_seeds"] for r in v)})
    return out


def global_rates(scan_dirs: list[Path], detector: str | None = None) -> list[dict]:
    """Per detector: the global Z (look-elsewhere over the blind scan) of the background-only points
    of the scans' inject_results.json: how many exceed 1 and 2, and the largest."""
    z: dict[str, list[float]] = {}
    for d in scan_dirs:
        res = Path(d) / "inject_results.json"
        if not res.exists():
            continue
        for p in json.loads(res.read_text()).get("points", []):
            if p.get("n_inject"):
                continue
            for name, v in p["detectors"].items():
                if name != "none" and (detector is None or name == detector) and v.get("z_global") is not None:
                    z.setdefault(name, []).append(v["z_global"])
    return [{"detector": k, "n_points": len(v), "z_above_1": sum(x > 1 for x in v), "z_above_2": sum(x > 2 for x in v),
             "z_max": max(v)} for k, v in sorted(z.items())]


def format_across(rows: list[dict], rates: list[dict]) -> str:
    lines = ["", "over independent samples (each sample's mean pull counted once):",
             f"{'window':<10} {'detector':<11} {'keep':>6} {'samples':>7}  {'pull mean (sd)':<16} {'obs/exp-1 mean (sd)':<20} "
             f"{'Z>1':>4} {'Z>2':>4} {'tests':>5}"]
    for r in rows:
        lines.append(f"{r['window']:<10} {r['detector']:<11} {r['selection']:>6g} {r['n_samples']:>7}  "
                     f"{r['pull_mean']:+.2f} ({r['pull_sd']:.2f}){'':<4} "
                     f"{100 * r['ratio_mean']:+.1f}% ({100 * r['ratio_sd']:.1f}%){'':<6} "
                     f"{r['z_above_1']:>4} {r['z_above_2']:>4} {r['n_tests']:>5}")
    if rates:
        lines.append("global Z (look-elsewhere over the blind scan) of the background-only points "
                     "(one-sided nominal: Z > 1 in 15.9%, Z > 2 in 2.3%):")
        for r in rates:
            lines.append(f"  {r['detector']:<11} {r['n_points']:>3} points: global Z > 1 in {r['z_above_1']}, "
                         f"> 2 in {r['z_above_2']}; largest {r['z_max']:.2f}")
    return "\n".join(lines)


def random_control(docs: list[dict], n_random: int) -> list[dict]:
    """Per window and selection: pulls of the points' events cut on ``n_random`` uniform random
    scores each (seeded by the point), with the point's fit and stats settings (asymptotic p-values)."""
    import numpy as np
    import pyarrow.parquet as pq

    from sideband.pipeline.config import FitConfig, StatsConfig
    from sideband.pipeline.evaluate import evaluate_window
    from sideband.pipeline.records import EventTable, WindowScores
    from sideband.pipeline.regions import Window

    groups: dict[tuple, list[float]] = {}
    for doc in docs:
        cfg = doc["config"]
        fit = FitConfig.model_validate(cfg["fit"])
        stats_cfg = StatsConfig.model_validate(cfg["stats"] | {"p_value": "asymptotic", "signal_model": None})
        path = Path(doc["_path"]).parent / doc["event_table"]
        table = EventTable(path=str(path), sources=(), n_events=pq.read_metadata(path).num_rows)
        for w in doc["windows"]:
            window = Window(w["sr"][0], w["sr"][1], w["sb"][0], w["sb"][1])
            for k in range(n_random):
                rng = np.random.default_rng([k, int(doc.get("seed") or 0), table.n_events])
                scores = WindowScores(scores=rng.random(table.n_events), owner=np.zeros(table.n_events, int), wall_s=0.0)
                out = evaluate_window(table, scores, window=window, detector="random", fit=fit, stats=stats_cfg,
                                      blind=False, seed=k)
                for r in out.rows:
                    if r.status == "ok" and r.n_expected_sr and r.n_expected_sr > 0:
                        groups.setdefault((window.name, r.selection), []).append(
                            (r.n_observed_sr - r.n_expected_sr) / math.sqrt(r.n_expected_sr + (r.n_expected_sr_unc or 0) ** 2))
    rows = []
    for (window, sel), v in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        m, sd = _mean_sd(v)
        rows.append({"window": window, "selection": sel, "n_tests": len(v), "pull_mean": m, "pull_sd": sd,
                     "pull_se": sd / math.sqrt(len(v))})
    return rows


def format_random(rows: list[dict]) -> str:
    lines = ["", "control: the same events cut on random scores (the fit's own calibration):"]
    lines += [f"  {r['window']:<10} keep {r['selection']:<6g} {r['n_tests']:>4} tests  pull mean {r['pull_mean']:+.2f} "
              f"(sd {r['pull_sd']:.2f}, standard error {r['pull_se']:.2f})" for r in rows]
    return "\n".join(lines)


def format_pulls(rows: list[dict]) -> str:
    lines = [f"{'scan':<24} {'sample':<34} {'window':<10} {'detector':<11} {'keep':>6} {'seeds':>5}  {'pull mean (sd)':<16} "
             f"{'obs/exp-1 mean (sd)':<20} {'Z>1':>4} {'Z>2':>4}"]
    for r in rows:
        lines.append(f"{r['scan'][-24:]:<24} {r['sample'][:34]:<34} {r['window']:<10} {r['detector']:<11} {r['selection']:>6g} {r['n_seeds']:>5}  "
                     f"{r['pull_mean']:+.2f} ({r['pull_sd']:.2f}){'':<4} "
                     f"{100 * r['ratio_mean']:+.1f}% ({100 * r['ratio_sd']:.1f}%){'':<6} "
                     f"{r['z_above_1']:>4} {r['z_above_2']:>4}")
    lines.append("seeds of one sample share its events: their spread is the training's; compare the means across "
                 "independent samples")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scans", nargs="+", type=Path, help="finished injection scan directories")
    ap.add_argument("--detector", default=None, help="only this detector")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--random", type=int, default=0, metavar="N",
                    help="control: also cut each point's events on N random scores (the fit's own calibration)")
    args = ap.parse_args(argv)
    docs = background_points(args.scans)
    if not docs:
        sys.stderr.write(f"no background-only points under {', '.join(map(str, args.scans))}/points; "
                         "run the injection scan with --counts 0\n")
        return 2
    rows = pulls(docs, args.detector)
    across, rates = across_samples(rows), global_rates(args.scans, args.detector)
    control = random_control(docs, args.random) if args.random > 0 else []
    sys.stdout.write(format_pulls(rows) + "\n" + format_across(across, rates) + "\n"
                     + (format_random(control) + "\n" if control else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"per_sample": rows, "across_samples": across, "global": rates,
                                               "random_control": control}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
