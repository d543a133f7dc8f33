"""The graph engine: nodes, references, resources, retries and caching, run in-process or on Dask.

It knows nothing of windows, detectors or statistics. A :class:`Node` is a module-level
function with keyword arguments, some of which are :class:`Ref` s to other nodes' outputs
(also inside lists and dicts); a node with a ``cache`` path stores its output there as a
record (:func:`.records.save_record`) and a later run reads it back instead of running the
function, so an interrupted run resumes where it stopped. ``resources`` (e.g.
``{"GPU": 1}``) are Dask worker resources the node needs.

:func:`run_graph` executes a graph synchronously (``compute.scheduler = "synchronous"``,
in insertion order, which the builders keep topological) or on a Dask cluster
(:mod:`.cluster`), reports each finished node to ``on_event``, retries failed nodes
``compute.retries`` times, and turns Ctrl-C / SIGTERM into :class:`GraphInterrupted`, which
says how many nodes are finished and cached.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exceptions import SidebandUserError
from .records import load_record, save_record

__all__ = ["Ref", "Node", "Graph", "NodeDone", "GraphInterrupted", "run_graph", "execute_node"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ref:
    """Placeholder for another node's output in a node's arguments."""

    key: str


@dataclass(frozen=True)
class Node:
    """One unit of work: ``func(**kwargs)`` with references resolved."""

    key: str
    func: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: Short label for progress output ("train", "stats", ...).
    kind: str = "task"
    #: Dask worker resources the node needs, e.g. {"GPU": 1}; None: any worker.
    resources: Mapping[str, float] | None = None
    #: Where the output record is stored; a present file is reused instead of recomputing.
    cache: str | None = None


class Graph:
    """Nodes by key, in insertion order (dependencies first), and the key of the final node."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.final: str | None = None

    def add(self, node: Node) -> Ref:
        """Add ``node`` (a node with the same key is added once) and return a reference to it."""
        for ref in _refs(node.kwargs):
            if ref.key not in self.nodes:
                raise KeyError(f"node {node.key} depends on {ref.key}, which is not in the graph yet")
        self.nodes.setdefault(node.key, node)
        return Ref(node.key)

    def update(self, other: Graph) -> None:
        """Add every node of ``other`` (shared nodes once)."""
        for node in other.nodes.values():
            self.add(node)

    def __len__(self) -> int:
        return len(self.nodes)


@dataclass(frozen=True)
class NodeDone:
    """Progress event: one node finished (``cached``: its output was already stored)."""

    key: str
    kind: str
    done: int
    total: int
    cached: bool
    elapsed_s: float


class GraphInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the run; ``done`` of ``total`` nodes are finished and cached."""

    def __init__(self, done: int, total: int, signal_name: str = "SIGINT"):
        super().__init__(f"interrupted ({signal_name}): {done} of {total} nodes finished and cached")
        self.done, self.total, self.signal_name = done, total, signal_name


def _refs(obj: Any):
    if isinstance(obj, Ref):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _refs(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _refs(v)


def _resolve(obj: Any, results: Mapping[str, Any]) -> Any:
    if isinstance(obj, Ref):
        return results[obj.key]
    if isinstance(obj, Mapping):
        return {k: _resolve(v, results) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, results) for v in obj)
    return obj


def execute_node(func: Callable[..., Any], cache: str | None, kwargs: Mapping[str, Any]) -> Any:
    """Run one node: its stored output when ``cache`` exists, else ``func(**kwargs)`` (then stored)."""
    if cache is not None and Path(cache).exists():
        return load_record(cache)
    out = func(**kwargs)
    if cache is not None:
        save_record(out, cache)
        return load_record(cache)  # the same object a cached re-run would see (paths resolved)
    return out


def _cached(node: Node) -> bool:
    return node.cache is not None and Path(node.cache).exists()


class _Signals:
    """Turn SIGTERM into KeyboardInterrupt while a graph runs (Ctrl-C already is one)."""

    def __enter__(self):
        self.received = "SIGINT"
        self._old = None
        try:
            self._old = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handler(self, signum, frame):
        self.received = "SIGTERM"
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        return False


def run_graph(graph: Graph, compute, on_event: Callable[[NodeDone], None] | None = None,
              on_start: Callable[[str], None] | None = None) -> Any:
    """Run ``graph`` with the settings of ``compute`` (a ComputeConfig); returns the final output.

    ``compute.scheduler``: ``"synchronous"`` runs every node here, in order; otherwise
    :func:`.cluster.open_client` gives a client (LocalCluster, address or scheduler file).
    """
    if graph.final is None:
        raise ValueError("graph has no final node")
    start = time.perf_counter()
    nodes = list(graph.nodes.values())
    total = len(nodes)
    done = 0

    def report(node: Node, cached: bool) -> None:
        nonlocal done
        done += 1
        if on_event:
            on_event(NodeDone(node.key, node.kind, done, total, cached, time.perf_counter() - start))

    with _Signals() as sig:
        try:
            if compute.scheduler == "synchronous":
                return _run_here(nodes, graph.final, int(compute.retries), report)
            return _run_dask(nodes, graph.final, compute, report, on_start)
        except KeyboardInterrupt:
            _remove_partial_files(nodes)
            finished = sum(1 for n in nodes if _cached(n))
            raise GraphInterrupted(finished, sum(1 for n in nodes if n.cache), sig.received) from None


def _remove_partial_files(nodes: list[Node]) -> None:
    """Temporary files of outputs that were being written when the run stopped (see
    :func:`.cache.atomic_path`: ``.<name>.<random><suffix>`` beside the destination)."""
    for node in nodes:
        if node.cache:
            dest = Path(node.cache)
            for tmp in dest.parent.glob(f".{dest.name}.*"):
                tmp.unlink(missing_ok=True)


def _run_here(nodes: list[Node], final: str, retries: int, report) -> Any:
    results: dict[str, Any] = {}
    for node in nodes:
        cached = _cached(node)
        for attempt in range(retries + 1):
            try:
                results[node.key] = execute_node(node.func, node.cache, _resolve(node.kwargs, results))
                break
            except Exception as exc:  # noqa: BLE001 - user errors are not retried
                if isinstance(exc, SidebandUserError) or attempt == retries:
                    raise
                log.warning("node %s failed (%s: %s); retrying", node.key, type(exc).__name__, exc)
        report(node, cached)
    return results[final]


def _run_dask(nodes: list[Node], final: str, compute, report, on_start) -> Any:
    from distributed import as_completed

    from .cluster import cpu_workers, open_client, worker_resources

    with open_client(compute) as client:
        if on_start:
            on_start(f"Dask dashboard: {client.dashboard_link}")
        available = worker_resources(client)
        # With GPU workers present, nodes that need no GPU stay on the CPU workers: by the CPU
        # resource they advertise (local clusters, slurm_cluster, docs/cluster.md), which a
        # replacement worker advertises too; else by address, which a replacement does not have.
        cpu_res = {"CPU": 1} if "GPU" in available and "CPU" in available else None
        cpu_only = cpu_workers(client) if "GPU" in available and cpu_res is None else None
        if cpu_only:
            log.warning("GPU workers but no worker advertises CPU: CPU nodes are pinned to the %d current CPU "
                        "workers by address (a replaced worker gets none); start CPU workers with "
                        "--resources CPU=<threads>", len(cpu_only))
        gpu_nodes = [n.key for n in nodes if n.resources and "GPU" in n.resources]
        if gpu_nodes and "GPU" not in available:
            log.warning("%d node(s) could use a GPU but no Dask worker advertises one; they run on CPU workers",
                        len(gpu_nodes))
        futures: dict[str, Any] = {}
        by_key = {}
        for node in nodes:
            res = dict(node.resources) if node.resources and all(k in available for k in node.resources) else cpu_res
            fut = client.submit(execute_node, node.func, node.cache, _resolve(node.kwargs, futures), key=node.key,
                                resources=res, workers=None if res or not cpu_only else cpu_only,
                                allow_other_workers=False, pure=False, retries=int(compute.retries))
            futures[node.key] = fut
            by_key[node.key] = (node, _cached(node))
        for fut in as_completed(list(futures.values())):
            if fut.status == "error":
                fut.result()  # raises the node's exception here
            node, cached = by_key[fut.key]
            report(node, cached)
        return futures[final].result()
