import json

import numpy as np
import pandas as pd
import pytest

from sideband.pipeline.regions import make_windows
from sideband.workflows.search import run_search
from sideband.workflows.search_graph import build_search_graph


@pytest.fixture(scope="module")
def searched(tmp_path_factory, small_h5):
    from sideband.workflows.configure import config_from_dict

    cfg = config_from_dict({
        "seed": 3, "data": {"path": str(small_h5)}, "stats": {"selections": [0.1, 0.02]},
        "regions": {"signal_region": [3300, 3700]},
        "detectors": {"cwola": {"folds": 3, "params": {"n_ensemble": 1, "hgb_params": {"max_iter": 30}}}},
        "compute": {"scheduler": "synchronous"},
    })
    out = tmp_path_factory.mktemp("search")
    return cfg, out, run_search(cfg, out, unblind=True)


def test_results_have_one_entry_per_window_detector_selection(searched):
    cfg, out, res = searched
    keys = {(r["window"], r["detector"], r["selection"]) for r in res["results"]}
    assert keys == {("3300-3700", "none", 1.0), ("3300-3700", "cwola", 0.1), ("3300-3700", "cwola", 0.02)}
    for r in res["results"]:
        for field in ("window", "detector", "selection", "n_selected", "z_local", "upper_limit"):
            assert field in r
    assert res["inputs"][0]["content_hash"] and res["seed"] == 3
    assert (out / "plots" / "mjj_cwola_3300-3700.png").stat().st_size > 1000


def test_small_background_tests_get_toy_based_p_values(searched):
    cfg, out, res = searched
    rows = [r for r in res["results"] if r["n_expected_sr"] is not None]
    assert any(r["n_expected_sr"] < cfg.stats.toys_below for r in rows)
    for r in rows:
        assert r["z_local_asymptotic"] is not None
        if r["n_expected_sr"] < cfg.stats.toys_below:
            assert r["p_value_method"] == "toys" or (r["p_value_method"].startswith("asymptotic (beyond toy reach")
                                                     and r["p0_toys"]["bound"])
            assert r["p0_toys"]["n_toys"] >= 500 or (r["z_local"] == 0 and r["p0"] == 1.0)
            assert r["p0"] == r["p0_toys"]["p0"]
        else:
            assert r["p_value_method"] == "asymptotic" and r["z_local"] == r["z_local_asymptotic"]
        assert r["p_global"] >= r["p0"]


def test_selection_keeps_the_requested_fraction_of_the_sidebands(searched):
    cfg, out, res = searched
    rows = {(r["detector"], r["selection"]): r for r in res["results"]}
    n_sb = rows[("none", 1.0)]["n_selected_sidebands"]
    assert rows[("cwola", 0.1)]["n_selected_sidebands"] == pytest.approx(0.1 * n_sb, abs=2)
    assert rows[("cwola", 0.02)]["n_selected_sidebands"] == pytest.approx(0.02 * n_sb, abs=2)


def test_no_event_is_scored_by_a_model_that_trained_on_it(searched):
    cfg, out, _ = searched
    events = pd.read_parquet(next((out / "cache").glob("table-*.parquet")))
    (w,) = make_windows(cfg.regions.signal_region, cfg.fit.range)
    in_win = w.in_window(events["mjj"].to_numpy())
    folds = sorted((out / "cache").glob("train-*-f*.npz"))
    assert len(folds) == 3
    seen = np.zeros(len(events), dtype=int)
    for path in folds:
        with np.load(path) as z:
            scores, heldout, train = z["scores"], z["heldout"], z["train"]
        assert not np.any(train & heldout)
        assert np.all(np.isnan(scores[train])) and np.all(np.isfinite(scores[~train]))
        assert not np.any(train & ~in_win)  # trains only on SR + SB
        seen += heldout
    np.testing.assert_array_equal(seen, in_win.astype(int))  # every window event held out once
    with np.load(next((out / "cache").glob("scores-*.npz"))) as z:
        owner = z["owner"]
    for i, path in enumerate(folds):
        with np.load(path) as zf:
            assert np.all(owner[zf["heldout"]] == i)


def test_rerun_resumes_from_cached_nodes(searched, tmp_path):
    cfg, out, res = searched
    cache = out / "cache"
    victim = sorted(cache.glob("train-*-f*.npz"))[1]
    victim.unlink()
    for p in cache.glob("scores-*.npz"):
        p.unlink()
    for p in cache.glob("stats-*.json"):
        p.unlink()
    before = {p: p.stat().st_mtime_ns for p in cache.glob("train-*.npz")}
    res2 = run_search(cfg, out, unblind=True)
    after = {p: p.stat().st_mtime_ns for p in cache.glob("train-*.npz")}
    assert victim in after and all(after[p] == t for p, t in before.items())  # only the victim retrained
    assert res2["results"] == res["results"]


