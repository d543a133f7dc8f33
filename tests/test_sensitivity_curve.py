"""Sensitivity curves of an injection scan on synthetic points: the blind scan's look-elsewhere model,
global vs local Z, medians and bands over seeds, crossing points (pipeline/sensitivity.py)."""

from __future__ import annotations

import numpy as np
import pytest

from sideband.pipeline.regions import scan_windows
from sideband.pipeline.sensitivity import (background_in_windows, crossing, crossing_text, point_global, scan_model,
                                           sensitivity_curves)
from sideband.workflows.inject import summarise_points

SCAN = [w.to_dict() for w in scan_windows((3100.0, 5000.0), 0.12, 0.5, (2800.0, 6000.0))]  # the default: 9
OWN = ("3300-3700", [3300.0, 3700.0])
SELECTIONS = (0.1, 0.01)


@pytest.fixture(scope="module")
def background():
    """B_w of a falling spectrum, 200k events in 2.8-6 TeV, labelled background; 50 signal events at 3.5 TeV."""
    rng = np.random.default_rng(0)
    m = np.r_[2800.0 * (6000.0 / 2800.0) ** rng.power(0.3, 200_000), rng.normal(3500.0, 150.0, 50)]
    label = np.r_[np.zeros(200_000), np.ones(50)]
    return background_in_windows(m, label, SCAN)


def _rows(z: float, *, detectors=("cwola", "supervised"), window=OWN, b_incl=20_000.0) -> list[dict]:
    """One point's results rows in its own window; the tightest selection of every detector has local Z ``z``."""
    name, sr = window
    rows = [{"window": name, "sr": sr, "detector": "none", "selection": 1.0, "n_expected_sr": b_incl,
             "n_expected_sr_unc": 0.02 * b_incl, "z_local": 0.2, "z_local_asymptotic": 0.2, "p0": 0.42,
             "n_observed_sr": int(b_incl) + 100, "n_signal_sr_truth": 100, "upper_limit": 300.0,
             "upper_limit_expected": 280.0, "z_global": 9.9}]  # a stale single-window global Z: must be replaced
    for det in detectors:
        for sel in SELECTIONS:
            zl = z if sel == min(SELECTIONS) else 0.5
            rows.append({"window": name, "sr": sr, "detector": det, "selection": sel, "n_expected_sr": b_incl * sel,
                         "n_expected_sr_unc": 0.05 * b_incl * sel, "z_local": zl, "z_local_asymptotic": zl,
                         "p0": None, "upper_limit": 50.0, "upper_limit_expected": 40.0})
    return rows


def test_crossing_interpolates_linearly_and_says_why_not():
    assert crossing([0, 1, 2, 3], [0.0, 1.0, 2.0, 4.0], 3.0) == (2.5, None)
    assert crossing([3, 0, 1, 2], [4.0, 0.0, 1.0, 2.0], 3.0) == (2.5, None)  # sorted by S/sqrt(B)
    assert crossing([0, 1, 2, 3], [0.0, 4.0, 1.0, 6.0], 3.0)[0] == pytest.approx(0.75)  # the first rise
    value, reason = crossing([0, 1, 2], [0.0, 2.0, 4.9], 5.0)
    assert value is None and reason.startswith("not reached: median Z at most 4.90 up to S/sqrt(B) 2.00")
    value, reason = crossing([0.5, 1.0], [3.2, 4.0], 3.0)
    assert value is None and reason.startswith("already at or above 3")
    assert crossing([1.0], [4.0], 3.0) == (None, "fewer than 2 injection points with a Z")


