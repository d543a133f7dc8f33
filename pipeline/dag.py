"""Turn a validated config into a graph of nodes and run it (in-process or on Dask).

Nodes (one function each, module level so they pickle):

``load``     read the data (and optional injected signal) -> canonical table (Parquet)
``prepare``  one per (window, detector) with a sideband stage (CATHODE's flow): SB events only
``train``    one per (window, detector, fold): fit on the other folds, score the rest
``merge``    one per (window, detector): calibrate fold scores into one score per event
``stats``    one per (window, detector or ``none``): selections -> fit -> pyhf
``report``   collect everything -> results.json, plots

Nodes exchange file paths and plain dicts, never models or clients. Every node writes
its output atomically under ``cache_dir`` with a key made from its inputs and
settings; a re-run finds the file and skips the work, which makes runs resumable.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sideband.detectors.base import load_detector_class

from .cache import atomic_path, cache_key, file_hash, write_json
from .config import Config
from .exceptions import RegionError
from .regions import Window, assign_folds, check_window_counts, make_windows

__all__ = ["Node", "Ref", "Graph", "build_search_graph", "run_graph", "demo_data_path"]

log = logging.getLogger(__name__)

#: Bumped whenever node outputs change meaning, so stale caches are not reused.
NODE_VERSION = 1
#: Bumped when the statistics change: stats nodes rerun, trained models are reused.
STATS_VERSION = 3
#: Truth-based benchmark detectors: not searches, so not part of the look-elsewhere trials.
CEILINGS = ("supervised", "idealized")


def demo_data_path() -> Path:
    """The demo dataset shipped with sideband (LHC Olympics feature layout)."""
    return Path(__file__).resolve().parent / "data" / "demo_events.h5"


@dataclass(frozen=True)
class Ref:
    """Placeholder for another node's output in a node's arguments."""

    key: str


@dataclass
class Node:
    key: str
    func: Callable
    args: tuple = ()
    kind: str = "misc"
    resources: dict | None = None


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    final: str = ""

    def add(self, node: Node) -> Ref:
        self.nodes.append(node)
        return Ref(node.key)


# ----------------------------------------------------------------------------- helpers
def limit_threads(n: int) -> None:
    """Cap torch, OpenMP and BLAS threads in this worker (avoids oversubscription)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover
        pass
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _window(d: dict) -> Window:
    return Window(*d["sr"], *d["sb"])


def _read_table(path: str) -> pd.DataFrame:
    return pd.read_parquet(path)


