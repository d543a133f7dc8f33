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


def test_parts_of_one_file_are_samples_of_their_own_and_are_summarised_across(bp, tmp_path, capsys):
    """With --background-parts each seed's part is its own sample; the second table counts each
    sample once, and the background-only points' global Z is counted against the nominal rate."""
    scan = tmp_path / "p"
    for part, obs in ((0, 1100), (1, 1000), (2, 900)):
        _point(scan, f"s-n0-s{part}", n_injected=0, seed=part, sample="aaaa", obs=obs, exp=1000, unc=0)
        doc = json.loads((scan / "points" / f"s-n0-s{part}" / "results.json").read_text())
        doc["inputs"][0]["split"] = {"parts": 3, "part": part}
        (scan / "points" / f"s-n0-s{part}" / "results.json").write_text(json.dumps(doc))
    zg = [2.4, 0.0, 0.5]
    (scan / "inject_results.json").write_text(json.dumps({"points": [
        {"n_inject": 0, "detectors": {"cathode": {"z_global": z}, "none": {"z_global": 3.0}}} for z in zg]
        + [{"n_inject": 190, "detectors": {"cathode": {"z_global": 9.0}}}]}))
    rows = bp.pulls(bp.background_points([scan]))
    assert [r["sample"] for r in rows] == [f"aaaa.h5 (aaaaaaaa) part {k}/3" for k in range(3)]
    (across,) = bp.across_samples(rows)
    pulls = [100 / math.sqrt(1000), 0.0, -100 / math.sqrt(1000)]
    assert across["n_samples"] == 3 and across["pull_mean"] == pytest.approx(0.0, abs=1e-12)
    assert across["pull_sd"] == pytest.approx(math.sqrt(sum(p * p for p in pulls) / 2))
    (rate,) = bp.global_rates([scan])  # "none" is no detector; the signal point is left out
    assert rate == {"detector": "cathode", "n_points": 3, "z_above_1": 1, "z_above_2": 1, "z_max": 2.4}
    assert bp.main([str(scan), "--json", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "over independent samples" in out and "global Z > 1 in 1, > 2 in 1; largest 2.40" in out
    assert set(json.loads((tmp_path / "p.json").read_text())) == {"per_sample", "across_samples", "global", "random_control"}
