"""Progress of a running graph for the command line: a rich progress bar with an ETA on a
terminal; elsewhere (a log file, CI, ``--no-progress``) one line per finished stage."""

from __future__ import annotations

import sys
from collections import Counter

from sideband.pipeline.graph import Graph, NodeDone

__all__ = ["GraphProgress"]


class GraphProgress:
    """Context manager and ``on_event`` callback for :func:`sideband.pipeline.graph.run_graph`.

    ``live`` (default: standard error is a terminal) shows a bar; otherwise each stage
    (load, prepare, train, merge, stats, report) prints one line when its last node finishes.
    """

    def __init__(self, graph: Graph, *, live: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.totals = Counter(n.kind for n in graph.nodes.values())
        self.kinds = {n.key: n.kind for n in graph.nodes.values()}
        self.done: Counter = Counter()
        self.cached: Counter = Counter()
        self._progress = None
        self._task = None

    def __enter__(self) -> "GraphProgress":
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                      console=Console(file=self.stream), transient=False)
            self._progress.start()
            self._task = self._progress.add_task("nodes", total=sum(self.totals.values()))
        return self

    def __exit__(self, *exc) -> bool:
        if self._progress is not None:
            self._progress.stop()
        return False

    def message(self, text: str) -> None:
        """A line above the bar (e.g. the Dask dashboard address)."""
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def __call__(self, event: NodeDone) -> None:
        kind = event.kind
        self.done[kind] += 1
        self.cached[kind] += int(event.cached)
        if self._progress is not None:
            self._progress.update(self._task, completed=event.done, description=f"{kind:<8}")
            return
        if self.done[kind] == self.totals[kind]:
            cached = f", {self.cached[kind]} from cache" if self.cached[kind] else ""
            print(f"[{event.elapsed_s:6.1f}s] {kind}: {self.done[kind]} of {self.totals[kind]} nodes done{cached}",
                  file=self.stream, flush=True)
