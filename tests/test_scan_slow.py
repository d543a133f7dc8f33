"""The default blind scan as a user runs it on an LHC-Olympics-sized file (slow: ~10-20 min each
on 2 cores; `python -m pytest -m slow tests/test_scan_slow.py`).

Background only (the R&D QCD sample): no excess, largest global Z < 2. A 4 TeV resonance (not
in the old one-window default) generated with `sideband generate` and injected at S/sqrt(B)
~ 2.5 in its best window: the scan names a window containing 4 TeV with global Z >= 3.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import shared_file

pytestmark = pytest.mark.slow


def _search(tmp_path, *args) -> dict:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sideband.workflows.cli", "search", "--unblind", "--no-progress",
           "--out", str(out), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / "results.json").read_text())


def _best(results: dict) -> dict:
    rows = [r for r in results["results"] if r.get("z_global") is not None and not r.get("flags")]
    return max(rows, key=lambda r: r["z_global"])


def test_background_only_scan_finds_nothing(tmp_path):
    res = _search(tmp_path, "--data", str(shared_file("qcd_features.h5")))
    assert len(res["windows"]) >= 9
    assert {r["detector"] for r in res["results"]} >= {"cwola", "cathode", "autoencoder"}
    assert _best(res)["z_global"] < 2.0


def test_injected_4tev_resonance_is_found_in_its_window(tmp_path):
    pytest.importorskip("pythia8mc")
    qcd = shared_file("qcd_features.h5")
    gen = subprocess.run([sys.executable, "-m", "sideband.workflows.cli", "generate", "signal", "--events", "2000",
                          "--m-res", "4000", "--m-x", "500", "--m-y", "100", "--out", str(tmp_path / "gen"),
                          "--name", "sig4000", "--seed", "7", "--scheduler", "synchronous", "--no-progress"],
                         capture_output=True, text=True, timeout=1800)
    assert gen.returncode == 0, gen.stderr[-2000:]
    # 340 injected: ~240 in the best 480 GeV window on ~9,500 background events, S/sqrt(B) ~ 2.5
    res = _search(tmp_path, "--data", str(qcd), "--inject", str(tmp_path / "gen" / "sig4000_features.h5"),
                  "--n-inject", "340")
    best = _best(res)
    lo, hi = best["sr"]
    assert lo < 4000 < hi, best
    assert best["z_global"] >= 3.0, best