def test_scan_model_counts_every_test_of_the_blind_scan(background):
    model, info = scan_model(_rows(3.0), scan=SCAN, background=background, detectors=["cwola"])
    assert len(model) == 9 * (1 + 1 * len(SELECTIONS))  # supervised not a trial here
    assert info["stands_for"] == {"3300-3700": "3270-3690"}  # the own window replaces its most overlapping one
    assert "3270-3690" not in {r["window"] for r in model}
    observed = [r for r in model if r.get("observed", True)]
    assert len(observed) == 3 and all("z_global" not in r for r in observed)
    for r in (r for r in model if not r.get("observed", True)):
        assert r["z_local"] == 0.0 and r["n_expected_sr"] == pytest.approx(r["selection"] * background[r["window"]])
        b_own = 20_000.0 * r["selection"]
        sigma_own = (0.02 if r["detector"] == "none" else 0.05) * b_own
        assert r["n_expected_sr_unc"] == pytest.approx(sigma_own * np.sqrt(r["n_expected_sr"] / b_own))
    # a window that matches a scan window by name replaces it; one overlapping none is added
    same = scan_model(_rows(3.0, window=(SCAN[4]["name"], SCAN[4]["sr"])), scan=SCAN, background=background,
                      detectors=["cwola"])[1]
    assert same["stands_for"] == {SCAN[4]["name"]: SCAN[4]["name"]}
    far, info = scan_model(_rows(3.0, window=("5500-5900", [5500.0, 5900.0])), scan=SCAN, background=background,
                           detectors=["cwola"])
    assert info["stands_for"] == {"5500-5900": None} and len(far) == 10 * 3


def test_global_z_is_below_local_rises_with_it_and_counts_the_whole_scan(background):
    zs = (1.5, 2.5, 3.5)
    glob = [point_global({"results": _rows(z), "ceilings": ["supervised"]}, scan=SCAN, background=background,
                         n_toys=5000, seed=1) for z in zs]
    cw = [g["detectors"]["cwola"] for g in glob]
    assert all(g["n_tests"] == 27 and c["n_tests"] == 27 for g, c in zip(glob, cw))
    assert all(g["detectors"]["supervised"]["n_tests"] == 27 + 9 * 2 for g in glob)  # ceiling: its own toy run
    z_global = [c["z_global"] for c in cw]
    assert all(zg <= zl for zg, zl in zip(z_global, zs))
    assert z_global[0] < z_global[1] < z_global[2] and z_global[2] > 2.0
    # the same point with its own window only: fewer trials, a larger global Z
    alone = point_global({"results": _rows(3.5), "ceilings": ["supervised"]}, scan=[], background={},
                         n_toys=5000, seed=1)
    assert alone["n_tests"] == 3 and alone["detectors"]["cwola"]["z_global"] > z_global[2] + 0.2
    # with the same local Z the ceiling (more trials in its run) is not more significant than the search
    assert glob[2]["detectors"]["supervised"]["z_global"] <= z_global[2] + 1e-9
    off = point_global({"results": _rows(3.5), "ceilings": []}, scan=SCAN, background=background, n_toys=0, seed=1)
    assert off["detectors"]["cwola"]["z_global"] is None and "global_toys" in off["detectors"]["cwola"]["reason"]


def _doc(n: int, seed: int, z: float, background) -> dict:
    dets = ("cwola", "supervised") if n else ("cwola",)
    doc = {"results": _rows(z, detectors=dets), "ceilings": ["supervised"], "detector_metrics": [],
           "point": {"signal": "sig.h5", "signal_name": "sig", "n_inject": n, "seed": seed}}
    for r in doc["results"]:
        if r["detector"] == "none":
            r["n_signal_sr_truth"] = int(0.7 * n)
            r["n_observed_sr"] = 20_000 + int(0.7 * n)
    doc["scan_global"] = point_global(doc, scan=SCAN, background=background, n_toys=5000, seed=seed)
    return doc


