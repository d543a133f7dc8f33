"""Why R-Anode's reach stops where it does: how well the sideband flow describes the SR background.

R-Anode fits p_data = w p_sig + (1 - w) p_bkg in the SR with p_bkg the sideband flow kept
fixed; whatever p_bkg misses, the signal flow absorbs. Per seed, at the benchmark injection
(``--n-inject``, default 190: S/sqrt(B) ~ 1 in the SR), this script trains ``--flows`` sideband
flows with different seeds (the config's ``detectors.ranode`` flow, all sidebands) and prints

* the held-out NLL of the independent extra QCD sample's SR events (pure background) under one
  flow and under the mixture of the flows (a proper score: lower is a better p_bkg);
* R-Anode fitted on half of the pure SR background: its w, and the held-out gain in log
  likelihood of the mixture over p_bkg alone on the other half (mean and standard error per
  event): a gain is what p_bkg reproducibly misses, none means the signal flow fits noise;
  w is printed next to the injected fraction (at S/sqrt(B) ~ 1 the fit leaves w near its
  start, ``signal_fraction_init``, with or without signal: README);
* max SIC, AUC and the signal efficiency at 1% and 0.2% background efficiency of the R-Anode
  score with w learnt, with w fixed (``--fixed-w``), with p_bkg the flows' mixture, and with
  ``--signal-flows`` signal flows whose log densities (as ``n_ensemble``) or densities are
  averaged.

    python benchmarks/ranode_diagnostics.py --seeds 3 [--json diag.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from sensitivity import benchmark_split, load_benchmark_data  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT.parent.parent / "shared" / "data" / "rnd"))
    p.add_argument("--signal", default="signal_3500_500_100_features.h5")
    p.add_argument("--config", default=str(ROOT.parent / "configs" / "benchmark.yaml"))
    p.add_argument("--n-inject", type=int, default=190)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--flows", type=int, default=3, help="sideband flows per seed (different training seeds)")
    p.add_argument("--signal-flows", type=int, default=3,
                   help="also an ensemble of this many signal flows, log densities or densities averaged (1: none)")
    p.add_argument("--fixed-w", default="0.005,0.01", help="signal fractions to fix, comma-separated ('' for none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default=str(ROOT.parent / ".bench-cache"))
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def one_seed(seed, args, cfg, data) -> dict:
    from scipy.special import logsumexp

    from sideband.detectors._flow import ConditionalFlow, log_prob_per_state
    from sideband.detectors.base import make_detector
    from sideband.detectors.cathode import Cathode
    from sideband.pipeline.metrics import sic_curve

    bkg, sig, extra = data
    split = benchmark_split(seed, cfg, bkg, sig, extra, n_inject=args.n_inject)
    X, m = split["X"], split["m"]
    lo, hi = split["signal_region"]
    sb = (m < lo) | (m >= hi)
    params = dict(cfg.detectors["ranode"].params)
    prep = Cathode._prep_params(X[sb], m[sb])

    def fwd(A):
        return Cathode._forward(A, prep)

    def ctx(mm):
        return Cathode._context(mm, prep)

    t0 = time.perf_counter()
    flows = [ConditionalFlow(params.get("flow_params"), seed=1000 * seed + j).fit(fwd(X[sb]), ctx(m[sb]))
             for j in range(args.flows)]
    flow_s = time.perf_counter() - t0
    sets = {"train": (X[~sb], m[~sb]), "sig": (split["X_sig_test"], split["m_sig_test"]),
            "bkg": (split["X_bkg_test"], split["m_bkg_test"])}
    xs = {k: fwd(A) for k, (A, _) in sets.items()}  # every set in the flows' space, once
    lb = {k: np.stack([f.log_prob(xs[k], ctx(mm)) for f in flows]) for k, (_, mm) in sets.items()}

    def mix(L):
        return logsumexp(L, axis=0) - np.log(len(L))

    row = {"seed": seed, "n_signal_sr": split["n_signal_sr"], "n_background_sr": split["n_background_sr"],
           "injected_fraction": split["n_signal_sr"] / (split["n_signal_sr"] + split["n_background_sr"]),
           "flow_seconds": flow_s,
           "test_nll_single": [float(-v.mean()) for v in lb["bkg"]],
           "test_nll_mixture": float(-mix(lb["bkg"]).mean())}
    det = make_detector("ranode", params, random_state=seed)
    p = det._signal_params()

    def measure(sc, w):
        c = sic_curve(sc["sig"], sc["bkg"], 50)
        eff = {eb: float((sc["sig"] > np.quantile(sc["bkg"], 1 - eb)).mean()) for eb in (0.01, 0.002)}
        return {"max_sic": c.max_sic, "auc": c.auc, "eff_s_1pc": eff[0.01], "eff_s_0.2pc": eff[0.002], "w": w}

    def fit_signal(x, log_bkg, w=None, k=0):
        """One signal flow fitted against ``log_bkg`` (w learnt when None); its state and w."""
        det.signal_fraction = w
        ok = np.isfinite(log_bkg)
        state, hist = det._fit_signal_flow(x[ok], log_bkg[ok], p, seed=seed * 1000 + k)
        return state, hist["signal_fraction"]

    def log_sig(state, x):
        return log_prob_per_state(p, X.shape[1], [state], x, np.zeros(len(x)))[0]

    def signal_log_probs(comb, w=None, k=0):
        """log p_sig of the test sets from a signal flow fitted with p_bkg = ``comb`` of the flows."""
        state, w_fit = fit_signal(xs["train"], comb(lb["train"]), w, k)
        return {s: log_sig(state, xs[s]) for s in ("sig", "bkg")}, w_fit

    def fit_and_score(comb, w=None):
        ls, w_fit = signal_log_probs(comb, w)
        return measure({s: ls[s] - comb(lb[s]) for s in ls}, w_fit)

    # signal flows k = 0, 1, ... with w learnt against one flow; k = 0 is the "w learnt" variant
    fits = [signal_log_probs(lambda L: L[0], k=k) for k in range(max(1, args.signal_flows))]
    variants = {"w learnt": measure({s: fits[0][0][s] - lb[s][0] for s in ("sig", "bkg")}, fits[0][1])}
    if args.signal_flows > 1:  # an ensemble of signal flows: log densities averaged (n_ensemble) or densities
        w_mean = float(np.mean([w for _, w in fits]))
        for label, avg in (("log densities averaged", lambda a: a.mean(axis=0)),
                           ("densities averaged", lambda a: logsumexp(a, axis=0) - np.log(len(a)))):
            variants[f"{args.signal_flows} signal flows, {label}"] = measure(
                {s: avg(np.stack([ls[s] for ls, _ in fits])) - lb[s][0] for s in ("sig", "bkg")}, w_mean)
    if args.flows > 1:
        variants[f"w learnt, p_bkg mixture of {args.flows}"] = fit_and_score(mix)
    for w in [float(v) for v in args.fixed_w.split(",") if v]:
        variants[f"w fixed {w:g}"] = fit_and_score(lambda L: L[0], w=w)
    row["variants"] = variants
    # background only: fit on one half of the pure SR background, gain measured on the other
    half = np.random.default_rng(seed).permutation(len(xs["bkg"]))
    fit_i, ev_i = half[: len(half) // 2], half[len(half) // 2:]
    lbb = lb["bkg"][0]
    state, w = fit_signal(xs["bkg"][fit_i], lbb[fit_i])
    gain = np.logaddexp(np.log(w) + log_sig(state, xs["bkg"][ev_i]), np.log1p(-w) + lbb[ev_i]) - lbb[ev_i]
    row.update(w_background_only=w, heldout_gain=float(gain.mean()),
               heldout_gain_se=float(gain.std() / np.sqrt(len(gain))), n_heldout=len(gain))
    return row


def main(argv=None):
    args = parse_args(argv)
    from sideband.pipeline.cluster import limit_threads
    from sideband.pipeline.config import load_config

    limit_threads(args.threads)
    d = Path(args.data_dir)
    cfg = load_config(args.config, {"data": {"path": str(d / "qcd_features.h5"),
                                             "reference": str(d / "qcd_extra_features.h5")}})
    data = load_benchmark_data(d, args.signal, args.cache)
    rows = []
    for seed in range(args.seeds):
        r = one_seed(seed, args, cfg, data)
        rows.append(r)
        print(f"seed {seed}: {r['n_signal_sr']} signal in {r['n_signal_sr'] + r['n_background_sr']} SR events "
              f"(fraction {r['injected_fraction']:.4f}); flows {r['flow_seconds']:.0f} s")
        print(f"  held-out SR background NLL: single flows {', '.join(f'{v:.4f}' for v in r['test_nll_single'])}; "
              f"mixture {r['test_nll_mixture']:.4f}")
        print(f"  R-Anode on half the pure SR background: w {r['w_background_only']:.4f}, held-out gain over p_bkg "
              f"{r['heldout_gain']:+.5f} +- {r['heldout_gain_se']:.5f} nats/event ({r['n_heldout']} events)")
        for name, v in r["variants"].items():
            print(f"  {name:<40} max SIC {v['max_sic']:5.2f}  AUC {v['auc']:.3f}  eps_S at 1% / 0.2%: "
                  f"{v['eff_s_1pc']:.3f} / {v['eff_s_0.2pc']:.3f}  w {v['w']:.4f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
