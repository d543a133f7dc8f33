"""The ``sideband`` command: one subcommand per user task, each a thin layer over a workflow."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from sideband.pipeline.exceptions import SidebandUserError
from sideband.pipeline.graph import GraphInterrupted

__all__ = ["main", "build_parser"]

EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sideband",
        description="Resonant anomaly-detection search for LHC dijet data: signal region and "
                    "sidebands in mjj, weakly supervised detectors, dijet-function background fit, "
                    "pyhf significance and limits.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser(
        "search", help="run a blind search on a dataset",
        description="Run the search DAG (load -> detectors per window and fold -> selections -> "
                    "background fit -> pyhf) and write results.json, plots and a table.",
    )
    s.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    s.add_argument("--data", default=None,
                   help="input file: LHC Olympics HDF5 (features or raw particles) or ROOT; "
                        "default: the demo dataset shipped with sideband")
    s.add_argument("--out", default="sideband-out", help="output directory (default: %(default)s)")
    s.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (tcp://host:port), scheduler file (.json), or "
                        "'synchronous'; default: a LocalCluster on this machine")
    s.add_argument("--seed", type=int, default=None, help="override the config seed")
    s.add_argument("--inject", default=None, metavar="SIGNAL_FILE",
                   help="signal file whose events are mixed into the data (with --n-inject)")
    s.add_argument("--n-inject", type=int, default=None, help="number of signal events to inject")
    s.add_argument("--strict", action="store_true", help="NaN/inf features are an error, not dropped")
    s.add_argument("--unblind", action="store_true",
                   help="show the signal-region data: observed counts, Z and observed limits "
                        "(hidden by default; results.json records the choice)")
    s.add_argument("--signal-model", default=None, metavar="FILE",
                   help="signal template (LHC Olympics features HDF5 of signal events): per test, its efficiency "
                        "through the selection, limits on produced signal events and the expected Z "
                        "(default: stats.signal_model)")
    s.add_argument("--signal-events", type=float, default=None, metavar="N",
                   help="produced signal events for the expected Z (default: stats.signal_events, else the "
                        "number of events in the --signal-model file)")
    s.add_argument("--no-progress", action="store_true", help="print no progress (default: a bar on a terminal, one line per finished stage otherwise)")
    s.set_defaults(func=_cmd_search)

    t = sub.add_parser(
        "export-trigger", help="export a trained autoencoder as a trigger model (ONNX, hls4ml)",
        description="Calibrate the autoencoder of a finished search to a background acceptance, export "
                    "it to ONNX (checked with onnxruntime) and to an hls4ml fixed-point project with C++ "
                    "bit-accurate emulation; write trigger_report.json.",
    )
    t.add_argument("--run", required=True, help="output directory of a finished 'sideband search'")
    t.add_argument("--out", default=None, help="where to write the export (default: RUN/trigger)")
    t.add_argument("--rate", type=float, default=1e-3, help="background acceptance (default: %(default)g)")
    t.add_argument("--window", default=None, help="window name, e.g. 3300-3700 (default: the first)")
    t.add_argument("--fold", type=int, default=0, help="which fold's model (default: %(default)s)")
    t.add_argument("--signal", default=None, help="signal file for the signal acceptance (default: labels)")
    t.add_argument("--config", default=None, help="config whose 'trigger:' section to use (default: the run's)")
    t.add_argument("--no-hls", action="store_true", help="skip the hls4ml step")
    t.add_argument("--score", choices=["reconstruction", "latent"], default=None,
                   help="score to export: reconstruction error (encoder + decoder) or the encoder-only latent "
                        "score (AXOL1TL style); default: the autoencoder's score_type")
    t.add_argument("--precision", default=None,
                   help="'auto' (per layer from hls4ml profiling) or one ap_fixed<W,I> for every layer "
                        "(default: trigger.precision)")
    t.add_argument("--max-bits", type=int, default=None,
                   help="total bits of every fixed-point type (default: trigger.max_bits, 16)")
    t.add_argument("--prescale", type=float, default=None,
                   help="L1 pre-scale dividing the rate (default: trigger.prescale, 1)")
    t.add_argument("--input-rate", type=float, default=None,
                   help="input rate in Hz (default: trigger.input_rate_hz, 40e6)")
    t.set_defaults(func=_cmd_export_trigger)

    inj = sub.add_parser(
        "inject", help="signal-injection scan: sensitivity versus injected signal",
        description="Run the whole search (all detectors, all windows) for each signal file x injected "
                    "count x seed in one Dask graph; write inject_results.json and report.html.",
    )
    inj.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    inj.add_argument("--data", default=None, help="background file (default: the config's data.path)")
    inj.add_argument("--signal", action="append", default=None,
                     help="signal file to inject (repeat for a mass grid; default: injection.signals)")
    inj.add_argument("--counts", default=None, help="comma-separated injected counts, e.g. 0,300,600,1200")
    inj.add_argument("--levels", default=None,
                     help="comma-separated S/sqrt(B) in each signal's SR instead of counts, e.g. 0,1,2,3 "
                          "(default: injection.levels)")
    inj.add_argument("--seeds", type=int, default=None, help="seeds per point (default: injection.seeds)")
    inj.add_argument("--background-parts", type=int, default=None, metavar="P",
                     help="split the background file into P disjoint parts; seed k analyses part k mod P, so the "
                          "seeds are independent background samples (default: injection.background_parts, 1)")
    inj.add_argument("--out", default="sideband-inject", help="output directory (default: %(default)s)")
    inj.add_argument("--scheduler", default=None, help="as for search")
    inj.add_argument("--no-progress", action="store_true")
    inj.set_defaults(func=_cmd_inject)

    fs = sub.add_parser(
        "fit-spectrum", help="fit a binned mjj spectrum with the GP and the dijet functions",
        description="Fit a binned spectrum (CSV: low,high,count or center,width,count; GeV) with a Gaussian "
                    "process (Gibbs x exponential-decay kernel) and the 3/4/5-parameter dijet functions "
                    "(F-test); plot fits and pulls; scan for localised excesses; write fit.json.",
    )
    fs.add_argument("--csv", required=True, help="the binned spectrum")
    fs.add_argument("--out", default="fit-spectrum", help="output directory (default: %(default)s)")
    fs.set_defaults(func=_cmd_fit_spectrum)

    gen = sub.add_parser(
        "generate", help="generate dijet events with Pythia 8 + FastJet",
        description="Generate QCD or resonance-signal events (pythia8mc, 13 TeV), cluster anti-kT R=1.0 "
                    "jets with FastJet, keep events with a leading jet pT > 1.2 TeV, and write the LHC "
                    "Olympics feature and raw particle layouts, a ROOT file and metadata. 'demo' makes the "
                    "shipped demo mixture.",
    )
    gen.add_argument("process", choices=["qcd", "signal", "demo"])
    gen.add_argument("--events", type=int, required=True, help="kept events (QCD events for 'demo')")
    gen.add_argument("--out", default="generated", help="output directory (default: %(default)s)")
    gen.add_argument("--name", default=None, help="file name stem (default: the process)")
    gen.add_argument("--seed", type=int, default=1001, help="seed of the first chunk; chunk i uses seed+i")
    gen.add_argument("--chunk-size", type=int, default=1000, help="events per chunk/node (default: %(default)s)")
    gen.add_argument("--m-res", type=float, default=3500.0, help="resonance mass [GeV] (signal)")
    gen.add_argument("--m-x", type=float, default=500.0, help="mass of X [GeV] (signal)")
    gen.add_argument("--m-y", type=float, default=100.0, help="mass of Y [GeV] (signal)")
    gen.add_argument("--decays", choices=["light", "b"], default="light", help="X, Y decay quarks (signal)")
    gen.add_argument("--pthat-min", type=float, default=1100.0, help="QCD pT-hat cut [GeV]")
    gen.add_argument("--n-signal", type=int, default=0, help="signal events mixed in ('demo')")
    gen.add_argument("--scheduler", default=None, help="as for search (default: a LocalCluster)")
    gen.add_argument("--no-progress", action="store_true")
    gen.set_defaults(func=_cmd_generate)
    return parser


def _overrides(args) -> dict:
    data: dict = {}
    if args.data is not None:
        data["path"] = args.data
    if args.strict:
        data["strict"] = True
    if args.inject is not None or args.n_inject is not None:
        if args.inject is None or args.n_inject is None:
            raise SidebandUserError("--inject and --n-inject go together; give both")
        data["inject"] = {"path": args.inject, "n_events": args.n_inject}
    out: dict = {"data": data} if data else {}
    if args.seed is not None:
        out["seed"] = args.seed
    if args.scheduler is not None:
        out["compute"] = {"scheduler": args.scheduler}
    stats = {k: v for k, v in (("signal_model", getattr(args, "signal_model", None)),
                               ("signal_events", getattr(args, "signal_events", None))) if v is not None}
    if stats:
        out["stats"] = stats
    return out


def _progress(args) -> bool:
    """Progress on standard error: a bar on a terminal, one line per finished stage elsewhere;
    nothing with --no-progress."""
    return not args.no_progress


def _cmd_search(args) -> int:
    from sideband.pipeline.report import format_summary
    from sideband.workflows.configure import load_config
    from sideband.workflows.search import run_search

    config = args.config
    if config is None and args.data is None:
        from sideband.pipeline.config import DEMO_CONFIG

        if DEMO_CONFIG.exists():
            config = DEMO_CONFIG
            if not args.no_progress:
                print(f"no --data: the shipped demo dataset, with the lighter scan of {DEMO_CONFIG.name}",
                      file=sys.stderr)
    cfg = load_config(config, _overrides(args))
    results = run_search(cfg, args.out, progress=_progress(args), unblind=args.unblind)
    print(format_summary(results))
    if results["blinded"]:
        print("\nBLINDED: signal-region data hidden; rerun with --unblind to see observed counts and Z.")
    print(f"\nresults: {args.out}/results.json   plots: {args.out}/plots/")
    return 0


def _cmd_export_trigger(args) -> int:
    from sideband.workflows.trigger import export_trigger, format_trigger_report

    trigger_cfg = None
    if args.config:
        from sideband.workflows.configure import load_config

        trigger_cfg = load_config(args.config).trigger
    out = args.out or str(Path(args.run) / "trigger")
    report = export_trigger(args.run, out, rate=args.rate, window=args.window, fold=args.fold,
                            signal_path=args.signal, trigger_cfg=trigger_cfg, hls=not args.no_hls,
                            score=args.score, precision=args.precision, max_bits=args.max_bits,
                            prescale=args.prescale, input_rate_hz=args.input_rate)
    print(format_trigger_report(report))
    print(f"\nreport: {out}/trigger_report.json   ONNX: {out}/{report['onnx_model']}")
    return 0


def _cmd_inject(args) -> int:
    from sideband.workflows.inject import injection_config, run_injection

    cfg = injection_config(args.config, data=args.data, scheduler=args.scheduler)
    try:
        counts = [int(c) for c in args.counts.split(",")] if args.counts else None
    except ValueError:
        raise SidebandUserError(f"--counts {args.counts!r}: give comma-separated integers, e.g. 0,300,600") from None
    if args.counts and args.levels:
        raise SidebandUserError("--counts and --levels both given: choose absolute counts or S/sqrt(B) levels")
    try:
        levels = [float(c) for c in args.levels.split(",")] if args.levels else None
    except ValueError:
        raise SidebandUserError(f"--levels {args.levels!r}: give comma-separated numbers, e.g. 0,1,2,3") from None
    res = run_injection(cfg, args.out, counts=counts, seeds=args.seeds, signals=args.signal, levels=levels,
                        background_parts=args.background_parts, progress=_progress(args))
    print(f"{'signal':<28} {'inj':>5} {'S/sqrtB':>7} {'detector':<11} {'Z local':>7} {'Z glob':>7} {'max SIC':>7} "
          f"{'AUC':>6}")
    from sideband.pipeline.report import fmt_value as f
    from sideband.pipeline.sensitivity import format_sensitivity

    for r in res["summary"]:
        print(f"{Path(r['signal']).name:<28} {r['n_inject']:>5} {r['s_over_sqrt_b']:>7.2f} {r['detector']:<11} "
              f"{f(r['z_best_median'], '7.2f'):>7} {f(r.get('z_global_median'), '7.2f'):>7} "
              f"{f(r['max_sic_median'], '7.2f'):>7} {f(r['auc_median'], '6.3f'):>6}")
    if res.get("sensitivity"):
        print("\n" + format_sensitivity(res["sensitivity"]))
    print(f"\nresults: {args.out}/inject_results.json   report: {args.out}/report.html")
    return 0


def _cmd_fit_spectrum(args) -> int:
    from sideband.workflows.fit_spectrum import fit_spectrum

    res = fit_spectrum(args.csv, args.out)
    for name, mod in res["models"].items():
        extra = f" ({mod['n_params']} parameters, F-test)" if name == "dijet" else ""
        print(f"{name:<6} chi2/ndf = {mod['chi2']:.1f}/{mod['ndf']}  max |pull| = {mod['max_abs_pull']:.2f}{extra}")
    top = max(res["scan"], key=lambda p: p["z_local"]) if res["scan"] else None
    if top:
        print(f"GP scan: largest local excess Z = {top['z_local']:.2f} at {top['mass']:.0f} GeV")
    print(f"\nwrote {args.out}/fit.json and {args.out}/fit.png")
    return 0


def _cmd_generate(args) -> int:
    from sideband.pipeline.config import ComputeConfig
    from sideband.workflows.generate import generate

    physics = {"m_res": args.m_res, "m_x": args.m_x, "m_y": args.m_y, "decays": args.decays,
               "pthat_min": args.pthat_min}
    if args.process == "qcd":
        physics = {"pthat_min": args.pthat_min}
    metas = generate(args.process, args.events, args.out, seed=args.seed, chunk_size=args.chunk_size,
                     name=args.name, n_signal=args.n_signal, compute=ComputeConfig(scheduler=args.scheduler, device="cpu"),
                     progress=_progress(args), **physics)
    for meta in metas:
        print(f"{meta['events_kept']} events kept of {meta['events_tried']} tried "
              f"(acceptance {meta['acceptance']:.3f}); {meta['kept_per_second_per_core']:.1f} kept events/s/core; "
              f"cross section {meta['cross_section_pb']:.4g} pb")
        print("wrote " + ", ".join(f"{args.out}/{f}" for f in meta["files"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Dask's own messages: worker processes inherit the variable; their own messages (heartbeats failing while a
    # stopped run closes its cluster, ...) are noise to a user: a failed node reaches the
    # client as an error anyway. -v shows warnings, -vv everything.
    dask_level = ["critical", "warning", "debug"][min(args.verbose, 2)]
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", dask_level)
    logging.getLogger("distributed").setLevel(dask_level.upper())
    try:
        return args.func(args)
    except SidebandUserError as exc:
        print(f"sideband: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except GraphInterrupted as exc:
        print(f"sideband: interrupted ({exc.signal_name}): {exc.done} of {exc.total} nodes finished and cached; "
              "run the same command again to resume", file=sys.stderr)
        return EXIT_TERMINATED if exc.signal_name == "SIGTERM" else EXIT_INTERRUPTED
    except KeyboardInterrupt:
        kept = {"search": "finished nodes are cached", "inject": "finished nodes are cached",
                "generate": "finished chunks are kept"}.get(args.command)
        print("sideband: interrupted; " + (f"{kept}, run the same command again to resume" if kept
                                           else "its outputs are incomplete; run it again"), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place that turns a crash into one line and a log
        path = _crash_log(args)
        print(f"sideband: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              f"(traceback in {path}; please report it)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def _crash_log(args) -> Path:
    """Write the current exception's traceback to a log file: in the output directory when
    there is one, else the temporary directory. Returns its path."""
    import tempfile
    import time
    import traceback

    out = getattr(args, "out", None) or getattr(args, "run", None)
    folder = Path(out) if out and Path(out).is_dir() else Path(tempfile.gettempdir())
    path = folder / f"sideband-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        path.write_text(f"sideband {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
    except OSError:
        path = Path(tempfile.gettempdir()) / path.name
        path.write_text(traceback.format_exc())
    return path.resolve()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
