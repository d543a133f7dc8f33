"""Which nodes a search has: the search graph built from the config, in one place.

load (event table) -> per window and detector: [sideband stage] -> train per fold -> merge
-> statistics; the inclusive test per window; -> the run's summary (look-elsewhere,
results.json, report). The device of every torch stage is decided here, once
(:func:`decide_device`), and passed to the detector as its ``device`` parameter; torch nodes
request the ``GPU`` worker resource, which the engine drops where no worker has one.
"""

from __future__ import annotations

from pathlib import Path

from sideband.detectors.base import load_detector_class
from sideband.pipeline.cache import cache_key
from sideband.pipeline.cluster import cuda_visible
from sideband.pipeline.config import ComputeConfig, Config
from sideband.pipeline.evaluate import evaluate_window
from sideband.pipeline.exceptions import ConfigError
from sideband.pipeline.graph import Graph, Node, Ref
from sideband.pipeline.regions import Window, search_windows, stage_groups
from sideband.pipeline.scores import merge_folds
from sideband.pipeline.summary import write_run
from sideband.pipeline.table import TABLE_VERSION, data_identity, load_table

from .signal_model import TEMPLATE_VERSION, check_signal_model, load_template, score_template, template_identity
from .training import DetectorSpec, fit_sideband_stage, train_fold

__all__ = ["build_search_graph", "decide_device", "NODE_VERSION", "STATS_VERSION"]

#: Bumped whenever node outputs change meaning or format, so stale caches are not reused.
NODE_VERSION = 3
#: Bumped when the statistics change: statistics nodes rerun, trained models are reused.
#: 6: signal-model fields (template efficiency, limits on produced events, expected Z).
STATS_VERSION = 7


def decide_device(compute: ComputeConfig) -> str:
    """The ``device`` every torch stage of the run gets: ``cpu``, ``cuda`` or ``auto``.

    ``cpu`` never touches CUDA. ``cuda`` on this machine (LocalCluster or synchronous) without
    a visible GPU is a config error. ``auto`` is decided here for local runs (CUDA when
    visible); on an external cluster each GPU worker decides (CUDA where it sees one).
    """
    if compute.device == "cpu":
        return "cpu"
    local = compute.scheduler in (None, "synchronous")
    if not local:
        return compute.device
    visible = cuda_visible() > 0  # no torch import where no GPU driver exists (a lighter client)
    if compute.device == "cuda" and not visible:
        raise ConfigError("compute.device: cuda, but this machine has no visible CUDA device; "
                          "use device: auto or cpu, or run on a GPU machine")
    return "cuda" if visible else "cpu"


def _spec(cfg: Config, name: str, device: str, stage: str) -> tuple[DetectorSpec, dict | None]:
    det = cfg.detectors[name]
    cls = load_detector_class(name)
    params = dict(det.params)
    # auto: a GPU only for the stages measured faster there (gpu_pays); cuda: every torch stage
    wanted = cfg.compute.device == "cuda" or cls.gpu_pays(params, stage)
    gpu = device != "cpu" and cls.uses_torch(params, stage) and wanted
    if "device" in cls.Params.model_fields:
        params["device"] = device if gpu else "cpu"
    spec = DetectorSpec(name=name, params=params, features=cfg.detector_features(name), n_folds=det.folds,
                        threads=cfg.compute.threads_per_worker)
    return spec, ({"GPU": 1} if gpu else None)


