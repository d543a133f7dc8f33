"""What does CWoLa learn from background alone, per window, input set and sideband weighting?

CWoLa's classes are the SR and its sidebands (the whole fit range outside the SR). On the
steep dijet spectrum the sidebands' mean mjj lies above the SR's in the lowest windows and far
below it in the highest, so a classifier of SR against sidebands can learn the inputs' trend
with mjj instead of a signal. This trains the CWoLa detector (the config's parameters, one
model on all events of the window as a fold model would, ``--seeds`` seeds) on background
alone (``--data``) and reads on an independent background sample (``--test``), per window:

* ``AUC``: SR against sidebands on the unseen background (0.5: nothing learnt);
* ``SR pass``: the fraction of unseen SR background above the score that keeps
  ``--fraction`` of the unseen sidebands, in units of that fraction (1: calibrated; a search
  sets its cut on the sidebands and fits the selected spectrum);
* ``signal AUC``: an unseen signal's SR events against the unseen SR background, scored by
  the background-only classifier (0.5: the learnt trend is neutral to this signal; above:
  it points towards it, a reach that another signal would not get).

Each row compares the two input sets (jet masses in GeV or in units of mjj) with equal
sideband weights and with ``balance_sidebands`` (the two sides weighted to the SR's mean mjj).

    python benchmarks/cwola_sidebands.py --windows 2910,3290 3300,3700 4130,4660 \
        --signals 3300,3700=SIGNAL_3500.h5 ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DATA = ROOT.parent.parent / "shared" / "data" / "rnd"

INPUTS = {"GeV": ["mj1", "delta_mj", "tau21_j1", "tau21_j2"],
          "/mjj": ["mj1_over_mjj", "delta_mj_over_mjj", "tau21_j1", "tau21_j2"]}


def _window_arrays(events, cols, fit_range):
    m = events["mjj"].to_numpy()
    keep = (m >= fit_range[0]) & (m < fit_range[1])
    return events.loc[keep, cols].to_numpy(np.float32), m[keep]


def measure(train, test, signal, window, cols, balance, params, seeds, fraction, fit_range):
    from sklearn.metrics import roc_auc_score

    from sideband.detectors import make_detector

    lo, hi = window
    X, m = _window_arrays(train, cols, fit_range)
    Xt, mt = _window_arrays(test, cols, fit_range)
    sr_t = (mt >= lo) & (mt < hi)
    score_t = np.zeros(len(Xt))
    score_s = None
    if signal is not None:
        Xs, ms = _window_arrays(signal, cols, fit_range)
        Xs = Xs[(ms >= lo) & (ms < hi)]
        score_s = np.zeros(len(Xs))
    for seed in range(seeds):
        det = make_detector("cwola", {**params, "balance_sidebands": balance}, random_state=seed)
        det.fit(X, m, signal_region=window)
        score_t += det.score(Xt)
        if score_s is not None:
            score_s += det.score(Xs)
    cut = np.quantile(score_t[~sr_t], 1.0 - fraction)
    row = {"auc": float(roc_auc_score(sr_t, score_t)),
           "sr_pass": float(np.mean(score_t[sr_t] > cut) / fraction)}
    if score_s is not None and len(score_s):
        bg = score_t[sr_t]
        row["signal_auc"] = float(roc_auc_score(np.r_[np.zeros(len(bg)), np.ones(len(score_s))],
                                                np.r_[bg, score_s]))
        row["signal_pass"] = float(np.mean(score_s > cut) / fraction)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA / "qcd_features.h5"), help="training background")
    ap.add_argument("--test", default=str(DATA / "qcd_extra_features.h5"), help="independent background")
    ap.add_argument("--windows", nargs="+", default=["2910,3290", "3300,3700", "4130,4660"])
    ap.add_argument("--signals", nargs="*", default=[f"3300,3700={DATA / 'signal_3500_500_100_features.h5'}"],
                    help="WINDOW=FILE: a signal read in that window")
    ap.add_argument("--config", default=str(ROOT.parent / "configs" / "default.yaml"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fraction", type=float, default=0.01)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from sideband.pipeline.config import load_config
    from sideband.pipeline.io import read_events

    cfg = load_config(args.config)
    params = dict(cfg.detectors["cwola"].params)
    params.pop("balance_sidebands", None)
    fit_range = tuple(cfg.fit.range)
    train, _ = read_events(args.data)
    test, _ = read_events(args.test)
    signals = {}
    for item in args.signals:
        w, _, path = item.partition("=")
        signals[w] = read_events(path)[0]
    t0 = time.time()
    rows = []
    print(f"CWoLa on background alone ({args.data}), read on {args.test}; {args.seeds} seeds; "
          f"SR pass = SR background above the {args.fraction:g} sideband quantile / {args.fraction:g}")
    print(f"{'window':11s} {'inputs':5s} {'sidebands':9s} {'AUC':>6s} {'SR pass':>8s} {'signal AUC':>11s} "
          f"{'signal pass':>12s}")
    for w in args.windows:
        window = tuple(float(v) for v in w.split(","))
        for name, cols in INPUTS.items():
            for balance in (False, True):
                r = measure(train, test, signals.get(w), window, cols, balance, params, args.seeds,
                            args.fraction, fit_range)
                rows.append({"window": w, "inputs": name, "balanced": balance, **r})
                sig = (f"{r['signal_auc']:11.3f} {r['signal_pass']:12.2f}" if "signal_auc" in r
                       else f"{'-':>11s} {'-':>12s}")
                print(f"{w:11s} {name:5s} {'balanced' if balance else 'equal':9s} {r['auc']:6.3f} "
                      f"{r['sr_pass']:8.2f} {sig}", flush=True)
    print(f"wall {time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
