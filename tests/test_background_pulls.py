"""`benchmarks/background_pulls.py`: the calibration table of background-only injection points,
per scan and background sample (seeds of one sample are not independent experiments)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bp():
    spec = importlib.util.spec_from_file_location("background_pulls", ROOT / "benchmarks" / "background_pulls.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _point(scan: Path, name: str, *, n_injected: int, seed: int, sample: str, obs: float, exp: float, unc: float):
    d = scan / "points" / name
    d.mkdir(parents=True)
    tests = [{"window": "3300-3700", "detector": "cathode", "selection": 0.1, "status": "ok", "n_observed_sr": obs,
              "n_expected_sr": exp, "n_expected_sr_unc": unc, "z_local": 2.5 if obs > exp + 2 * unc else 0.0},
             {"window": "3300-3700", "detector": "none", "selection": 1.0, "status": "ok", "n_observed_sr": 1.0,
              "n_expected_sr": 1.0, "n_expected_sr_unc": 0.0}]
    doc = {"n_injected": n_injected, "seed": seed, "results": tests,
           "inputs": [{"path": f"/d/{sample}.h5", "content_hash": sample * 4},
                      {"path": "/d/ref.h5", "content_hash": "ref", "role": "reference"}]}
    (d / "results.json").write_text(json.dumps(doc))


def test_pulls_per_scan_and_sample_skip_signal_points(bp, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _point(a, "s-n0-s1", n_injected=0, seed=1, sample="aaaa", obs=1100, exp=1000, unc=30)
    _point(a, "s-n0-s2", n_injected=0, seed=2, sample="aaaa", obs=1000, exp=1000, unc=30)
    _point(a, "s-n190-s1", n_injected=190, seed=1, sample="aaaa", obs=5000, exp=1000, unc=30)  # not background
    _point(b, "s-n0-s1", n_injected=0, seed=1, sample="bbbb", obs=950, exp=1000, unc=30)
    rows = bp.pulls(bp.background_points([a, b]))
    assert [(r["scan"], r["n_seeds"]) for r in rows] == [(str(a), 2), (str(b), 1)]  # "none" is no detector
    first = 100 / math.sqrt(1000 + 30 ** 2)
    assert rows[0]["pull_mean"] == pytest.approx(first / 2)
    assert rows[0]["pull_sd"] == pytest.approx(first / math.sqrt(2))
    assert rows[0]["ratio_mean"] == pytest.approx(0.05) and rows[0]["z_above_2"] == 1
    assert rows[1]["sample"].startswith("bbbb.h5") and rows[1]["pull_mean"] < 0
    assert bp.main([str(a), str(b)]) == 0
    assert "compare the means across independent samples" in capsys.readouterr().out


def test_no_background_points_is_a_clear_error(bp, tmp_path, capsys):
    _point(tmp_path, "s-n190-s1", n_injected=190, seed=1, sample="aaaa", obs=1, exp=1, unc=0)
    assert bp.main([str(tmp_path)]) == 2
    assert "--counts 0" in capsys.readouterr().err
