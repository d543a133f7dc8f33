"""Background models on real detector selections: the dijet fit against the efficiency ratio.

Re-evaluates every (window, detector, selection) of finished search runs (their results.json
and cached out-of-fold scores; nothing is retrained) with

* ``dijet``: the search's procedure (the selected spectrum fitted alone; its local Z as the run
  reported it), and
* ``ratio``: the selection's efficiency fitted as a smooth function of mjj through the inclusive
  spectrum (``pipeline/ratio.py``; asymptotic Z and, with ``--toys``, pseudo-experiments).

Over the tests of background-only runs (no truth signal selected in the SR) it prints the
fractions with Z > 1, 2, 3 against the Gaussian rates with their binomial errors; over runs
with signal, the Z of the tests that hold it. This is how the ratio model was measured and
not made the search's background (see its module docstring and the statistics issue note).

    sideband search --data bkg.h5 --config configs/demo.yaml --unblind --out runs/bkg0
    python benchmarks/background_models.py runs/bkg0 runs/bkg1 ... [--toys 5000] [--sparse-below 1000]
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from sideband.pipeline.evaluate import selection_threshold
from sideband.pipeline.fits import SPARSE_EVENTS, make_edges
from sideband.pipeline.ratio import ratio_predict
from sideband.pipeline.records import load_record
from sideband.pipeline.stats import z_on_off
from sideband.pipeline.toys import toy_p_value_ratio


def _selections(score, m, in_fit, in_sr, edges, effs):
    out = []
    for eff in effs:
        passed = in_fit & (score > selection_threshold(score, in_fit & ~in_sr, eff))
        out.append((eff, np.histogram(m[passed], edges)[0].astype(float), passed))
    return out


def _run_rows(run: Path, args) -> list[dict]:
    """One row per test of ``run`` that can be matched to its cached scores."""
    res = json.loads((run / "results.json").read_text())
    events = pd.read_parquet(glob.glob(str(run / "cache" / "events" / "*.parquet"))[0])
    m = events["mjj"].to_numpy()
    truth = events["label"].to_numpy() if "label" in events else np.zeros(len(m))
    cfg = res["config"]
    lo, hi = cfg["fit"]["range"]
    effs = cfg["stats"]["selections"]
    in_fit = (m >= lo) & (m < hi)
    tests = [r for r in res["results"] if r["detector"] != "none"]
    windows = {r["window"]: tuple(r["sr"]) for r in tests}
    rows = []
    for path in sorted(glob.glob(str(run / "cache" / "scores-*.npz"))):
        score = load_record(path).scores
        for name, sr in windows.items():
            edges = make_edges((lo, hi), cfg["fit"]["bin_width"], sr)
            sr_bins = (edges[:-1] >= sr[0]) & (edges[1:] <= sr[1])
            total = np.histogram(m[in_fit], edges)[0].astype(float)
            sel = _selections(score, m, in_fit, (m >= sr[0]) & (m < sr[1]), edges, effs)
            for det in {r["detector"] for r in tests if r["window"] == name}:
                mine = {r["selection"]: r for r in tests if r["window"] == name and r["detector"] == det}
                if not all(mine[e]["n_observed_sr"] == int(c[sr_bins].sum())
                           and mine[e]["n_selected_sidebands"] == int(c[~sr_bins].sum()) for e, c, _ in sel):
                    continue  # these scores belong to another (window, detector)
                for eff, counts, passed in sel:
                    rows.append(_row(run.name, mine[eff], edges, total, counts, sr_bins,
                                     int(np.sum(passed & (m >= sr[0]) & (m < sr[1]) & (truth > 0.5))), args))
    return rows


def _row(run, reported, edges, total, counts, sr_bins, n_signal, args) -> dict:
    n = counts[sr_bins].sum()
    row = {"run": run, "window": reported["window"], "detector": reported["detector"],
           "selection": reported["selection"], "n_sr": int(n), "signal_sr": n_signal, "z_dijet": reported["z_local"]}
    try:
        pred = ratio_predict(edges, total, counts, ~sr_bins, sr_bins, sparse_below=args.sparse_below)
    except ValueError:
        return row | {"z_ratio": np.nan, "z_ratio_toys": np.nan, "fit_p_ratio": np.nan}
    z = float(z_on_off(n, pred.b, pred.sigma))
    z_toys = np.nan
    if args.toys:
        z_toys = toy_p_value_ratio(edges, total, counts, ~sr_bins, sr_bins, z, n_toys=args.toys, seed=args.seed,
                                   sparse_below=args.sparse_below)["z"] if z > 0 else 0.0
    return row | {"z_ratio": z, "z_ratio_toys": z_toys, "fit_p_ratio": pred.fit.p_value}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished search output folders (--unblind)")
    ap.add_argument("--toys", type=int, default=0, help="pseudo-experiments per ratio test (0: asymptotic only)")
    ap.add_argument("--sparse-below", type=float, default=SPARSE_EVENTS,
                    help="selected sideband events below which the efficiency is at most linear")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", default=None)
    args = ap.parse_args(argv)
    table = pd.DataFrame([r for run in args.runs for r in _run_rows(run, args)])
    if args.csv:
        table.to_csv(args.csv, index=False)
    zs = [c for c in ("z_dijet", "z_ratio", "z_ratio_toys") if c in table and table[c].notna().any()]
    bkg = table[table.signal_sr == 0]
    print(f"background-only tests: {len(bkg)} (of {len(table)})")
    for u in (1, 2, 3):
        nom = stats.norm.sf(u)
        err = np.sqrt(nom * (1 - nom) / max(len(bkg), 1))
        cells = "  ".join(f"{c} {(bkg[c] > u).mean():.3f}" for c in zs)
        print(f"Z > {u}: nominal {nom:.4f} +- {err:.4f}   {cells}")
    for det, part in bkg.groupby("detector"):
        print(f"  {det:12s} n={len(part):3d}  " + "  ".join(f"{c} Z>1 {(part[c] > 1).mean():.2f} Z>2 "
                                                             f"{(part[c] > 2).mean():.2f}" for c in zs))
    sig = table[table.signal_sr > 0].sort_values("signal_sr", ascending=False).head(12)
    if len(sig):
        print("tests holding signal:")
        print(sig[["run", "window", "detector", "selection", "n_sr", "signal_sr", *zs]].round(2).to_string(index=False))


if __name__ == "__main__":
    main()