def test_summary_and_curves_over_seeds(background):
    z_of = {(0, 1): 0.3, (0, 2): 0.6, (200, 1): 2.0, (200, 2): 3.0, (400, 1): 3.4, (400, 2): 4.0}
    res = summarise_points([_doc(n, s, z, background) for (n, s), z in z_of.items()])
    rows = {(r["n_inject"], r["detector"]): r for r in res["summary"]}
    cw = rows[(200, "cwola")]
    assert cw["n_seeds"] == 2 and cw["z_best_median"] == pytest.approx(2.5) and cw["n_tests_global"] == 27
    assert cw["z_best_band"] == pytest.approx([2.16, 2.84])  # 16th and 84th percentiles of (2, 3)
    assert cw["z_global_band"][0] <= cw["z_global_median"] <= cw["z_global_band"][1] <= cw["z_best_band"][1]
    assert rows[(200, "supervised")]["n_tests_global"] == 45
    sens = res["sensitivity"]
    assert sens["look_elsewhere"]["n_tests"] == 27
    curve = next(c for c in sens["curves"] if c["detector"] == "cwola")["points"]
    x = [p["s_over_sqrt_b"] for p in curve]
    assert x == sorted(x) and x[0] == 0 and x[1] == pytest.approx(140 / np.sqrt(20_000))
    assert [p["z_local_median"] for p in curve] == pytest.approx([0.55, 2.5, 3.7])  # n=0: loose selection 0.5
    xs = {(c["detector"], c["statistic"], c["level"]): c for c in sens["crossings"]}
    local3 = xs[("cwola", "local", 3.0)]
    assert local3["s_over_sqrt_b"] == pytest.approx(x[1] + 0.5 / 1.2 * (x[2] - x[1]))
    assert local3["uncertainty"] > 0 and 0 < local3["bootstrap"]["fraction_crossing"] <= 1
    assert xs[("cwola", "local", 5.0)]["s_over_sqrt_b"] is None
    assert xs[("cwola", "local", 5.0)]["reason"].startswith("not reached")
    glob3 = xs[("cwola", "global", 3.0)]  # the global curve lies below the local one: it crosses later, or never
    assert glob3["s_over_sqrt_b"] is None or glob3["s_over_sqrt_b"] > local3["s_over_sqrt_b"]


def test_identical_seeds_give_a_crossing_without_spread():
    points = [{"signal": "s", "n_inject": n, "seed": k, "s_over_sqrt_b": x,
               "detectors": {"d": {"z_best": 2 * x, "z_global": 2 * x - 0.5}}}
              for n, x in ((0, 0.0), (100, 1.0), (200, 2.0), (300, 3.0)) for k in range(5)]
    xs = {(c["statistic"], c["level"]): c for c in sensitivity_curves(points)["crossings"]}
    assert xs[("local", 3.0)]["s_over_sqrt_b"] == pytest.approx(1.5) and xs[("local", 3.0)]["uncertainty"] == 0
    assert xs[("global", 5.0)]["s_over_sqrt_b"] == pytest.approx(2.75)
    assert xs[("global", 5.0)]["bootstrap"]["fraction_crossing"] == 1


def test_a_blind_scan_outside_the_fit_range_is_a_user_error(tmp_path):
    from sideband.pipeline.exceptions import SidebandUserError
    from sideband.workflows.configure import config_from_dict
    from sideband.workflows.inject import run_injection

    sig = tmp_path / "sig.h5"
    sig.write_text("")
    cfg = config_from_dict({"regions": {"signal_region": [3300, 3700], "scan": {"range": [5700, 5800]}},
                            "detectors": {"cwola": {}}, "compute": {"scheduler": "synchronous"}})  # SR to 6040 GeV
    with pytest.raises(SidebandUserError, match=r"^regions\.scan: .*set regions\.scan\.range inside fit\.range"):
        run_injection(cfg, tmp_path / "out", counts=[0], seeds=1, signals=[str(sig)])


