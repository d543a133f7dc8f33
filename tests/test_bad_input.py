"""The bad-input catalogue: each case gives exit code 2, one clear line, and leaves earlier outputs.

One table, ``CASES``: (id, command builder, words the message must hold). A builder gets an
:class:`Env` (a temporary directory, the small demo file, helpers that write bad inputs) and
returns the command line. Every message must name the file or key at fault and the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sideband.pipeline.features import LHCO_FEATURE_COLUMNS, events_from_jets, jets_to_lhco_frame
from sideband.workflows.cli import main
from tests.conftest import lhco_jets

FAST = {"seed": 1, "stats": {"selections": [0.1]}, "regions": {"signal_region": [3300, 3700]},
        "detectors": {"cwola": {"folds": 2, "params": {"n_ensemble": 1, "hgb_params": {"max_iter": 10}}}},
        "compute": {"scheduler": "synchronous"}}
EARLIER = '{"from": "an earlier run"}\n'


def _mjj(frame: pd.DataFrame) -> np.ndarray:
    return events_from_jets({c: frame[c].to_numpy() for c in LHCO_FEATURE_COLUMNS})["mjj"].to_numpy()


class Env:
    """Inputs of one case, all under ``tmp``; ``out`` holds the results of an 'earlier run'."""

    def __init__(self, tmp: Path, small: Path, demo: pd.DataFrame):
        self.tmp, self.small, self.demo = tmp, small, demo
        self.out = tmp / "out"
        self.out.mkdir()
        for name in ("results.json", "inject_results.json", "fit.json", "trigger_report.json"):
            (self.out / name).write_text(EARLIER)

    # -- inputs -------------------------------------------------------------------------
    def frame(self, n: int = 600, seed: int = 0) -> pd.DataFrame:
        """Physical two-jet events in the LHC Olympics feature layout (float64)."""
        return jets_to_lhco_frame(lhco_jets(n, seed))

    def h5(self, name: str, frame: pd.DataFrame, key: str = "df", fmt: str = "fixed") -> Path:
        path = self.tmp / name
        frame.to_hdf(path, key=key, mode="w", format=fmt)
        return path

    def changed(self, name: str, **columns) -> Path:
        """An HDF5 file of :meth:`frame` with some columns replaced (callables get the frame)."""
        frame = self.frame()
        for col, value in columns.items():
            frame[col] = value(frame) if callable(value) else value
        return self.h5(name, frame)

    def root(self, name: str, trees: dict[str, dict]) -> Path:
        import uproot

        path = self.tmp / name
        with uproot.recreate(path) as f:
            for tree, branches in trees.items():
                f[tree] = branches
        return path

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def directory(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir()
        return path

    def blocked(self) -> Path:
        """A path below a plain file: no directory can be created there."""
        blocker = self.file("blocker", "not a directory")
        return blocker / "out"

    def cfg(self, name: str = "cfg.yaml", **changes) -> Path:
        raw = yaml.safe_load(yaml.safe_dump(FAST))
        raw.update(changes)
        path = self.tmp / name
        path.write_text(yaml.safe_dump(raw))
        return path

    def csv(self, rows: list[tuple], header: str = "low,high,count", name: str = "spectrum.csv") -> Path:
        return self.file(name, "\n".join([header] + [",".join(map(str, r)) for r in rows]) + "\n")

    # -- commands -----------------------------------------------------------------------
    def search(self, data, *extra, config=None, out=None) -> list[str]:
        args = ["search", "--config", str(config or self.cfg()), "--out", str(out or self.out), "--no-progress"]
        if data is not None:
            args += ["--data", str(data)]
        return args + [str(x) for x in extra]

    def inject(self, *extra, data=None, config=None) -> list[str]:
        return ["inject", "--config", str(config or self.cfg()), "--data", str(data or self.small),
                "--out", str(self.out), "--no-progress"] + [str(x) for x in extra]

    def fit(self, csv: Path) -> list[str]:
        return ["fit-spectrum", "--csv", str(csv), "--out", str(self.out)]

    def signal(self) -> Path:
        return self.h5("sig.h5", self.demo[self.demo.label == 1])


def _bins(n: int = 12, lo: float = 2800.0, width: float = 100.0, count=lambda i: 1000 - 60 * i) -> list[tuple]:
    return [(lo + i * width, lo + (i + 1) * width, count(i)) for i in range(n)]


def _empty_sr(e: Env) -> Path:
    frame = e.demo.iloc[:4000]
    mjj = _mjj(frame)
    return e.h5("nosr.h5", frame[(mjj < 3300) | (mjj > 3700)])


def _empty_sidebands(e: Env) -> list[str]:
    frame = e.demo.iloc[:4000]
    mjj = _mjj(frame)
    cfg = e.cfg(fit={"range": [3300, 4000]}, regions={"signal_region": [3300, 3700], "sideband_width": 300})
    return e.search(e.h5("nosb.h5", frame[(mjj >= 3300) & (mjj < 3700)]), config=cfg)


def _low_signal(e: Env) -> list[str]:
    sig = e.demo[e.demo.label == 1]
    sig = sig[_mjj(sig) < 3000]
    return e.search(e.small, "--inject", e.h5("lowsig.h5", sig), "--n-inject", len(sig))


def _truncated_root(e: Env) -> Path:
    path = e.root("ev.root", {"events": lhco_jets(300)})
    path.write_bytes(path.read_bytes()[:3000])
    return path


def _jagged_root(e: Env) -> Path:
    import awkward as ak

    jets = lhco_jets(50)
    jets["pxj1"] = ak.Array([[x] * (1 + i % 3) for i, x in enumerate(jets["pxj1"])])
    return e.root("jagged.root", {"events": jets})


def _array_root(e: Env) -> Path:
    jets = lhco_jets(50)
    jets["tau1j2"] = np.stack([jets["tau1j2"], jets["tau2j2"], jets["tau3j2"]], axis=1)
    return e.root("array.root", {"events": jets})


def _plain_dataset(e: Env) -> Path:
    import h5py

    path = e.tmp / "plain.h5"
    with h5py.File(path, "w") as f:
        f["df"] = e.frame().to_numpy()
    return path


def _mev(frame: pd.DataFrame) -> pd.DataFrame:
    for c in frame.columns:
        if c[:2] in ("px", "py", "pz") or c.startswith("mj"):
            frame[c] *= 1000
    return frame


def _with(frame: pd.DataFrame, rows, col: str, value) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[rows, col] = value
    return frame


def _results_without_autoencoder(e: Env) -> list[str]:
    run = e.directory("run")
    (run / "results.json").write_text('{"models": [], "event_table": "events.parquet"}\n')
    return ["export-trigger", "--run", str(run), "--out", str(e.out), "--no-hls"]


def _xfail(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


CASES = [
    # ---- search: the input file ----------------------------------------------------------
    ("missing-file", lambda e: e.search(e.tmp / "nope.h5"), ["nope.h5: no such file", "--data"]),
    ("data-is-a-directory", lambda e: e.search(e.directory("events")),
     ["events: is a directory", "HDF5 or ROOT file", "pass the file inside it"]),
    ("empty-file", lambda e: e.search(e.file("empty.h5", b"")), ["empty.h5: is empty (0 bytes)", "re-create"]),
    ("truncated-hdf5", lambda e: e.search(e.file("trunc.h5", e.small.read_bytes()[:200_000])),
     ["trunc.h5", "truncated", "re-create"]),
    ("garbage-file", lambda e: e.search(e.file("events.h5", b"\x00" * 1000)),
     ["events.h5: neither HDF5 nor ROOT", "LHC Olympics HDF5"]),
    ("truncated-root", lambda e: e.search(_truncated_root(e)), ["ev.root", "truncated or corrupt", "re-create"]),
    ("wrong-hdf5-key", lambda e: e.search(e.h5("k.h5", e.frame(), key="events")),
     ["k.h5: no key 'df'", "['events']", "data.key"]),
    ("hdf5-plain-dataset", lambda e: e.search(_plain_dataset(e)),
     ["plain.h5: key 'df' is a plain HDF5 dataset", "DataFrame.to_hdf"]),
    ("wrong-root-tree", lambda e: e.search(e.root("t.root", {"events": lhco_jets(100)}),
                                           config=e.cfg(data={"tree": "Delphes"})),
     ["t.root: no TTree 'Delphes'", "['events']", "data.tree"]),
    ("root-several-trees", lambda e: e.search(e.root("two.root", {"a": lhco_jets(50), "b": lhco_jets(50)})),
     ["two.root: holds several trees ['a', 'b']", "data.tree"]),
    ("root-without-jet-branches", lambda e: e.search(e.root("nb.root", {"events": {"x": np.ones(10)}})),
     ["nb.root: tree 'events' has neither the LHCO jet branches", "found ['x']"]),
    ("root-jagged-feature-branch", lambda e: e.search(_jagged_root(e)),
     ["jagged.root: column 'pxj1' holds variable-length arrays", "one number per event"]),
    ("root-array-feature-branch", lambda e: e.search(_array_root(e)),
     ["array.root: column 'tau1j2' holds 3 values per event", "one number per event"]),
    ("format-says-root-for-hdf5",
     lambda e: e.search(e.h5("f.h5", e.frame()), config=e.cfg(data={"format": "root"})),
     ["f.h5: is an HDF5 file but the format is set to 'root'", "data.format"]),
    ("missing-column", lambda e: e.search(e.h5("c.h5", e.frame().drop(columns=["tau2j2"]))),
     ["c.h5: missing columns ['tau2j2']", "rename the columns"]),
    ("misspelled-column", lambda e: e.search(e.h5("c.h5", e.frame().rename(columns={"mj1": "mJ1"}))),
     ["c.h5: missing columns ['mj1']", "rename 'mJ1' -> 'mj1'"]),
    ("string-column", lambda e: e.search(e.changed("s.h5", tau2j1=lambda f: f["tau2j1"].astype(str))),
     ["s.h5: column 'tau2j1' holds strings, not numbers", "pandas.to_numeric"]),
    ("string-column-table-format",
     lambda e: e.search(e.h5("st.h5", e.frame().assign(mj2=lambda f: f["mj2"].astype(str)), fmt="table")),
     ["st.h5: column 'mj2' holds strings, not numbers", "pandas.to_numeric"]),
    ("string-label-column", lambda e: e.search(e.changed("lab.h5", label="signal")),
     ["lab.h5: column 'label' holds strings, not numbers", "pandas.to_numeric"]),
    ("all-nan-column", lambda e: e.search(e.changed("nan.h5", tau2j1=np.nan)),
     ["nan.h5: column 'tau2j1' is NaN in all 600 events", "re-create the file"]),
    ("constant-column", lambda e: e.search(e.changed("const.h5", tau3j2=0.25)),
     ["const.h5: column 'tau3j2' has the same value (0.25) in all 600 events", "fill it"]),
    ("no-rows", lambda e: e.search(e.h5("rows.h5", e.frame().iloc[:0])),
     ["rows.h5: holds no events (0 rows)", "write the events"]),
    ("inf-values-strict",
     lambda e: e.search(e.h5("inf.h5", _with(e.frame(), slice(0, 3), "pxj1", np.inf)), "--strict"),
     ["inf.h5: 4 of 600 events have NaN/inf features", "pxj1: 4 inf", "without --strict"]),
    ("nan-values-strict",
     lambda e: e.search(e.h5("nan.h5", _with(e.demo.iloc[:3000], slice(0, 4), "tau1j1", np.nan)), "--strict"),
     ["nan.h5: 5 of 3000 events have NaN/inf", "tau1j1: 5 NaN", "--strict"]),
    ("negative-masses", lambda e: e.search(e.h5("neg.h5", _with(e.frame(), slice(0, 20), "mj1", -50.0))),
     ["neg.h5: 21 negative jet masses", "check pxj*/mj*"]),
    ("mev-instead-of-gev", lambda e: e.search(e.h5("mev.h5", _mev(e.frame()))),
     ["mev.h5", "looks like MeV", "divide momenta and masses by 1000"]),
    # ---- search: regions and folds -------------------------------------------------------
    ("empty-signal-region", lambda e: e.search(_empty_sr(e)),
     ["signal region of window 3300-3700 GeV holds 0 events", "nosr.h5"]),
    ("empty-sidebands", _empty_sidebands, ["sidebands of window 3300-3700 GeV holds 0 events"]),
    ("too-few-events-for-folds",
     lambda e: e.search(e.h5("few.h5", e.demo.iloc[:60]), config=e.cfg(detectors={"cwola": {"folds": 10}})),
     ["fewer than the 20 needed for 10 folds"]),
    ("signal-region-outside-data",
     lambda e: e.search(e.small, config=e.cfg(fit={"range": [2800, 12000]},
                                              regions={"signal_region": [10000, 10400]})),
     ["small.h5: signal region 10000-10400 GeV lies outside the data's mjj range", "regions.signal_region"]),
    ("scan-centre-outside-fit-range",
     lambda e: e.search(e.small, config=e.cfg(regions={"signal_region": [3300, 3700], "scan_centers": [9000]})),
     ["cfg.yaml", "regions.scan_centers=9000: window 8800-9200 GeV lies outside fit.range 2800-6000"]),
    ("scan-centres-without-signal-region", lambda e: e.search(e.small, config=e.cfg(regions={"scan_centers": [3500]})),
     ["cfg.yaml", "regions.scan_centers: needs regions.signal_region", "use regions.scan"]),
    ("scan-range-outside-fit-range",
     lambda e: e.search(e.small, config=e.cfg(regions={"scan": {"range": [3100, 9000]}})),
     ["cfg.yaml", "regions.scan.range: window", "lies outside fit.range 2800-6000"]),
    ("signal-region-reversed", lambda e: e.search(e.small, config=e.cfg(regions={"signal_region": [3700, 3300]})),
     ["cfg.yaml", "regions.signal_region", "low edge 3700.0 must be below high edge 3300.0"]),
    # ---- search: injected signal ---------------------------------------------------------
    ("signal-file-without-events-in-sr", _low_signal, ["lowsig.h5: none of its", "3300-3700", "move the window"]),
    ("inject-more-than-the-file-holds",
     lambda e: e.search(e.small, "--inject", e.signal(), "--n-inject", 100000),
     ["sig.h5: asked to inject 100000 events", "data.inject.n_events"]),
    ("n-inject-without-inject", lambda e: e.search(e.small, "--n-inject", 100),
     ["--inject and --n-inject go together"]),
    ("inject-file-missing", lambda e: e.search(e.small, "--inject", e.tmp / "nosig.h5", "--n-inject", 10),
     ["nosig.h5: no such file"]),
    ("inject-file-is-a-directory",
     lambda e: e.search(e.small, "--inject", e.directory("sigdir"), "--n-inject", 10),
     ["sigdir: is a directory"]),
    ("negative-n-inject", lambda e: e.search(e.small, "--inject", e.signal(), "--n-inject", -5),
     ["data.inject.n_events", "greater than or equal to 0"]),
    # ---- search: configuration -----------------------------------------------------------
    ("config-unknown-key", lambda e: e.search(e.small, config=e.cfg(regoins={"signal_region": [3300, 3700]})),
     ["cfg.yaml", "regoins: unknown key"]),
    ("config-wrong-type", lambda e: e.search(e.small, config=e.cfg(stats={"selections": "ten percent"})),
     ["cfg.yaml", "stats.selections: Input should be a valid list"]),
    ("config-selection-above-one", lambda e: e.search(e.small, config=e.cfg(stats={"selections": [1.5]})),
     ["stats.selections", "must lie in (0, 1]", "[1.5]"]),
    ("config-unknown-feature", lambda e: e.search(e.small, config=e.cfg(features=["tau21"])),
     ["features: unknown feature(s) ['tau21']", "choose from"]),
    ("yaml-syntax-error", lambda e: e.search(e.small, config=e.file("bad.yaml", "seed: [1, 2\nstats: {\n")),
     ["bad.yaml: not valid YAML", "fix the syntax"]),
    ("config-is-a-directory", lambda e: e.search(e.small, config=e.directory("configs")),
     ["configs: is a directory, not a config file", "--config"]),
    ("config-missing", lambda e: e.search(e.small, config=e.tmp / "nocfg.yaml"),
     ["nocfg.yaml: config file not found", "--config"]),
    ("unknown-detector", lambda e: e.search(e.small, config=e.cfg(detectors={"isolation_forest": {}})),
     ["cfg.yaml", "unknown detector 'isolation_forest'", "available:"]),
    ("detector-param-negative",
     lambda e: e.search(e.small, config=e.cfg(detectors={"cwola": {"params": {"n_ensemble": -3}}})),
     ["detectors.cwola.params.n_ensemble", "-3", "valid parameters:"]),
    ("detector-param-bad-choice",
     lambda e: e.search(e.small, config=e.cfg(detectors={"cwola": {"params": {"model": "xgb"}}})),
     ["detectors.cwola.params.model", "'xgb'", "hgb"]),
    ("detector-param-wrong-type",
     lambda e: e.search(e.small, config=e.cfg(detectors={"autoencoder": {"params": {"hidden": "16"}}})),
     ["detectors.autoencoder.params.hidden", "'16'"]),
    ("shared-stage-without-stage",
     lambda e: e.search(e.small, config=e.cfg(detectors={"cwola": {"shared_stage": True}})),
     ["detectors.cwola.shared_stage", "no sideband stage", "cathode"]),
    ("detector-param-typo",
     lambda e: e.search(e.small, config=e.cfg(detectors={"cwola": {"params": {"n_ensembel": 1}}})),
     ["detectors.cwola.params.n_ensembel", "valid parameters:", "n_ensemble"]),
    ("no-detector-enabled", lambda e: e.search(e.small, config=e.cfg(detectors={})),
     ["cfg.yaml", "no detector is enabled", "enable one of"]),
    ("unwritable-out", lambda e: e.search(e.small, out=e.blocked()),
     ["output directory is not writable", "--out"]),
    ("unreachable-scheduler",
     lambda e: e.search(e.small, "--scheduler", "tcp://127.0.0.1:1",
                        config=e.cfg(compute={"scheduler": "synchronous", "connect_timeout": 1})),
     ["tcp://127.0.0.1:1: could not reach the Dask scheduler within 1 s", "compute.connect_timeout"]),
    # ---- inject --------------------------------------------------------------------------
    ("inject-bad-counts", lambda e: e.inject("--signal", e.signal(), "--counts", "0,three"),
     ["--counts '0,three'", "comma-separated integers"]),
    ("inject-counts-and-levels", lambda e: e.inject("--signal", e.signal(), "--counts", "0,300", "--levels", "0,1"),
     ["--counts and --levels", "choose"]),
    ("inject-bad-levels", lambda e: e.inject("--signal", e.signal(), "--levels", "0,one"),
     ["--levels '0,one'", "comma-separated numbers"]),
    ("inject-without-signal", lambda e: e.inject("--counts", "0"), ["no signal file to inject", "--signal"]),
    ("inject-signal-missing", lambda e: e.inject("--signal", e.tmp / "nosig.h5", "--counts", "0"),
     ["nosig.h5: no such signal file", "--signal"]),
    # the background has an empty signal region: a scan that got past the check fails fast, differently
    ("inject-negative-counts", lambda e: e.inject("--signal", e.signal(), "--counts=-300", data=_empty_sr(e)),
     ["-300", "must be >= 0"]),
    ("inject-bad-background",
     lambda e: e.inject("--signal", e.signal(), "--counts", "0",
                        data=e.changed("s.h5", mj1=lambda f: f["mj1"].astype(str))),
     ["s.h5: column 'mj1' holds strings"]),
    # ---- export-trigger ------------------------------------------------------------------
    ("export-trigger-no-results", lambda e: ["export-trigger", "--run", str(e.directory("norun")), "--no-hls"],
     ["norun: no results.json", "point --run at the output directory"]),
    ("export-trigger-rate-2", lambda e: ["export-trigger", "--run", str(e.directory("norun")), "--rate", "2"],
     ["--rate 2", "in (0, 1)"]),
    ("export-trigger-no-autoencoder", _results_without_autoencoder,
     ["run: no trained 'autoencoder' model", "enable the 'autoencoder' detector"]),
    # ---- fit-spectrum --------------------------------------------------------------------
    ("fit-spectrum-missing-csv", lambda e: e.fit(e.tmp / "nope.csv"),
     ["nope.csv: no such file", "--csv"]),
    ("fit-spectrum-csv-is-a-directory",
     lambda e: e.fit(e.directory("spectra")),
     ["spectra: is a directory", "--csv"]),
    ("fit-spectrum-negative-counts",
     lambda e: e.fit(e.csv(_bins(count=lambda i: -5 if i == 3 else 500))),
     ["spectrum.csv: negative counts", ">= 0"]),
    ("fit-spectrum-gap-between-bins",
     lambda e: e.fit(e.csv(_bins()[:5] + _bins()[6:])),
     ["spectrum.csv: bins must be contiguous"]),
    ("fit-spectrum-overlapping-bins",
     lambda e: e.fit(e.csv([(lo, hi + 50, n) for lo, hi, n in _bins()])),
     ["spectrum.csv: bins must be contiguous"]),
    ("fit-spectrum-unsorted-bins", lambda e: e.fit(e.csv(_bins()[::-1])),
     ["spectrum.csv: rows must be in increasing mass order", "sort the CSV"]),
    ("fit-spectrum-high-below-low", lambda e: e.fit(e.csv([(hi, lo, n) for lo, hi, n in _bins()])),
     ["spectrum.csv: data row 1 has high 2800 <= low 2900", "high > low"]),
    ("fit-spectrum-nan-count", lambda e: e.fit(e.csv(_bins(count=lambda i: "nan" if i == 2 else 400))),
     ["spectrum.csv: a value is not finite", "fix the CSV"]),
    ("fit-spectrum-too-few-bins", lambda e: e.fit(e.csv(_bins(4))),
     ["spectrum.csv: 4 bins", "at least 6"]),
    ("fit-spectrum-non-numeric",
     lambda e: e.fit(e.csv(_bins()[:-1] + [(3900, 4000, "many")])),
     ["spectrum.csv: a value is not a number", "fix the CSV"]),
    ("fit-spectrum-wrong-header",
     lambda e: e.fit(e.csv(_bins(), header="mass,events,err")),
     ["spectrum.csv: needs columns low,high,count or center,width,count", "['mass', 'events', 'err']"]),
    ("fit-spectrum-mev-edges",
     lambda e: e.fit(e.csv(_bins(lo=2.8e6, width=1e5))),
     ["spectrum.csv: bin edges look like MeV", "give GeV"]),
    # ---- generate ------------------------------------------------------------------------
    ("generate-zero-events", lambda e: ["generate", "qcd", "--events", "0", "--out", str(e.out), "--no-progress"],
     ["--events 0: must be positive"]),
    ("generate-mres-below-mx-plus-my",
     lambda e: ["generate", "signal", "--events", "10", "--m-res", "500", "--out", str(e.out), "--no-progress"],
     ["--m-res 500 must exceed --m-x + --m-y = 600"]),
    ("generate-unwritable-out",
     lambda e: ["generate", "qcd", "--events", "10", "--out", str(e.blocked()), "--no-progress"],
     ["cannot create the output directory", "choose another --out"]),
    ("generate-zero-chunk-size",
     lambda e: ["generate", "qcd", "--events", "10", "--chunk-size", "0", "--out", str(e.out), "--no-progress"],
     ["--chunk-size 0", "must be positive"]),
]

XFAIL: dict[str, str] = {}  # cases that need a change elsewhere (id -> what and where); none open


def _params():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be distinct"
    for case_id, build, words in CASES:
        marks = [_xfail(XFAIL[case_id])] if case_id in XFAIL else []
        yield pytest.param(build, words, id=case_id, marks=marks)


@pytest.fixture
def env(tmp_path, small_h5, demo_frame):
    return Env(tmp_path, small_h5, demo_frame)


@pytest.mark.parametrize(("build", "words"), list(_params()))
def test_bad_input(env, capsys, build, words):
    argv = build(env)
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    assert err.startswith("sideband: error:") and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    for name in ("results.json", "inject_results.json", "fit.json", "trigger_report.json"):
        assert (env.out / name).read_text() == EARLIER  # nothing already computed is lost

