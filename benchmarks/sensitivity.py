"""Sensitivity benchmark: max SIC and AUC of each detector at a given signal injection.

For each seed: inject ``--n-inject`` signal events (drawn without replacement) into the
R&D background; split the independent extra QCD sample's SR events in two halves, the
idealized detector's reference and the test background; the signal events that were not
injected (in the SR) are the test signal. Each detector is fitted once on the data (its
own SR/SB logic) and scored on the test sets. Prints one table; ``--json`` writes the rows.

``--sculpting`` also runs the full search graph (k-folded, all detectors) on the
background alone and reports the largest local Z after any selection (target: < 2).

    python benchmarks/sensitivity.py --seeds 5 --json sens.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


from sideband.detectors.base import make_detector, score_events  # noqa: E402
from sideband.pipeline.config import load_config  # noqa: E402
from sideband.pipeline.io import load_events  # noqa: E402
from sideband.pipeline.metrics import sic_curve, summarise_seeds  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "rnd"))
    p.add_argument("--signal", default="signal_3500_500_100_features.h5")
    p.add_argument("--config", default=str(ROOT / "configs" / "benchmark.yaml"))
    p.add_argument("--n-inject", type=int, default=600)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--detectors", default="cwola,cathode,supervised,idealized")
    p.add_argument("--min-background", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default=str(ROOT / ".bench-cache"))
    p.add_argument("--json", default=None, help="write the rows as JSON objects to this path")
    p.add_argument("--sculpting", action="store_true", help="also run the background-only search")
    p.add_argument("--cathode-long", action="store_true",
                   help="add 'cathode_long': the same flow trained 5x longer (epochs and patience x5)")
    return p.parse_args(argv)


def benchmark_split(seed, cfg, bkg, sig, extra, *, n_inject, features=None):
    """One seed's data and test sets at the benchmark point (arrays of ``features``).

    ``n_inject`` signal events drawn without replacement are added to the background; the
    data are the events in ``cfg.fit.range``. Test signal: the signal events not injected, in
    the SR; the extra QCD sample's SR events are split in two halves: the idealized
    detector's reference (``X_ref``) and the test background (``X_bkg_test``).
    """
    rng = np.random.default_rng(seed)
    lo, hi = cfg.regions.signal_region
    fit_lo, fit_hi = cfg.fit.range
    feats = list(features or cfg.features)
    inj = rng.choice(len(sig), size=n_inject, replace=False)
    test_sig = np.setdiff1d(np.arange(len(sig)), inj)
    data = np.concatenate([bkg[feats].to_numpy(np.float32), sig[feats].to_numpy(np.float32)[inj]])
    m = np.concatenate([bkg["mjj"].to_numpy(), sig["mjj"].to_numpy()[inj]])
    label = np.r_[np.zeros(len(bkg)), np.ones(len(inj))]
    win = (m >= fit_lo) & (m < fit_hi)
    X, m, label = data[win], m[win], label[win]
    sig_m = sig["mjj"].to_numpy()[test_sig]
    sig_sr = (sig_m >= lo) & (sig_m < hi)
    X_sig_test = sig[feats].to_numpy(np.float32)[test_sig][sig_sr]
    em = extra["mjj"].to_numpy()
    ex_sr = np.flatnonzero((em >= lo) & (em < hi))
    ex_sr = rng.permutation(ex_sr)
    half = len(ex_sr) // 2
    in_sr = (m >= lo) & (m < hi)
    return {"X": X, "m": m, "label": label, "X_sig_test": X_sig_test,
            "X_ref": extra[feats].to_numpy(np.float32)[ex_sr[:half]],
            "X_bkg_test": extra[feats].to_numpy(np.float32)[ex_sr[half:]],
            "m_sig_test": sig_m[sig_sr], "m_bkg_test": em[ex_sr[half:]],
            "signal_region": (lo, hi), "n_signal_sr": int(label[in_sr].sum()),
            "n_background_sr": int((1 - label[in_sr]).sum())}


def fit_and_score(name, params, split, *, seed, min_background):
    """Fit detector ``name`` on ``split`` (from :func:`benchmark_split`) and measure it on the test sets.

    Returns max SIC (at least ``min_background`` test-background events passing), AUC, SIC at
    20% signal efficiency, the fit's wall time and, for CATHODE, the flow's epochs and time.
    """
    det = make_detector(name, params, random_state=seed)
    extra_kw = {}
    if det.truth_kind == "labels":
        extra_kw["y_true"] = split["label"]
    elif det.truth_kind == "reference":
        extra_kw["X_reference"] = split["X_ref"]
    t0 = time.perf_counter()
    det.fit(split["X"], split["m"], signal_region=split["signal_region"], **extra_kw)
    wall = time.perf_counter() - t0
    curve = sic_curve(score_events(det, split["X_sig_test"], split["m_sig_test"]),
                      score_events(det, split["X_bkg_test"], split["m_bkg_test"]), min_background)
    info = {}
    if hasattr(det, "flow_history_"):
        h = det.flow_history_
        info = {"flow_epochs": h["epochs"], "flow_s": h["seconds"], "flow_s_per_epoch": h["seconds"] / h["epochs"]}
    return {"max_sic": curve.max_sic, "auc": curve.auc, "sic_at_0.2": curve.sic_at(0.2), "wall_s": wall, **info}


def splits_by_detector(seed, cfg, data, names, *, n_inject) -> dict[str, dict]:
    """Each detector's :func:`benchmark_split` on its own inputs (``cfg.detector_features``): one
    split per distinct input set, shared by the detectors that use it; the same injected events
    in each (same seed)."""
    by_inputs: dict[tuple, dict] = {}
    for feats in dict.fromkeys(cfg.detector_features(name) for name in names):
        by_inputs[feats] = benchmark_split(seed, cfg, *data, n_inject=n_inject, features=list(feats))
    return {name: by_inputs[cfg.detector_features(name)] for name in names}


def one_seed(seed, args, cfg, data, names):
    splits = splits_by_detector(seed, cfg, data, names, n_inject=args.n_inject)
    rows = []
    for name in names:
        split = splits[name]
        row = fit_and_score(name.removesuffix("_long"), cfg.detectors[name].params, split, seed=seed,
                            min_background=args.min_background)
        rows.append({"seed": seed, "detector": name, **row})
        logging.info("seed %d %-10s max SIC %.2f AUC %.3f (%.0fs)", seed, name, row["max_sic"], row["auc"],
                     row["wall_s"])
    return rows, {"n_signal_sr": split["n_signal_sr"], "n_background_sr": split["n_background_sr"]}


def load_benchmark_data(data_dir, signal, cache):
    """The R&D background, the independent extra QCD sample and the signal as event tables."""
    d = Path(data_dir)
    bkg, _ = load_events(d / "qcd_features.h5", cache_dir=cache)
    extra, _ = load_events(d / "qcd_extra_features.h5", cache_dir=cache)
    sig, _ = load_events(d / signal, cache_dir=cache)
    return bkg, sig, extra


def sculpting(cfg, args, names):
    from sideband.workflows.search import run_search

    from sideband.detectors.base import load_detector_class

    # background only: the supervised ceiling has no signal labels to learn from
    sub = {n: cfg.detectors[n] for n in names
           if not n.endswith("_long") and load_detector_class(n).truth_kind != "labels"}
    bkg_cfg = cfg.model_copy(update={"detectors": sub, "data": cfg.data.model_copy(update={"inject": None})})
    res = run_search(bkg_cfg, Path(args.cache) / "sculpting", unblind=True)
    out = {}
    for r in res["results"]:
        if r["z_local"] is not None:
            out[r["detector"]] = max(out.get(r["detector"], 0.0), r["z_local"])
    return out


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from sideband.pipeline.cluster import limit_threads

    limit_threads(args.threads)
    d = Path(args.data_dir)
    overrides = {"data": {"path": str(d / "qcd_features.h5"), "reference": str(d / "qcd_extra_features.h5")}}
    cfg = load_config(args.config, overrides)
    names = [n for n in args.detectors.split(",") if n]
    if args.cathode_long:
        base = cfg.detectors["cathode"]
        flow = dict(base.params.get("flow_params") or {})
        flow["epochs"] = 5 * int(flow.get("epochs", 100))
        flow["patience"] = 5 * int(flow.get("patience", 10))
        cfg.detectors["cathode_long"] = base.model_copy(update={"params": base.params | {"flow_params": flow}})
        names.append("cathode_long")
    data = load_benchmark_data(d, args.signal, args.cache)
    all_rows, counts = [], None
    for seed in range(args.seeds):
        rows, counts = one_seed(seed, args, cfg, data, names)
        all_rows += rows
    table = []
    for name in names if all_rows else []:
        rs = [r for r in all_rows if r["detector"] == name]
        sic = summarise_seeds([r["max_sic"] for r in rs])
        row = {"detector": name, "max_sic_median": sic["median"], "max_sic_lo": sic["lo"], "max_sic_hi": sic["hi"],
               "auc_median": summarise_seeds([r["auc"] for r in rs])["median"],
               "wall_s": summarise_seeds([r["wall_s"] for r in rs])["median"], "n_seeds": sic["n"],
               "n_inject": args.n_inject, "per_seed": rs}
        if rs and "flow_epochs" in rs[0]:
            row["flow_epochs_median"] = summarise_seeds([r["flow_epochs"] for r in rs])["median"]
            row["flow_s_per_epoch_median"] = summarise_seeds([r["flow_s_per_epoch"] for r in rs])["median"]
        table.append(row)
    ideal = next((r["max_sic_median"] for r in table if r["detector"] == "idealized"), None)
    result = {"rows": table, "counts": counts}
    if counts is None:  # --seeds 0: only the sculpting check
        names = [n for n in names if n != "cathode_long"]
    else:
        _print_table(args, counts, table, ideal)
    if args.sculpting:
        zmax = sculpting(cfg, args, names)
        print("\nbackground only (k-folded search graph): largest local Z after any selection")
        for name, z in zmax.items():
            print(f"  {name:<11} Z_max = {z:.2f}  {'ok' if z < 2 else 'EXCESS'}")
        result["sculpting_zmax"] = zmax
    if args.json:
        Path(args.json).write_text(json.dumps(table if not args.sculpting else result, indent=2))
    return 0


def _print_table(args, counts, table, ideal):
    print(f"\nn_inject = {args.n_inject}: SR holds {counts['n_signal_sr']} signal on {counts['n_background_sr']} "
          f"background (S/B = {counts['n_signal_sr'] / counts['n_background_sr']:.4f}, "
          f"S/sqrt(B) = {counts['n_signal_sr'] / np.sqrt(counts['n_background_sr']):.2f}); {args.seeds} seeds")
    print(f"{'detector':<11} {'max SIC (median [16%, 84%])':>30} {'/ idealized':>11} {'AUC':>6} {'wall s':>8}")
    for r in table:
        frac = f"{r['max_sic_median'] / ideal:.2f}" if ideal else "-"
        band = f"{r['max_sic_median']:.2f} [{r['max_sic_lo']:.2f}, {r['max_sic_hi']:.2f}]"
        extra_s = (f"  flow: {r['flow_epochs_median']:.0f} epochs, {r['flow_s_per_epoch_median']:.2f} s/epoch"
                   if "flow_epochs_median" in r else "")
        print(f"{r['detector']:<11} {band:>30} {frac:>11} {r['auc_median']:6.3f} {r['wall_s']:8.1f}{extra_s}")


if __name__ == "__main__":
    sys.exit(main())