def test_dask_local_cluster_gives_same_results(searched, tmp_path):
    cfg, out, res = searched
    dist = cfg.model_copy(update={"compute": cfg.compute.model_copy(
        update={"scheduler": None, "n_workers": 2, "processes": False})})
    res2 = run_search(dist, tmp_path / "dist", unblind=True)
    assert res2["results"] == res["results"]


def test_graph_has_one_training_node_per_window_detector_fold(small_h5, fast_config, tmp_path):
    cfg = fast_config(small_h5, regions={"signal_region": [3300, 3700], "scan_centers": [3100, 3900]})
    graph, windows = build_search_graph(cfg, tmp_path)
    kinds = [n.kind for n in graph.nodes.values()]
    assert len(windows) == 3
    assert kinds.count("train") == 3 * 2 and kinds.count("merge") == 3
    assert kinds.count("stats") == 3 * 2 and kinds.count("report") == 1
    assert graph.final.startswith("report-")
    assert all(n.resources is None for n in graph.nodes.values())


@pytest.mark.parametrize("device,gpu_kinds", [("auto", {"prepare"}), ("cuda", {"prepare", "train"}), ("cpu", set())])
def test_device_policy_sends_only_the_stages_that_pay_to_the_gpu(small_h5, fast_config, tmp_path, monkeypatch,
                                                                  device, gpu_kinds):
    """On a (faked) GPU machine, auto gives the GPU to the CATHODE flow alone (measured faster there;
    the autoencoder ran 0.4x and the MLP 0.6x of their 2-core CPU speed on an H200), cuda to every
    torch stage, cpu to none; each node's device parameter matches where it is placed."""
    from sideband.workflows import search_graph

    monkeypatch.setattr(search_graph, "cuda_visible", lambda: 1)
    dets = {"cathode": {"folds": 2, "params": {"model": "mlp"}}, "autoencoder": {"folds": 2},
            "cwola": {"folds": 2}}
    cfg = fast_config(small_h5, detectors=dets, compute={"scheduler": "synchronous", "device": device})
    graph, _ = build_search_graph(cfg, tmp_path)
    placed = {(n.kind, n.kwargs["spec"].name, n.kwargs["spec"].params.get("device"), bool(n.resources))
              for n in graph.nodes.values() if n.kind in ("prepare", "train")}
    on_gpu = {k for k, _, _, gpu in placed if gpu}
    assert on_gpu == gpu_kinds
    assert all((dev == "cuda") == gpu for _, _, dev, gpu in placed if dev is not None)
    if device == "cuda":  # an explicit cuda puts the boosted trees nowhere near the GPU still
        assert not any(gpu for _, name, _, gpu in placed if name == "cwola")


def test_sideband_stage_runs_once_per_window(small_h5, fast_config, tmp_path):
    cathode = {"folds": 2, "params": {"n_ensemble": 1, "hgb_params": {"max_iter": 10}, "oversampling": 1.0,
                                      "flow_params": {"n_transforms": 1, "hidden": 8, "epochs": 2, "n_average": 1}}}
    cfg = fast_config(small_h5, detectors={"cathode": cathode}, stats={"selections": [0.1]})
    graph, _ = build_search_graph(cfg, tmp_path)
    prepare = [n for n in graph.nodes.values() if n.kind == "prepare"]
    trains = [n for n in graph.nodes.values() if n.kind == "train"]
    assert len(prepare) == 1 and len(trains) == 2
    assert all(n.kwargs["stage"].key == prepare[0].key for n in trains)  # every fold uses the one flow
    res = run_search(cfg, tmp_path / "out")
    assert {r["detector"] for r in res["results"]} == {"none", "cathode"}
    assert len(list((tmp_path / "out" / "cache").glob("prepare-*.pkl"))) == 1


