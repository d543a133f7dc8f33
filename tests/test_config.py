import pytest

from sideband.pipeline.config import DEFAULT_CONFIG, config_from_dict, load_config
from sideband.pipeline.exceptions import ConfigError


def test_default_config_file_equals_builtin_defaults():
    assert load_config(DEFAULT_CONFIG) == config_from_dict({})
    cfg = load_config()
    assert cfg.regions.signal_region == (3300.0, 3700.0)
    assert list(cfg.enabled_detectors()) == ["cwola", "autoencoder"]


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
        config_from_dict({"regions": {"scan_centers": [6200]}})
    with pytest.raises(ConfigError, match="folds"):
        config_from_dict({"detectors": {"cwola": {"folds": 1}}})
    with pytest.raises(ConfigError, match=r"selection efficiencies must lie in \(0, 1\]"):
        config_from_dict({"stats": {"selections": [0.1, 2]}})


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