def test_a_crossing_at_the_top_point_has_an_unbounded_upper_side():
    """The median curve just reaches 3 at the largest point: a third of the seed resamples never
    do, so the band is open upwards instead of shrinking to the crossings that exist."""
    points = [{"signal": "s", "n_inject": n, "seed": k, "s_over_sqrt_b": x,
               "detectors": {"d": {"z_global": mu + dz, "z_best": mu + dz + 1}}}
              for n, x, mu in ((100, 1.0, 1.0), (200, 2.0, 2.0), (300, 3.0, 3.05))
              for k, dz in enumerate((-1.0, -0.5, 0.0, 0.5, 1.0))]
    x = next(c for c in sensitivity_curves(points)["crossings"] if c["statistic"] == "global" and c["level"] == 3.0)
    assert x["s_over_sqrt_b"] == pytest.approx(2 + 1 / 1.05)
    assert 0.2 < x["bootstrap"]["fraction_above"] < 0.45 and x["bootstrap"]["band"][1] is None
    assert x["uncertainty_high"] is None and x["uncertainty"] is None and x["uncertainty_low"] > 0
    assert "+unbounded" in crossing_text(x)
    # a curve whose resamples nearly all cross keeps a two-sided band around the value
    y = next(c for c in sensitivity_curves(points)["crossings"] if c["statistic"] == "local" and c["level"] == 3.0)
    assert y["uncertainty_low"] > 0 and y["uncertainty_high"] > 0 and y["bootstrap"]["fraction_crossing"] > 0.9


def test_the_tables_say_the_seeds_share_the_background():
    """The background-only rows of several seeds are one background sample: a user reading their
    band as a calibration over independent experiments would be misled, so the table says it."""
    from sideband.pipeline.sensitivity import format_sensitivity

    points = [{"signal": "s", "n_inject": n, "seed": k, "s_over_sqrt_b": x,
               "detectors": {"d": {"z_best": 2 * x + 0.1 * k, "z_global": x}}}
              for n, x in ((0, 0.0), (100, 1.0)) for k in range(3)]
    text = format_sensitivity(sensitivity_curves(points))
    assert "not the background events" in text and "independent background samples" in text


def test_pooled_scans_group_by_level_and_count_each_scans_parts_as_samples(tmp_path):
    """benchmarks/sensitivity_curve.py --results A --results B: the points of two scans (say one
    per background file, each split into parts) form one curve per S/sqrt(B) level although the
    files give slightly different counts; scans with different look-elsewhere are refused."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("sensitivity_curve",
                                                  Path(__file__).resolve().parents[1] / "benchmarks" / "sensitivity_curve.py")
    sc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sc)

    def scan(counts, shift, n_tests=36):
        pts = [{"signal": "/d/sig.h5", "n_inject": n, "seed": k, "background_part": [k, 2], "s_over_sqrt_b": x,
                "detectors": {"cwola": {"z_best": 3 * x + shift, "z_global": 2.5 * x + shift}}}
               for n, x in zip(counts, (0.0, 1.0, 2.0)) for k in range(2)]
        plan = {"signal": "/d/sig.h5", "counts": counts, "levels": [0.0, 1.0, 2.0], "f_sr": 0.7, "b_sr": 4200}
        return {"points": pts, "signals": [plan],
                "sensitivity": {"look_elsewhere": {"n_tests": n_tests}, "band": "b"}}

    pooled = sc.pool_scans([scan([0, 91, 183], 0.0), scan([0, 92, 184], 0.2)], ["a", "b"])
    (curve,) = pooled["sensitivity"]["curves"]
    assert [(r["n_inject"], r["n_seeds"]) for r in curve["points"]] == [(0, 4), (91, 4), (183, 4)]
    assert "4 distinct background samples" in pooled["sensitivity"]["band"]
    x3 = next(x for x in pooled["sensitivity"]["crossings"] if x["statistic"] == "global" and x["level"] == 3.0)
    assert 1.0 < x3["s_over_sqrt_b"] < 1.2  # median global Z 2.6 at 1, 5.1 at 2
    with pytest.raises(SystemExit, match="different look-elsewhere"):
        sc.pool_scans([scan([0, 91, 183], 0.0), scan([0, 92, 184], 0.0, n_tests=40)], ["a", "b"])
    for name, res in (("a", scan([0, 91, 183], 0.0)), ("b", scan([0, 92, 184], 0.2))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "inject_results.json").write_text(json.dumps(res))
    assert sc.main(["--results", str(tmp_path / "a"), "--results", str(tmp_path / "b")]) == 0