def test_shared_sideband_stage_serves_several_windows_without_seeing_their_signal_regions(
        small_h5, fast_config, tmp_path, monkeypatch):
    from sideband.detectors.cathode import Cathode

    cathode = {"folds": 2, "shared_stage": True,
               "params": {"n_ensemble": 1, "hgb_params": {"max_iter": 10}, "oversampling": 1.0,
                          "flow_params": {"n_transforms": 1, "hidden": 8, "epochs": 2, "n_average": 1}}}
    regions = {"signal_region": [3000, 3200], "scan_centers": [3500, 3600]}  # 3400-3600 overlaps 3500-3700
    cfg = fast_config(small_h5, detectors={"cathode": cathode}, stats={"selections": [0.1]}, regions=regions)
    graph, windows = build_search_graph(cfg, tmp_path)
    prepare = [n for n in graph.nodes.values() if n.kind == "prepare"]
    assert len(windows) == 3 and len(prepare) == 2  # 3000-3200 shares with one of the two overlapping windows
    seen = []
    fit_sidebands = Cathode.fit_sidebands

    def spy(self, X, m, *, signal_region):
        seen.append(m.copy())
        return fit_sidebands(self, X, m, signal_region=signal_region)

    monkeypatch.setattr(Cathode, "fit_sidebands", spy)
    res = run_search(cfg, tmp_path / "out")
    assert len(seen) == 2
    stages = {n.key: n for n in prepare}
    for t in (n for n in graph.nodes.values() if n.kind == "train"):
        w = t.kwargs["window"]
        node = stages[t.kwargs["stage"].key]
        assert w in node.kwargs["windows"]

    def inside(m, lo, hi):
        return int(((m >= lo) & (m < hi)).sum())

    # groups: (3000-3200, 3400-3600) and (3500-3700); no flow saw an event in an SR it serves
    shared = [m for m in seen if inside(m, 3000, 3200) == 0]
    single = [m for m in seen if inside(m, 3000, 3200) > 0]
    assert len(shared) == 1 and len(single) == 1
    assert inside(shared[0], 3400, 3600) == 0 and inside(shared[0], 3600, 3700) > 0
    assert inside(single[0], 3500, 3700) == 0 and inside(single[0], 3400, 3500) > 0
    assert {r["detector"] for r in res["results"]} == {"none", "cathode"}
    assert len(list((tmp_path / "out" / "cache").glob("prepare-*.pkl"))) == 2


def test_folds_on_a_changed_sideband_stage_are_new_nodes(small_h5, fast_config, tmp_path):
    """A window's folds are keyed by its stage: when the stage changes (here its group of windows,
    with the window and the fold parameters as they were) the cached folds of the old stage are not
    reused."""
    cathode = {"folds": 2, "shared_stage": True,
               "params": {"n_ensemble": 1, "hgb_params": {"max_iter": 10}, "oversampling": 1.0,
                          "flow_params": {"n_transforms": 1, "hidden": 8, "epochs": 2, "n_average": 1}}}

    def folds_of_first_window(centers):
        regions = {"signal_region": [3000, 3200], "scan_centers": centers}
        cfg = fast_config(small_h5, detectors={"cathode": cathode}, stats={"selections": [0.1]}, regions=regions)
        graph, windows = build_search_graph(cfg, tmp_path)
        trains = [n for n in graph.nodes.values() if n.kind == "train" and n.kwargs["window"] == windows[0]]
        assert windows[0].name.startswith("3000") and len(trains) == 2
        return {n.kwargs["stage"].key for n in trains}, {n.key for n in trains}

    stage_a, keys_a = folds_of_first_window([3500, 3600])  # 3000-3200 shares a flow with 3400-3600
    stage_b, keys_b = folds_of_first_window([3600])        # ... with 3500-3700
    assert stage_a != stage_b
    assert not keys_a & keys_b


def test_a_seed_set_in_the_detector_params_is_part_of_the_sideband_stage_key(small_h5, fast_config, tmp_path):
    """params.random_state seeds the flow: a run with another one must not reuse the cached flow."""
    def stage_keys(**extra):
        cathode = {"folds": 2, "params": {"n_ensemble": 1, "flow_params": {"n_transforms": 1, "epochs": 2}, **extra}}
        cfg = fast_config(small_h5, detectors={"cathode": cathode}, stats={"selections": [0.1]})
        graph, _ = build_search_graph(cfg, tmp_path)
        return {n.key for n in graph.nodes.values() if n.kind == "prepare"}

    assert stage_keys(random_state=1) != stage_keys(random_state=2)
    assert stage_keys() != stage_keys(random_state=1)