# ----------------------------------------------------------------------------- nodes
def load_node(data_cfg: dict, cache_dir: str, seed: int, signal_regions: list | tuple = ()) -> dict:
    """Read data (plus injected signal) into one canonical table; returns its path.

    Fails with a user error when a signal region lies outside the data's mjj range or an
    injected signal file has no event in any signal region.
    """
    from .exceptions import InputFileError
    from .io import load_events

    path = data_cfg["path"] or str(demo_data_path())

    def load(file, fmt):
        return load_events(file, fmt, cache_dir=Path(cache_dir) / "events", key=data_cfg["key"],
                           tree=data_cfg["tree"], chunk_size=data_cfg["chunk_size"], strict=data_cfg["strict"])

    events, source = load(path, data_cfg["format"])
    sources = [source.to_dict()]
    m_lo, m_hi = float(events["mjj"].min()), float(events["mjj"].max())
    for lo, hi in signal_regions:
        if hi <= m_lo or lo >= m_hi:
            raise RegionError(
                f"{path}: signal region {lo:g}-{hi:g} GeV lies outside the data's mjj range "
                f"{m_lo:.0f}-{m_hi:.0f} GeV; move regions.signal_region / scan_centers into it"
            )
    inj = data_cfg.get("inject")
    n_injected = 0
    if inj and inj["n_events"] > 0:
        sig, sig_source = load(inj["path"], inj["format"])
        sm = sig["mjj"].to_numpy()
        if signal_regions and not any(np.any((sm >= lo) & (sm < hi)) for lo, hi in signal_regions):
            raise InputFileError(
                f"{inj['path']}: none of its {len(sig)} signal events falls in a signal region "
                f"({', '.join(f'{lo:g}-{hi:g}' for lo, hi in signal_regions)} GeV); inject a signal "
                "that peaks there or move the window"
            )
        if inj["n_events"] > len(sig):
            raise InputFileError(
                f"{inj['path']}: asked to inject {inj['n_events']} events but the file holds "
                f"{len(sig)}; lower data.inject.n_events"
            )
        rng = np.random.default_rng([seed, 7])
        pick = np.sort(rng.choice(len(sig), size=inj["n_events"], replace=False))
        sig = sig.iloc[pick].copy()
        if "label" not in sig:
            sig["label"] = np.float32(1.0)
        if "label" not in events:
            events = events.assign(label=np.float32(0.0))
        events = pd.concat([events, sig], ignore_index=True)
        n_injected = len(sig)
        sources.append(sig_source.to_dict() | {"injected": n_injected})
    key = cache_key("load", NODE_VERSION, [s["content_hash"] for s in sources], n_injected, seed)
    target = Path(cache_dir) / f"table-{key}.parquet"
    if not target.exists():
        with atomic_path(target, ".parquet") as tmp:
            events.to_parquet(tmp, index=False)
    reference_path = None
    if data_cfg.get("reference"):
        _, ref_source = load(data_cfg["reference"], "auto")
        sources.append(ref_source.to_dict() | {"role": "reference"})
        reference_path = ref_source.table_path  # the event cache's Parquet copy
    return {"events_path": str(target), "sources": sources, "n_events": len(events),
            "n_injected": n_injected, "reference_path": reference_path}


def prepare_node(loaded: dict, window: dict, detector: str, params: dict, features: list[str], seed: int,
                 threads: int, out: str) -> str:
    """Run a detector's sideband stage (e.g. the CATHODE flow) on the window's SB events only."""
    if Path(out).exists():
        return out
    from sideband.detectors.base import make_detector

    t0, events, w, m = _training_inputs(loaded, window, threads)
    sb = w.in_sb(m)
    det = make_detector(detector, params, random_state=_node_seed(seed, "prepare", window["name"]))
    state = det.fit_sidebands(events[features].to_numpy(np.float32)[sb], m[sb], signal_region=(w.sr_lo, w.sr_hi))
    state["wall_s"] = time.perf_counter() - t0
    with atomic_path(out, ".pkl") as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
    return out


def _training_inputs(loaded: dict, window: dict, threads: int):
    """Common start of training nodes: cap threads, start the clock, read the event table."""
    limit_threads(threads)
    t0 = time.perf_counter()
    events = _read_table(loaded["events_path"])
    return t0, events, _window(window), events["mjj"].to_numpy()


def _node_seed(*parts) -> int:
    return int(cache_key(*parts)[:7], 16)


def _truth_inputs(det, loaded: dict, events: pd.DataFrame, w: Window, features: list[str], train: np.ndarray):
    """y_true / X_reference for the benchmark ceilings (empty for other detectors)."""
    from .exceptions import ConfigError

    if det.truth_kind == "labels":
        if "label" not in events:
            raise ConfigError(f"detector {det.name} needs truth labels, but the input has no 'label' column")
        y = events["label"].to_numpy()[train]
        if not np.any(y[w.in_sr(events['mjj'].to_numpy()[train])] > 0.5):
            raise RegionError(f"detector {det.name}: no signal-labelled events in SR {w.name} GeV to learn from; "
                              "disable it for background-only data")
        return {"y_true": y}
    if det.truth_kind == "reference":
        ref = _read_table(loaded["reference_path"])
        in_sr = w.in_sr(ref["mjj"].to_numpy())
        if not in_sr.any():
            raise RegionError(f"{loaded['reference_path']}: reference sample has no events in SR {w.name} GeV")
        return {"X_reference": ref[features].to_numpy(np.float32)[in_sr]}
    return {}


