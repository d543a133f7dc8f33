"""Where a graph runs: a local cluster on this machine, or an existing Dask cluster.

``compute.scheduler``: None starts a local cluster: one single-threaded worker per core by
default (OpenMP/BLAS/torch threads capped per worker); on a machine with GPUs (and
``compute.device`` not ``cpu``) one worker per GPU pinned with ``CUDA_VISIBLE_DEVICES`` and
advertising ``{"GPU": 1}``, plus CPU workers for the other cores, as dask-cuda's
``LocalCUDACluster`` would place them (:func:`worker_specs`). An address
(``tcp://host:port``) or a scheduler file (``*.json``, as written by ``dask scheduler
--scheduler-file`` or dask-jobqueue) joins an existing cluster, failing within
``compute.connect_timeout`` seconds with the address and a hint when nobody answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from .exceptions import SidebandUserError

__all__ = ["open_client", "worker_resources", "cpu_workers", "worker_specs", "count_gpus", "cuda_visible",
           "gpu_workers_per_device", "limit_threads"]

log = logging.getLogger(__name__)


def limit_threads(n: int) -> None:
    """Cap torch, OpenMP and BLAS threads in this process (avoids oversubscription)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover
        pass
    torch = sys.modules.get("torch")  # not imported yet: it takes its thread count from OMP_NUM_THREADS
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def worker_resources(client) -> set[str]:
    """Names of the resources that at least one worker of ``client`` advertises."""
    return {name for w in client.scheduler_info()["workers"].values() for name in (w.get("resources") or {})}


#: Device files of a GPU driver (NVIDIA, ROCm, WSL2's GPU paravirtualisation): without any of them
#: no CUDA device can be visible, and torch need not be imported (~180 MB) to find that out.
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def _gpu_driver_present() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(os.path.exists(f) for f in _GPU_DEVICE_FILES)


def cuda_visible() -> int:
    """The number of CUDA devices this process sees (torch's answer), without importing torch
    on a machine that has no GPU driver at all."""
    if not _gpu_driver_present():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def count_gpus(compute) -> int:
    """GPUs this machine offers the run: 0 for ``device: cpu`` (CUDA is never touched then)."""
    if compute.device == "cpu":
        return 0
    return cuda_visible()


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity and cgroup quota, as dask counts them), not
    the machine's: under a SLURM cpuset or a container limit ``os.cpu_count()`` overcounts."""
    from dask.system import CPU_COUNT

    return max(1, int(CPU_COUNT))


def worker_specs(n_workers: int, n_gpus: int, threads: int, per_gpu: int = 1) -> dict[str, dict]:
    """Worker specs of a local cluster with GPUs, the way dask-cuda places them.

    ``per_gpu`` workers per GPU (one, as dask-cuda, by default), each pinned with
    ``CUDA_VISIBLE_DEVICES`` (the i-th entry of this process's own list when it has one: a user
    or batch system that gave the run GPUs 2,3 gets workers on 2 and 3, UUIDs and MIG ids
    included) and advertising ``{"GPU": 1}`` (one training at a time per
    worker), plus CPU workers for the remaining cores with no GPU visible. Returned as
    ``{name: {"cls": Nanny, "options": ...}}`` for :class:`distributed.SpecCluster`.
    """
    from distributed import Nanny

    env = {"OMP_NUM_THREADS": str(threads)}
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    devices = visible[:n_gpus] if len(visible) >= n_gpus else [str(i) for i in range(n_gpus)]
    specs = {}
    for i, device in enumerate(devices):
        for j in range(per_gpu):
            specs[f"gpu-{i}" + (f"-{j}" if per_gpu > 1 else "")] = {"cls": Nanny, "options": {
                "nthreads": 1, "resources": {"GPU": 1}, "env": env | {"CUDA_VISIBLE_DEVICES": device}}}
    for i in range(max(n_workers - n_gpus * per_gpu, 1)):
        specs[f"cpu-{i}"] = {"cls": Nanny, "options": {"nthreads": threads, "resources": {"CPU": threads},
                                                       "env": env | {"CUDA_VISIBLE_DEVICES": ""}}}
    return specs