def test_truth_detectors_in_the_graph(small_h5, fast_config, tmp_path):
    from sideband.pipeline.exceptions import ConfigError

    tiny = {"folds": 2, "params": {"n_ensemble": 1, "hgb_params": {"max_iter": 10}}}
    with pytest.raises(ConfigError, match="set data.reference"):
        fast_config(small_h5, detectors={"idealized": tiny})
    cfg = fast_config(small_h5, detectors={"supervised": tiny, "idealized": tiny},
                      data={"path": str(small_h5), "reference": str(small_h5)})
    res = run_search(cfg, tmp_path / "out", unblind=True)
    rows = {(r["detector"], r["selection"]): r for r in res["results"]}
    # with labels, the supervised selection keeps far more signal than the inclusive spectrum's share
    sup = rows[("supervised", 0.1)]
    assert sup["n_signal_sr_truth"] > 3 * 0.1 * rows[("none", 1.0)]["n_signal_sr_truth"]
    assert any(s.get("role") == "reference" for s in res["inputs"])


def test_blinded_search_hides_signal_region_data(searched, tmp_path):
    cfg, out, unblinded = searched
    res = run_search(cfg, out)  # default: blind; reuses the trained nodes
    assert res["blinded"] is True and unblinded["blinded"] is False
    text = (out / "results.json").read_text()
    for r in res["results"]:
        assert r["z_local"] is None and r["n_observed_sr"] is None and r["upper_limit"] is None
        assert r["n_selected"] is None and r["n_signal_sr_truth"] is None
        assert r["upper_limit_expected"] > 0 and r["n_expected_sr"] > 0
    by_key = {(r["detector"], r["selection"]): r for r in unblinded["results"]}
    for r in res["results"]:
        u = by_key[(r["detector"], r["selection"])]
        assert r["n_expected_sr"] == u["n_expected_sr"]  # the sideband fit does not see the SR
        assert r["n_selected_sidebands"] == u["n_selected_sidebands"]
    for stats_file in (out / "cache").glob("stats-*.json"):
        doc = json.loads(stats_file.read_text())
        if doc["rows"][0]["n_observed_sr"] is None:  # blinded node outputs hide SR bins too
            assert all(c is None for s in doc["spectra"] for c, sr in zip(s["counts"], s["sr_bins"]) if sr)
    assert '"blinded": true' in text


def test_gp_background_in_the_search(small_h5, fast_config, tmp_path):
    cfg = fast_config(small_h5, fit={"background": "gp"}, stats={"selections": [0.1]})
    res = run_search(cfg, tmp_path / "out", unblind=True)
    rows = [r for r in res["results"] if r["fit"] is not None]
    assert rows and all(r["fit"]["background"] == "gp" and r["gp"]["model"] == "gp" for r in rows)
    for r in rows:
        assert r["n_expected_sr"] > 0 and r["n_expected_sr_unc"] > 0
        assert "hyperparameters" in r["gp"] and isinstance(r["gp"]["at_bound"], list)
    # pseudo-experiments of the GP procedure wherever an excess sits on a background below
    # stats.toys_below (the asymptotic formula only above it)
    excess = [r for r in rows if r["n_expected_sr"] < cfg.stats.toys_below and r["z_local_asymptotic"] > 0]
    assert excess and all(r["p_value_method"] == "toys" and r["p0_toys"]["null"].startswith("GP posterior") for r in excess)


def test_lacathode_trains_on_cathodes_flow_when_their_flows_agree(small_h5, fast_config, tmp_path):
    """One flow per window serves CATHODE and LaCATHODE (same flow settings); different flow
    settings are different stages."""
    flow = {"n_transforms": 1, "hidden": 8, "epochs": 2, "n_average": 1}
    det = {"folds": 2, "params": {"n_ensemble": 1, "hgb_params": {"max_iter": 10}, "oversampling": 1.0,
                                  "flow_params": flow}}
    cfg = fast_config(small_h5, detectors={"cathode": det, "lacathode": det}, stats={"selections": [0.1]})
    graph, _ = build_search_graph(cfg, tmp_path)
    prepare = [n for n in graph.nodes.values() if n.kind == "prepare"]
    assert len(prepare) == 1
    assert {n.kwargs["stage"].key for n in graph.nodes.values() if n.kind == "train"} == {prepare[0].key}
    res = run_search(cfg, tmp_path / "out")
    assert {r["detector"] for r in res["results"]} == {"none", "cathode", "lacathode"}
    other = {**det, "params": {**det["params"], "flow_params": {**flow, "hidden": 12}}}
    cfg2 = fast_config(small_h5, detectors={"cathode": det, "lacathode": other}, stats={"selections": [0.1]})
    assert sum(n.kind == "prepare" for n in build_search_graph(cfg2, tmp_path / "two")[0].nodes.values()) == 2