def train_node(loaded: dict, window: dict, detector: str, params: dict, features: list[str],
               fold: int, n_folds: int, seed: int, threads: int, prepared: str | None, out: str) -> str:
    """Fit ``detector`` on the window's events outside ``fold``; score every other event.

    Writes ``scores`` (NaN for the training events) and the held-out mask to ``out``.
    """
    if Path(out).exists():
        return out
    from sideband.detectors.base import make_detector

    t0, events, w, m = _training_inputs(loaded, window, threads)
    X = events[features].to_numpy(np.float32)
    source = ", ".join(s["path"] for s in loaded["sources"])
    check_window_counts(w, m, n_folds, source=source)
    in_win = w.in_window(m)
    win_idx = np.flatnonzero(in_win)
    folds = assign_folds(w.in_sr(m[win_idx]), n_folds, seed)
    train = win_idx[folds != fold]
    held = win_idx[folds == fold]
    det = make_detector(detector, params, random_state=_node_seed(seed, fold, window["name"]))
    extra = _truth_inputs(det, loaded, events, w, features, train)
    if prepared is not None:
        with open(prepared, "rb") as f:
            extra["sideband_state"] = pickle.load(f)
    det.fit(X[train], m[train], signal_region=(w.sr_lo, w.sr_hi), **extra)
    scores = np.full(len(events), np.nan, dtype=np.float64)
    scorable = np.ones(len(events), dtype=bool)
    scorable[train] = False
    scores[scorable] = det.score(X[scorable])
    heldout = np.zeros(len(events), dtype=bool)
    heldout[held] = True
    history = getattr(getattr(det, "classifier_", None), "history_", None) or getattr(det, "history_", [])
    if hasattr(det, "export_state"):  # exportable models (the autoencoder) are kept for export-trigger
        import torch

        model_path = Path(out).with_suffix(".model.pt")
        with atomic_path(model_path, ".pt") as tmp:
            torch.save(det.export_state(), tmp)
        write_json(Path(out).with_suffix(".model.json"), {
            "detector": detector, "window": window, "fold": fold, "n_folds": n_folds, "features": features,
            "model": model_path.name, "scores": Path(out).name, "events_path": loaded["events_path"],
            "params": params})
    with atomic_path(out, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, scores=scores, heldout=heldout, train=~scorable,
                     wall_s=time.perf_counter() - t0, history=json.dumps(history))
    return out


def merge_node(loaded: dict, fold_outputs: list[str], out: str) -> str:
    """Combine fold scores into one calibrated score per event.

    Each fold model's scores are mapped through its own CDF on its held-out window
    events (so models are comparable); window events get their held-out model's value,
    events outside every training set the mean over fold models.
    """
    if Path(out).exists():
        return out
    n = loaded["n_events"]
    sums, counts = np.zeros(n), np.zeros(n)
    held_value = np.full(n, np.nan)
    owner = np.full(n, -1)
    wall = 0.0
    histories = []
    for i, path in enumerate(fold_outputs):
        with np.load(path) as z:
            scores, heldout, train = z["scores"], z["heldout"], z["train"]
            wall += float(z["wall_s"])
            histories.append(json.loads(str(z["history"])))
        if np.any(owner[heldout] >= 0):
            raise RuntimeError("an event is held out by two folds; fold bookkeeping is broken")
        owner[heldout] = i
        ref = np.sort(scores[heldout])
        cdf = np.searchsorted(ref, scores, side="right") / max(len(ref), 1)
        held_value[heldout] = cdf[heldout]
        outside = ~train & ~heldout
        sums[outside] += cdf[outside]
        counts[outside] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        out_scores = np.where(owner >= 0, held_value, sums / counts)
    with atomic_path(out, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, scores=out_scores, owner=owner, wall_s=wall, histories=json.dumps(histories))
    return out


