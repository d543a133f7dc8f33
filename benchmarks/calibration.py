"""Calibration of the statistics: background-only pseudo-experiments through the full chain.

Truth (``--truth``): a function fitted to all bins of the inclusive R&D QCD spectrum
(``--data``; a fixed built-in shape when the file is absent): ``4p`` or ``5p`` dijet function,
or ``ua2`` (p0 x^-p1 exp(-p2 x - p3 x^2), a family the search does not fit: a test of
function mismatch). It is scaled by ``--scale`` to mimic a selection (1: the inclusive ~78k
events in 2.8-6 TeV; 0.01 and 0.002: the 1% and 0.2% selections). Each pseudo-experiment draws
Poisson counts in every bin, fits the dijet functions outside the SR (F-test), predicts the SR
background with its uncertainty (fit plus function choice) and computes the local Z as the
search does: the asymptotic Z of the pyhf on/off model (``pipeline.stats.z_on_off``, equal to
pyhf's q0 Z to 1e-3, tested), or, where the search uses them (``--p-value auto``: expected SR
background below ``--toys-below``), toy-based p-values from pseudo-experiments of the whole
procedure around each pseudo-experiment's own background-only fit
(``pipeline.stats.toy_p_value``). The fits of all pseudo-experiments run as one vectorised
batch (``predict_background_batch``, the same procedure as ``predict_background``, tested).
Printed: the fraction with Z > 1, 2, 3 against the Gaussian rates. Coverage of the 95% CLs
limits (pyhf): pseudo-experiments with a known signal (``--signal-sigma`` times sqrt(B)
events, Gaussian in mjj at the SR centre) added; coverage = fraction of limits at or above
the true signal in the SR.

Expected SR backgrounds (``--b-sr``, default 5, 35, 300, 3000: the truth scaled to each) or
``--scales`` (fractions of the truth) choose the statistics.

Power (``--power-signal``, e.g. 10,20,40): signal events (Gaussian in mjj, 5% width, at the SR
centre; 75% of them in the SR) injected on a tight selection (``--power-b``, default B(SR) = 4);
the search's local Z is compared with an oracle that draws the pseudo-experiments of the same
procedure from the true background spectrum (``toy_p_value_known_background``): median Z of
both and the median per-experiment difference (target: within 0.3).

    python benchmarks/calibration.py --n-pseudo 20000 --n-limit 200 --json calib.json
    python benchmarks/calibration.py --b-sr 5 --n-pseudo 600 --n-limit 100 --power-signal 10,20,40
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]

from sideband.pipeline.fits import (  # noqa: E402
    fit_dijet,
    make_edges,
    predict_background,
    predict_background_batch,
    start_parameters,
)
from sideband.pipeline.stats import discovery_and_limit, z_on_off  # noqa: E402
from sideband.pipeline.toys import toy_p_value, toy_p_value_known_background, use_toys  # noqa: E402

NOMINAL = {"1": float(stats.norm.sf(1)), "2": float(stats.norm.sf(2)), "3": float(stats.norm.sf(3))}


def _fit_ua2(edges, counts):
    """Poisson fit of p0 x^-p1 exp(-p2 x - p3 x^2) (x = mjj/13 TeV), integrated over each bin."""
    from scipy import optimize

    sub = (np.arange(20) + 0.5) / 20
    pts = (edges[:-1, None] + np.diff(edges)[:, None] * sub[None, :]) / 13000.0
    w = np.diff(edges) / 20

    def mu(t):
        return np.exp(t[0] - t[1] * np.log(pts) - t[2] * pts - t[3] * pts**2).sum(1) * w

    def nll(t):
        m = mu(t)
        return float(np.sum(m - counts * np.log(m)))

    t0 = np.array([0.0, 5.0, 10.0, 0.0])
    t0[0] = np.log(counts.sum() / mu(t0).sum())
    r = optimize.minimize(nll, t0, method="Nelder-Mead", options={"maxiter": 20000, "maxfev": 20000,
                                                                 "xatol": 1e-8, "fatol": 1e-8})
    r = optimize.minimize(nll, r.x, method="BFGS")
    return mu(r.x)


def truth_spectrum(data: Path, edges, kind: str):
    if not data.exists():
        centers = 0.5 * (edges[1:] + edges[:-1]) / 13000
        shape = (1 - centers) ** 8.5 * centers ** -(5.2 + 0.35 * np.log(centers))
        return 78_000 * shape / shape.sum(), "built-in dijet shape, 78k events (data file absent)"
    from sideband.pipeline.io import read_events

    ev, _ = read_events(data)
    counts, _ = np.histogram(ev["mjj"].to_numpy(), edges)
    allb = np.ones(len(counts), bool)  # the truth uses the SR bins too
    if kind == "ua2":
        truth = _fit_ua2(edges, counts.astype(float))
    else:
        truth = fit_dijet(edges, counts, allb, int(kind[0])).expected
    chi2 = float(np.sum((counts - truth) ** 2 / truth))
    return truth, f"{kind} fit to {data.name} (chi2 {chi2:.1f} for {len(counts)} bins)"


def _observed(counts, edges, sr_bins, args):
    """SR prediction of each spectrum by the search's procedure: the vectorised batch where the
    statistics are large, the single fit itself at small counts (where a sparse fit can fail);
    NaN where the fit fails (the search reports those tests as failed)."""
    fit_mask = ~sr_bins
    opts = args.n_params
    if counts[:, sr_bins].sum(1).mean() >= args.toys_below:
        start = start_parameters(edges, counts.mean(0), fit_mask, opts)
        return predict_background_batch(edges, counts, fit_mask, sr_bins, start=start, n_params_options=opts)
    b, sb = np.full(len(counts), np.nan), np.full(len(counts), np.nan)
    for i, c in enumerate(counts):
        try:
            pred = predict_background(edges, c, fit_mask, sr_bins, opts)
        except ValueError:
            continue
        b[i], sb[i] = pred.b, pred.sigma
    return b, sb


def _local_z(counts, edges, sr_bins, args, rng_seed):
    """Local Z of each pseudo-experiment (rows of ``counts``) as the search computes it; NaN
    where the background fit fails."""
    fit_mask = ~sr_bins
    opts = args.n_params
    b, sb = _observed(counts, edges, sr_bins, args)
    n = counts[:, sr_bins].sum(1)
    fitted = np.isfinite(b) & np.isfinite(sb)
    z = np.where(fitted, z_on_off(n, np.where(fitted, b, 1.0), np.where(fitted, sb, 1.0)), np.nan)
    toys = np.array([use_toys(args.p_value, bb, args.toys_below) for bb in b])
    todo = np.flatnonzero(toys & (np.nan_to_num(z) > 0))  # Z = 0 stays 0 with toys too
    jobs = [(edges, counts[i], fit_mask, sr_bins, float(z[i]), args.inner_toys, rng_seed + int(i), opts)
            for i in todo]
    if args.jobs > 1 and len(jobs) > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(args.jobs) as pool:
            z[todo] = pool.starmap(_toy_z, jobs, chunksize=max(1, len(jobs) // (8 * args.jobs)))
    else:
        z[todo] = [_toy_z(*j) for j in jobs]
    return z, int(toys.sum()), b


def _toy_z(edges, counts, fit_mask, sr_bins, z_obs, n_toys, seed, opts):
    return toy_p_value(edges, counts, fit_mask, sr_bins, z_obs, n_toys=n_toys, seed=seed, n_params_options=opts)["z"]


def _signal_shape(edges):
    """A narrow resonance at 3.5 TeV (Gaussian, 5% width) per bin, normalised to 1 over all bins."""
    centers = 0.5 * (edges[1:] + edges[:-1])
    shape = np.exp(-0.5 * ((centers - 3500) / (0.05 * 3500)) ** 2) * np.diff(edges)
    return shape / shape.sum()


def run_scale(scale, args, truth, edges, sr_bins, rng):
    t0 = time.perf_counter()
    base = truth * scale
    counts = rng.poisson(base, size=(args.n_pseudo, len(base)))
    z, n_toy_based, _ = _local_z(counts, edges, sr_bins, args, int(rng.integers(2**31)))
    n_failed = int(np.sum(~np.isfinite(z)))
    oracle = None
    if args.oracle:  # the same experiments, pseudo-experiments drawn from the true background
        b_obs, sb_obs = _observed(counts, edges, sr_bins, args)
        fitted = np.isfinite(b_obs)
        z_asym = z_on_off(counts[:, sr_bins].sum(1), np.where(fitted, b_obs, 1.0), np.where(fitted, sb_obs, 1.0))
        zo = np.zeros(int(fitted.sum()))
        for j, i in enumerate(np.flatnonzero(fitted)):
            if z_asym[i] > 0:
                zo[j] = toy_p_value_known_background(edges, base, ~sr_bins, sr_bins, float(z_asym[i]), n_toys=args.inner_toys,
                                                     seed=i, n_params_options=args.n_params)["z"]
        oracle = {k: float(np.mean(zo > float(k))) for k in NOMINAL}
    z = z[np.isfinite(z)]
    frac = {k: float(np.mean(z > float(k))) for k in NOMINAL}
    err = {k: float(np.sqrt(NOMINAL[k] * (1 - NOMINAL[k]) / max(len(z), 1))) for k in NOMINAL}
    within = all(abs(frac[k] - NOMINAL[k]) <= 3 * err[k] for k in NOMINAL)
    # coverage with a known signal
    b_sr = base[sr_bins].sum()
    s_true = args.signal_sigma * np.sqrt(b_sr)
    shape = _signal_shape(edges)
    covered, n_lim = 0, 0
    for _ in range(args.n_limit):
        c = rng.poisson(base + s_true * shape)
        try:
            pred = predict_background(edges, c, ~sr_bins, sr_bins, args.n_params)
            r = discovery_and_limit(int(c[sr_bins].sum()), pred.b, pred.sigma,
                                    counting=use_toys(args.p_value, pred.b, args.toys_below))
        except ValueError:
            continue
        if np.isfinite(r.upper_limit):
            n_lim += 1
            covered += r.upper_limit >= s_true * shape[sr_bins].sum()
    return {"scale": scale, "n_events": float(base.sum()), "b_sr": float(b_sr), "n_pseudo": int(len(z)),
            "n_fit_failed": n_failed, "n_toy_based": n_toy_based, "frac_z_gt": frac, "frac_z_gt_err": err,
            "within_3_sigma": bool(within), "frac_z_gt_oracle": oracle,
            "limit_coverage": covered / n_lim if n_lim else None, "n_limit": n_lim,
            "signal_in_sr": float(s_true * shape[sr_bins].sum()), "seconds": time.perf_counter() - t0}


def run_power(args, truth, edges, sr_bins, rng) -> list[dict]:
    """Median local Z with signal injected on a tight selection, against the oracle's."""
    base = truth * args.power_b / truth[sr_bins].sum()
    shape = _signal_shape(edges)
    out = []
    for s in [float(v) for v in args.power_signal.split(",")]:
        t0 = time.perf_counter()
        counts = rng.poisson(base + s * shape, size=(args.n_power, len(base)))
        seed = int(rng.integers(2**31))
        z, _, _ = _local_z(counts, edges, sr_bins, args, seed)
        b_obs, sb_obs = _observed(counts, edges, sr_bins, args)
        z_asym = z_on_off(counts[:, sr_bins].sum(1), np.nan_to_num(b_obs, nan=1.0), np.nan_to_num(sb_obs, nan=1.0))
        ok = np.isfinite(z)
        z_asym = np.where(ok, z_asym, np.nan)
        oracle = np.full(len(z), np.nan)
        for i in np.flatnonzero(ok):
            oracle[i] = toy_p_value_known_background(edges, base, ~sr_bins, sr_bins, float(z_asym[i]), n_toys=args.inner_toys,
                                                     seed=seed + i, n_params_options=args.n_params)["z"]
        med, med_or = float(np.median(z[ok])), float(np.median(oracle[ok]))
        out.append({"b_sr": float(args.power_b), "signal": s, "signal_in_sr": float(s * shape[sr_bins].sum()),
                    "n_pseudo": int(ok.sum()), "median_z": med, "median_z_oracle": med_or,
                    "median_z_asymptotic": float(np.median(z_asym[ok])),
                    "median_difference": float(np.median(z[ok] - oracle[ok])),
                    "within_0.3": bool(abs(med - med_or) <= 0.3), "seconds": time.perf_counter() - t0})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "rnd" / "qcd_features.h5"))
    ap.add_argument("--n-pseudo", type=int, default=10000)
    ap.add_argument("--n-limit", type=int, default=200)
    ap.add_argument("--b-sr", default="5,35,300,3000",
                    help="expected SR backgrounds to scale the truth to (ignored with --scales)")
    ap.add_argument("--scales", default=None, help="fractions of the truth, e.g. 1,0.01,0.002 (instead of --b-sr)")
    ap.add_argument("--oracle", action="store_true",
                    help="also the rates of an oracle drawing the pseudo-experiments from the true background")
    ap.add_argument("--power-signal", default="", help="signal events injected for the power test, e.g. 10,20,40")
    ap.add_argument("--power-b", type=float, default=4.0, help="expected SR background of the power test")
    ap.add_argument("--n-power", type=int, default=30, help="pseudo-experiments per signal size")
    ap.add_argument("--signal-sigma", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--truth", choices=("4p", "5p", "ua2"), default="4p")
    ap.add_argument("--n-params", default=(4, 5), type=lambda v: tuple(int(p) for p in v.split(",")),
                    help="dijet functions the F-test chooses among, e.g. 4,5 (search: fit.n_params)")
    ap.add_argument("--p-value", choices=("auto", "toys", "asymptotic"), default="auto",
                    help="as stats.p_value of the search")
    ap.add_argument("--toys-below", type=float, default=1000.0, help="as stats.toys_below")
    ap.add_argument("--inner-toys", type=int, default=10000, help="as stats.local_toys")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes for the toy-based p-values")
    args = ap.parse_args(argv)
    edges = make_edges((2800, 6000), 100, (3300, 3700))
    sr_bins = (edges[:-1] >= 3300) & (edges[1:] <= 3700)
    truth, what = truth_spectrum(Path(args.data), edges, args.truth)
    rng = np.random.default_rng(args.seed)
    print(f"truth: {what}; SR 3300-3700 GeV; {args.n_pseudo} pseudo-experiments per scale "
          f"({args.n_limit} with signal for the limit coverage); F-test among "
          f"{','.join(map(str, args.n_params))} parameters; "
          f"p-values: {args.p_value} (toys below B = {args.toys_below:g}, up to {args.inner_toys})")
    print(f"{'scale':>6} {'events':>8} {'B(SR)':>8} {'Z>1':>14} {'Z>2':>16} {'Z>3':>18} {'coverage':>9}")
    print(f"{'':>6} {'':>8} {'nominal':>8} {NOMINAL['1']:>14.4f} {NOMINAL['2']:>16.4f} {NOMINAL['3']:>18.5f} {'>= 0.95':>9}")
    out = []
    b_truth = float(truth[sr_bins].sum())
    scales = ([float(v) for v in args.scales.split(",")] if args.scales
              else [float(v) / b_truth for v in args.b_sr.split(",") if v])
    for scale in scales:
        r = run_scale(scale, args, truth, edges, sr_bins, rng)
        out.append(r)
        f, e = r["frac_z_gt"], r["frac_z_gt_err"]
        cov = "-" if r["limit_coverage"] is None else f"{r['limit_coverage']:.3f}"
        print(f"{scale:>6.3g} {r['n_events']:>8.0f} {r['b_sr']:>8.1f} {f['1']:>7.4f}±{e['1']:.4f} "
              f"{f['2']:>8.4f}±{e['2']:.4f} {f['3']:>9.5f}±{e['3']:.5f} {cov:>9}   "
              f"({'within' if r['within_3_sigma'] else 'OUTSIDE'} 3 sigma; {r['seconds']:.0f}s, "
              f"{r['n_toy_based']} toy-based, {r['n_fit_failed']} fits failed)")
        if r["frac_z_gt_oracle"]:
            o = r["frac_z_gt_oracle"]
            print(f"{'oracle':>6} {'':>8} {'':>8} {o['1']:>7.4f}{'':>7} {o['2']:>8.4f}{'':>7} {o['3']:>9.5f}")
    power = []
    if args.power_signal:
        print(f"power: B(SR) = {args.power_b:g}, signal at 3.5 TeV, {args.n_power} pseudo-experiments each; "
              f"oracle = pseudo-experiments from the true background")
        print(f"{'S':>5} {'S(SR)':>6} {'median Z':>9} {'oracle':>7} {'asympt.':>8} {'median diff':>12}")
        power = run_power(args, truth, edges, sr_bins, rng)
        for p in power:
            print(f"{p['signal']:>5g} {p['signal_in_sr']:>6.1f} {p['median_z']:>9.2f} {p['median_z_oracle']:>7.2f} "
                  f"{p['median_z_asymptotic']:>8.2f} {p['median_difference']:>+12.2f}   "
                  f"({'within' if p['within_0.3'] else 'OUTSIDE'} 0.3 of the oracle; n = {p['n_pseudo']}, {p['seconds']:.0f}s)")
    if args.json:
        first = out[0] if out else {}
        doc = {"n_pseudo": first.get("n_pseudo"), "frac_z_gt": first.get("frac_z_gt"),
               "limit_coverage": first.get("limit_coverage"), "truth": what, "p_value": args.p_value,
               "n_params": list(args.n_params), "by_scale": out, "power": power}
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
