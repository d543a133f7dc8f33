"""The structure users and contributors rely on: layering, the detector protocol, results schema."""

from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("pipeline", "detectors", "workflows") for p in (ROOT / d).glob("*.py"))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_pipeline_imports_neither_detectors_nor_workflows():
    bad = {p.name: sorted(m for m in _imports(p) if m.startswith(("sideband.detectors", "sideband.workflows")))
           for p in SOURCES if p.parent.name == "pipeline"}
    assert not {k: v for k, v in bad.items() if v}


def test_detectors_use_only_errors_records_and_storage_of_the_pipeline():
    allowed = {"sideband.pipeline.exceptions", "sideband.pipeline.records", "sideband.pipeline.cache"}
    used = {p.name: sorted(m for m in _imports(p) if m.startswith("sideband.") and m not in allowed
                           and not m.startswith("sideband.detectors"))
            for p in SOURCES if p.parent.name == "detectors"}
    assert not {k: v for k, v in used.items() if v}


def test_files_stay_short_and_functions_take_few_positional_parameters():
    long_files = {p.name: n for p in SOURCES if (n := len(p.read_text().splitlines())) > 450}
    assert not long_files
    wide = []
    for p in SOURCES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                pos = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
                if len(pos) > 6:
                    wide.append(f"{p.name}:{node.name}({len(pos)})")
    assert not wide


TINY_DETECTOR = '''
"""A detector kept outside sideband: score = distance of the features from their sideband mean."""
import numpy as np
from pydantic import Field

from sideband.detectors.base import BaseDetector, DetectorParams, check_fitted, check_inputs


class Params(DetectorParams):
    power: float = Field(default=2.0, gt=0)


class Distance(BaseDetector):
    name = "distance"
    Params = Params

    def __init__(self, power=2.0, device="auto", random_state=None):
        self.power = power
        self.device = device
        self.random_state = random_state

    def fit(self, X, m, *, signal_region, y_true=None, X_reference=None, sideband_state=None):
        X, m = check_inputs(X, m)
        sb = (m < signal_region[0]) | (m >= signal_region[1])
        self.mean_, self.std_ = X[sb].mean(axis=0), X[sb].std(axis=0) + 1e-9
        return self

    def score(self, X):
        check_fitted(self, "mean_")
        X, _ = check_inputs(X)
        return (np.abs((X - self.mean_) / self.std_) ** self.power).sum(axis=1)


Detector = Distance
'''


def test_a_new_detector_is_one_file_and_one_config_entry(tmp_path, monkeypatch, small_h5, fast_config):
    from sideband.pipeline.exceptions import ConfigError
    from sideband.workflows.search import run_search

    pkg = tmp_path / "mydetectors"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "distance.py").write_text(textwrap.dedent(TINY_DETECTOR))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = {"mydetectors.distance": {"folds": 2, "params": {"power": 1.0}}}
    res = run_search(fast_config(small_h5, detectors=entry), tmp_path / "out", unblind=True)
    rows = [r for r in res["results"] if r["detector"] == "mydetectors.distance"]
    assert len(rows) == 2 and all(r["n_expected_sr"] > 0 for r in rows)
    with pytest.raises(ConfigError, match=r"mydetectors.distance.params.power"):
        fast_config(small_h5, detectors={"mydetectors.distance": {"params": {"power": -1.0}}})


@pytest.mark.parametrize("params,words", [
    ({"n_ensemble": -3}, ["detectors.cwola.params.n_ensemble", "greater than or equal to 1"]),
    ({"model": "xgb"}, ["detectors.cwola.params.model", "'hgb' or 'mlp'", "'xgb'"]),
    ({"hgb_params": "fast"}, ["detectors.cwola.params.hgb_params", "valid dictionary"]),
])
def test_wrong_detector_values_are_exit_2_before_anything_runs(tmp_path, capsys, params, words):
    import yaml

    from sideband.workflows.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"detectors": {"cwola": {"params": params}}}))
    assert main(["search", "--config", str(cfg), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "out" / "cache").exists()


def test_autoencoder_hidden_must_be_a_list_of_widths(tmp_path):
    from sideband.pipeline.exceptions import ConfigError
    from sideband.workflows.configure import config_from_dict

    with pytest.raises(ConfigError, match=r"detectors.autoencoder.params.hidden.*valid list"):
        config_from_dict({"detectors": {"autoencoder": {"params": {"hidden": "16"}}}})


def test_detector_params_models_match_their_constructors():
    from sideband.detectors import available_detectors, load_detector_class

    for name in available_detectors():
        cls = load_detector_class(name)
        assert set(cls.Params.model_fields) == set(cls().get_params()), name


def test_results_json_follows_its_schema(small_h5, fast_config, tmp_path):
    import jsonschema

    from sideband.workflows.search import run_search

    run_search(fast_config(small_h5), tmp_path / "blind")
    run_search(fast_config(small_h5), tmp_path / "open", unblind=True)
    schema = json.loads((ROOT / "pipeline" / "results.schema.json").read_text())
    for run in ("blind", "open"):
        doc = json.loads((tmp_path / run / "results.json").read_text())
        jsonschema.validate(doc, schema)
    bad = json.loads((tmp_path / "open" / "results.json").read_text())
    bad["results"][0]["selection"] = 2.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
