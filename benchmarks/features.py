"""Noise-feature robustness: max SIC with the baseline features and with pure-noise features added.

At the benchmark point of ../shared/data/README.md (``--n-inject`` signal events injected into
qcd_features.h5, SR 3.3-3.7 TeV; test on the signal events not injected and on half of the
extra QCD sample's SR events, max SIC over cuts keeping >= ``--min-background`` test
background events), each detector is fitted on the baseline features of the config (4) and
again with ``--n-noise`` independent standard Gaussian columns appended to every event of the
data, the signal, the idealized detector's reference and the test sets alike. A detector that
is robust to uninformative inputs keeps most of its max SIC: the table prints the ratio of
the medians over seeds (target >= 0.8). Detector parameters: the config's (default:
configs/default.yaml, boosted-tree ensembles; the idealized detector, not in that file, gets
the same classifier). Uses benchmarks/sensitivity.py's split and scoring.

    python benchmarks/features.py --seeds 3 --json features.json
    python benchmarks/features.py --seeds 1 --flow-epochs 15     # quicker CATHODE flow

``--extended-demo`` instead times the extended N-subjettiness set (tau_N^beta, N = 1..9,
beta = 0.5, 1, 2) on the particle-level files (3000 QCD, 1000 signal events) and compares a
supervised classifier (5-fold cross-validated, the same boosted-tree ensemble) on the baseline
features, on the extended set and on both. With so few events this shows the mechanics, not
what the extended set is worth: that needs a particle-level sample of the size of
qcd_features.h5 (about 120k QCD events), which does not exist here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from sensitivity import fit_and_score, load_benchmark_data, splits_by_detector  # noqa: E402

from sideband.pipeline.config import DEFAULT_CONFIG, load_config  # noqa: E402
from sideband.pipeline.metrics import summarise_seeds  # noqa: E402

TARGET_RATIO = 0.8
VARIANTS = ("baseline", "noise")
#: Arrays of a split that hold events x features (the ones noise columns are appended to).
FEATURE_ARRAYS = ("X", "X_sig_test", "X_ref", "X_bkg_test")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "rnd"))
    p.add_argument("--signal", default="signal_3500_500_100_features.h5")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="detector parameters and baseline features")
    p.add_argument("--signal-region", default="3300,3700", help="SR low,high in GeV")
    p.add_argument("--n-inject", type=int, default=600)
    p.add_argument("--n-noise", type=int, default=10, help="pure-noise features added")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--detectors", default="cwola,cathode,idealized")
    p.add_argument("--variants", default="baseline,noise",
                   help="which fits to run (one variant per call keeps slow CATHODE runs short)")
    p.add_argument("--flow-epochs", type=int, default=None,
                   help="cap CATHODE's flow epochs (default: the config's flow_params)")
    p.add_argument("--min-background", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default=str(ROOT / ".bench-cache"))
    p.add_argument("--json", default=None, help="write the per-seed rows and the table to this path")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="print one table from the --json files of earlier runs (e.g. one per variant)")
    p.add_argument("--extended-demo", action="store_true",
                   help="time the extended N-subjettiness set and compare it on the small particle-level files")
    p.add_argument("--demo-window", default="2800,6000", help="mjj window (GeV) of the --extended-demo events")
    return p.parse_args(argv)


def add_noise(split: dict, n_noise: int, seed: int) -> dict:
    """``split`` with ``n_noise`` independent N(0, 1) columns appended to every feature array."""
    rng = np.random.default_rng([seed, 20_230_913])
    out = dict(split)
    for key in FEATURE_ARRAYS:
        X = split[key]
        out[key] = np.hstack([X, rng.standard_normal((len(X), n_noise)).astype(np.float32)])
    return out


def detector_params(cfg, name: str, flow_epochs: int | None) -> dict:
    """The config's parameters of ``name`` (the idealized detector: CWoLa's classifier)."""
    if name in cfg.detectors:
        params = dict(cfg.detectors[name].params)
    else:
        base = cfg.detectors.get("cwola")
        params = {k: v for k, v in (base.params if base else {}).items() if k in ("model", "n_ensemble", "hgb_params")}
    if flow_epochs is not None and name == "cathode":
        flow = dict(params.get("flow_params") or {})
        flow["epochs"] = min(int(flow.get("epochs", flow_epochs)), flow_epochs)
        params["flow_params"] = flow
    return params


def run(args) -> tuple[list[dict], list[dict], dict]:
    lo, hi = (float(x) for x in args.signal_region.split(","))
    d = Path(args.data_dir)
    overrides = {"data": {"path": str(d / "qcd_features.h5"), "reference": str(d / "qcd_extra_features.h5")},
                 "regions": {"signal_region": [lo, hi]}}
    cfg = load_config(args.config, overrides)
    names = [n for n in args.detectors.split(",") if n]
    data = load_benchmark_data(d, args.signal, args.cache)
    rows, counts = [], {}
    # Each detector on its own inputs (detectors.<name>.features, else features; the idealized
    # detector, not among the config's detectors, on features), the same injected events in each.
    feats = {name: list(cfg.detector_features(name)) for name in names}
    meta = {"features": list(cfg.features), "detector_features": feats, "signal_region": [lo, hi]}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        splits = splits_by_detector(seed, cfg, data, names, n_inject=args.n_inject)
        noisy: dict[int, dict] = {}  # the noise variant, once per split (detectors on the same inputs share one)
        for name in names:
            split = splits[name]
            if id(split) not in noisy:
                noisy[id(split)] = add_noise(split, args.n_noise, seed)
            counts = {"n_signal_sr": split["n_signal_sr"], "n_background_sr": split["n_background_sr"]}
            variants = {k: v for k, v in (("baseline", split), ("noise", noisy[id(split)]))
                        if k in args.variants.split(",")}
            params = detector_params(cfg, name, args.flow_epochs)
            for variant, sp in variants.items():
                row = fit_and_score(name, params, sp, seed=seed, min_background=args.min_background)
                rows.append({"seed": seed, "detector": name, "variant": variant,
                             "n_features": int(sp["X"].shape[1]), **row})
                logging.info("seed %d %-9s %-8s (%d features) max SIC %.2f AUC %.3f (%.0fs)", seed, name,
                             variant, sp["X"].shape[1], row["max_sic"], row["auc"], row["wall_s"])
                if args.json:  # after every fit: a run cut by its time limit keeps what it measured
                    write_json(args, rows, None, meta | {"counts": counts})
    return rows, summarise(rows, names), meta | {"counts": counts}


def write_json(args, rows, table, meta):
    Path(args.json).write_text(json.dumps({"table": table, "rows": rows, **meta, "args": vars(args)}, indent=2))


def summarise(rows: list[dict], names: list[str]) -> list[dict]:
    """Per detector and variant: median max SIC over seeds with its 16-84% band, AUC, wall time;
    the ratio noise / baseline of the medians (NaN where a variant was not run)."""
    table = []
    for name in names:
        out = {"detector": name}
        for variant in VARIANTS:
            rs = [r for r in rows if r["detector"] == name and r["variant"] == variant]
            sic = summarise_seeds([r["max_sic"] for r in rs])
            out[variant] = {"max_sic_median": sic["median"], "max_sic_lo": sic["lo"], "max_sic_hi": sic["hi"],
                            "auc_median": summarise_seeds([r["auc"] for r in rs])["median"],
                            "wall_s_median": summarise_seeds([r["wall_s"] for r in rs])["median"], "n_seeds": sic["n"],
                            "seeds": sorted(r["seed"] for r in rs)}
            if rs and "flow_epochs" in rs[0]:
                out[variant]["flow_epochs_median"] = summarise_seeds([r["flow_epochs"] for r in rs])["median"]
        out["ratio"] = out["noise"]["max_sic_median"] / out["baseline"]["max_sic_median"]
        by = {(r["variant"], r["seed"]): r["max_sic"] for r in rows if r["detector"] == name}
        out["per_seed_ratio"] = {s: by[("noise", s)] / by[("baseline", s)] for v, s in by if v == "noise"
                                 and ("baseline", s) in by}
        out["per_seed_ratio_median"] = summarise_seeds(list(out["per_seed_ratio"].values()))["median"]
        table.append(out)
    return table


def print_table(args, table, meta):
    c = meta["counts"]
    print(f"\nn_inject = {args.n_inject}: SR holds {c['n_signal_sr']} signal on {c['n_background_sr']} background; "
          f"{args.seeds} seed(s); baseline features {meta['features']} + {args.n_noise} N(0,1) noise features"
          + "".join(f"; {n}: {f}" for n, f in (meta.get("detector_features") or {}).items() if f != meta["features"])
          + (f"; CATHODE flow epochs capped at {args.flow_epochs}" if args.flow_epochs else ""))
    head = (f"{'detector':<10} {'max SIC baseline':>24} {'max SIC with noise':>24} {'ratio':>6} {'per seed':>8}  "
            f"{'AUC base/noise':>14}  wall s")
    print(head)
    print(f"{'':<10} {'median [16%, 84%] over seeds':>50} {'(noise / baseline: of the medians, median per seed)':>60}")
    for r in table:
        b, n = r["baseline"], r["noise"]
        band = lambda v: f"{v['max_sic_median']:.2f} [{v['max_sic_lo']:.2f}, {v['max_sic_hi']:.2f}]"  # noqa: E731
        verdict = "-" if not np.isfinite(r["ratio"]) else "ok" if r["ratio"] >= TARGET_RATIO else f"below {TARGET_RATIO}"
        flow = (f"  flow epochs {b.get('flow_epochs_median', np.nan):.0f}/{n.get('flow_epochs_median', np.nan):.0f}"
                if "flow_epochs_median" in b or "flow_epochs_median" in n else "")
        print(f"{r['detector']:<10} {band(b):>24} {band(n):>24} {r['ratio']:6.2f} {r['per_seed_ratio_median']:8.2f}  "
              f"{b['auc_median']:.3f}/{n['auc_median']:.3f}  {b['wall_s_median']:.0f}/{n['wall_s_median']:.0f}"
              f"  {verdict}{flow}")


def extended_demo(args) -> dict:
    """Timing per 1000 events and supervised max SIC: baseline vs extended features (tiny samples)."""
    from sklearn.model_selection import StratifiedKFold

    from sideband.detectors.base import make_detector
    from sideband.pipeline.features import EXTENDED_COLUMNS
    from sideband.pipeline.io import read_events
    from sideband.pipeline.metrics import sic_curve

    d = Path(args.data_dir)
    tables, timing = [], {}
    for name in ("qcd_particles.h5", args.signal.replace("_features.h5", "_particles.h5")):
        for sub in ("standard", "extended"):
            t0 = time.perf_counter()
            ev, src = read_events(d / name, substructure=sub, chunk_size=1000)
            timing[(name, sub)] = 1000 * (time.perf_counter() - t0) / src.n_read
        tables.append(ev)
    print("\nreading particle files (anti-kT clustering + N-subjettiness), seconds per 1000 events:")
    for (name, sub), t in timing.items():
        print(f"  {name:<38} {sub:<9} {t:6.2f}")
    events = pd.concat(tables, ignore_index=True)
    lo, hi = (float(x) for x in args.demo_window.split(","))
    events = events[(events["mjj"] >= lo) & (events["mjj"] < hi)].reset_index(drop=True)
    y = events["label"].to_numpy()
    cfg = load_config(args.config)
    sets = {"baseline": list(cfg.features), "extended": EXTENDED_COLUMNS,
            "baseline+extended": list(cfg.features) + EXTENDED_COLUMNS}
    params = detector_params(cfg, "supervised", None)
    rows = []
    for seed in range(args.seeds):
        folds = list(StratifiedKFold(5, shuffle=True, random_state=seed).split(events, y))
        for label, cols in sets.items():
            X, m = events[cols].to_numpy(np.float32), events["mjj"].to_numpy()
            score = np.empty(len(y))
            for train, test in folds:
                det = make_detector("supervised", params, random_state=seed)
                det.fit(X[train], m[train], signal_region=(lo, hi), y_true=y[train])
                score[test] = det.score(X[test])
            curve = sic_curve(score[y > 0.5], score[y < 0.5], args.min_background)
            rows.append({"seed": seed, "set": label, "n_features": len(cols), "max_sic": curve.max_sic,
                         "auc": curve.auc})
    print(f"\nsupervised, 5-fold cross-validated, mjj {lo:g}-{hi:g} GeV: {int((y > 0.5).sum())} signal, "
          f"{int((y < 0.5).sum())} QCD events (max SIC over cuts keeping >= {args.min_background} QCD events); "
          f"{args.seeds} seed(s)")
    print(f"{'features':<18} {'n':>3} {'max SIC (median [16%, 84%])':>30} {'AUC':>6}")
    for label, cols in sets.items():
        rs = [r for r in rows if r["set"] == label]
        sic = summarise_seeds([r["max_sic"] for r in rs])
        auc = summarise_seeds([r["auc"] for r in rs])["median"]
        print(f"{label:<18} {len(cols):>3} {sic['median']:>12.2f} [{sic['lo']:.2f}, {sic['hi']:.2f}]"
              f"{'':>7} {auc:6.3f}")
    return {"timing_s_per_1000": {f"{n}:{s}": t for (n, s), t in timing.items()}, "rows": rows}


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from sideband.pipeline.cluster import limit_threads

    limit_threads(args.threads)
    t0 = time.perf_counter()
    if args.extended_demo:
        out = extended_demo(args)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
        return 0
    if args.merge:
        docs = [json.loads(Path(f).read_text()) for f in args.merge]
        # one row per (seed, detector, variant): the last file wins
        rows = list({(r["seed"], r["detector"], r["variant"]): r for doc in docs for r in doc["rows"]}.values())
        names = list(dict.fromkeys(r["detector"] for r in rows))
        table, meta = summarise(rows, names), {k: docs[0][k] for k in ("counts", "features", "signal_region")}
        args.seeds = len({r["seed"] for r in rows})
        for k in ("flow_epochs", "n_inject", "n_noise"):
            setattr(args, k, docs[0]["args"][k])
    else:
        rows, table, meta = run(args)
    print_table(args, table, meta)
    if not args.merge:
        print(f"total wall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        write_json(args, rows, table, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
