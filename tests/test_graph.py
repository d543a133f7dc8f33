"""The graph engine alone (no physics): references, caching, retries, progress, sync and Dask."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest

from sideband.pipeline.config import ComputeConfig
from sideband.pipeline.graph import Graph, Node, Ref, run_graph
from sideband.pipeline.records import FoldScores


def add(a, b):
    return a + b


def total(values):
    return sum(values)


def make_scores(n, seed):
    rng = np.random.default_rng(seed)
    return FoldScores(scores=rng.random(n), heldout=np.zeros(n, bool), train=np.ones(n, bool), wall_s=0.0)


@dataclass
class Flaky:
    """Fails the first ``n`` calls (counted in a file, so it works across processes)."""

    counter: str
    n: int

    def __call__(self, x):
        count = int(open(self.counter).read()) if os.path.exists(self.counter) else 0
        with open(self.counter, "w") as f:
            f.write(str(count + 1))
        if count < self.n:
            raise RuntimeError(f"flaky call {count}")
        return x


def _graph(tmp_path):
    g = Graph()
    a = g.add(Node("a", add, {"a": 1, "b": 2}))
    b = g.add(Node("b", add, {"a": a, "b": 10}, kind="sum"))
    s = g.add(Node("scores", make_scores, {"n": 5, "seed": 1}, cache=str(tmp_path / "scores.npz")))
    g.final = g.add(Node("total", total, {"values": [a, b, Ref("a")]}, kind="sum")).key
    return g, s


@pytest.mark.parametrize("scheduler", ["synchronous", None])
def test_runs_references_in_lists_and_reports_every_node(tmp_path, scheduler):
    g, _ = _graph(tmp_path)
    events = []
    compute = ComputeConfig(scheduler=scheduler, n_workers=2, processes=False)
    assert run_graph(g, compute, on_event=events.append) == 3 + 13 + 3
    assert sorted(e.key for e in events) == ["a", "b", "scores", "total"]
    assert [e.done for e in events] == [1, 2, 3, 4] and all(e.total == 4 for e in events)


def test_cached_nodes_are_read_back_not_recomputed(tmp_path):
    g, s = _graph(tmp_path)
    g.final = s.key
    first = run_graph(g, ComputeConfig(scheduler="synchronous"))
    mtime = (tmp_path / "scores.npz").stat().st_mtime_ns
    events = []
    again = run_graph(g, ComputeConfig(scheduler="synchronous"), on_event=events.append)
    np.testing.assert_array_equal(first.scores, again.scores)
    assert (tmp_path / "scores.npz").stat().st_mtime_ns == mtime
    assert [e.cached for e in events if e.key == "scores"] == [True]


def test_retries_then_succeeds_and_gives_up_after_retries(tmp_path):
    g = Graph()
    g.final = g.add(Node("flaky", Flaky(str(tmp_path / "n"), 2), {"x": 7})).key
    assert run_graph(g, ComputeConfig(scheduler="synchronous", retries=2)) == 7
    g2 = Graph()
    g2.final = g2.add(Node("flaky", Flaky(str(tmp_path / "m"), 5), {"x": 7})).key
    with pytest.raises(RuntimeError, match="flaky call 3"):
        run_graph(g2, ComputeConfig(scheduler="synchronous", retries=3))


def test_user_errors_are_not_retried(tmp_path):
    from sideband.pipeline.exceptions import InputFileError

    calls = []

    def bad():
        calls.append(1)
        raise InputFileError("x.h5: broken")

    g = Graph()
    g.final = g.add(Node("bad", bad)).key
    with pytest.raises(InputFileError):
        run_graph(g, ComputeConfig(scheduler="synchronous", retries=3))
    assert len(calls) == 1


def test_a_node_must_follow_its_dependencies():
    g = Graph()
    with pytest.raises(KeyError, match="not in the graph yet"):
        g.add(Node("b", add, {"a": Ref("a"), "b": 1}))


def test_shared_nodes_are_added_once(tmp_path):
    g1, _ = _graph(tmp_path)
    g2, _ = _graph(tmp_path)
    g1.update(g2)
    assert len(g1) == 4


def test_gpu_nodes_land_on_pinned_gpu_workers_and_cpu_nodes_never_do(monkeypatch):
    """A faked two-GPU machine: one pinned worker per GPU (as dask-cuda), CPU nodes elsewhere."""
    from sideband.pipeline import cluster

    monkeypatch.setattr(cluster, "count_gpus", lambda compute: 2)
    g = Graph()
    gpu = [g.add(Node(f"gpu-{i}", _where, {"i": i}, resources={"GPU": 1})) for i in range(4)]
    cpu = [g.add(Node(f"cpu-{i}", _where, {"i": i})) for i in range(4)]
    g.final = g.add(Node("all", _collect, {"gpu": gpu, "cpu": cpu})).key
    out = run_graph(g, ComputeConfig(n_workers=3, processes=True, device="auto"))
    assert {v for _, v in out["gpu"]} <= {"0", "1"} and all(v for _, v in out["gpu"])
    assert all(v == "" for _, v in out["cpu"])  # no GPU visible where CPU nodes ran


def test_cpu_workers_advertise_cpu_so_replacements_get_cpu_nodes():
    from sideband.pipeline.cluster import worker_specs

    specs = worker_specs(n_workers=6, n_gpus=1, threads=2)
    assert [s["options"].get("resources") for k, s in specs.items() if k.startswith("cpu")] == [{"CPU": 2}] * 5


def _die_once(marker):
    """Kill this worker process the first time (its nanny restarts it at a new address)."""
    from pathlib import Path

    if not Path(marker).exists():
        Path(marker).write_text("killed")
        os._exit(1)
    return os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.mark.slow  # ~30 s: a local cluster of three workers, one restarted
def test_cpu_nodes_go_to_a_restarted_cpu_worker(monkeypatch, tmp_path):
    """With GPU workers present, CPU nodes are placed by the CPU resource, not by the addresses of
    the CPU workers at submission: the only CPU worker dies mid-node and comes back at a new
    address, and the node runs there (pinned by address it waited forever)."""
    import threading

    from sideband.pipeline import cluster

    monkeypatch.setattr(cluster, "count_gpus", lambda compute: 2)
    g = Graph()
    g.final = g.add(Node("cpu", _die_once, {"marker": str(tmp_path / "died")})).key
    out = {}
    thread = threading.Thread(target=lambda: out.update(v=run_graph(g, ComputeConfig(n_workers=3, device="auto"))),
                              daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert (tmp_path / "died").exists() and not thread.is_alive(), "the node never ran again after its worker died"
    assert out["v"] == ""  # on the (restarted) CPU worker


def test_local_workers_start_with_glibc_mmap_threshold(monkeypatch):
    """Dask's nanny freezes glibc's mmap threshold at 128 KiB (it sets MALLOC_TRIM_THRESHOLD_),
    which made torch training 3x slower in a worker than in a plain process; local workers are
    started with the threshold set, on CPU-only and GPU machines alike."""
    from sideband.pipeline import cluster

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    for n_gpus in (0, 1):
        monkeypatch.setattr(cluster, "count_gpus", lambda compute, n=n_gpus: n)
        g = Graph()
        g.final = g.add(Node("env", _malloc_env, {})).key
        trim, mmap = run_graph(g, ComputeConfig(n_workers=2, processes=True, device="auto"))
        assert mmap == str(cluster.WORKER_MMAP_THRESHOLD) and trim is not None  # dask's trimming kept


def _malloc_env():
    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("MALLOC_MMAP_THRESHOLD_")


def test_device_cpu_never_counts_gpus():
    from sideband.pipeline.cluster import count_gpus

    assert count_gpus(ComputeConfig(device="cpu")) == 0


def _where(i):
    return i, os.environ.get("CUDA_VISIBLE_DEVICES")


def _collect(gpu, cpu):
    return {"gpu": gpu, "cpu": cpu}


def test_building_a_search_on_a_machine_without_gpu_driver_does_not_import_torch(tmp_path):
    """The client process stays light (~180 MB less) where no CUDA device can exist."""
    import subprocess
    import sys

    from sideband.pipeline import cluster

    if cluster._gpu_driver_present():
        pytest.skip("this machine has a GPU driver: torch is rightly asked")
    code = ("import sys\n"
            "from sideband.workflows.configure import load_config\n"
            "from sideband.workflows.search_graph import build_search_graph\n"
            f"build_search_graph(load_config(), {str(tmp_path)!r})\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_several_workers_can_share_each_gpu():
    """compute.gpu_workers_per_device: k pinned GPU workers per device, the rest of the cores CPU."""
    from sideband.pipeline.cluster import worker_specs

    specs = worker_specs(n_workers=10, n_gpus=2, threads=1, per_gpu=3)
    gpu = {k: s["options"] for k, s in specs.items() if "GPU" in (s["options"].get("resources") or {})}
    cpu = [s["options"] for k, s in specs.items() if k not in gpu]
    assert sorted(o["env"]["CUDA_VISIBLE_DEVICES"] for o in gpu.values()) == ["0", "0", "0", "1", "1", "1"]
    assert len(cpu) == 4 and all(o["env"]["CUDA_VISIBLE_DEVICES"] == "" for o in cpu)


def test_gpu_workers_are_pinned_to_the_gpus_this_run_was_given(monkeypatch):
    """A run given GPUs 2,3 (CUDA_VISIBLE_DEVICES, as a batch system or a user sets it) puts its
    GPU workers on 2 and 3, not on 0 and 1; UUIDs pass through."""
    from sideband.pipeline.cluster import worker_specs

    def pinned(visible):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        specs = worker_specs(n_workers=4, n_gpus=2, threads=1)
        return sorted(s["options"]["env"]["CUDA_VISIBLE_DEVICES"] for s in specs.values()
                      if "GPU" in (s["options"].get("resources") or {}))

    assert pinned("2,3") == ["2", "3"]
    assert pinned("GPU-aaaa, GPU-bbbb") == ["GPU-aaaa", "GPU-bbbb"]


def test_local_cluster_counts_the_cores_it_may_use():
    """CPU affinity (taskset, a SLURM cpuset) bounds the workers, not the machine's core count."""
    from sideband.pipeline.cluster import usable_cores

    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("cores,gpus,expected", [(16, 1, 4), (8, 1, 2), (2, 1, 1), (32, 2, 4)])
def test_gpu_workers_per_device_default_leaves_most_cores_to_cpu_nodes(cores, gpus, expected):
    from sideband.pipeline.cluster import gpu_workers_per_device

    assert gpu_workers_per_device(ComputeConfig(), cores, gpus) == expected
    assert gpu_workers_per_device(ComputeConfig(gpu_workers_per_device=3), cores, gpus) == 3
