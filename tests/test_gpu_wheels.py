"""`benchmarks/gpu_wheels.py` lists every package sideband needs at run time that the GPU
machines' image lacks (so a bare machine can install from .whl/ alone), and none it has."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "benchmarks" / "gpu_wheels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_closure_follows_extras_and_skips_what_the_machine_has(capsys):
    mod = _module()
    need = mod.closure("sideband", {""})
    # dask[distributed] is an extra of dask: its packages must be followed, not only dask itself
    assert {"dask", "distributed", "tornado", "nflows", "pyhf", "uproot", "awkward", "pydantic", "tables"} <= set(need)
    assert "pytest" not in need  # the test extra is not asked for
    assert mod.main(["--dry-run"]) == 0
    listed = {item.split("==")[0] for item in capsys.readouterr().out.split("\n")[1].split()}
    assert {"distributed", "nflows", "pyhf", "tables"} <= listed
    assert not listed & {"torch", "numpy", "pandas", "scikit-learn", "scipy"}
