"""A tiny injection scan end to end, and the HTML reports."""

import json

import pytest
import yaml

from sideband.workflows.cli import main

TINY = {"seed": 1, "stats": {"selections": [0.1, 0.02]}, "regions": {"signal_region": [3300, 3700]},
        "detectors": {"cwola": {"folds": 2, "params": {"n_ensemble": 1, "hgb_params": {"max_iter": 30}}},
                      "supervised": {"folds": 2, "params": {"n_ensemble": 1, "hgb_params": {"max_iter": 30}}}},
        "compute": {"scheduler": "synchronous"}}


@pytest.fixture(scope="module")
def scan(tmp_path_factory, demo_frame):
    tmp = tmp_path_factory.mktemp("inject")
    bkg, sig = tmp / "bkg.h5", tmp / "sig.h5"
    demo_frame[demo_frame.label == 0].iloc[:12_000].to_hdf(bkg, key="df", mode="w")
    demo_frame[demo_frame.label == 1].to_hdf(sig, key="df", mode="w")
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp / "scan"
    assert main(["inject", "--config", str(cfg), "--data", str(bkg), "--signal", str(sig), "--counts", "0,200",
                 "--seeds", "2", "--out", str(out), "--no-progress"]) == 0
    return out, json.loads((out / "inject_results.json").read_text())


def test_every_point_has_its_records(scan):
    out, res = scan
    pts = res["points"]
    assert sorted((p["n_inject"], p["seed"]) for p in pts) == [(0, 1), (0, 2), (200, 1), (200, 2)]
    for p in pts:
        assert p["s_sr"] + p["b_sr"] > 0
        if p["n_inject"] == 0:
            assert p["s_sr"] == 0 and "supervised" not in p["detectors"]  # nothing to learn from
        else:
            assert 0.5 * 200 < p["s_sr"] < 200  # most of the injected signal sits in the SR
            assert p["s_over_sqrt_b"] == pytest.approx(p["s_sr"] / p["b_sr"] ** 0.5)
            sup = p["detectors"]["supervised"]
            assert sup["max_sic"] > 1 and sup["auc"] > 0.6 and len(sup["sic_curve"]["sic"]) > 10
            assert set(p["detectors"]["cwola"]["z"]) == {"0.1", "0.02"}
            assert all(v is not None for v in p["detectors"]["cwola"]["upper_limit"].values())
    assert (out / "points" / "sig-n200-s1" / "results.json").exists()


def test_recorded_config_is_what_ran(scan):
    """--counts, --seeds and --signal are recorded in inject_results.json's config, so rerunning
    from it gives the same scan."""
    _, res = scan
    inj = res["config"]["injection"]
    assert inj["counts"] == [0, 200] and inj["seeds"] == 2 and [s.rsplit("/", 1)[-1] for s in inj["signals"]] == ["sig.h5"]


