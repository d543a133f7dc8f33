"""Sensitivity over a signal grid: per signal, the S/sqrt(B) needed for global Z = 3.

Generates the grid with ``sideband generate signal`` (resonance masses 3.0, 3.5, 4.5 TeV x
light-quark and b-quark X/Y decays, m_X = 500, m_Y = 100 GeV; files kept under --gen, reused
when present), then runs one injection scan (``sideband inject`` machinery) in which each
signal is injected in its own blind-scan window at equal strengths (``--levels``: target
S/sqrt(B) in its SR before selection) on the background file, and prints per signal and
detector the S/sqrt(B) where the median global Z (look-elsewhere over the whole blind scan)
crosses 3 and 5, and where the local Z crosses 3. The injection report (``--out``/report.html)
draws the sensitivity map.

    python benchmarks/signal_grid.py --out /tmp/grid --gen /tmp/grid-gen            # default detectors
    python benchmarks/signal_grid.py --detectors cwola --seeds 2 --levels 0,1.5,3   # cheaper

Costs on two CPU cores: ~30 s per 2,000 generated events; ~40 s per CWoLa point on 120k events.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = [(m, d) for m in (3000, 3500, 4500) for d in ("light", "b")]


def generate(gen: Path, events: int) -> list[str]:
    paths = []
    for i, (m, decays) in enumerate(GRID):
        name = f"signal_{m}_500_100_{decays}"
        path = gen / f"{name}_features.h5"  # generate writes <name>_features.h5 (+ particles, ROOT)
        if not path.exists():
            subprocess.run([sys.executable, "-m", "sideband.workflows.cli", "generate", "signal", "--events",
                            str(events), "--m-res", str(m), "--m-x", "500", "--m-y", "100", "--decays", decays,
                            "--out", str(gen), "--name", name, "--seed", str(5000 + 100 * i), "--no-progress"],
                           check=True, cwd=ROOT)
        if not path.exists():
            raise SystemExit(f"generation of {name} wrote no {path.name} under {gen}")
        paths.append(str(path))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "rnd" / "qcd_features.h5"))
    ap.add_argument("--gen", default="/tmp/sideband-grid-gen", help="where the generated signals go")
    ap.add_argument("--events", type=int, default=2000, help="generated events per signal")
    ap.add_argument("--out", default="/tmp/sideband-grid")
    ap.add_argument("--config", default=None, help="default: configs/default.yaml (its detectors and scan)")
    ap.add_argument("--detectors", default=None, help="comma-separated subset of the config's detectors")
    ap.add_argument("--levels", default="0,1,2,3")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from sideband.pipeline.sensitivity import format_sensitivity
    from sideband.workflows.inject import injection_config, run_injection

    gen = Path(args.gen)
    gen.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    signals = generate(gen, args.events)
    t_gen = time.time() - t0
    cfg = injection_config(args.config, data=args.data)
    if args.detectors:
        keep = args.detectors.split(",")
        cfg = cfg.model_copy(update={"detectors": {k: v for k, v in cfg.detectors.items() if k in keep}})
    cfg = cfg.model_copy(update={"regions": cfg.regions.model_copy(update={"signal_region": None})})
    res = run_injection(cfg, args.out, signals=signals, seeds=args.seeds,
                        levels=[float(x) for x in args.levels.split(",")])
    sens = res["sensitivity"]
    print(f"generation {t_gen:.0f} s, injection {time.time() - t0 - t_gen:.0f} s; "
          f"global Z over {sens['look_elsewhere']['n_tests']} tests of the blind scan\n")
    print(f"{'signal':<28} {'window':<11} {'f_SR':>5} {'B_SR':>6} {'counts':<20}")
    for p in res["signals"]:
        print(f"{Path(p['signal']).stem:<28} {p['signal_region'][0]:g}-{p['signal_region'][1]:g} "
              f"{p['f_sr']:>5.2f} {p['b_sr']:>6} {','.join(map(str, p['counts'])):<20}")
    print()
    print(format_sensitivity(sens))
    if args.json:
        Path(args.json).write_text(json.dumps({"signals": res["signals"], "sensitivity": sens}, indent=1))
    print(f"\nreport: {args.out}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
