"""The curated public surface of each package."""

import importlib

import pytest


@pytest.mark.parametrize("package,expected", [
    ("pipeline", {"Config", "load_config", "read_events", "load_events", "make_windows", "Window",
                  "SidebandError", "SidebandUserError", "InputFileError", "ConfigError", "RegionError",
                  "CANONICAL_COLUMNS", "FEATURE_COLUMNS"}),
    ("detectors", {"BaseDetector", "available_detectors", "load_detector_class", "make_detector"}),
    ("workflows", {"load_config", "run_search", "run_injection", "export_trigger", "fit_spectrum", "generate"}),
])
def test_all_is_curated_and_importable(package, expected):
    mod = importlib.import_module(f"sideband.{package}")
    assert set(mod.__all__) == expected
    for name in mod.__all__:
        assert getattr(mod, name) is not None


def test_every_detector_module_is_registered():
    from sideband.detectors import available_detectors, load_detector_class

    names = available_detectors()
    assert names == ["autoencoder", "cathode", "cwola", "idealized", "lacathode", "ranode", "supervised"]
    for n in names:
        assert load_detector_class(n).name == n


def test_installs_one_import_package(tmp_path):
    """The three folders install under ``sideband``: no bare ``pipeline`` in site-packages."""
    import subprocess
    import sys

    code = ("import importlib.util as u; import sideband.pipeline, sideband.detectors, sideband.workflows; "
            "print([n for n in ('pipeline', 'detectors', 'workflows') if u.find_spec(n)])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