def test_zero_or_negative_seeds_are_a_one_line_error(tmp_path, demo_frame, capsys):
    sig = tmp_path / "sig.h5"
    demo_frame[demo_frame.label == 1].to_hdf(sig, key="df", mode="w")
    for seeds in ("0", "-1"):
        assert main(["inject", "--signal", str(sig), "--seeds", seeds, "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 2
        assert f"--seeds {seeds}: must be >= 1" in capsys.readouterr().err


def test_summary_has_medians_over_seeds(scan):
    _, res = scan
    rows = {(r["n_inject"], r["detector"]): r for r in res["summary"]}
    assert rows[(200, "supervised")]["n_seeds"] == 2 and rows[(200, "supervised")]["max_sic_median"] > 1
    assert rows[(0, "cwola")]["max_sic_median"] is None  # no signal, no SIC
    assert rows[(200, "none")]["z_best_median"] is not None
    for r in res["summary"]:
        lo, hi = r["z_best_band"]
        assert lo <= r["z_best_median"] <= hi
        lo, hi = r["z_global_band"]
        assert lo <= r["z_global_median"] <= hi
        assert r["z_global_median"] <= r["z_best_median"] + 1e-9  # look-elsewhere never adds significance


#: The blind scan the global Z counts: the 9 windows of the default regions.scan, each with the
#: inclusive test and cwola's 2 selections (supervised is a ceiling, not a search).
SCAN_TESTS = 9 * (1 + 1 * 2)


def test_global_z_counts_every_test_of_the_blind_scan(scan):
    _, res = scan
    lee = res["sensitivity"]["look_elsewhere"]
    assert lee["n_tests"] == SCAN_TESTS and len(lee["scan_windows"]) == 9 and "sqrt(b / b_own)" in lee["construction"]
    for p in res["points"]:
        assert p["look_elsewhere"]["n_tests"] == SCAN_TESTS
        assert p["look_elsewhere"]["windows"]["stands_for"] == {"3300-3700": "3270-3690"}
        assert p["detectors"]["cwola"]["global"]["n_tests"] == SCAN_TESTS
        if "supervised" in p["detectors"]:  # a ceiling: one more detector of the scan, in its own toy run
            assert p["detectors"]["supervised"]["global"]["n_tests"] == SCAN_TESTS + 9 * 2
        for d in p["detectors"].values():
            assert d["z_global"] is not None and 0 <= d["z_global"] <= d["z_best"] + 1e-9


def test_sensitivity_curves_and_crossings(scan):
    _, res = scan
    sens = res["sensitivity"]
    curves = {c["detector"]: c for c in sens["curves"]}
    assert set(curves) == {"none", "cwola", "supervised"}
    cw = curves["cwola"]["points"]
    assert [p["n_inject"] for p in cw] == [0, 200] and all(p["n_seeds"] == 2 for p in cw)
    assert cw[0]["s_over_sqrt_b"] == 0 and cw[1]["s_over_sqrt_b"] > 0
    assert [p["n_inject"] for p in curves["supervised"]["points"]] == [200]  # not run without signal
    xs = {(x["detector"], x["statistic"], x["level"]): x for x in sens["crossings"]}
    assert len(xs) == 3 * 2 * 2
    for x in xs.values():  # a value with its bootstrap uncertainty, or None with the reason
        assert (x["s_over_sqrt_b"] is None) != (x["reason"] is None)
    assert xs[("supervised", "global", 3.0)]["reason"] == "fewer than 2 injection points with a Z"


def test_injection_report_is_self_contained(scan):
    out, _ = scan
    page = (out / "report.html").read_text()
    # sensitivity curves, SIC, limits, SIC curves, spectra (+ training)
    assert page.count("data:image/png;base64,") + page.count("data:image/svg+xml;base64,") >= 6
    assert "<table>" in page and "Summary" in page and "src=\"http" not in page
    assert "Sensitivity curves" in page and "Crossing points" in page
    assert f"Global Z counts <b>{SCAN_TESTS}</b> tests" in page and "3270-3690" in page


def test_search_report_blind_and_unblind(scan, tmp_path, small_h5):
    out, _ = scan
    point = (out / "points" / "sig-n200-s1" / "report.html").read_text()
    assert "SIC curves" in point and "Training curves" in point
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "detectors": {"cwola": TINY["detectors"]["cwola"]}}))
    assert main(["search", "--config", str(cfg), "--data", str(small_h5), "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    blind = (tmp_path / "b" / "report.html").read_text()
    assert "BLINDED" in blind and "SIC curves" not in blind and "<td>blind</td>" in blind


def test_rerun_resumes_every_point(scan, tmp_path):
    out, res = scan
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    before = {p: p.stat().st_mtime_ns for p in (out / "cache").glob("train-*.npz")}
    bkg = out.parent / "bkg.h5"
    sig = out.parent / "sig.h5"
    assert main(["inject", "--config", str(cfg), "--data", str(bkg), "--signal", str(sig), "--counts", "0,200",
                 "--seeds", "2", "--out", str(out), "--no-progress"]) == 0
    after = {p: p.stat().st_mtime_ns for p in (out / "cache").glob("train-*.npz")}
    assert after == before  # nothing retrained
    again = json.loads((out / "inject_results.json").read_text())
    assert again["summary"] == res["summary"] and again["sensitivity"] == res["sensitivity"]  # toys seeded


def test_signal_grid_injects_each_signal_in_its_own_window_at_equal_strength(tmp_path, demo_frame):
    """Two signals of different mass, counts from S/sqrt(B) levels, the sensitivity map."""
    bkg, sig, heavy = tmp_path / "bkg.h5", tmp_path / "sig.h5", tmp_path / "heavy.h5"
    demo_frame[demo_frame.label == 0].iloc[:12_000].to_hdf(bkg, key="df", mode="w")
    s = demo_frame[demo_frame.label == 1]
    s.to_hdf(sig, key="df", mode="w")
    scaled = s.copy()  # every momentum and mass x 1.2: the same signal at 1.2 x its mjj
    for c in ("pxj1", "pyj1", "pzj1", "mj1", "pxj2", "pyj2", "pzj2", "mj2"):
        scaled[c] = s[c] * 1.2
    scaled.to_hdf(heavy, key="df", mode="w")
    tiny = {k: v for k, v in TINY.items() if k != "regions"}  # no signal_region: each signal's own scan window
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**tiny, "detectors": {"cwola": TINY["detectors"]["cwola"]}}))
    out = tmp_path / "grid"
    assert main(["inject", "--config", str(cfg), "--data", str(bkg), "--signal", str(sig), "--signal", str(heavy),
                 "--levels", "0,2", "--seeds", "1", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "inject_results.json").read_text())
    plans = {p["signal"].rsplit("/", 1)[-1]: p for p in res["signals"]}
    assert plans["heavy.h5"]["signal_region"][0] > plans["sig.h5"]["signal_region"][1]  # a higher window
    assert all(p["own_window"] and p["f_sr"] > 0.4 for p in plans.values())
    for p in res["points"]:
        plan = plans[p["signal"].rsplit("/", 1)[-1]]
        lo, hi = plan["signal_region"]
        assert p["window"] == f"{lo:g}-{hi:g}"  # trained and tested in its own window only
        if p["n_inject"] > 0:
            assert p["s_over_sqrt_b"] == pytest.approx(2.0, rel=0.3)
    counts = {name: plan["counts"] for name, plan in plans.items()}
    assert counts["heavy.h5"][1] < counts["sig.h5"][1]  # less background up there: fewer events for S/sqrt(B) 2
    assert "Sensitivity map of the signal grid" in (out / "report.html").read_text()