def _stage_nodes(g: Graph, cfg: Config, table: Ref, windows: list[Window], name: str, *, device: str, cache: Path,
                 data_id: dict) -> dict[str, Ref]:
    """The sideband-stage nodes of one detector, by window name: one per window, or with
    ``shared_stage`` one per group of :func:`stage_groups`
    (each window's SR excluded from the training of the stage that serves it; a window alone
    in its group keeps its own, unshared stage)."""
    cls = load_detector_class(name)
    det = cfg.detectors[name]
    if not cls.has_sideband_stage(det.params):
        return {}
    pspec, pgpu = _spec(cfg, name, device, "sidebands")
    feats = list(pspec.features)
    groups = stage_groups(windows) if det.shared_stage else [(w,) for w in windows]
    stages = {}
    for grp in groups:
        # a window alone keeps the key it always had; a shared stage is keyed by all its windows
        where = grp[0].to_dict() if len(grp) == 1 else [[w.to_dict() for w in grp], "shared stage"]
        # keyed by what the stage computes, not by the detector: equal stages are one node
        pkey = cache_key(NODE_VERSION, data_id, cfg.seed, where, cls.stage_identity(pspec.params), feats)
        label = "+".join(w.name for w in grp)
        ref = g.add(Node(f"prepare-{label}-{pkey}", fit_sideband_stage,
                         {"table": table, "spec": pspec, "windows": grp, "seed": cfg.seed,
                          "state_path": str(cache / f"prepare-{pkey}.pkl")},
                         kind="prepare", resources=pgpu, cache=str(cache / f"prepare-{pkey}.json")))
        stages.update({w.name: ref for w in grp})
    return stages


def _detector_nodes(g: Graph, cfg: Config, table: Ref, w: Window, name: str, *, device: str, cache: Path,
                    data_id: dict, stage: Ref | None = None,
                    template: tuple[Ref, str] | None = None) -> tuple[Ref, Ref | None]:
    """Folds and merge of one (window, detector) on its sideband ``stage`` node (if any); returns
    the merged scores, and the signal template's scores by the same fold models when there is a
    ``template`` (its load node and content hash)."""
    cls = load_detector_class(name)
    det = cfg.detectors[name]
    spec, gpu = _spec(cfg, name, device, "fit")
    feats = list(spec.features)
    # A signal template is scored by the fold models, so every detector's folds are asked to keep them
    # (train_fold saves a model wherever it gets a model_path); the key says so, a cached fold without
    # models is not reused. The stage's key is part of the folds' own: a stage that changes (its device,
    # its group of windows: shared or not) while the fold parameters do not must not leave folds trained
    # on the old stage in the cache.
    keep = cls.keeps_model or template is not None
    extra = (() if keep == cls.keeps_model else ("keep models",)) + ((stage.key,) if stage is not None else ())
    extra += tuple(cls.fold_identity(spec.params))
    tkey = cache_key(NODE_VERSION, data_id, cfg.seed, w.to_dict(), name, spec.params, feats, det.folds, *extra)
    folds = []
    for k in range(det.folds):
        model = str(cache / "models" / f"{name}-{w.name}-f{k}-{tkey}") if keep else None
        folds.append(g.add(Node(f"train-{name}-{w.name}-f{k}-{tkey}", train_fold,
                                {"table": table, "stage": stage, "spec": spec, "window": w, "fold": k,
                                 "seed": cfg.seed, "model_path": model},
                                kind="train", resources=gpu, cache=str(cache / f"train-{tkey}-f{k}.npz"))))
    merged = g.add(Node(f"merge-{name}-{w.name}-{tkey}", merge_folds, {"table": table, "folds": folds},
                        kind="merge", cache=str(cache / f"scores-{tkey}.npz")))
    if template is None:
        return merged, None
    ref, ident = template
    xkey = cache_key(TEMPLATE_VERSION, tkey, ident)
    scored = g.add(Node(f"template-{name}-{w.name}-{xkey}", score_template,
                        {"template": ref, "folds": folds, "detector": name},
                        kind="template", resources=gpu, cache=str(cache / f"template-scores-{xkey}.npz")))
    return merged, scored


def _template_node(g: Graph, cfg: Config, cache: Path) -> tuple[Ref, str] | None:
    """The signal template's load node and content hash, or None without ``stats.signal_model``.

    The file is checked here, while the graph is built: a missing or unreadable template is a
    user error before anything trains.
    """
    path = cfg.stats.signal_model
    if path is None:
        return None
    check_signal_model(path)
    ident = template_identity(path)
    key = cache_key(TEMPLATE_VERSION, ident)
    ref = g.add(Node(f"load-template-{key}", load_template, {"path": str(path), "cache_dir": str(cache)},
                     kind="load", cache=str(cache / f"template-{key}.json")))
    return ref, ident


