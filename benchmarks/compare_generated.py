"""Compare a generated sample with a reference file: mjj, jet masses, tau21 (quantiles, KS test).

    python benchmarks/compare_generated.py GENERATED.h5 ../shared/data/rnd/qcd_features.h5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


from sideband.pipeline.io import read_events  # noqa: E402

COLUMNS = ["mjj", "mj1", "mj2", "tau21_j1", "tau21_j2", "pt_j1"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("generated")
    ap.add_argument("reference")
    ap.add_argument("--label", type=float, default=None, help="only events with this label (both files)")
    args = ap.parse_args(argv)
    gen, _ = read_events(args.generated)
    ref, _ = read_events(args.reference)
    if args.label is not None:
        gen = gen[gen["label"] == args.label]
        ref = ref[ref["label"] == args.label]
    print(f"generated: {args.generated} ({len(gen)} events); reference: {args.reference} ({len(ref)} events)")
    print(f"{'feature':<9} {'gen q16/q50/q84':>26} {'ref q16/q50/q84':>26} {'KS D':>6} {'KS p':>8}")
    for c in COLUMNS:
        g, r = gen[c].to_numpy(), ref[c].to_numpy()
        qg, qr = np.percentile(g, [16, 50, 84]), np.percentile(r, [16, 50, 84])
        ks = stats.ks_2samp(g, r)
        fmt = (lambda q: "/".join(f"{v:.3g}" for v in q))
        print(f"{c:<9} {fmt(qg):>26} {fmt(qr):>26} {ks.statistic:6.3f} {ks.pvalue:8.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