def stats_node(loaded: dict, scores_path: str | None, window: dict, detector: str, fit_cfg: dict,
               stats_cfg: dict, blind: bool, seed: int, out: str) -> dict:
    """Selections -> dijet fit outside the SR -> predicted SR background -> pyhf.

    With ``blind`` nothing that depends on the selected SR data is computed or written:
    observed SR counts, Z, p0 and the observed limit are None, SR bins of the spectra are
    None, and the expected limit uses the background prediction as the data. Unblinded,
    ``z_local``/``p0`` come from pseudo-experiments of the whole background procedure where
    ``stats.p_value`` asks for them (by default: expected SR background below
    ``stats.toys_below``), else from pyhf's asymptotic q0; ``z_local_asymptotic`` is kept.
    """
    if Path(out).exists():
        return json.loads(Path(out).read_text())
    from .fits import make_edges, predict_background
    from .stats import discovery_and_limit
    from .toys import use_toys

    events = _read_table(loaded["events_path"])
    m = events["mjj"].to_numpy()
    w = _window(window)
    lo, hi = fit_cfg["range"]
    in_fit = (m >= lo) & (m < hi)
    edges = make_edges((lo, hi), fit_cfg["bin_width"], (w.sr_lo, w.sr_hi))
    sr_bins = (edges[:-1] >= w.sr_lo) & (edges[1:] <= w.sr_hi)
    truth = events["label"].to_numpy() if "label" in events else None
    in_sr = w.in_sr(m)
    if scores_path is None:
        scores = np.ones(len(m))
        selections = [1.0]
        wall = 0.0
        histories = []
    else:
        with np.load(scores_path) as z:
            scores, wall = z["scores"], float(z["wall_s"])
            histories = json.loads(str(z["histories"])) if "histories" in z.files else []
        selections = stats_cfg["selections"]
    rows, spectra = [], []
    for eff in selections:
        if eff >= 1.0:
            passed = in_fit
        else:
            thr = np.quantile(scores[in_fit], 1.0 - eff)
            passed = in_fit & (scores > thr)
        counts, _ = np.histogram(m[passed], edges)
        n_obs = int(counts[sr_bins].sum())
        row: dict[str, Any] = {
            "window": w.name, "sr": [w.sr_lo, w.sr_hi], "detector": detector,
            "selection": float(eff), "n_selected": None if blind else int(passed.sum()),
            "n_selected_sidebands": int(counts[~sr_bins].sum()),
            "n_observed_sr": None if blind else n_obs,
        }
        if truth is not None and not blind:
            row["n_signal_sr_truth"] = int(np.sum(passed & in_sr & (truth > 0.5)))
        try:
            if fit_cfg.get("background", "dijet") == "gp":
                from sideband.detectors.gp_fit import gp_background

                allb = np.ones(len(counts), bool)
                fit, gp, mu_all, cov_all = gp_background(edges, counts, ~sr_bins, allb, tuple(fit_cfg["n_params"]),
                                                         fit_cfg["ftest_alpha"])
                b = float(mu_all[sr_bins].sum())
                sb = float(np.sqrt(max(cov_all[np.ix_(sr_bins, sr_bins)].sum(), 0.0)))
                row["gp"] = gp.params()
                expected_override = mu_all
            else:
                pred = predict_background(edges, counts, ~sr_bins, sr_bins, tuple(fit_cfg["n_params"]),
                                          fit_cfg["ftest_alpha"])
                fit, b, sb = pred.fit, pred.b, pred.sigma
                row["n_expected_sr_unc_fit"] = pred.sigma_fit
                row["n_expected_sr_unc_function"] = pred.sigma_function
                expected_override = None
            sig = discovery_and_limit(b if blind else n_obs, b, sb, stats_cfg["cl"])
            z_loc, p0 = sig.z_local, sig.p0
            if not blind:
                row["z_local_asymptotic"] = sig.z_local
                if use_toys(stats_cfg.get("p_value", "auto"), b, stats_cfg.get("toys_below", 1000.0)):
                    z_loc, p0 = _toy_significance(row, sig, edges, counts, sr_bins, n_obs, b, sb, fit_cfg, stats_cfg,
                                                  _node_seed(seed, w.name, detector, float(eff)))
                else:
                    row["p_value_method"] = "asymptotic"
            row.update({"n_expected_sr": b, "n_expected_sr_unc": sb,
                        "z_local": None if blind else z_loc, "p0": None if blind else p0,
                        "upper_limit": None if blind else sig.upper_limit,
                        "upper_limit_expected": sig.upper_limit_expected,
                        "fit": fit.summary() | {"background": fit_cfg.get("background", "dijet")},
                        "status": sig.status if fit.converged else "fit not converged"})
            expected = (fit.expected if expected_override is None else expected_override).tolist()
        except (ValueError, np.linalg.LinAlgError) as exc:
            row.update({"n_expected_sr": None, "n_expected_sr_unc": None, "z_local": None, "p0": None,
                        "upper_limit": None, "upper_limit_expected": None, "fit": None,
                        "status": f"fit failed: {exc}"})
            expected = None
        rows.append(row)
        shown = [None if (blind and in_sr_bin) else int(c) for c, in_sr_bin in zip(counts, sr_bins)]
        spectra.append({"edges": edges.tolist(), "counts": shown, "expected": expected,
                        "sr_bins": sr_bins.tolist()})
    result = {"rows": rows, "spectra": spectra,
              "timing": {"window": w.name, "detector": detector, "train_wall_s": wall},
              "training": {"window": w.name, "detector": detector, "folds": histories} if histories else None,
              "metrics": _detector_metrics(scores, m, truth, w, detector) if scores_path and not blind else None}
    write_json(out, result)
    return result


