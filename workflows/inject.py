"""Signal-injection scan: how much signal would this search have found?

For each signal file x injected count x seed, the search graph (all detectors) runs in the
signal's window (``regions.signal_region``, or without one the blind-scan window holding most
of the signal: :func:`signal_plan`) on the background with that many signal events mixed in
(sampled without replacement); all points form one Dask graph so a cluster runs them concurrently, and
every node is cached, so an interrupted scan resumes point by point. Points are unblinded
(the truth is known). Per point and detector the scan records the SIC curve and max SIC
(out-of-fold scores of the labelled SR events), the significance and upper limit after each
selection, and the S/B and S/sqrt(B) in the SR before any selection.

Detectors that learn from signal labels (the supervised ceiling) are left out of points
with no injected signal.

Sensitivity curves (:mod:`sideband.pipeline.sensitivity`): per detector, the median and
16-84% band over seeds of the global Z and of the local Z (best selection) against the
injected S/sqrt(B), and the S/sqrt(B) where the median global Z crosses 3 and 5. The global
Z counts every test of the blind scan of ``regions.scan`` (windows x detectors x selections
plus the inclusive tests), although a point only runs its own window; the module docstring
there gives the construction and its approximations, inject_results.json the number of tests.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import numpy as np

from sideband.detectors.base import load_detector_class
from sideband.pipeline.cache import cache_key, write_json
from sideband.pipeline.config import Config, InjectConfig, SplitConfig, config_from_dict
from sideband.pipeline.exceptions import SidebandUserError
from sideband.pipeline.graph import Graph, Node, Ref
from sideband.pipeline.regions import Window, scan_windows
from sideband.pipeline.config import demo_data_path
from sideband.pipeline.sensitivity import (CONSTRUCTION, background_in_windows, point_global, point_window,
                                           seed_band, sensitivity_curves)

from .search_graph import build_search_graph

__all__ = ["injection_config", "run_injection", "summarise_points"]

log = logging.getLogger(__name__)


def _point_config(cfg: Config, signal: str, n: int, seed: int, signal_region: tuple | None = None,
                  part: int | None = None) -> Config:
    inject = InjectConfig(path=signal, n_events=n) if n > 0 else None
    detectors = cfg.detectors
    if n == 0:
        detectors = {k: v for k, v in detectors.items() if load_detector_class(k).truth_kind != "labels"}
    data = {"inject": inject}
    if part is not None:
        data["split"] = SplitConfig(parts=cfg.injection.background_parts, part=part)
    update = {"seed": seed, "detectors": detectors, "data": cfg.data.model_copy(update=data)}
    if signal_region is not None:
        update["regions"] = cfg.regions.model_copy(update={"signal_region": tuple(signal_region),
                                                           "scan_centers": []})
    return cfg.model_copy(update=update)


def _mjj(cfg: Config, path: str, cache: Path) -> np.ndarray:
    from sideband.pipeline.io import load_events

    d = cfg.data
    events, _ = load_events(path, "auto", cache_dir=cache / "events", key=d.key, tree=d.tree, chunk_size=d.chunk_size,
                            strict=d.strict, substructure=d.substructure)
    return events["mjj"].to_numpy()


def signal_plan(cfg: Config, signal: str, *, counts: list[int], levels: list[float], scan: list[Window],
                background_mjj, cache: Path) -> dict:
    """Where one signal is injected and how much.

    The window: ``regions.signal_region`` when the config sets one, else the window of the
    blind scan (``regions.scan``) that holds the largest fraction of the signal's events (its
    own window: the only one the points train in). The counts: ``counts``, or with ``levels``
    (target S/sqrt(B) in that SR before selection) level x sqrt(B_SR) / f_SR, where B_SR is
    the background file's count in the SR and f_SR the signal file's fraction in it.
    ``scan``: the blind scan's windows; ``background_mjj``: a callable giving the background
    file's m_jj (read once for all signals, only when ``levels`` need it).
    """
    m_sig = _mjj(cfg, signal, cache)
    if cfg.regions.signal_region is not None:
        sr = tuple(float(x) for x in cfg.regions.signal_region)
        own = False
    else:
        best = max(scan, key=lambda w: float(np.mean(w.in_sr(m_sig))))
        sr, own = (best.sr_lo, best.sr_hi), True
    f_sr = float(np.mean((m_sig >= sr[0]) & (m_sig < sr[1]))) if len(m_sig) else 0.0
    plan = {"signal": signal, "signal_region": list(sr), "own_window": own, "f_sr": f_sr,
            "n_signal_file": int(len(m_sig)), "counts": sorted(set(counts)), "levels": None, "b_sr": None}
    if not levels:
        return plan
    if f_sr == 0:
        raise SidebandUserError(f"{signal}: none of its events falls in the SR {sr[0]:g}-{sr[1]:g} GeV; "
                                "injection.levels needs a signal inside the scan")
    m_bkg = background_mjj()
    # with background_parts P each seed sees 1/P of the file: B is the expected count per part
    b = int(round(np.sum((m_bkg >= sr[0]) & (m_bkg < sr[1])) / cfg.injection.background_parts))
    plan_counts = sorted({int(round(lv * np.sqrt(b) / f_sr)) for lv in levels})
    if plan_counts[-1] > len(m_sig):
        raise SidebandUserError(
            f"{signal}: injection.levels up to S/sqrt(B) {max(levels):g} need {plan_counts[-1]} signal events "
            f"(B = {b} in SR {sr[0]:g}-{sr[1]:g} GeV, {f_sr:.0%} of the signal inside), the file holds "
            f"{len(m_sig)}; generate more events or lower the levels")
    return plan | {"counts": plan_counts, "levels": list(levels), "b_sr": b}


def _signal_names(signals: list[str]) -> dict[str, str]:
    """Each signal file's name in point folders and reports: its stem, or where two files share a
    stem (``m3500/events.h5``, ``m4500/events.h5``) the stem and a hash of the path, so that no
    two signals write one folder."""
    stems = {}
    for sig in signals:
        stems.setdefault(Path(sig).stem, set()).add(str(Path(sig).resolve()))
    return {sig: Path(sig).stem if len(stems[Path(sig).stem]) == 1
            else f"{Path(sig).stem}-{cache_key(str(Path(sig).resolve()))[:6]}" for sig in signals}


def _point_record(doc: dict) -> dict:
    """One point: S and B in the SR before selection, and per detector its Z, limits, SIC and global Z."""
    rows = doc["results"]
    where = point_window(doc)
    none = next(r for r in rows if r["detector"] == "none" and r["window"] == where)
    s = none.get("n_signal_sr_truth", 0) or 0
    b = none["n_observed_sr"] - s
    rec = {**doc["point"], "window": none["window"], "s_sr": s, "b_sr": b, "s_over_b": s / b if b else None,
           "s_over_sqrt_b": s / np.sqrt(b) if b else None, "detectors": {}}
    glob = doc.get("scan_global") or {}
    if glob:
        rec["look_elsewhere"] = {k: glob.get(k) for k in ("n_tests", "n_toys", "windows")}
    metrics = {m["detector"]: m for m in doc.get("detector_metrics", []) if m["window"] == none["window"]}
    for r in rows:
        if r["window"] != none["window"]:
            continue
        d = rec["detectors"].setdefault(r["detector"], {"z": {}, "upper_limit": {}, "upper_limit_expected": {}})
        d["z"][str(r["selection"])] = r["z_local"]
        d["upper_limit"][str(r["selection"])] = r["upper_limit"]
        d["upper_limit_expected"][str(r["selection"])] = r["upper_limit_expected"]
    for name, d in rec["detectors"].items():
        zs = [z for z in d["z"].values() if z is not None]
        d["z_best"] = max(zs) if zs else None
        g = (glob.get("detectors") or {}).get(name) or {"z_global": None, "reason": "no look-elsewhere model"}
        d["z_global"] = g["z_global"]
        d["global"] = {k: v for k, v in g.items() if k != "z_global"}
        m = metrics.get(name) or {}
        d["max_sic"], d["auc"] = m.get("max_sic"), m.get("auc")
        if m.get("sic"):
            d["sic_curve"] = {"eps_s": m["eps_s"], "sic": m["sic"]}
    return rec


def _group_row(sig: str, n: int, name: str, group: list[dict]) -> dict:
    """Medians (and 16-84% bands of the Z) over the seeds of one (signal, count, detector)."""
    vals = [p["detectors"][name] for p in group if name in p["detectors"]]

    def med(key):
        return seed_band(v.get(key) for v in vals)[0]

    z_local, z_local_band = seed_band(v["z_best"] for v in vals)
    z_global, z_global_band = seed_band(v["z_global"] for v in vals)
    tests = sorted({v["global"].get("n_tests") for v in vals} - {None})
    return {"signal": sig, "n_inject": n, "detector": name, "n_seeds": len(vals),
            "s_over_sqrt_b": seed_band(p["s_over_sqrt_b"] for p in group)[0],
            "s_over_b": seed_band(p["s_over_b"] for p in group)[0],
            "z_best_median": z_local, "z_best_band": z_local_band, "z_global_median": z_global,
            "z_global_band": z_global_band, "n_tests_global": tests[0] if len(tests) == 1 else tests or None,
            "max_sic_median": med("max_sic"), "auc_median": med("auc")}


def summarise_points(point_docs: list[dict]) -> dict:
    """Per-point records, the medians over seeds per (signal, count, detector), the sensitivity curves.

    A doc is a point's results.json plus ``point`` (signal, n_inject, seed) and, when the
    look-elsewhere model of the blind scan was built, ``scan_global``
    (:func:`sideband.pipeline.sensitivity.point_global`).
    """
    points = [_point_record(doc) for doc in point_docs]
    summary = []
    for sig, n in sorted({(p["signal"], p["n_inject"]) for p in points}):
        group = [p for p in points if p["signal"] == sig and p["n_inject"] == n]
        summary += [_group_row(sig, n, name, group) for name in sorted({d for p in group for d in p["detectors"]})]
    sens = sensitivity_curves(points)
    tests = sorted({p["look_elsewhere"]["n_tests"] for p in points if p.get("look_elsewhere")})
    sens["look_elsewhere"] = {"n_tests": tests[0] if len(tests) == 1 else tests or None, "construction": CONSTRUCTION}
    return {"points": points, "summary": summary, "sensitivity": sens}


def point_lee_node(results: str, *, point: dict, scan: list[dict], n_toys: int) -> dict:
    """One point's global Z over the blind scan (:func:`point_global`), B_w from its event table.

    A node of its own per point, so that a cluster runs the points' toys concurrently.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    doc = json.loads(Path(results).read_text()) | {"point": point}
    table = Path(results).parent / doc["event_table"]
    cols = ["mjj"] + (["label"] if "label" in pq.read_schema(table).names else [])
    events = pd.read_parquet(table, columns=cols)
    background = background_in_windows(events["mjj"].to_numpy(), events["label"].to_numpy() if "label" in events
                                       else None, scan)
    glob = point_global(doc, scan=scan, background=background, n_toys=n_toys,
                        seed=int(cache_key("inject-lee", point)[:7], 16))
    return glob | {"scan_windows": [w["name"] for w in scan]}


