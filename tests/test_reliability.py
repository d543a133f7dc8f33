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
SLOWISH = {"seed": 5, "stats": {"selections": [0.1, 0.02]}, "regions": {"signal_region": [3300, 3700]},
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


@pytest.mark.slow  # ~50 s; resuming after a killed process stays in the default run (kill -9 test)
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


@pytest.mark.parametrize("sig,group,code", [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)])
def test_interrupt_stops_quietly_and_the_rerun_recomputes_nothing_finished(tmp_path, cfg_path, small_h5,
                                                                         sig, group, code):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) or SIGTERM (to the main process,
    as a batch system does) during a LocalCluster search: one line, no partial files, resumable."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sideband.workflows.cli", *_search(cfg_path, small_h5, out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "cache").glob("train-*.npz")):
        time.sleep(0.05)
    (os.killpg if group else os.kill)(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "nodes finished and cached; run the same command again to resume" in lines[0], err
    assert not [p for p in out.rglob(".*") if p.is_file()], "partial files left behind"
    assert not (out / "results.json").exists()
    done = {p: p.stat().st_mtime_ns for p in (out / "cache").glob("*.*") if p.is_file()}
    assert main(_search(cfg_path, small_h5, out, "--scheduler", "synchronous")) == 0
    changed = [p.name for p, t in done.items() if p.stat().st_mtime_ns != t]
    assert not changed, f"recomputed finished nodes: {changed}"


def test_a_moved_run_exports_from_another_directory(tmp_path, small_h5, monkeypatch):
    """Run directories are self-contained: move one, export its trigger model from elsewhere."""
    cfg = tmp_path / "ae.yaml"
    cfg.write_text(yaml.safe_dump({"seed": 2, "stats": {"selections": [0.1]}, "regions": {"signal_region": [3300, 3700]},
                                   "detectors": {"autoencoder": {
        "folds": 2, "params": {"hidden": [8], "latent": 2, "epochs": 3}}}}))
    work = tmp_path / "made-here"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["search", "--config", str(cfg), "--data", str(small_h5), "--out", "run1", "--no-progress",
                 "--scheduler", "synchronous"]) == 0
    (work / "run1").rename(tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["export-trigger", "--run", str(tmp_path / "moved"), "--rate", "0.05", "--no-hls"]) == 0
    report = json.loads((tmp_path / "moved" / "trigger" / "trigger_report.json").read_text())
    assert report["background_acceptance"] == pytest.approx(0.05, abs=0.01)
    # and the moved run resumes: every node is read from its cache
    assert main(["search", "--config", str(cfg), "--data", str(small_h5), "--out", str(tmp_path / "moved"),
                 "--no-progress", "--scheduler", "synchronous"]) == 0


def test_unreachable_scheduler_fails_fast(tmp_path, capsys, small_h5):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"compute": {"connect_timeout": 1}}))
    start = time.time()
    assert main(["search", "--config", str(cfg), "--data", str(small_h5), "--out", str(tmp_path / "o"),
                 "--no-progress", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert time.time() - start < 20
    assert "tcp://127.0.0.1:1: could not reach the Dask scheduler" in err and "dask scheduler" in err


def test_internal_errors_are_one_line_and_a_log(tmp_path, capsys, monkeypatch, small_h5):
    import sideband.workflows.search as search

    def boom(*a, **k):
        raise ZeroDivisionError("something inside broke")

    monkeypatch.setattr(search, "build_search_graph", boom)
    (tmp_path / "o").mkdir()
    assert main(["search", "--data", str(small_h5), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error: ZeroDivisionError: something inside broke" in err
    log = Path(err.split("traceback in ")[1].split(";")[0])
    assert log.parent == (tmp_path / "o").resolve() and "Traceback" in log.read_text()