def gpu_workers_per_device(compute, n_workers: int, n_gpus: int) -> int:
    """``compute.gpu_workers_per_device``, or by default 4 per GPU but at most a quarter of the workers."""
    if compute.gpu_workers_per_device:
        return int(compute.gpu_workers_per_device)
    return max(1, min(4, n_workers // (4 * max(n_gpus, 1))))


#: glibc's mmap threshold for worker processes. Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_``
#: before spawning a worker, which also freezes glibc's mmap threshold at 128 KiB: every tensor
#: above it is then a fresh mmap, page-faulted on first touch and unmapped when freed, and torch
#: allocates such tensors at every step. Measured on the CATHODE flow of a 100k-event window
#: (48,683 sideband events, one thread): 0.68 s per epoch in a plain process, 2.17 s with dask's
#: setting, 0.67 s with it and this threshold (glibc's own dynamic ceiling, 32 MiB).
WORKER_MMAP_THRESHOLD = 32 * 2**20


@contextlib.contextmanager
def _worker_malloc_env() -> Iterator[None]:
    """Nannies created inside spawn their workers with ``MALLOC_MMAP_THRESHOLD_`` set (kept
    beside dask's trim threshold, so freed memory still goes back to the OS); a value in the
    environment or in the dask config wins."""
    import dask

    key = "distributed.nanny.pre-spawn-environ"
    env = dict(dask.config.get(key, default={}) or {})
    env.setdefault("MALLOC_MMAP_THRESHOLD_", WORKER_MMAP_THRESHOLD)
    with dask.config.set({key: env}):
        yield


def _local_cluster(compute):
    from distributed import LocalCluster, Scheduler, SpecCluster

    threads = int(compute.threads_per_worker)
    n_workers = compute.n_workers or max(1, usable_cores() // threads)
    n_gpus = count_gpus(compute) if compute.processes else 0
    with _workers_ignore_sigint(), _worker_malloc_env():
        if n_gpus:
            per_gpu = gpu_workers_per_device(compute, n_workers, n_gpus)
            log.info("local cluster: %d GPU worker(s) + %d CPU worker(s)", n_gpus * per_gpu,
                     max(n_workers - n_gpus * per_gpu, 1))
            return SpecCluster(workers=worker_specs(n_workers, n_gpus, threads, per_gpu),
                               scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}})
        kwargs = {"env": {"OMP_NUM_THREADS": str(threads)}} if compute.processes else {}
        return LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=bool(compute.processes),
                            dashboard_address=":0", **kwargs)


@contextlib.contextmanager
def _workers_ignore_sigint():
    """Start worker processes with SIGINT ignored (inherited): Ctrl-C in a terminal reaches the
    whole process group, and only this process should react (stop, close the cluster, say how to
    resume) instead of every worker printing a traceback."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def open_client(compute) -> Iterator:
    """A Dask client for ``compute`` (a ComputeConfig), closed (with its local cluster) on exit."""
    from distributed import Client

    sched = compute.scheduler
    cluster = None
    timeout = f"{compute.connect_timeout}s"
    if sched is None:
        cluster = _local_cluster(compute)
        client = Client(cluster)
    else:
        try:
            if sched.endswith(".json"):
                if not Path(sched).is_file():
                    raise SidebandUserError(f"{sched}: no such scheduler file; start the scheduler with "
                                            "'dask scheduler --scheduler-file FILE' or pass its tcp:// address")
                client = Client(scheduler_file=sched, timeout=timeout)
            else:
                client = Client(sched, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise SidebandUserError(
                f"{sched}: could not reach the Dask scheduler within {compute.connect_timeout:g} s "
                f"({type(exc).__name__}); is 'dask scheduler' running there and the port open (firewall)? "
                "Set compute.connect_timeout to wait longer"
            ) from None
    try:
        log.info("Dask dashboard: %s", client.dashboard_link)
        yield client
    except KeyboardInterrupt:
        # stopping: the workers' complaints about lost connections are expected, not news
        for name in ("distributed", "tornado", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def slurm_cluster(*, queue: str, cores: int, memory: str, walltime: str = "04:00:00", gpus: int = 0,
                  account: str | None = None, **kwargs):
    """A dask-jobqueue ``SLURMCluster`` whose workers sideband can use (docs/cluster.md).

    ``gpus=1``: each job is one single-threaded worker with one GPU (``--gres=gpu:1``)
    advertising ``{"GPU": 1}``; else ``cores`` single-threaded CPU workers per job, advertising
    ``{"CPU": 1}`` (where CPU nodes go when GPU workers exist, replaced workers included).
    """
    from .exceptions import optional_import

    jobqueue = optional_import("dask_jobqueue", "cluster", "a SLURM cluster")
    extra = [f"--account={account}"] if account else []
    prologue = [f"export MALLOC_MMAP_THRESHOLD_={WORKER_MMAP_THRESHOLD}"]  # see WORKER_MMAP_THRESHOLD
    if gpus:
        return jobqueue.SLURMCluster(queue=queue, cores=1, processes=1, memory=memory, walltime=walltime,
                                     job_extra_directives=extra + [f"--gres=gpu:{gpus}"], job_script_prologue=prologue,
                                     worker_extra_args=["--resources", "GPU=1"], **kwargs)
    return jobqueue.SLURMCluster(queue=queue, cores=cores, processes=cores, memory=memory, walltime=walltime,
                                 job_extra_directives=extra, job_script_prologue=["export OMP_NUM_THREADS=1", *prologue],
                                 worker_extra_args=["--resources", "CPU=1"], **kwargs)


def cpu_workers(client) -> list[str]:
    """Addresses of the workers without a GPU (where CPU nodes go when GPU workers exist and the
    CPU workers advertise no ``CPU`` resource: then a CPU worker that is replaced, e.g. restarted
    by its nanny, has a new address and gets none of them)."""
    return [addr for addr, w in client.scheduler_info()["workers"].items() if not (w.get("resources") or {}).get("GPU")]
