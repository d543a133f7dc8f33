"""Existing clusters: a scheduler file with separately started workers; a SLURM job script."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


def test_search_joins_a_cluster_through_its_scheduler_file(tmp_path, small_h5, fast_config):
    from sideband.workflows.search import run_search

    sched = tmp_path / "sched.json"
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", str(sched),
                               "--port", "0", "--dashboard-address", ":0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while not sched.exists() and time.time() < deadline:
            time.sleep(0.2)
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                       str(sched), "--nthreads", "1", "--nworkers", "2"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cfg = fast_config(small_h5, compute={"scheduler": str(sched), "connect_timeout": 30})
        res = run_search(cfg, tmp_path / "out", unblind=True)
        assert res["config"]["compute"]["scheduler"] == str(sched)
        assert {r["detector"] for r in res["results"]} == {"none", "cwola"}
    finally:
        for p in procs[::-1]:
            p.terminate()
            p.wait(timeout=30)


def test_slurm_job_scripts_for_cpu_and_gpu_workers():
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue (sideband[cluster]) not installed")
    from sideband.pipeline.cluster import slurm_cluster

    cpu = slurm_cluster(queue="cpu", cores=8, memory="32GB", account="me", scheduler_options={"dashboard_address": ":0"})
    gpu = slurm_cluster(queue="gpu", cores=8, memory="32GB", gpus=1, scheduler_options={"dashboard_address": ":0"})
    try:
        cs, gs = cpu.job_script(), gpu.job_script()
        assert "#SBATCH -p cpu" in cs and "--account=me" in cs and "--nworkers 8" in cs and "OMP_NUM_THREADS=1" in cs
        assert "--resources CPU=1" in cs
        assert "export MALLOC_MMAP_THRESHOLD_=" in cs and "export MALLOC_MMAP_THRESHOLD_=" in gs
        assert "--gres=gpu:1" in gs and "--resources GPU=1" in gs and "--nthreads 1" in gs
    finally:
        cpu.close()
        gpu.close()