def build_search_graph(cfg: Config, out_dir: str | Path, cache_dir: str | Path | None = None,
                       meta: dict | None = None, blind: bool = True) -> tuple[Graph, list[Window]]:
    """The search graph for ``cfg``; ``blind`` (the default) keeps the selected SR data out of every output."""
    out_dir = Path(out_dir)
    cache = Path(cache_dir) if cache_dir else out_dir / "cache"
    data_id = data_identity(cfg.data)
    windows = search_windows(cfg.regions, cfg.fit.range)
    device = decide_device(cfg.compute)
    g = Graph()
    srs = [(w.sr_lo, w.sr_hi) for w in windows]
    # every column a detector reads: checked against each input when the table is loaded
    feats = sorted(set(cfg.features).union(*(d.features or () for d in cfg.detectors.values())))
    lkey = cache_key(NODE_VERSION, TABLE_VERSION, data_id, cfg.seed, srs, feats)
    table = g.add(Node(f"load-{lkey}", load_table, {"data": cfg.data, "cache_dir": str(cache), "seed": cfg.seed,
                                                    "signal_regions": srs, "features": feats},
                       kind="load", cache=str(cache / f"table-{lkey}.json")))
    template = _template_node(g, cfg, cache)
    stats_args = {"fit": cfg.fit, "stats": cfg.stats, "blind": blind, "seed": cfg.seed}
    # The template enters the keys by content (its path is left out: a moved file is the same template).
    stats_id = cfg.stats.model_dump(mode="json", exclude={"signal_model"}) | {"signal_model": template and template[1]}
    skey_common = (STATS_VERSION, cfg.fit.model_dump(mode="json"), stats_id, blind)
    stages = {name: _stage_nodes(g, cfg, table, windows, name, device=device, cache=cache, data_id=data_id)
              for name in cfg.enabled_detectors()}
    outputs = []
    for w in windows:
        skey = cache_key(NODE_VERSION, data_id, cfg.seed, w.to_dict(), "none", *skey_common)
        outputs.append(g.add(Node(f"stats-none-{w.name}-{skey}", evaluate_window,
                                  {"table": table, "scores": None, "window": w, "detector": "none", **stats_args,
                                   **({"template": template[0]} if template else {})},
                                  kind="stats", cache=str(cache / f"stats-{skey}.json"))))
        for name in cfg.enabled_detectors():
            merged, scored = _detector_nodes(g, cfg, table, w, name, device=device, cache=cache, data_id=data_id,
                                             stage=stages[name].get(w.name), template=template)
            skey = cache_key(merged.key, *skey_common)
            outputs.append(g.add(Node(f"stats-{name}-{w.name}-{skey}", evaluate_window,
                                      {"table": table, "scores": merged, "window": w, "detector": name,
                                       **stats_args,
                                       **({"template": template[0], "template_scores": scored} if template else {})},
                                      kind="stats", cache=str(cache / f"stats-{skey}.json"))))
    meta = dict(meta or {})
    meta["blinded"] = blind
    meta.setdefault("config", cfg.to_dict())
    meta.setdefault("windows", [w.to_dict() for w in windows])
    meta["device"] = device
    ceilings = tuple(n for n in cfg.enabled_detectors() if load_detector_class(n).requires_truth)
    report = g.add(Node(f"report-{cache_key(str(out_dir.resolve()), lkey)}", write_run,
                        {"outputs": outputs, "table": table, "meta": meta, "out_dir": str(out_dir),
                         "stats": cfg.stats, "ceilings": ceilings, "template": template and template[0]},
                        kind="report"))
    g.final = report.key
    return g, windows
