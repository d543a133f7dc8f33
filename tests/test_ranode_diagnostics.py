"""`benchmarks/ranode_diagnostics.py` runs with one command on the R&D data and reports, per seed,
the held-out NLL of the sideband flows and what R-Anode fits on pure SR background (slow: it
trains flows on ~100k sideband events; here one epoch each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import shared_file

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_diagnostics_report_nll_and_background_only_fraction(tmp_path):
    data = shared_file("qcd_features.h5").parent
    shared_file("qcd_extra_features.h5")
    cfg = yaml.safe_load((ROOT / "configs" / "benchmark.yaml").read_text())
    cfg["detectors"]["ranode"]["params"] = {
        "flow_params": {"transform": "affine", "n_transforms": 2, "hidden": 16, "epochs": 1, "n_average": 1},
        "signal_flow": {"epochs": 2, "hidden": 8}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "diag.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ranode_diagnostics.py"), "--seeds", "1",
                           "--flows", "2", "--signal-flows", "2", "--fixed-w", "0.01", "--config", str(tmp_path / "cfg.yaml"),
                           "--data-dir", str(data), "--cache", str(tmp_path / "cache"), "--json", str(out)],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "held-out gain over p_bkg" in done.stdout
    (row,) = json.loads(out.read_text())
    assert len(row["test_nll_single"]) == 2 and all(abs(v) < 50 for v in row["test_nll_single"])
    assert 0 < row["w_background_only"] < 1 and 0.005 < row["injected_fraction"] < 0.01
    assert abs(row["heldout_gain"]) < 1 and row["heldout_gain_se"] > 0 and row["n_heldout"] > 1000
    assert set(row["variants"]) == {"w learnt", "w learnt, p_bkg mixture of 2", "w fixed 0.01",
                                    "2 signal flows, log densities averaged", "2 signal flows, densities averaged"}
    assert row["variants"]["w fixed 0.01"]["w"] == pytest.approx(0.01, rel=1e-5)
