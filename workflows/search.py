"""The blind search: config -> DAG -> results.json, plots and a printed table."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from sideband.pipeline.config import Config
from sideband.pipeline.dag import build_search_graph, run_graph
from sideband.pipeline.exceptions import SidebandUserError

__all__ = ["run_search", "check_output_dir"]

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


def _progress_printer(stream=sys.stderr):
    start = time.perf_counter()

    def progress(done: int, total: int, key: str) -> None:
        elapsed = time.perf_counter() - start
        eta = elapsed / done * (total - done) if done else 0.0
        stream.write(f"\r[{done}/{total}] nodes done, {elapsed:5.0f}s elapsed, ETA {eta:5.0f}s  ")
        if done == total:
            stream.write("\n")
        stream.flush()

    return progress


def run_search(cfg: Config, out_dir: str | Path, *, cache_dir: str | Path | None = None,
               progress: bool = False, unblind: bool = False) -> dict:
    """Run the search graph for ``cfg``; returns the parsed ``results.json``.

    The search is blind unless ``unblind``: observed SR counts, Z and observed limits are
    neither computed nor written (expected limits and sideband fits are).
    """
    out_dir = check_output_dir(Path(out_dir))
    graph, _ = build_search_graph(cfg, out_dir, cache_dir, meta={"mode": "search", "seed": cfg.seed},
                                  blind=not unblind)
    log.info("search graph: %d nodes", len(graph.nodes))
    path = run_graph(graph, cfg.compute.model_dump(), _progress_printer() if progress else None,
                     on_start=(lambda msg: print(msg, file=sys.stderr)) if progress else None)
    return json.loads(Path(path).read_text())
