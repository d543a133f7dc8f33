"""Calibration of the statistics: background-only pseudo-experiments through the full chain.

Truth: the dijet function fitted to the inclusive R&D QCD spectrum (``--data``; a fixed
built-in shape when the file is absent), scaled by ``--scale`` to mimic a selection (1: the
inclusive ~78k events in 2.8-6 TeV; 0.01 and 0.002: the 1% and 0.2% selections). Each
pseudo-experiment draws Poisson counts in every bin, fits the dijet function outside the SR
(F-test), predicts the SR background with its uncertainty (fit plus function choice, the
same ``pipeline.stats.predict_background`` the search uses) and computes the local Z of the
pyhf model (q0, asymptotic): by default with the closed form of that model's on/off problem
(``pipeline.stats.z_on_off``, equal to pyhf's value to 1e-3, checked in tests/test_stats.py)
so that enough pseudo-experiments reach the 3 sigma tail; ``--pyhf-z`` calls pyhf for each. Printed: the fraction with Z > 1, 2, 3 against the Gaussian rates. Coverage
of the 95% CLs limits: pseudo-experiments with a known signal (``--signal-sigma`` times
sqrt(B) events, Gaussian in mjj at the SR centre) added; coverage = fraction of limits at or
above the true signal.

    python benchmarks/calibration.py --n-pseudo 2000 --n-limit 300 --json calib.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.stats import discovery_and_limit, fit_dijet, make_edges, predict_background, z_on_off  # noqa: E402

NOMINAL = {"1": float(stats.norm.sf(1)), "2": float(stats.norm.sf(2)), "3": float(stats.norm.sf(3))}


def truth_spectrum(data: Path, edges, sr_bins):
    if data.exists():
        from pipeline.io import read_events

        ev, _ = read_events(data)
        counts, _ = np.histogram(ev["mjj"].to_numpy(), edges)
        fit = fit_dijet(edges, counts, np.ones(len(counts), bool), 4)  # truth uses the SR bins too
        return fit.expected, f"4-parameter dijet fit to {data.name}"
    centers = 0.5 * (edges[1:] + edges[:-1]) / 13000
    shape = (1 - centers) ** 8.5 * centers ** -(5.2 + 0.35 * np.log(centers))
    return 78_000 * shape / shape.sum(), "built-in dijet shape, 78k events"


def run_scale(scale, args, truth, edges, sr_bins, rng):
    t0 = time.perf_counter()
    base = truth * scale
    z = []
    fails = 0
    for _ in range(args.n_pseudo):
        counts = rng.poisson(base)
        try:
            pred = predict_background(edges, counts, ~sr_bins, sr_bins)
            b, sb = pred.b, pred.sigma
            n = int(counts[sr_bins].sum())
            if args.pyhf_z:
                zz = discovery_and_limit(n, b, sb, limit=False).z_local
            else:
                zz = float(z_on_off(n, b, sb))
            z.append(zz if np.isfinite(zz) else 0.0)
        except ValueError:
            fails += 1
    z = np.asarray(z)
    frac = {k: float(np.mean(z > float(k))) for k in NOMINAL}
    err = {k: float(np.sqrt(NOMINAL[k] * (1 - NOMINAL[k]) / max(len(z), 1))) for k in NOMINAL}
    # coverage with a known signal
    centers = 0.5 * (edges[1:] + edges[:-1])
    b_sr = base[sr_bins].sum()
    s_true = args.signal_sigma * np.sqrt(b_sr)
    width = 0.05 * 3500
    shape = np.exp(-0.5 * ((centers - 3500) / width) ** 2) * np.diff(edges)
    shape = shape / shape.sum()
    covered, n_lim = 0, 0
    for _ in range(args.n_limit):
        counts = rng.poisson(base + s_true * shape)
        try:
            pred = predict_background(edges, counts, ~sr_bins, sr_bins)
            r = discovery_and_limit(int(counts[sr_bins].sum()), pred.b, pred.sigma)
        except ValueError:
            continue
        if np.isfinite(r.upper_limit):
            n_lim += 1
            # the truth to cover is the signal inside the SR
            covered += r.upper_limit >= s_true * shape[sr_bins].sum()
    return {"scale": scale, "n_events": float(base.sum()), "b_sr": float(b_sr), "n_pseudo": int(len(z)),
            "n_failed_fits": fails, "frac_z_gt": frac, "frac_z_gt_err": err,
            "limit_coverage": covered / n_lim if n_lim else None, "n_limit": n_lim,
            "signal_in_sr": float(s_true * shape[sr_bins].sum()), "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "rnd" / "qcd_features.h5"))
    ap.add_argument("--n-pseudo", type=int, default=10000)
    ap.add_argument("--n-limit", type=int, default=200)
    ap.add_argument("--scales", default="1,0.01,0.002")
    ap.add_argument("--signal-sigma", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--pyhf-z", action="store_true", help="compute every Z with pyhf (slow)")
    args = ap.parse_args(argv)
    edges = make_edges((2800, 6000), 100, (3300, 3700))
    sr_bins = (edges[:-1] >= 3300) & (edges[1:] <= 3700)
    truth, what = truth_spectrum(Path(args.data), edges, sr_bins)
    rng = np.random.default_rng(args.seed)
    print(f"truth: {what}; SR 3300-3700 GeV; {args.n_pseudo} pseudo-experiments per scale "
          f"({args.n_limit} with signal for the limit coverage)")
    print(f"{'scale':>6} {'events':>8} {'B(SR)':>8} {'Z>1':>14} {'Z>2':>16} {'Z>3':>18} {'coverage':>9}")
    print(f"{'':>6} {'':>8} {'nominal':>8} {NOMINAL['1']:>14.4f} {NOMINAL['2']:>16.4f} {NOMINAL['3']:>18.5f} {'>= 0.95':>9}")
    out = []
    for scale in [float(s) for s in args.scales.split(",")]:
        r = run_scale(scale, args, truth, edges, sr_bins, rng)
        out.append(r)
        f, e = r["frac_z_gt"], r["frac_z_gt_err"]
        cov = "-" if r["limit_coverage"] is None else f"{r['limit_coverage']:.3f}"
        print(f"{scale:>6g} {r['n_events']:>8.0f} {r['b_sr']:>8.1f} {f['1']:>7.4f}±{e['1']:.4f} "
              f"{f['2']:>8.4f}±{e['2']:.4f} {f['3']:>9.5f}±{e['3']:.5f} {cov:>9}   ({r['seconds']:.0f}s)")
    if args.json:
        first = out[0]
        doc = {"n_pseudo": first["n_pseudo"], "frac_z_gt": first["frac_z_gt"],
               "limit_coverage": first["limit_coverage"], "by_scale": out}
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