def inject_report_node(point_results: list[str], point_lee: list[dict], *, out_dir: str, meta: dict) -> str:
    """Collect the points and their global Z into inject_results.json and report.html."""
    from sideband.pipeline.injectreport import write_injection_report

    docs = []
    for path, point, glob in zip(point_results, meta["points"], point_lee):
        doc = json.loads(Path(path).read_text())
        doc["point"] = point
        doc["scan_global"] = glob
        docs.append(doc)
    result = summarise_points(docs) | {"config": meta["config"], "points_dirs": meta["dirs"],
                                       "signals": meta.get("signals", [])}
    result["sensitivity"]["look_elsewhere"]["scan_windows"] = [w["name"] for w in meta["scan_windows"]]
    out = write_json(Path(out_dir) / "inject_results.json", result)
    write_injection_report(Path(out_dir), result, docs)
    return str(out)


def _blind_scan(cfg: Config) -> list[Window]:
    """The windows of ``regions.scan``: the blind scan whose tests the global Z counts."""
    s = cfg.regions.scan
    try:
        windows = scan_windows(s.range, s.width, s.step, cfg.fit.range, cfg.regions.sideband_width)
    except SidebandUserError as exc:
        raise SidebandUserError(f"regions.scan: {exc} (the injection's look-elsewhere correction counts the "
                                "blind scan of regions.scan; set regions.scan.range inside fit.range)") from None
    return windows