def _toy_significance(row: dict, sig, edges, counts, sr_bins, n_obs: int, b: float, sb: float, fit_cfg: dict,
                      stats_cfg: dict, seed: int) -> tuple[float, float]:
    """Local Z and p0 from pseudo-experiments of the background procedure, recorded in ``row``.

    The asymptotic values stay where no pseudo-experiments exist (gp background) or none
    reached the observed Z (they only bound p0 then); ``p_value_method`` says which.
    """
    from .stats import z_on_off
    from .toys import toy_p_value

    if fit_cfg.get("background", "dijet") == "gp":
        row["p_value_method"] = "asymptotic (no pseudo-experiments for the gp background)"
        return sig.z_local, sig.p0
    toy = toy_p_value(edges, counts, ~sr_bins, sr_bins, float(z_on_off(n_obs, b, sb)),
                      int(stats_cfg.get("local_toys", 10_000)), seed=seed,
                      n_params_options=tuple(fit_cfg["n_params"]), alpha=fit_cfg["ftest_alpha"])
    row["p0_toys"] = toy
    if toy["bound"] and sig.z_local > toy["z"]:
        row["p_value_method"] = f"asymptotic (beyond toy reach: none of {toy['n_toys']} pseudo-experiments reached it)"
        return sig.z_local, sig.p0
    row["p_value_method"] = "toys"
    return toy["z"], toy["p0"]


def _detector_metrics(scores, m, truth, w: Window, detector: str) -> dict | None:
    """ROC/SIC of the out-of-fold scores on the SR events, where truth labels exist."""
    if truth is None:
        return None
    from .metrics import sic_curve

    in_sr = w.in_sr(m)
    sig, bkg = in_sr & (truth > 0.5), in_sr & (truth < 0.5)
    if sig.sum() < 5 or bkg.sum() < 50:
        return {"window": w.name, "detector": detector, "auc": None, "max_sic": None, "n_signal": int(sig.sum())}
    curve = sic_curve(scores[sig], scores[bkg], min_background=50)
    return {"window": w.name, "detector": detector, **curve.to_dict()}


def report_node(stats_outputs: list[dict], loaded: dict, meta: dict, out_dir: str) -> str:
    """Collect rows, write ``results.json`` and the spectrum plots."""
    from .report import plot_spectra, write_html_report, write_results
    from .lee import global_significance

    rows = [dict(r) for s in stats_outputs for r in s["rows"]]
    lee = None
    if not meta.get("blinded", True):
        n_toys = int(meta.get("config", {}).get("stats", {}).get("global_toys", 0))
        lee = global_significance([r for r in rows if r["detector"] not in CEILINGS], n_toys,
                                  seed=int(meta.get("seed") or 0))
    plots = plot_spectra(stats_outputs, Path(out_dir) / "plots")
    metrics = [s["metrics"] for s in stats_outputs if s.get("metrics")]
    write_json(Path(out_dir) / "training.json", [s["training"] for s in stats_outputs if s.get("training")])
    # Wall times vary run to run; they live beside results.json so that file is reproducible.
    write_json(Path(out_dir) / "timing.json", [s["timing"] for s in stats_outputs])
    path = write_results(Path(out_dir), rows, meta | {"inputs": loaded["sources"], "n_events": loaded["n_events"],
                                                      "n_injected": loaded["n_injected"], "plots": plots,
                                                      "detector_metrics": metrics, "look_elsewhere": lee})
    write_html_report(Path(out_dir))
    return str(path)


