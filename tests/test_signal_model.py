"""``sideband search --signal-model``: a signal template through the trained selections.

One small search (12,000 demo events, one window, cwola + a tiny autoencoder, 2 folds each)
with a template of demo signal events that are not in the searched data; reruns reuse the
trained folds (only the statistics rerun).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sideband.workflows.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def template_h5(tmp_path_factory, demo_frame) -> Path:
    """Demo signal events that are not among the 12,000 data events of ``small_h5``."""
    path = tmp_path_factory.mktemp("signal") / "template.h5"
    rest = demo_frame.iloc[12_000:]
    rest[rest["label"] == 1].to_hdf(path, key="df", mode="w")
    return path


@pytest.fixture(scope="module")
def config_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "sm.yaml"
    path.write_text(yaml.safe_dump({
        "seed": 3, "regions": {"signal_region": [3300, 3700]},
        "stats": {"selections": [0.1, 0.02], "local_toys": 100, "global_toys": 200},
        "detectors": {"cwola": {"folds": 2, "params": {"n_ensemble": 1, "hgb_params": {"max_iter": 20}}},
                      "autoencoder": {"folds": 2, "params": {"hidden": [8], "latent": 2, "epochs": 4}}},
    }))
    return path


@pytest.fixture(scope="module")
def run(small_h5, config_yaml, template_h5, tmp_path_factory):
    """``run(*extra_flags)`` -> results.json of a search into one output directory (shared cache)."""
    out = tmp_path_factory.mktemp("search") / "out"

    def go(*extra: str) -> dict:
        argv = ["search", "--config", str(config_yaml), "--data", str(small_h5), "--out", str(out),
                "--scheduler", "synchronous", "--no-progress", "--signal-model", str(template_h5), *extra]
        assert main(argv) == 0
        return json.loads((out / "results.json").read_text()) | {"_out": str(out)}

    return go


@pytest.fixture(scope="module")
def unblind(run) -> dict:
    return run("--unblind")


def _rows(doc) -> dict:
    return {(r["detector"], r["selection"]): r for r in doc["results"]}


def test_efficiency_limits_and_expected_z_of_every_test(unblind, template_h5):
    import jsonschema

    jsonschema.validate({k: v for k, v in unblind.items() if k != "_out"},
                        json.loads((ROOT / "pipeline" / "results.schema.json").read_text()))
    n_template = len(pd.read_hdf(template_h5, "df"))
    info = unblind["signal_model"]
    assert info["n_events"] == n_template and info["signal_events"] == n_template
    assert "template" in info["signal_events_from"]
    rows = _rows(unblind)
    mjj = _template_mjj(template_h5)
    assert rows[("none", 1.0)]["signal_template_passed"] == int(np.sum((mjj >= 3300) & (mjj < 3700)))
    for r in unblind["results"]:
        assert r["signal_template_events"] == n_template and r["signal_events"] == n_template
        eff = r["signal_efficiency"]
        if eff is None:  # only a detector whose folds kept no models, and then it says so
            assert r["detector"] == "cwola" and "no saved fold models" in r["signal_note"]
            continue
        assert 0.0 <= eff <= 1.0 and eff == r["signal_template_passed"] / n_template
        assert r["signal_efficiency_unc"] == pytest.approx(np.sqrt(eff * (1 - eff) / n_template))
        assert r["signal_expected_sr"] == pytest.approx(eff * n_template)
        assert r["signal_z_expected"] >= 0
        if eff == 0:
            assert r["signal_upper_limit"] is None and "efficiency 0" in r["signal_note"]
            continue
        assert r["signal_upper_limit"] == pytest.approx(r["upper_limit"] / eff, rel=1e-12)
        assert r["signal_upper_limit_expected"] == pytest.approx(r["upper_limit_expected"] / eff, rel=1e-12)
        assert r["signal_upper_limit_expected_band"] == pytest.approx(
            [v / eff for v in r["upper_limit_expected_band"]], rel=1e-12)
    # The autoencoder keeps its fold models, so its template is scored; a tighter selection keeps fewer events.
    ae = [rows[("autoencoder", s)]["signal_template_passed"] for s in (0.1, 0.02)]
    assert rows[("none", 1.0)]["signal_template_passed"] >= ae[0] >= ae[1]
    assert all(rows[("autoencoder", s)]["signal_efficiency"] is not None for s in (0.1, 0.02))


def _template_mjj(path) -> np.ndarray:
    from sideband.pipeline.io import read_events

    return read_events(path)[0]["mjj"].to_numpy()


def test_expected_z_is_the_asimov_z_of_the_test_and_grows_with_signal_events(unblind, run):
    from sideband.pipeline.stats import discovery_and_limit

    for r in unblind["results"]:
        if r["signal_z_expected"] is not None:  # pyhf's q0 on the Asimov data set of the test's model
            b, s, sigma_b = r["n_expected_sr"], r["signal_expected_sr"], r["n_expected_sr_unc"]
            asimov = discovery_and_limit(b + s, b, sigma_b, limit=False)
            assert r["signal_z_expected"] == pytest.approx(asimov.z_local, abs=1e-5)
    many = run("--unblind", "--signal-events", "3000")  # more than the 276 template events of the default
    info = many["signal_model"]
    assert info["signal_events"] == 3000 and "--signal-events" in info["signal_events_from"]
    for key, r in _rows(many).items():
        low = _rows(unblind)[key]
        assert r["signal_efficiency"] == low["signal_efficiency"]
        assert r["signal_upper_limit"] == low["signal_upper_limit"]
        if r["signal_efficiency"]:
            assert r["signal_z_expected"] > low["signal_z_expected"]
            assert r["signal_expected_sr"] == pytest.approx(3000 * r["signal_efficiency"])


def test_blind_run_has_expected_but_no_observed_limits(unblind, run):
    blind = run()
    assert blind["blinded"]
    open_rows = _rows(unblind)
    for key, r in _rows(blind).items():
        assert r["signal_upper_limit"] is None and r["upper_limit"] is None
        # the threshold and the sideband fit are the same: so are the efficiency and the expected Z
        assert r["signal_efficiency"] == open_rows[key]["signal_efficiency"]
        if r["signal_efficiency"]:
            assert r["signal_z_expected"] == pytest.approx(open_rows[key]["signal_z_expected"])
            assert r["signal_upper_limit_expected"] == pytest.approx(r["upper_limit_expected"] / r["signal_efficiency"])
            assert len(r["signal_upper_limit_expected_band"]) == 5
    page = (Path(blind["_out"]) / "report.html").read_text()
    assert "UL95 prod. exp." in page and "Signal model" in page


def test_template_events_are_scored_as_unseen_data_events(unblind):
    """Data events outside the window, fed through score_template as a template, get the score the
    search gives such events (both are events no fold model trained on): one fold model's value,
    that model's raw score through its CDF on its own held-out events, with the saved models
    reproducing the in-run scores."""
    from sideband.pipeline.records import EventTable, load_record
    from sideband.workflows.signal_model import score_template

    cache = Path(unblind["_out"]) / "cache"
    table = load_record(next(cache.glob("table-*.json")))
    folds = {}
    for path in sorted(cache.glob("train-*-f*.npz")):
        folds.setdefault(path.name.split("-")[1], []).append(load_record(path))
    tkey, kept = next((k, f) for k, f in folds.items() if all(x.model_path for x in f))
    merged = load_record(cache / f"scores-{tkey}.npz").scores
    events = pd.read_parquet(table.path)
    outside = np.flatnonzero(~kept[0].train & ~kept[0].heldout & ~kept[1].heldout)[:300]
    fake = cache / "outside.parquet"
    events.iloc[outside].to_parquet(fake)
    detector = json.loads(Path(kept[0].model_path).read_text())["detector"]
    scored = score_template(EventTable(path=str(fake), sources=(), n_events=len(outside)), kept, detector=detector)
    k, n = len(kept), len(kept[0].scores)
    cdf = [np.searchsorted(np.sort(f.scores[f.heldout]), f.scores[outside], side="right") / f.heldout.sum()
           for f in kept]
    chosen = (n + np.arange(len(outside))) % k  # the model of template event j (after the n data events)
    np.testing.assert_allclose(scored.scores, np.choose(chosen, cdf), rtol=0, atol=1e-12)
    same = (outside % k) == chosen  # where the search chose the same model for the data event
    assert same.any() and not same.all()
    np.testing.assert_allclose(scored.scores[same], merged[outside][same], rtol=0, atol=1e-12)
    assert np.all(scored.owner == -1) and len(scored.model_paths) == 2


def test_missing_or_unreadable_template_is_a_one_line_user_error(small_h5, config_yaml, tmp_path, capsys):
    base = ["search", "--config", str(config_yaml), "--data", str(small_h5), "--scheduler", "synchronous",
            "--no-progress"]
    bad_text = tmp_path / "notes.txt"
    bad_text.write_text("not events\n")
    for target, words in ((tmp_path / "nope.h5", "no such file"), (bad_text, "neither HDF5 nor ROOT")):
        out = tmp_path / f"out-{target.stem}"
        assert main([*base, "--out", str(out), "--signal-model", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--signal-model" in err and words in err, err
        assert not (out / "cache").exists()  # refused before anything ran
    assert main([*base, "--out", str(tmp_path / "o"), "--signal-events", "50"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--signal-model" in err, err


def test_the_shared_signal_file_is_a_template(tmp_path):
    from sideband.workflows.signal_model import check_signal_model, load_template
    from tests.conftest import shared_file

    path = shared_file("signal_3500_500_100_features.h5")
    check_signal_model(str(path))
    template = load_template(str(path), cache_dir=str(tmp_path))
    assert template.n_events == len(pd.read_hdf(path, "df")) and template.sources[0]["role"] == "signal model"


def test_expected_z_beyond_the_reach_of_pyhf_p_values():
    """The closed form keeps giving Z where pyhf's p0 underflows (Z > ~37) and stays monotonic in s."""
    from sideband.pipeline.evaluate import _expected_z
    from sideband.pipeline.stats import discovery_and_limit

    assert not np.isfinite(discovery_and_limit(100.0 + 5000.0, 100.0, 5.0, limit=False).z_local)
    zs = [_expected_z(s, 100.0, 5.0) for s in (0.0, 50.0, 500.0, 5000.0)]
    assert zs[0] == 0.0 and all(np.isfinite(zs)) and zs == sorted(zs) and zs[-1] > 40