def injection_config(config: str | None, *, data: str | None = None, scheduler: str | None = None) -> Config:
    """The injection scan's config: ``config`` (YAML) with the background file and scheduler overridden."""
    from sideband.workflows.configure import load_config

    overrides: dict = {}
    if data:
        overrides["data"] = {"path": data}
    if scheduler:
        overrides["compute"] = {"scheduler": scheduler}
    return load_config(config, overrides)


def run_injection(cfg: Config, out_dir: str | Path, *, counts: list[int] | None = None, seeds: int | None = None,
                  signals: list[str] | None = None, levels: list[float] | None = None,
                  background_parts: int | None = None, progress: bool | str = False) -> dict:
    """Run the scan; returns the parsed ``inject_results.json``.

    Each signal is injected in its window (:func:`signal_plan`): the config's
    ``regions.signal_region``, or the blind-scan window holding most of it. ``levels`` (or
    ``injection.levels``) sets the counts per signal from target S/sqrt(B) values instead of
    ``counts``. ``background_parts`` (or ``injection.background_parts``) P > 1: seed k analyses
    part k mod P of P disjoint parts of the background file (independent background samples).
    """
    from sideband.workflows.search import check_output_dir, run_with_progress

    out = check_output_dir(Path(out_dir))
    if counts is not None and (bad := [c for c in counts if c < 0]):
        raise SidebandUserError(f"--counts {','.join(map(str, bad))}: injected counts must be >= 0")
    if seeds is not None and seeds < 1:
        raise SidebandUserError(f"--seeds {seeds}: must be >= 1")
    if background_parts is not None and background_parts < 1:
        raise SidebandUserError(f"--background-parts {background_parts}: must be >= 1 (1: the whole file every seed)")
    if levels and any(not lv >= 0 for lv in levels):
        raise SidebandUserError(f"--levels {','.join(map(str, levels))}: S/sqrt(B) levels must be >= 0")
    # the command line's choices become the config's, so that inject_results.json records what ran; the
    # whole config is validated again, so its cross-section checks (data.split with background_parts) see them
    given = {"counts": counts, "seeds": seeds, "signals": signals, "levels": levels, "background_parts": background_parts}
    raw = cfg.to_dict()
    raw["injection"] |= {k: v for k, v in given.items() if v is not None}
    cfg = config_from_dict(raw, "injection scan")
    inj = cfg.injection
    counts = list(inj.counts)
    n_seeds = inj.seeds
    signals = list(inj.signals)
    if not signals:
        raise SidebandUserError("no signal file to inject: pass --signal FILE (or injection.signals in the config)")
    for s in signals:
        if not Path(s).exists():
            raise SidebandUserError(f"{s}: no such signal file; check --signal")
    parts = inj.background_parts
    if parts > 1 and n_seeds > parts:
        log.warning("injection.seeds %d > injection.background_parts %d: seeds %d.. reuse the parts' events, so only "
                    "%d background samples are independent", n_seeds, parts, parts + 1, parts)
    scan_ws = _blind_scan(cfg)
    scan = [w.to_dict() for w in scan_ws]
    levels = list(inj.levels)
    background_mjj = functools.cache(lambda: _mjj(cfg, cfg.data.path or str(demo_data_path()), out / "cache"))
    plans = [signal_plan(cfg, sig, counts=counts, levels=levels, scan=scan_ws, background_mjj=background_mjj,
                         cache=out / "cache") for sig in signals]
    g = Graph()
    finals, lees, points, dirs = [], [], [], []
    names = _signal_names([plan["signal"] for plan in plans])
    for plan in plans:
        sig = plan["signal"]
        stem = names[sig]
        window = "{:g}-{:g}".format(*plan["signal_region"])  # the name of the SR's Window
        for n in plan["counts"]:
            for k in range(n_seeds):
                seed = cfg.seed + k
                part = k % parts if parts > 1 else None
                pdir = out / "points" / f"{stem}-n{n}-s{seed}"
                pcfg = _point_config(cfg, sig, n, seed, tuple(plan["signal_region"]) if plan["own_window"] else None,
                                     part=part)
                sub, _ = build_search_graph(pcfg, pdir, out / "cache", meta={"mode": "inject", "seed": seed},
                                            blind=False)
                g.update(sub)
                point = {"signal": sig, "signal_name": stem, "n_inject": n, "seed": seed, "window": window}
                if part is not None:
                    point["background_part"] = [part, parts]
                finals.append(sub.final)
                lees.append(g.add(Node(f"inject-lee-{cache_key(point, str(pdir.resolve()))}", point_lee_node,
                                       {"results": Ref(sub.final), "point": point, "scan": scan,
                                        "n_toys": int(cfg.stats.global_toys)}, kind="lee")))
                points.append(point)
                dirs.append(str(pdir.relative_to(out)))
    key = cache_key("inject", [p for p in points])
    final = g.add(Node(f"inject-report-{key}", inject_report_node,
                       {"point_results": [Ref(f) for f in finals], "point_lee": lees, "out_dir": str(out),
                        "meta": {"points": points, "dirs": dirs, "config": cfg.to_dict(), "scan_windows": scan,
                                 "signals": plans}},
                       kind="report"))
    g.final = final.key
    log.info("injection scan: %d points, %d nodes", len(points), len(g.nodes))
    path = run_with_progress(g, cfg.compute, progress)
    return json.loads(Path(path).read_text())
