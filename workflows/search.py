"""The blind search: config -> DAG -> results.json, plots and a printed table."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sideband.pipeline.config import Config
from sideband.pipeline.exceptions import SidebandUserError
from sideband.pipeline.graph import Graph, run_graph

from .progress import GraphProgress
from .search_graph import build_search_graph

__all__ = ["run_search", "check_output_dir", "run_with_progress"]

log = logging.getLogger(__name__)


def check_output_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` or fail with a clear message if it cannot be written."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".sideband-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SidebandUserError(
            f"{out_dir}: output directory is not writable ({exc.strerror}); choose another --out"
        ) from None
    return out_dir


def run_with_progress(graph: Graph, compute, progress: bool | str = False):
    """Run ``graph``; returns the final node's output.

    ``progress``: False prints nothing; True a progress bar on a terminal (one line per
    finished stage elsewhere); ``"lines"`` one line per finished stage (standard error).
    """
    if not progress:
        return run_graph(graph, compute)
    with GraphProgress(graph, live=None if progress is True else False) as bar:
        return run_graph(graph, compute, on_event=bar, on_start=bar.message)


def run_search(cfg: Config, out_dir: str | Path, *, cache_dir: str | Path | None = None,
               progress: bool | str = False, unblind: bool = False) -> dict:
    """Run the search graph for ``cfg``; returns the parsed ``results.json``.

    The search is blind unless ``unblind``: observed SR counts, Z and observed limits are
    neither computed nor written (expected limits and sideband fits are).
    """
    out_dir = check_output_dir(Path(out_dir))
    graph, _ = build_search_graph(cfg, out_dir, cache_dir, meta={"mode": "search", "seed": cfg.seed},
                                  blind=not unblind)
    log.info("search graph: %d nodes", len(graph.nodes))
    path = run_with_progress(graph, cfg.compute, progress)
    return json.loads(Path(path).read_text())