# ----------------------------------------------------------------------------- graph
def build_search_graph(cfg: Config, out_dir: str | Path, cache_dir: str | Path | None = None,
                       meta: dict | None = None, blind: bool = True) -> tuple[Graph, list[Window]]:
    """The search graph for ``cfg``: load -> train (per fold) -> merge -> stats -> report.

    ``blind`` (the default) keeps the selected SR data out of every output.
    """
    out_dir = Path(out_dir)
    cache = Path(cache_dir) if cache_dir else out_dir / "cache"
    data = cfg.data.model_dump(mode="json")
    data_id = _data_identity(data)
    windows = make_windows(cfg.regions.signal_region, cfg.fit.range, cfg.regions.sideband_width,
                           cfg.regions.scan_centers)
    g = Graph()
    srs = [(w.sr_lo, w.sr_hi) for w in windows]
    loaded = g.add(Node(f"load-{cache_key(data_id, cfg.seed, srs)}", load_node, (data, str(cache), cfg.seed, srs),
                        "load"))
    fit_cfg = cfg.fit.model_dump(mode="json")
    stats_cfg = cfg.stats.model_dump(mode="json")
    gpu = {"GPU": 1} if cfg.compute.gpu else None
    stats_refs = []
    for w in windows:
        wd = w.to_dict()
        skey = cache_key(NODE_VERSION, STATS_VERSION, data_id, cfg.seed, wd, fit_cfg, stats_cfg, "none", blind)
        stats_refs.append(g.add(Node(f"stats-none-{w.name}-{skey}", stats_node,
                                     (loaded, None, wd, "none", fit_cfg, stats_cfg, blind, cfg.seed,
                                      str(cache / f"stats-{skey}.json")), "stats")))
        for name, det in cfg.enabled_detectors().items():
            feats = det.features or cfg.features
            tkey = cache_key(NODE_VERSION, data_id, cfg.seed, wd, name, det.params, feats, det.folds)
            threads = cfg.compute.threads_per_worker
            prepared = None
            if load_detector_class(name).has_sideband_stage:
                pkey = cache_key(NODE_VERSION, data_id, cfg.seed, wd, name, det.params, feats)
                prepared = g.add(Node(f"prepare-{name}-{w.name}-{pkey}", prepare_node,
                                      (loaded, wd, name, det.params, feats, cfg.seed, threads,
                                       str(cache / f"prepare-{pkey}.pkl")), "prepare", gpu))
            fold_refs = []
            for k in range(det.folds):
                fold_refs.append(g.add(Node(
                    f"train-{name}-{w.name}-f{k}-{tkey}", train_node,
                    (loaded, wd, name, det.params, feats, k, det.folds, cfg.seed, threads, prepared,
                     str(cache / f"train-{tkey}-f{k}.npz")),
                    "train", gpu)))
            merged = g.add(Node(f"merge-{name}-{w.name}-{tkey}", merge_node,
                                (loaded, fold_refs, str(cache / f"scores-{tkey}.npz")), "merge"))
            skey = cache_key(tkey, STATS_VERSION, fit_cfg, stats_cfg, blind)
            stats_refs.append(g.add(Node(f"stats-{name}-{w.name}-{skey}", stats_node,
                                         (loaded, merged, wd, name, fit_cfg, stats_cfg, blind, cfg.seed,
                                          str(cache / f"stats-{skey}.json")), "stats")))
    meta = dict(meta or {})
    meta["blinded"] = blind
    meta.setdefault("config", cfg.to_dict())
    meta.setdefault("windows", [w.to_dict() for w in windows])
    report = g.add(Node(f"report-{cache_key(str(out_dir.resolve()))}", report_node,
                        (stats_refs, loaded, meta, str(out_dir)), "report"))
    g.final = report.key
    return g, windows


