"""Look-elsewhere tail against brute force: Gross-Vitells extrapolation vs millions of toys.

For three sets of tests, ``--toys`` background-only pseudo-experiments of all the tests
(``pipeline.lee._draw``, chunked, keeping only each toy's largest Z and the upcrossing
counts) give the brute-force distribution of the largest local Z. At the local Z ``u`` whose
brute-force global p-value is that of global Z 3 and 4, the Gross-Vitells tail
(``pipeline.lee._tail``) fitted on only the first 2e4, 1e5 and 1e6 of those toys is compared
with the brute-force global Z (its statistical error from the binomial count). Then
``global_significance`` with its defaults (adaptive toys, tail beyond their reach) is timed
at a local Z of 6.

Sets of tests: ``demo``, the demo search (one window: inclusive + 2 detectors x 3 nested
selections, backgrounds of its results.json); ``scan``, 15 windows on a falling spectrum x
(inclusive + 3 detectors x 3 selections), 150 tests with backgrounds from ~2e4 down to ~0.6
events; ``chain``, four strongly overlapping selections (a nearly continuous process).

    nice -n 5 python benchmarks/lee.py --toys 4000000 --json lee.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats
from sideband.pipeline.lee import (
    _GRID,
    _crossings,
    _draw,
    _model,
    _tail,
    global_significance,
)

FITS = (20_000, 100_000, 1_000_000)
UNC = {1.0: 1.015, 0.1: 1.02, 0.01: 1.14, 0.002: 1.21}  # sigma_b / sqrt(b) in the demo


def demo():
    vals = [("none", 1.0, 5994.8, 78.6), ("cwola", 0.1, 604.8, 25.1), ("cwola", 0.01, 54.2, 8.38),
            ("cwola", 0.002, 4.30, 2.52), ("autoencoder", 0.1, 631.1, 25.6), ("autoencoder", 0.01, 82.1, 9.92),
            ("autoencoder", 0.002, 16.7, 4.56)]
    return [{"window": "w", "detector": d, "selection": s, "n_expected_sr": b, "n_expected_sr_unc": u}
            for d, s, b, u in vals]


def scan():
    rows = []
    for w in range(15):
        big = 20_000 * np.exp(-0.3 * w)
        for d, sels in (("none", (1.0,)), ("a", (0.1, 0.01, 0.002)), ("b", (0.1, 0.01, 0.002)),
                        ("c", (0.1, 0.01, 0.002))):
            for s in sels:
                b = big * s
                rows.append({"window": f"w{w}", "detector": d, "selection": s, "n_expected_sr": b,
                             "n_expected_sr_unc": UNC[s] * np.sqrt(b)})
    return rows


def chain():
    rows = [{"window": "w", "detector": "none", "selection": 1.0, "n_expected_sr": 10_000.0}]
    rows += [{"window": "w", "detector": "x", "selection": s, "n_expected_sr": 10_000.0 * s} for s in (0.8, 0.6, 0.4)]
    for r in rows:
        r["n_expected_sr_unc"] = 0.3 * np.sqrt(r["n_expected_sr"])
    return rows


def brute_force(rows, n_toys, seed):
    """Sorted largest Z of ``n_toys`` toys, and the upcrossing counts after each of FITS toys."""
    model = _model(rows)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2**21 // len(rows))
    zmax = np.empty(n_toys, dtype=np.float32)
    ups = np.zeros(len(_GRID), dtype=np.int64)
    snap, done = {}, 0
    stops = sorted({f for f in FITS if f < n_toys} | {n_toys})
    for stop in stops:
        while done < stop:
            z = _draw(rng, model, min(chunk, stop - done))
            zmax[done:done + len(z)] = z.max(axis=1)
            ups += _crossings(z, model["parent"])
            done += len(z)
        snap[stop] = ups.copy()
    zmax.sort()
    return zmax, snap


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toys", type=int, default=4_000_000, help="brute-force pseudo-experiments per set")
    ap.add_argument("--sets", default="demo,scan,chain")
    ap.add_argument("--min-count", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the table rows as JSON to this path")
    args = ap.parse_args()
    out = []
    hdr = (f"{'set':<6} {'tests':>5} {'Zglob':>5} {'u=Zloc':>6} {'brute p':>9} {'count':>6} {'brute Z':>13} "
           f"{'fit toys':>9} {'u0':>5} {'tail Z':>6} {'dZ':>6}")
    print(f"brute force: {args.toys} toys per set; tail: Gross-Vitells from u0 with >= {args.min_count} upcrossings")
    print(hdr)
    for name in args.sets.split(","):
        rows = {"demo": demo, "scan": scan, "chain": chain}[name]()
        t0 = time.perf_counter()
        zmax, snap = brute_force(rows, args.toys, args.seed)
        t_brute = time.perf_counter() - t0
        n = len(zmax)
        for zg in (3.0, 4.0):
            target = stats.norm.sf(zg)
            u = float(zmax[n - round(target * n)])  # local Z reached by a fraction `target` of toys
            count = int(n - np.searchsorted(zmax, u, side="left"))
            p_b = count / n
            z_b = float(stats.norm.isf(p_b))
            z_err = float(np.sqrt(p_b * (1 - p_b) / n) / stats.norm.pdf(z_b))
            for n_fit in [f for f in FITS if f < n]:
                tail = _tail(snap[n_fit], n_fit, u, args.min_count)
                if tail is None:
                    continue
                z_t = float(stats.norm.isf(tail[0]))
                out.append({"set": name, "n_tests": len(rows), "z_global_target": zg, "u": u, "p_brute": p_b,
                            "count_brute": count, "z_brute": z_b, "z_brute_err": z_err, "n_toys_brute": n,
                            "n_toys_fit": n_fit, "u0": tail[1], "upcrossings_u0": tail[2], "p_tail": tail[0],
                            "z_tail": z_t, "dz": z_t - z_b, "seconds_brute": t_brute})
                print(f"{name:<6} {len(rows):>5} {zg:>5.1f} {u:>6.3f} {p_b:>9.3e} {count:>6} {z_b:>6.3f}±{z_err:.3f} "
                      f"{n_fit:>9} {tail[1]:>5.2f} {z_t:>6.3f} {z_t - z_b:>+6.3f}")
        # what a search gets by default: adaptive toys, the tail beyond their reach, at local Z 6
        test = [dict(r, z_local=0.0) for r in rows]
        best = next(i for i, r in enumerate(test) if r["detector"] != "none" and r["selection"] == 0.01) \
            if any(r["selection"] == 0.01 for r in test) else len(test) - 1
        test[best]["z_local"] = 6.0
        t0 = time.perf_counter()
        info = global_significance(test, n_toys=20_000, seed=args.seed + 1)
        dt = time.perf_counter() - t0
        r = test[best]
        out.append({"set": name, "n_tests": len(rows), "default_call": True, "z_local": 6.0, "z_global": r["z_global"],
                    "method": r["z_global_method"], "is_bound": r["z_global_is_bound"], "n_toys": info["n_toys"],
                    "tail_thresholds": info["method"]["tail_thresholds"], "seconds": dt, "seconds_brute": t_brute})
        print(f"{name:<6} default global_significance at local Z 6.0: global Z {r['z_global']:.2f} "
              f"[{r['z_global_method']}] ({info['n_toys']} toys, {dt:.1f} s; brute force {t_brute:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