def test_points_read_their_own_window_and_signals_of_one_name_keep_their_own_folders(tmp_path, demo_frame):
    """With a configured SR and an extra window below it (which sorts first), a point's S, B and Z
    come from the SR it injected into; two signal files named alike write two folders."""
    bkg = tmp_path / "bkg.h5"
    demo_frame[demo_frame.label == 0].iloc[:12_000].to_hdf(bkg, key="df", mode="w")
    s = demo_frame[demo_frame.label == 1]
    sigs = [tmp_path / "a" / "sig.h5", tmp_path / "b" / "sig.h5"]
    for path, half in zip(sigs, (s.iloc[: len(s) // 2], s.iloc[len(s) // 2:])):
        path.parent.mkdir()
        half.to_hdf(path, key="df", mode="w")
    tiny = {**TINY, "regions": {"signal_region": [3300, 3700], "scan_centers": [3100]},
            "detectors": {"cwola": TINY["detectors"]["cwola"]}}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "scan"
    assert main(["inject", "--config", str(cfg), "--data", str(bkg), "--signal", str(sigs[0]), "--signal",
                 str(sigs[1]), "--counts", "120", "--seeds", "1", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "inject_results.json").read_text())
    assert len(res["points"]) == 2 and len(set(res["points_dirs"])) == 2
    assert len({p["signal_name"] for p in res["points"]}) == 2
    for p, pdir in zip(res["points"], res["points_dirs"]):
        windows = {r["window"] for r in json.loads((out / pdir / "results.json").read_text())["results"]}
        assert windows == {"2900-3300", "3300-3700"}
        assert p["window"] == "3300-3700"
        assert p["s_sr"] > 0.6 * 120  # the injected signal sits in 3300-3700, not in 2900-3300
        assert p["detectors"]["cwola"]["z"]


def test_levels_beyond_the_signal_file_are_a_one_line_error(tmp_path, demo_frame, capsys):
    bkg, sig = tmp_path / "bkg.h5", tmp_path / "sig.h5"
    demo_frame[demo_frame.label == 0].iloc[:12_000].to_hdf(bkg, key="df", mode="w")
    demo_frame[demo_frame.label == 1].iloc[:30].to_hdf(sig, key="df", mode="w")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert main(["inject", "--config", str(cfg), "--data", str(bkg), "--signal", str(sig), "--levels", "0,5",
                 "--seeds", "1", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sig.h5" in err[0] and "injection.levels" in err[0] and "the file holds 30" in err[0]


def test_background_parts_give_each_seed_its_own_disjoint_background(tmp_path, demo_frame):
    """--background-parts 2: seed k analyses part k mod 2 of the background file, so the two seeds'
    backgrounds share no event and together are the file; a seed's signal and background-only
    points share its part (paired), S/sqrt(B) levels are per part, and the bands say what they span."""
    import pandas as pd

    bkg, sig = tmp_path / "bkg.h5", tmp_path / "sig.h5"
    demo_frame[demo_frame.label == 0].iloc[:12_000].to_hdf(bkg, key="df", mode="w")
    demo_frame[demo_frame.label == 1].to_hdf(sig, key="df", mode="w")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "detectors": {"cwola": TINY["detectors"]["cwola"]}}))
    out = tmp_path / "parts"
    assert main(["inject", "--config", str(cfg), "--data", str(bkg), "--signal", str(sig), "--levels", "0,2",
                 "--seeds", "2", "--background-parts", "2", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "inject_results.json").read_text())
    assert res["config"]["injection"]["background_parts"] == 2

    def background(p):
        d = out / "points" / f"sig-n{p['n_inject']}-s{p['seed']}"
        doc = json.loads((d / "results.json").read_text())
        ev = pd.read_parquet(d / doc["event_table"])
        ev = ev[ev["label"] == 0] if "label" in ev else ev
        return doc, frozenset(ev[["mjj", "mj1", "mj2", "tau21_j1"]].itertuples(index=False))

    by_seed = {}
    for p in res["points"]:
        doc, events = background(p)
        assert p["background_part"] == [p["seed"] - 1, 2]
        assert doc["inputs"][0]["split"] == {"parts": 2, "part": p["seed"] - 1, "n_file": 12_000, "n_kept": 6_000}
        by_seed.setdefault(p["seed"], []).append(events)
    (a0, a1), (b0, b1) = by_seed[1], by_seed[2]
    assert a0 == a1 and b0 == b1  # a seed's points share its part
    assert len(a0) == len(b0) == 6_000 and not a0 & b0  # disjoint halves of the 12k background events
    plan = res["signals"][0]
    b_parts = [p["b_sr"] for p in res["points"] if p["n_inject"] == 0]  # each part's count in the SR
    assert plan["b_sr"] == round(sum(b_parts) / 2)  # the levels' B: the file's count per part
    assert all(p["s_over_sqrt_b"] == pytest.approx(2.0, rel=0.3) for p in res["points"] if p["n_inject"])
    assert "2 independent background samples" in res["sensitivity"]["band"]


def test_background_parts_and_data_split_are_one_line_errors(tmp_path, demo_frame, capsys):
    sig = tmp_path / "sig.h5"
    demo_frame[demo_frame.label == 1].to_hdf(sig, key="df", mode="w")
    assert main(["inject", "--signal", str(sig), "--background-parts", "0", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    assert "--background-parts 0: must be >= 1" in capsys.readouterr().err
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"split": {"parts": 2, "part": 0}}, "injection": {"background_parts": 4}}))
    assert main(["inject", "--config", str(cfg), "--signal", str(sig), "--out", str(tmp_path / "o2"),
                 "--no-progress"]) == 2
    assert "drop data.split" in capsys.readouterr().err
    cfg.write_text(yaml.safe_dump({"data": {"split": {"parts": 2, "part": 0}}}))
    assert main(["inject", "--config", str(cfg), "--signal", str(sig), "--background-parts", "4",
                 "--out", str(tmp_path / "o3"), "--no-progress"]) == 2
    assert "drop data.split" in capsys.readouterr().err


def test_background_pulls_random_control_cuts_the_points_events_on_random_scores(scan):
    """benchmarks/background_pulls.py --random N: each background-only point's own events, cut at
    the scan's efficiencies on N random scores, give pulls near 0 (the fit's own calibration)."""
    import importlib.util
    import math
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("background_pulls",
                                                  Path(__file__).resolve().parents[1] / "benchmarks" / "background_pulls.py")
    bp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bp)
    out, _ = scan
    docs = bp.background_points([out])
    assert len(docs) == 2
    rows = bp.random_control(docs, 4)
    assert [(r["window"], r["selection"], r["n_tests"]) for r in rows] == [("3300-3700", 0.1, 8), ("3300-3700", 0.02, 8)]
    for r in rows:
        assert math.isfinite(r["pull_mean"]) and abs(r["pull_mean"]) < 3 * r["pull_sd"] / math.sqrt(8) + 0.5
        assert 0.3 < r["pull_sd"] < 2.5
