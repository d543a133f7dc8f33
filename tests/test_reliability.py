"""Interrupted runs, dying workers and reproducibility."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from sideband.workflows.cli import main

ROOT = Path(__file__).resolve().parents[1]
SLOWISH = {"seed": 5, "stats": {"selections": [0.1, 0.02]},
           "detectors": {"cwola": {"folds": 4, "params": {"n_ensemble": 2, "hgb_params": {"max_iter": 60,
                                                                                        "early_stopping": False}}}}}


@pytest.fixture
def cfg_path(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(SLOWISH))
    return path


def _search(cfg_path, data, out, *extra):
    return ["search", "--config", str(cfg_path), "--data", str(data), "--out", str(out), "--no-progress",
            "--unblind", *extra]


def _reference(tmp_path, cfg_path, small_h5):
    ref = tmp_path / "ref"
    assert main(_search(cfg_path, small_h5, ref, "--scheduler", "synchronous")) == 0
    return json.loads((ref / "results.json").read_text())


def test_kill_9_mid_run_then_resume(tmp_path, cfg_path, small_h5):
    reference = _reference(tmp_path, cfg_path, small_h5)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sideband.workflows.cli", *_search(cfg_path, small_h5, out, "--scheduler", "synchronous")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "cache").glob("train-*.npz"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in (out / "cache").glob("train-*.npz")}
    assert 2 <= len(done) < 4, "the run should have been killed between training nodes"
    assert not (out / "results.json").exists()
    assert main(_search(cfg_path, small_h5, out, "--scheduler", "synchronous")) == 0
    after = {p: p.stat().st_mtime_ns for p in (out / "cache").glob("train-*.npz")}
    recomputed = [p for p in after if p not in done or after[p] != done[p]]
    assert len(after) == 4 and len(recomputed) == 4 - len(done)  # only the unfinished nodes ran again
    assert json.loads((out / "results.json").read_text()) == reference


def test_worker_killed_during_training_is_retried(tmp_path, cfg_path, small_h5):
    from distributed import Client, LocalCluster

    reference = _reference(tmp_path, cfg_path, small_h5)
    killed = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        def killer():
            deadline = time.time() + 240
            while time.time() < deadline:
                for worker, keys in client.processing().items():
                    if any(str(k).startswith("train-") for k in keys):
                        pid = client.run(os.getpid, workers=[worker])[worker]
                        os.kill(pid, signal.SIGKILL)
                        killed["worker"] = worker
                        return
                time.sleep(0.02)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        code = main(_search(cfg_path, small_h5, tmp_path / "dist", "--scheduler", cluster.scheduler_address))
        thread.join(timeout=5)
    assert killed, "no training node was caught running"
    assert code == 0
    doc = json.loads((tmp_path / "dist" / "results.json").read_text())
    assert doc["results"] == reference["results"]  # only config.compute.scheduler differs


def test_same_config_and_seed_give_identical_results(tmp_path, cfg_path, small_h5):
    a = _reference(tmp_path / "a", cfg_path, small_h5)
    b = _reference(tmp_path / "b", cfg_path, small_h5)
    assert a == b
    assert a["seed"] == 5 and a["versions"]["numpy"] and a["inputs"][0]["content_hash"]
