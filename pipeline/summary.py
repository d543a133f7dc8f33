"""The last stage of a search: look-elsewhere over every test, results.json, plots and report.html."""

from __future__ import annotations

import os
from pathlib import Path

from .cache import write_json
from .config import StatsConfig
from .records import EventTable, WindowTests

__all__ = ["write_run"]


def _relative(path: str, out_dir: Path) -> str:
    """``path`` relative to the run directory (relocatable runs; a shared cache beside it too)."""
    return os.path.relpath(Path(path).resolve(), Path(out_dir).resolve())


def _signal_model(template: EventTable, stats: StatsConfig) -> dict:
    """What results.json says about the signal template (``stats.signal_model``)."""
    source = dict(template.sources[0]) if template.sources else {}
    given = stats.signal_events is not None
    return {"path": source.get("path", stats.signal_model), "content_hash": source.get("content_hash"),
            "n_events": template.n_events, "n_background_dropped": source.get("n_background_dropped", 0),
            "signal_events": float(stats.signal_events) if given else float(template.n_events),
            "signal_events_from": "stats.signal_events (--signal-events)" if given else
            "default: the number of template events"}


def write_run(outputs: list[WindowTests], table: EventTable, *, meta: dict, out_dir: str, stats: StatsConfig,
              ceilings: tuple[str, ...] = (), template: EventTable | None = None) -> str:
    """Collect every (window, detector)'s tests; write results.json, training/timing JSON, plots, HTML.

    ``ceilings`` name the truth-based benchmark detectors: shown, but not searches, so not
    trials of the look-elsewhere correction. ``template``: the signal model's events, if any
    (results.json ``signal_model``). Returns the path of results.json.
    """
    from .lee import global_significance
    from .report import plot_spectra, write_html_report, write_results
    from .verdict import problem

    out = Path(out_dir)
    per_output = [[r.to_dict() for r in o.rows] for o in outputs]
    rows = [r for output_rows in per_output for r in output_rows]
    lee = None
    if not meta.get("blinded", True):
        trials = [r for r in rows if r["detector"] not in ceilings]
        lee = global_significance(trials, int(stats.global_toys), seed=int(meta.get("seed") or 0))
        excluded = [(r, why) for r in trials if (why := problem(r)) is not None]
        for r, why in excluded:  # a failed test is not a trial of the maximum, and says so
            r["flags"] = [*r["flags"], f"not in the look-elsewhere maximum ({why})"]
        lee["excluded"] = [f"{r['detector']} {r['selection']:g} {r['window']}: {why}" for r, why in excluded]
    shown = [{"rows": output_rows, "spectra": list(o.spectra)} for output_rows, o in zip(per_output, outputs)]
    plots = plot_spectra(shown, out / "plots")
    metrics = [o.metrics | {"ceiling": o.metrics["detector"] in ceilings} for o in outputs if o.metrics]
    write_json(out / "training.json", [o.training for o in outputs if o.training])
    # Wall times vary run to run; they live beside results.json so that file is reproducible.
    write_json(out / "timing.json", [o.timing for o in outputs])
    models = [_relative(p, out) for o in outputs for p in o.model_paths]
    path = write_results(out, rows, meta | {
        "inputs": list(table.sources), "n_events": table.n_events, "n_injected": table.n_injected,
        "event_table": _relative(table.path, out), "models": models, "ceilings": list(ceilings),
        "plots": plots, "detector_metrics": metrics, "look_elsewhere": lee,
        "signal_model": None if template is None else _signal_model(template, stats)})
    write_html_report(out)
    return str(path)
