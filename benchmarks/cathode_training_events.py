"""Does a CATHODE selection pass the flow's own training events as often as unseen background?

The search sets each selection's threshold on the sideband events, and those are the events
CATHODE's flow was trained on. If the flow's samples carry an imprint of its training events,
the data-vs-samples classifier learns to score those events low, the threshold lands too low
and the SR (events the flow never saw) passes more than the fit predicts: an excess on
background alone. This trains the config's CATHODE on the R&D background of one window
(``--sr``), one classifier on all SR data against the flow's samples (as a fold model does),
and compares, per 100-GeV m_jj bin, the fraction of the sideband data (the flow's training
set) and of the independent extra QCD sample (never seen) that passes each selection, in units
of the nominal fraction. ``--sideband-folds k``: CATHODE's cross-fitted form
(``Cathode``: k flows and k calibrated classifiers, so that no event is scored through a flow
that saw it).

    python benchmarks/cathode_training_events.py --seed 0 --sr 2910,3290 [--sideband-folds 2]
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

from sensitivity import load_benchmark_data  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent.parent / "shared" / "data" / "rnd"))
    ap.add_argument("--config", default=str(ROOT.parent / "configs" / "default.yaml"))
    ap.add_argument("--sr", default="2910,3290", help="signal region lo,hi in GeV (default: the scan's lowest window)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sideband-folds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=str(ROOT.parent / ".bench-cache"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from sideband.detectors.cathode import Cathode
    from sideband.pipeline.cluster import limit_threads
    from sideband.pipeline.config import load_config

    limit_threads(args.threads)
    cfg = load_config(args.config)
    params = dict(cfg.detectors["cathode"].params)
    lo, hi = (float(v) for v in args.sr.split(","))
    f_lo, f_hi = cfg.fit.range
    bkg, _, extra = load_benchmark_data(args.data_dir, "signal_3500_500_100_features.h5", args.cache)

    def window(t):
        m = t["mjj"].to_numpy()
        keep = (m >= f_lo) & (m < f_hi)
        return t[list(cfg.features)].to_numpy(np.float32)[keep], m[keep]

    X, m = window(bkg)
    Xe, me = window(extra)
    sr = (m >= lo) & (m < hi)
    sb = ~sr
    k = args.sideband_folds
    det = Cathode(flow_params=params.get("flow_params"), oversampling=params.get("oversampling", 4.0),
                  n_ensemble=params.get("n_ensemble", 5), hgb_params=params.get("hgb_params"),
                  random_state=args.seed, sideband_folds=k, device="cpu")
    t0 = time.perf_counter()
    state = det.fit_sidebands(X, m, signal_region=(lo, hi))
    t1 = time.perf_counter()
    det.fit(X, m, signal_region=(lo, hi), sideband_state=state)  # the classifier(s) on all SR data
    s_sb, s_e = det.score(X[sb]), det.score(Xe)
    t2 = time.perf_counter()

    bins = np.arange(f_lo, min(f_hi, hi + 1400) + 1, 100)
    n_sb, n_e = np.histogram(m[sb], bins)[0], np.histogram(me, bins)[0]
    e_sr = (me >= lo) & (me < hi)
    near = lambda mm: ((mm >= lo - 200) & (mm < lo)) | ((mm >= hi) & (mm < hi + 200))  # noqa: E731
    out = {"seed": args.seed, "signal_region": [lo, hi], "sideband_folds": k, "flow_s": t1 - t0,
           "classifier_s": t2 - t1, "bins": bins[:-1].tolist(), "selections": {}}
    print(f"seed {args.seed}, SR {lo:g}-{hi:g} GeV, {k} flow(s): flows {t1 - t0:.0f} s, classifiers {t2 - t1:.0f} s; "
          f"{int(sb.sum())} sideband events (the flows' training set), {len(Xe)} unseen (extra QCD)")
    for sel in cfg.stats.selections:
        thr = np.quantile(s_sb, 1 - sel)
        p_sb = np.histogram(m[sb][s_sb > thr], bins)[0] / np.maximum(n_sb, 1) / sel
        p_e = np.histogram(me[s_e > thr], bins)[0] / np.maximum(n_e, 1) / sel
        pass_e = s_e > thr
        row = {"training_sidebands": p_sb.tolist(), "unseen": p_e.tolist(),
               "unseen_outside_sr": float(pass_e[~e_sr].mean() / sel), "unseen_in_sr": float(pass_e[e_sr].mean() / sel),
               "training_near_sr": float((s_sb > thr)[near(m[sb])].mean() / sel),
               "unseen_near_sr": float(pass_e[near(me)].mean() / sel), "n_unseen_passing": int(pass_e.sum())}
        out["selections"][str(sel)] = row
        print(f"  keep {sel:g}: unseen background passes {row['unseen_outside_sr']:.3f} x nominal outside the SR "
              f"({row['n_unseen_passing']} events in all), {row['unseen_in_sr']:.3f} x in it; within 200 GeV of the SR "
              f"training events {row['training_near_sr']:.3f} x, unseen {row['unseen_near_sr']:.3f} x")
        print("    training sidebands " + " ".join("%5.2f" % v if n_sb[i] else "    -" for i, v in enumerate(p_sb)))
        print("    unseen             " + " ".join("%5.2f" % v for v in p_e))
    print("    bin start (GeV)    " + " ".join("%5d" % b for b in bins[:-1]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
