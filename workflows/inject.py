"""Signal-injection scan: how much signal would this search have found?

For each signal file x injected count x seed, the whole search graph (all detectors, all
windows) runs on the background with that many signal events mixed in (sampled without
replacement); all points form one Dask graph so a cluster runs them concurrently, and
every node is cached, so an interrupted scan resumes point by point. Points are unblinded
(the truth is known). Per point and detector the scan records the SIC curve and max SIC
(out-of-fold scores of the labelled SR events), the significance and upper limit after each
selection, and the S/B and S/sqrt(B) in the SR before any selection.

Detectors that learn from signal labels (the supervised ceiling) are left out of points
with no injected signal.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from sideband.detectors.base import load_detector_class
from sideband.pipeline.cache import cache_key, write_json
from sideband.pipeline.config import Config, InjectConfig
from sideband.pipeline.exceptions import SidebandUserError
from sideband.pipeline.graph import Graph, Node

from .search_graph import build_search_graph

__all__ = ["run_injection", "summarise_points"]

log = logging.getLogger(__name__)


def _point_config(cfg: Config, signal: str, n: int, seed: int) -> Config:
    inject = InjectConfig(path=signal, n_events=n) if n > 0 else None
    detectors = cfg.detectors
    if n == 0:
        detectors = {k: v for k, v in detectors.items() if load_detector_class(k).truth_kind != "labels"}
    return cfg.model_copy(update={"seed": seed, "detectors": detectors,
                                  "data": cfg.data.model_copy(update={"inject": inject})})


def summarise_points(point_docs: list[dict]) -> dict:
    """Per-point records and the median over seeds per (signal, count, detector)."""
    points = []
    for doc in point_docs:
        p = doc["point"]
        rows = doc["results"]
        none = next(r for r in rows if r["detector"] == "none" and r["window"] == rows[0]["window"])
        s = none.get("n_signal_sr_truth", 0) or 0
        b = none["n_observed_sr"] - s
        rec = {**p, "window": none["window"], "s_sr": s, "b_sr": b, "s_over_b": s / b if b else None,
               "s_over_sqrt_b": s / np.sqrt(b) if b else None, "detectors": {}}
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
            m = metrics.get(name) or {}
            d["max_sic"], d["auc"] = m.get("max_sic"), m.get("auc")
            if m.get("sic"):
                d["sic_curve"] = {"eps_s": m["eps_s"], "sic": m["sic"]}
        points.append(rec)
    summary = []
    keys = sorted({(p["signal"], p["n_inject"]) for p in points}, key=lambda k: (k[0], k[1]))
    for sig, n in keys:
        group = [p for p in points if p["signal"] == sig and p["n_inject"] == n]
        names = sorted({d for p in group for d in p["detectors"]})
        for name in names:
            vals = [p["detectors"][name] for p in group if name in p["detectors"]]

            def med(key, vals=vals):
                xs = [v[key] for v in vals if v.get(key) is not None]
                return float(np.median(xs)) if xs else None

            summary.append({"signal": sig, "n_inject": n, "detector": name, "n_seeds": len(vals),
                            "s_over_sqrt_b": float(np.median([p["s_over_sqrt_b"] for p in group])),
                            "s_over_b": float(np.median([p["s_over_b"] for p in group])),
                            "z_best_median": med("z_best"), "max_sic_median": med("max_sic"),
                            "auc_median": med("auc")})
    return {"points": points, "summary": summary}


def inject_report_node(point_results: list[str], *, out_dir: str, meta: dict) -> str:
    """Collect the points into inject_results.json and report.html."""
    from sideband.pipeline.report import write_injection_report

    docs = []
    for path, point in zip(point_results, meta["points"]):
        doc = json.loads(Path(path).read_text())
        doc["point"] = point
        docs.append(doc)
    result = summarise_points(docs) | {"config": meta["config"], "points_dirs": meta["dirs"]}
    out = write_json(Path(out_dir) / "inject_results.json", result)
    write_injection_report(Path(out_dir), result, docs)
    return str(out)


def run_injection(cfg: Config, out_dir: str | Path, *, counts: list[int] | None = None, seeds: int | None = None,
                  signals: list[str] | None = None, progress: bool | str = False) -> dict:
    """Run the scan; returns the parsed ``inject_results.json``."""
    from sideband.workflows.search import check_output_dir, run_with_progress

    out = check_output_dir(Path(out_dir))
    inj = cfg.injection
    counts = sorted(set(counts if counts is not None else inj.counts))
    if bad := [c for c in counts if c < 0]:
        raise SidebandUserError(f"--counts {','.join(map(str, bad))}: injected counts must be >= 0")
    n_seeds = seeds or inj.seeds
    signals = signals or inj.signals
    if not signals:
        raise SidebandUserError("no signal file to inject: pass --signal FILE (or injection.signals in the config)")
    for s in signals:
        if not Path(s).exists():
            raise SidebandUserError(f"{s}: no such signal file; check --signal")
    g = Graph()
    finals, points, dirs = [], [], []
    for sig in signals:
        stem = Path(sig).stem
        for n in counts:
            for k in range(n_seeds):
                seed = cfg.seed + k
                pdir = out / "points" / f"{stem}-n{n}-s{seed}"
                sub, _ = build_search_graph(_point_config(cfg, sig, n, seed), pdir, out / "cache",
                                            meta={"mode": "inject", "seed": seed}, blind=False)
                g.update(sub)
                finals.append(sub.final)
                points.append({"signal": sig, "signal_name": stem, "n_inject": n, "seed": seed})
                dirs.append(str(pdir.relative_to(out)))
    from sideband.pipeline.graph import Ref

    key = cache_key("inject", [p for p in points])
    final = g.add(Node(f"inject-report-{key}", inject_report_node,
                       {"point_results": [Ref(f) for f in finals], "out_dir": str(out),
                        "meta": {"points": points, "dirs": dirs, "config": cfg.to_dict()}}, kind="report"))
    g.final = final.key
    log.info("injection scan: %d points, %d nodes", len(points), len(g.nodes))
    path = run_with_progress(g, cfg.compute, progress)
    return json.loads(Path(path).read_text())
