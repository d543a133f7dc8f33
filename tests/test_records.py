"""Typed records: the one storage helper round-trips every type; paths stay relative."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from sideband.pipeline.records import (
    EventTable,
    FoldScores,
    SidebandStage,
    TestResult,
    WindowScores,
    WindowTests,
    load_record,
    record_types,
    save_record,
)


def _examples(tmp_path):
    row = TestResult(window="3300-3700", sr=(3300.0, 3700.0), detector="cwola", selection=0.01, n_selected=260,
                     n_selected_sidebands=210, n_observed_sr=50, n_expected_sr=41.5, z_local=1.2,
                     p0_toys={"n_toys": 500, "bound": False}, fit={"chi2": 20.0, "ndf": 24}, p0=float("nan"))
    return [
        EventTable(path=str(tmp_path / "table.parquet"), sources=({"path": "x.h5", "content_hash": "ab"},),
                   n_events=10, reference_path=None),
        SidebandStage(path=str(tmp_path / "prepare.pkl"), detector="cathode", window="3300-3700", wall_s=1.5),
        FoldScores(scores=np.array([np.nan, 0.5]), heldout=np.array([False, True]), train=np.array([True, False]),
                   wall_s=0.1, history=[{"validation_loss": [0.7, 0.6]}], model_path=str(tmp_path / "m.json")),
        WindowScores(scores=np.arange(3.0), owner=np.array([0, 1, -1]), wall_s=0.3, histories=([1], [2]),
                     model_paths=(str(tmp_path / "m.json"),)),
        WindowTests(rows=(row,), spectra=({"edges": [1, 2], "counts": [3]},), timing={"window": "3300-3700"}),
        row,
    ]


def _equal(a, b):
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
        elif isinstance(x, float) and np.isnan(x):
            assert np.isnan(y)
        elif dataclasses.is_dataclass(x) or (isinstance(x, tuple) and x and dataclasses.is_dataclass(x[0])):
            for u, v in zip(x if isinstance(x, tuple) else (x,), y if isinstance(y, tuple) else (y,)):
                _equal(u, v)
        else:
            assert x == y, f.name


def test_every_record_type_round_trips(tmp_path):
    examples = _examples(tmp_path)
    assert {type(e).__name__ for e in examples} == set(record_types())
    for rec in examples:
        path = tmp_path / (type(rec).__name__ + (".npz" if any(isinstance(getattr(rec, f.name), np.ndarray)
                                                               for f in dataclasses.fields(rec)) else ".json"))
        save_record(rec, path)
        back = load_record(path)
        assert type(back) is type(rec)
        _equal(rec, back)


def test_paths_inside_the_folder_are_stored_relative_and_survive_a_move(tmp_path):
    rec = _examples(tmp_path)[0]
    save_record(rec, tmp_path / "table.json")
    assert json.loads((tmp_path / "table.json").read_text())["path"] == "table.parquet"
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "table.json").rename(moved / "table.json")
    assert load_record(moved / "table.json").path == str(moved / "table.parquet")


def test_arrays_need_npz_and_unknown_types_are_refused(tmp_path):
    with pytest.raises(ValueError, match="store it as .npz"):
        save_record(_examples(tmp_path)[2], tmp_path / "x.json")

    @dataclasses.dataclass(frozen=True)
    class NotARecord:
        x: int

    with pytest.raises(TypeError, match="not a record type"):
        save_record(NotARecord(1), tmp_path / "y.json")
