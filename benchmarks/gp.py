"""GP background (pipeline.gp) against the dijet-function fit (pipeline.fits) on steep spectra.

Two truths, 42 bins with widths growing with mass (1.1-8 TeV), 10^8 events in the first bin
and 15-60 in the last (7 orders of magnitude, like published 13 TeV dijet spectra):

* ``dijet4``: a 4-parameter dijet function, (1-x)^10 x^-(5 + 0.3 ln x), which the dijet
  family describes;
* ``two_shapes``: the sum of two dijet shapes, (1-x)^5 x^-10 and (1-x)^8 x^-3, equal at
  2.5 TeV, which the 4/5-parameter dijet function cannot describe.

1. Goodness of fit: each pseudo-spectrum (Poisson counts around the truth) is fitted in every
   bin by the GP and by the dijet F-test fit (4/5 parameters); printed: mean chi2/ndf, the
   fraction with chi2/ndf <= 1.5, the fraction with p < 0.05 and the GP's at-bound rate. The
   GP's ndf is its effective one (fit bins minus tr of the smoother).
2. Signal bias: a Gaussian resonance (sigma = 5% of its mass, ``--mass``) is injected; the
   SR is the bins within +-1.5 sigma of the mass. Each model is fitted to the sidebands and
   predicts the SR background b +- sigma_b; fitted signal s = n_SR - b, its standard
   deviation sqrt(sigma_b^2 + n_SR); pull = (s - injected) / that, injected = the expected
   signal in the SR bins. Printed: mean pull (the bias) and its standard deviation, for a
   signal of ``--signal-z`` x sqrt(B_SR) and for no signal (coverage of sigma_b), and the
   median sigma_b / sqrt(B_SR) (the price of the model's flexibility in power). For the GP
   also the background-only pulls of ``gp_predict_batch`` (hyperparameters of the first
   background-only fit held fixed: the fast path for pseudo-experiments).

    nice -n 5 python benchmarks/gp.py --n-pseudo 200 --json gp_bench.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
from scipy import special

from sideband.pipeline.fits import fit_dijet_ftest, predict_background
from sideband.pipeline.gp import RESONANCE_WIDTH, gp_predict, gp_predict_batch

SQRT_S = 13_000.0


def edges_42(lo: float = 1100.0, hi: float = 8000.0, n: int = 42) -> np.ndarray:
    return np.geomspace(lo, hi, n + 1)


def _shape(edges, p1, p2, p3=0.0):
    """Dijet density (1-x)^p1 x^-(p2 + p3 ln x) integrated over each bin (Simpson, 8 panels)."""
    pts = np.linspace(edges[:-1], edges[1:], 9)
    x = pts / SQRT_S
    f = (1 - x) ** p1 * x ** -(p2 + p3 * np.log(x))
    w = np.array([1, 4, 2, 4, 2, 4, 2, 4, 1])[:, None] / 24 * np.diff(edges)[None, :]
    return (f * w).sum(0)


def truth(name: str, edges: np.ndarray, first_bin: float = 1e8) -> np.ndarray:
    """Expected counts per bin: ``dijet4`` or ``two_shapes`` (see the module docstring)."""
    if name == "dijet4":
        f = _shape(edges, 10.0, 5.0, 0.3)
    elif name == "two_shapes":
        soft, hard = _shape(edges, 5.0, 10.0), _shape(edges, 8.0, 3.0)
        centers = 0.5 * (edges[1:] + edges[:-1])
        i = int(np.argmin(np.abs(centers - 2500.0)))
        f = soft + hard * soft[i] / hard[i]  # equal at 2.5 TeV: the harder shape takes over above
    else:
        raise ValueError(f"unknown truth {name!r}; use dijet4 or two_shapes")
    return f / f[0] * first_bin


def signal_template(edges: np.ndarray, mass: float) -> np.ndarray:
    """Fraction of a Gaussian resonance (sigma = 5% of the mass) in each bin."""
    return 0.5 * np.diff(special.erf((edges - mass) / (RESONANCE_WIDTH * mass * np.sqrt(2))))


def goodness(edges, mu, n_pseudo, rng) -> dict:
    allb = np.ones(len(mu), bool)
    gp_r, dj_r, gp_p, dj_p, bound = [], [], [], [], 0
    for _ in range(n_pseudo):
        counts = rng.poisson(mu)
        g = gp_predict(edges, counts, allb, allb, reference=False)
        d = fit_dijet_ftest(edges, counts, allb, (4, 5))
        gp_r.append(g.chi2 / g.ndf)
        gp_p.append(g.p_value)
        dj_r.append(d.chi2 / d.ndf)
        dj_p.append(d.p_value)
        bound += bool(g.at_bound)
    out = {}
    for name, r, p in (("gp", gp_r, gp_p), ("dijet", dj_r, dj_p)):
        r, p = np.asarray(r), np.asarray(p)
        out[name] = {"chi2_ndf_mean": float(r.mean()), "frac_chi2_ndf_le_1.5": float(np.mean(r <= 1.5)),
                     "frac_p_below_0.05": float(np.mean(p < 0.05))}
    out["gp"]["frac_at_bound"] = bound / n_pseudo
    return out


def bias(edges, mu, mass, signal_z, n_pseudo, rng, sr_sigmas=1.5) -> dict:
    centers = 0.5 * (edges[1:] + edges[:-1])
    sr = np.abs(centers - mass) < sr_sigmas * RESONANCE_WIDTH * mass
    tmpl = signal_template(edges, mass)
    n_sig = signal_z * np.sqrt(mu[sr].sum()) / tmpl[sr].sum()
    injected = n_sig * tmpl[sr].sum()
    out = {"sr": [float(edges[:-1][sr][0]), float(edges[1:][sr][-1])], "b_sr_true": float(mu[sr].sum()),
           "injected_sr": float(injected)}
    pulls = {"gp": [], "dijet": []}
    pulls0 = {"gp": [], "dijet": []}
    sig_b = {"gp": [], "dijet": []}
    bound, spectra0 = 0, []
    for _ in range(n_pseudo):
        for which, inj, store in ((n_sig, injected, pulls), (0.0, 0.0, pulls0)):
            counts = rng.poisson(mu + which * tmpl)
            n_sr = counts[sr].sum()
            g = gp_predict(edges, counts, ~sr, sr, reference=False)
            bound += bool(g.at_bound) and which > 0
            d = predict_background(edges, counts, ~sr, sr, (4, 5))
            for name, b, sb in (("gp", g.b, g.sigma), ("dijet", d.b, d.sigma)):
                store[name].append((n_sr - b - inj) / np.sqrt(sb**2 + n_sr))
                sig_b[name].append(sb / np.sqrt(mu[sr].sum()))
            if which == 0:
                spectra0.append(counts)
    for name in ("gp", "dijet"):
        p, p0 = np.asarray(pulls[name]), np.asarray(pulls0[name])
        out[name] = {"bias": float(p.mean()), "bias_err": float(p.std(ddof=1) / np.sqrt(len(p))),
                     "pull_std": float(p.std(ddof=1)), "bias_no_signal": float(p0.mean()),
                     "pull_std_no_signal": float(p0.std(ddof=1)), "sigma_b_over_sqrt_b": float(np.median(sig_b[name]))}
    out["gp"]["frac_at_bound"] = bound / n_pseudo
    # pseudo-experiments with the hyperparameters of the first background-only fit held fixed
    spectra0 = np.asarray(spectra0)
    b, s = gp_predict_batch(gp_predict(edges, spectra0[0], ~sr, sr, reference=False), spectra0)
    n_sr = spectra0[:, sr].sum(1)
    p = (n_sr - b) / np.sqrt(s**2 + n_sr)
    out["gp"]["fixed_hyperparameters_no_signal"] = {"bias": float(p.mean()), "pull_std": float(p.std(ddof=1))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-pseudo", type=int, default=200, help="pseudo-spectra per truth and test")
    ap.add_argument("--mass", type=float, default=3500.0, help="injected resonance mass [GeV]")
    ap.add_argument("--signal-z", type=float, default=4.0, help="injected signal in units of sqrt(B_SR)")
    ap.add_argument("--sr-sigmas", type=float, default=2.0,
                    help="SR: bins whose centres lie within this many signal sigmas of the mass")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    logging.getLogger("sideband.pipeline.gp").setLevel(logging.ERROR)  # at-bound counted, not printed
    edges = edges_42()
    res = {"args": vars(args), "n_bins": len(edges) - 1}
    t0 = time.time()
    for name in ("dijet4", "two_shapes"):
        mu = truth(name, edges)
        rng = np.random.default_rng([args.seed, len(name)])
        res[name] = {"orders_of_magnitude": float(np.log10(mu.max() / mu.min())),
                     "goodness": goodness(edges, mu, args.n_pseudo, rng),
                     "bias": bias(edges, mu, args.mass, args.signal_z, args.n_pseudo, rng,
                                     args.sr_sigmas)}
    res["wall_s"] = time.time() - t0
    print(f"{args.n_pseudo} pseudo-spectra per truth; 42 bins 1.1-8 TeV; signal {args.signal_z} sqrt(B) at "
          f"{args.mass:.0f} GeV; GP ndf effective\n")
    print(f"{'truth':<11} {'model':<6} {'chi2/ndf':>8} {'<=1.5':>6} {'p<.05':>6} {'bias':>13} {'pull sd':>7} "
          f"{'bias(S=0)':>9} {'sd(S=0)':>7} {'sb/sqrtB':>8} {'at bound':>9}")
    for name in ("dijet4", "two_shapes"):
        for model in ("gp", "dijet"):
            g, b = res[name]["goodness"][model], res[name]["bias"][model]
            ab = f"{g['frac_at_bound']:.2f}/{b['frac_at_bound']:.2f}" if model == "gp" else ""
            print(f"{name:<11} {model:<6} {g['chi2_ndf_mean']:8.2f} {g['frac_chi2_ndf_le_1.5']:6.2f} "
                  f"{g['frac_p_below_0.05']:6.2f} {b['bias']:+6.2f}+-{b['bias_err']:.2f} {b['pull_std']:7.2f} "
                  f"{b['bias_no_signal']:+9.2f} {b['pull_std_no_signal']:7.2f} {b['sigma_b_over_sqrt_b']:8.2f} {ab:>9}")
    for name in ("dijet4", "two_shapes"):
        fx = res[name]["bias"]["gp"]["fixed_hyperparameters_no_signal"]
        print(f"{name}: gp_predict_batch (fixed hyperparameters), S=0: bias {fx['bias']:+.2f}, pull sd {fx['pull_std']:.2f}")
    sr = res["two_shapes"]["bias"]["sr"]
    print(f"SR {sr[0]:.0f}-{sr[1]:.0f} GeV; chi2/ndf: fit to all bins; bias: fit to the sidebands, SR predicted; "
          f"at bound: fraction of GP fits with a hyperparameter at a bound (all bins / sidebands with signal); "
          f"wall {res['wall_s']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