def _data_identity(data: dict) -> dict:
    """What identifies the input: content hashes, not paths (a moved file still hits the cache)."""
    path = data["path"] or str(demo_data_path())
    ident = {k: v for k, v in data.items() if k not in ("path", "chunk_size", "inject", "reference")}
    if data.get("reference"):
        ref = data["reference"]
        ident["reference"] = file_hash(ref) if Path(ref).exists() else ref
    ident["hash"] = file_hash(path) if Path(path).exists() else path
    if data.get("inject"):
        inj = data["inject"]
        ident["inject"] = {"hash": file_hash(inj["path"]) if Path(inj["path"]).exists() else inj["path"],
                           "n": inj["n_events"], "format": inj["format"]}
    return ident


def _resolve(obj: Any, results: dict) -> Any:
    if isinstance(obj, Ref):
        return results[obj.key]
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(o, results) for o in obj)
    return obj


def run_graph(graph: Graph, compute: dict | None = None, progress: Callable[[int, int, str], None] | None = None,
              on_start: Callable[[str], None] | None = None):
    """Run ``graph``; returns the final node's output.

    ``compute["scheduler"]``: ``"synchronous"`` runs every node in this process, in
    order; an address (``tcp://host:port`` or a scheduler file) joins an existing Dask
    cluster; ``None`` starts a :class:`distributed.LocalCluster` sized to the machine.
    """
    compute = dict(compute or {})
    total = len(graph.nodes)
    if compute.get("scheduler") == "synchronous":
        results: dict[str, Any] = {}
        for i, node in enumerate(graph.nodes):
            results[node.key] = node.func(*_resolve(node.args, results))
            if progress:
                progress(i + 1, total, node.key)
        return results[graph.final]
    return _run_distributed(graph, compute, progress, on_start)


def _run_distributed(graph: Graph, compute: dict, progress, on_start):
    from distributed import Client, LocalCluster, as_completed

    sched = compute.get("scheduler")
    cluster = None
    threads = int(compute.get("threads_per_worker") or 1)
    if sched is None:
        n_workers = compute.get("n_workers") or max(1, (os.cpu_count() or 1) // threads)
        kwargs: dict[str, Any] = {}
        if compute.get("gpu"):
            import torch

            if torch.cuda.is_available():
                kwargs["resources"] = {"GPU": 1}
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads,
                               processes=bool(compute.get("processes", True)), dashboard_address=":0",
                               env={"OMP_NUM_THREADS": str(threads)}, **kwargs) \
            if compute.get("processes", True) else \
            LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=False,
                         dashboard_address=":0", **kwargs)
        client = Client(cluster)
    elif sched.endswith(".json"):
        client = Client(scheduler_file=sched)
    else:
        client = Client(sched)
    try:
        log.info("Dask dashboard: %s", client.dashboard_link)
        if on_start:
            on_start(f"Dask dashboard: {client.dashboard_link}")
        has_gpu = any(w.get("resources", {}).get("GPU") for w in client.scheduler_info()["workers"].values())
        if compute.get("gpu") and not has_gpu:
            log.warning("compute.gpu is true but no Dask worker advertises a GPU; training on CPU")
        futures: dict[str, Any] = {}
        retries = int(compute.get("retries", 2))
        for node in graph.nodes:
            res = node.resources if (node.resources and has_gpu) else None
            futures[node.key] = client.submit(node.func, *_resolve(node.args, futures), key=node.key,
                                              resources=res, pure=False, retries=retries)
        done = 0
        for fut in as_completed(list(futures.values())):
            done += 1
            if fut.status == "error":
                fut.result()  # raises the node's exception here
            if progress:
                progress(done, len(futures), fut.key)
        return futures[graph.final].result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
