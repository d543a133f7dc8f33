import pytest

from sideband.pipeline.config import DEFAULT_CONFIG, config_from_dict, load_config
from sideband.pipeline.exceptions import ConfigError


def test_default_config_file_equals_builtin_defaults():
    assert load_config(DEFAULT_CONFIG) == config_from_dict({})
    cfg = load_config()
    assert cfg.regions.signal_region is None  # the blind scan
    assert list(cfg.enabled_detectors()) == ["cwola", "cathode", "autoencoder"]


def test_default_is_a_blind_scan_over_the_spectrum_and_one_window_is_one_line():
    from sideband.pipeline.regions import search_windows

    cfg = load_config()
    windows = search_windows(cfg.regions, cfg.fit.range)
    assert len(windows) >= 8
    centres = [w.center for w in windows]
    assert centres[0] <= 3200 and centres[-1] >= 4700
    for a, b in zip(windows, windows[1:]):
        assert a.sr_lo < b.sr_lo < a.sr_hi < b.sr_hi  # overlapping, half-width steps
        assert 0.10 < (a.sr_hi - a.sr_lo) / a.center < 0.14
    one = config_from_dict({"regions": {"signal_region": [3300, 3700]}})
    assert [w.name for w in search_windows(one.regions, one.fit.range)] == ["3300-3700"]


def test_the_demo_config_is_a_lighter_scan():
    from sideband.pipeline.config import DEMO_CONFIG
    from sideband.pipeline.regions import search_windows

    demo = load_config(DEMO_CONFIG)
    assert 3 <= len(search_windows(demo.regions, demo.fit.range)) < len(search_windows(load_config().regions,
                                                                                     (2800.0, 6000.0)))
    assert set(demo.enabled_detectors()) == {"cwola", "cathode", "autoencoder"}


def test_cwola_trains_on_jet_masses_in_units_of_mjj_the_other_detectors_on_the_shared_inputs():
    """The default and demo searches give CWoLa the mjj-scaled masses (docs/detectors.md: its
    selections then follow the sidebands' fit); CATHODE and the autoencoder keep ``features``."""
    from sideband.pipeline.config import CWOLA_FEATURES, DEMO_CONFIG
    from sideband.workflows.search_graph import _spec

    for cfg in (load_config(), load_config(DEMO_CONFIG)):
        assert _spec(cfg, "cwola", "cpu", "fit")[0].features == CWOLA_FEATURES
        for name in ("cathode", "autoencoder"):
            assert _spec(cfg, name, "cpu", "fit")[0].features == ("mj1", "delta_mj", "tau21_j1", "tau21_j2")
    # the benchmarks (benchmarks/sensitivity.py, features.py) ask the same method
    cfg = load_config()
    assert cfg.detector_features("cwola") == CWOLA_FEATURES
    assert cfg.detector_features("idealized") == tuple(cfg.features)


def test_unknown_key_and_wrong_type_are_listed():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"seed": "x", "regions": {"signal_regoin": [3300, 3700]}})
    msg = str(err.value)
    assert "seed: Input should be a valid integer" in msg
    assert "regions.signal_regoin: unknown key" in msg


def test_semantic_checks():
    with pytest.raises(ConfigError, match=r"features: unknown feature\(s\) \['tau21'\]"):
        config_from_dict({"features": ["mj1", "tau21"]})
    with pytest.raises(ConfigError, match="outside fit.range"):
        config_from_dict({"regions": {"signal_region": [3300, 3700], "scan_centers": [6200]}})
    with pytest.raises(ConfigError, match="scan_centers: needs regions.signal_region"):
        config_from_dict({"regions": {"scan_centers": [3100]}})
    with pytest.raises(ConfigError, match="regions.scan.range.*outside fit.range"):
        config_from_dict({"regions": {"scan": {"range": [3000, 5900]}}})
    with pytest.raises(ConfigError, match="folds"):
        config_from_dict({"detectors": {"cwola": {"folds": 1}}})
    with pytest.raises(ConfigError, match=r"selection efficiencies must lie in \(0, 1\]"):
        config_from_dict({"stats": {"selections": [0.1, 2]}})
    with pytest.raises(ConfigError, match="part 3 must be below parts 3"):
        config_from_dict({"data": {"split": {"parts": 3, "part": 3}}})


def test_data_split_parts_are_disjoint_cover_the_file_and_do_not_depend_on_the_seed():
    import numpy as np

    from sideband.pipeline.table import split_part

    parts = [split_part(1003, 4, k) for k in range(4)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(1003))  # disjoint and complete
    assert {len(p) for p in parts} == {250, 251} and all(np.all(np.diff(p) > 0) for p in parts)
    assert np.array_equal(split_part(1003, 4, 2), parts[2])  # fixed by the file, not by a seed
    assert not np.array_equal(parts[0], np.arange(0, 1003, 4))  # random, not every 4th row (files may be sorted)


def test_overrides_merge_into_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\ndata:\n  chunk_size: 10\n")
    cfg = load_config(path, {"data": {"path": "x.h5"}})
    assert cfg.seed == 1 and cfg.data.chunk_size == 10 and cfg.data.path == "x.h5"


def test_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_unreadable_configs_and_bad_values_are_config_errors(tmp_path):
    """Each of these was a traceback (exit 1) or failed only deep in the run."""
    flat = tmp_path / "flat.yaml"
    flat.write_text("seed 42\n")  # a string, not a mapping: an override used to crash the merge
    with pytest.raises(ConfigError, match="flat.yaml: the top level must be a mapping"):
        load_config(flat, {"seed": 1})
    binary = tmp_path / "events.h5"
    binary.write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match="events.h5: not a text file"):
        load_config(binary)
    with pytest.raises(ConfigError, match="seed"):
        config_from_dict({"seed": -1})  # numpy refuses negative seeds, after the table is loaded
    with pytest.raises(ConfigError, match="compute.scheduler.*'synchronus' is not 'synchronous'"):
        config_from_dict({"compute": {"scheduler": "synchronus"}})
    for ok in ("synchronous", "tcp://10.0.0.1:8786", "node12:8786", "/shared/sched.json", None):
        assert config_from_dict({"compute": {"scheduler": ok}}).compute.scheduler == ok
