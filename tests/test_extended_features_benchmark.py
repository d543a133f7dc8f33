"""`benchmarks/extended_features.py` runs with one command on the small particle-level R&D files
and reports max SIC per detector and feature set, the supervised ceiling included (slow: it
clusters 4,000 events and computes the 54 extended N-subjettiness features)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import shared_file

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_extended_benchmark_reports_every_detector_and_set(tmp_path):
    qcd, sig = shared_file("qcd_particles.h5"), shared_file("signal_3500_500_100_particles.h5")
    out = tmp_path / "ext.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "extended_features.py"), "--qcd", str(qcd),
                           "--signal", str(sig), "--n-inject", "300", "--signal-region", "2800,4500", "--seeds", "1",
                           "--detectors", "supervised,cwola", "--min-background", "5", "--workdir", str(tmp_path / "work"),
                           "--json", str(out)], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["table"]) == {f"{d}:{s}" for d in ("supervised", "cwola")
                                 for s in ("baseline", "extended", "baseline+extended")}
    # the labelled classifier separates this signal (X 500, Y 100 GeV jets) from QCD with either set
    assert res["table"]["supervised:baseline"]["median"] > 2
    assert res["table"]["supervised:extended"]["median"] > 2
    assert all(r["n_test_sig"] > 100 and r["n_test_bkg"] > 50 for r in res["rows"])
