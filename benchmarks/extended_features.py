"""What the extended N-subjettiness set buys: max SIC of the idealized and CWoLa detectors at a
particle-level benchmark point made with ``sideband generate``.

Both files are read from the raw particle layout with ``data.substructure: extended`` (anti-kT
R=1.0 jets with FastJet, then the baseline features and tau_N^beta for N = 1..9, beta = 0.5, 1,
2 of both jets; cached as HDF5 in ``--workdir``). Per seed, the QCD events are shuffled into
data (50%), the idealized detector's reference (30%: a perfect background model in the SR) and
test events (20%); ``--n-inject`` signal events are mixed into the data and the other signal
events are the test signal. Each detector (the classifiers of configs/default.yaml: boosted-tree
ensembles) is trained on the data with each feature set (the config's 4 baseline features, the
54 extended ones, both) and scored on the test events in the SR; max SIC over cuts keeping >=
``--min-background`` test QCD events, median and 16-84% band over seeds. ``--detectors`` may add
``supervised``: the data's SR signal against its background with the truth labels, what a
feature set can give at this signal count.

    sideband generate qcd --events 100000 --out /tmp/gen --seed 11
    sideband generate signal --events 4000 --out /tmp/gen --seed 12
    python benchmarks/extended_features.py --qcd /tmp/gen/qcd_particles.h5 \
        --signal /tmp/gen/signal_particles.h5 --n-inject 1000 --seeds 3 --json ext.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def read_extended(path: Path, workdir: Path) -> pd.DataFrame:
    """The event table of a particle file with the extended substructure set (cached)."""
    from sideband.pipeline.io import read_events

    st = path.stat()
    tag = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    cache = workdir / f"{path.stem}-extended-{tag}.h5"
    if cache.exists():
        return pd.read_hdf(cache, "df")
    t0 = time.perf_counter()
    ev, src = read_events(path, substructure="extended")
    print(f"{path.name}: {len(ev)} events read with the extended set in {time.perf_counter() - t0:.0f} s", flush=True)
    ev.to_hdf(cache, key="df", mode="w")
    return ev


def split(qcd: pd.DataFrame, sig: pd.DataFrame, n_inject: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, 18])
    q = rng.permutation(len(qcd))
    n_data, n_ref = len(q) // 2, int(0.3 * len(q))
    s = rng.permutation(len(sig))
    if n_inject >= len(s):
        raise SystemExit(f"--n-inject {n_inject}: the signal file holds only {len(s)} events")
    data = pd.concat([qcd.iloc[q[:n_data]], sig.iloc[s[:n_inject]]], ignore_index=True)
    data["_is_signal"] = np.r_[np.zeros(n_data), np.ones(n_inject)].astype(np.float32)
    return {"data": data, "ref": qcd.iloc[q[n_data:n_data + n_ref]], "test_bkg": qcd.iloc[q[n_data + n_ref:]],
            "test_sig": sig.iloc[s[n_inject:]]}


def in_sr(frame: pd.DataFrame, sr) -> pd.DataFrame:
    return frame[(frame["mjj"] >= sr[0]) & (frame["mjj"] < sr[1])]


def max_sic(name: str, params: dict, parts: dict, cols: list[str], sr, seed: int, min_bkg: int) -> dict:
    from sideband.detectors.base import make_detector
    from sideband.pipeline.metrics import sic_curve

    det = make_detector(name, params, random_state=seed)
    X = parts["data"][cols].to_numpy(np.float32)
    m = parts["data"]["mjj"].to_numpy()
    ref = in_sr(parts["ref"], sr)[cols].to_numpy(np.float32) if name == "idealized" else None
    y = parts["data"]["_is_signal"].to_numpy() if name == "supervised" else None
    det.fit(X, m, signal_region=sr, X_reference=ref, y_true=y)
    s = det.score(in_sr(parts["test_sig"], sr)[cols].to_numpy(np.float32))
    b = det.score(in_sr(parts["test_bkg"], sr)[cols].to_numpy(np.float32))
    curve = sic_curve(s, b, min_bkg)
    return {"max_sic": curve.max_sic, "auc": curve.auc, "n_test_sig": len(s), "n_test_bkg": len(b)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qcd", required=True, help="particle-level QCD file (raw layout)")
    ap.add_argument("--signal", required=True, help="particle-level signal file (raw layout)")
    ap.add_argument("--n-inject", type=int, default=1000)
    ap.add_argument("--signal-region", default="3300,3700")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--detectors", default="idealized,cwola", help="idealized, cwola, supervised")
    ap.add_argument("--sets", default="baseline,extended,baseline+extended")
    ap.add_argument("--min-background", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/sideband-extended")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from sideband.pipeline.cluster import limit_threads
    from sideband.pipeline.config import load_config
    from sideband.pipeline.features import EXTENDED_COLUMNS
    from sideband.pipeline.metrics import summarise_seeds

    limit_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    qcd, sig = read_extended(Path(args.qcd), work), read_extended(Path(args.signal), work)
    sr = tuple(float(x) for x in args.signal_region.split(","))
    cfg = load_config(None)
    base = list(cfg.features)
    feature_sets = {"baseline": base, "extended": list(EXTENDED_COLUMNS), "baseline+extended": base + EXTENDED_COLUMNS}
    sets = args.sets.split(",")
    classifier = dict(cfg.detectors["cwola"].params)
    rows = []
    n_sr = {k: len(in_sr(v, sr)) for k, v in split(qcd, sig, args.n_inject, 0).items()}
    f_sr = len(in_sr(sig, sr)) / len(sig)
    s_sr = args.n_inject * f_sr
    print(f"SR {sr[0]:g}-{sr[1]:g} GeV: data {n_sr['data']} events ({s_sr:.0f} signal, S/sqrt(B) "
          f"{s_sr / np.sqrt(max(n_sr['data'] - s_sr, 1)):.2f}), reference {n_sr['ref']}, test QCD {n_sr['test_bkg']}, "
          f"test signal {n_sr['test_sig']}", flush=True)
    for seed in range(args.seeds):
        parts = split(qcd, sig, args.n_inject, seed)
        for name in args.detectors.split(","):
            for label in sets:
                t0 = time.perf_counter()
                r = max_sic(name, classifier, parts, feature_sets[label], sr, seed, args.min_background)
                rows.append({"seed": seed, "detector": name, "set": label, **r})
                print(f"seed {seed} {name:<10} {label:<18} max SIC {r['max_sic']:6.2f}  AUC {r['auc']:.3f}  "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nmax SIC (median [16%, 84%] over {args.seeds} seeds), {args.n_inject} injected signal events:")
    table = {}
    for name in args.detectors.split(","):
        for label in sets:
            sic = summarise_seeds([r["max_sic"] for r in rows if r["detector"] == name and r["set"] == label])
            table[f"{name}:{label}"] = sic
            print(f"  {name:<10} {label:<18} {len(feature_sets[label]):>3} features  {sic['median']:6.2f} "
                  f"[{sic['lo']:.2f}, {sic['hi']:.2f}]")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "sr_counts": n_sr, "signal_sr_fraction": f_sr,
                                               "rows": rows, "table": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
