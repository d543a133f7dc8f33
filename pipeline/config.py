"""Configuration: one YAML file, loaded and validated here, used by the CLI and workflows.

Validation has two stages: the schema (types, unknown keys, ranges; pydantic) and
semantic checks (feature names exist, windows lie in the fit range). Checks that need the
detectors (names exist, parameter values valid) are an upper layer's: they come in through
``check`` (``sideband.workflows.load_config`` passes them). Every problem is reported with
its dotted location and value. Every default lives here, once. All masses are in GeV.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .exceptions import ConfigError
from .features import EXTENDED_COLUMNS, FEATURE_COLUMNS

__all__ = ["Config", "load_config", "config_from_dict", "demo_data_path", "DEFAULT_CONFIG", "DEMO_CONFIG"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
#: The shipped demo's config (a lighter scan), used when neither data nor a config is given.
DEMO_CONFIG = DEFAULT_CONFIG.with_name("demo.yaml")


def demo_data_path() -> Path:
    """The demo dataset shipped with sideband (LHC Olympics feature layout): data.path's default."""
    return Path(__file__).resolve().parent / "data" / "demo_events.h5"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InjectConfig(_Strict):
    path: str
    n_events: int = Field(ge=0)
    format: Literal["auto", "lhco-features", "lhco-raw", "root"] = "auto"


class SplitConfig(_Strict):
    """One of ``parts`` disjoint parts of the input file's events (``data.split``)."""

    parts: int = Field(ge=2)
    part: int = Field(ge=0)

    @model_validator(mode="after")
    def _part_in_range(self):
        if self.part >= self.parts:
            raise ValueError(f"part {self.part} must be below parts {self.parts} (parts are numbered 0..{self.parts - 1})")
        return self


class DataConfig(_Strict):
    path: str | None = None
    format: Literal["auto", "lhco-features", "lhco-raw", "root"] = "auto"
    key: str = "df"
    tree: str | None = None
    chunk_size: int = Field(default=100_000, gt=0)
    strict: bool = False
    inject: InjectConfig | None = None
    #: Pure-background reference sample (LHCO layout), needed by the idealized detector.
    reference: str | None = None
    #: Jet substructure computed from particle-level inputs: ``standard`` (tau1-3) or ``extended``
    #: (also tau_N^beta, N = 1..9, beta = 0.5, 1, 2 of both jets: columns ``tau5_b0.5_j1`` ...).
    substructure: Literal["standard", "extended"] = "standard"
    #: Keep one of ``parts`` disjoint random parts of the input file's events (``{parts: 10, part: 3}``);
    #: null: all of them. The partition is fixed by the file (not by ``seed``), so parts 0..parts-1 are
    #: disjoint, independent background samples at 1/parts of the statistics (the injection scan's
    #: ``injection.background_parts``). The injected signal and the reference sample are not split.
    split: SplitConfig | None = None


class ScanConfig(_Strict):
    """The blind scan's sliding windows: SR width proportional to the mass (the dijet mass
    resolution is about 4.8% of m_jj here: the 16-84% half width of the 3.5 TeV R&D signal),
    overlapping by ``1 - step``."""

    #: Range of window centres in GeV.
    range: tuple[float, float] = (3100.0, 5000.0)
    #: SR width as a fraction of the window centre (0.12: about 2.5 resolution widths).
    width: float = Field(default=0.12, gt=0, lt=1)
    #: Step between centres as a fraction of the SR width (0.5: half-width steps).
    step: float = Field(default=0.5, gt=0, le=2)

    @field_validator("range")
    @classmethod
    def _ordered(cls, v):
        if v[0] > v[1]:
            raise ValueError(f"low centre {v[0]} must not exceed high centre {v[1]}")
        return v


class RegionsConfig(_Strict):
    #: One signal region [low, high] in GeV; null: the blind scan of ``scan`` (the default).
    signal_region: tuple[float, float] | None = None
    sideband_width: float | None = Field(default=None, gt=0)
    #: Extra windows (centres, GeV) of the signal region's width, with ``signal_region`` set.
    scan_centers: list[float] = Field(default_factory=list)
    scan: ScanConfig = Field(default_factory=ScanConfig)

    @field_validator("signal_region")
    @classmethod
    def _ordered(cls, v):
        if v is not None and v[0] >= v[1]:
            raise ValueError(f"low edge {v[0]} must be below high edge {v[1]}")
        return v


class FitConfig(_Strict):
    range: tuple[float, float] = (2800.0, 6000.0)
    bin_width: float = Field(default=100.0, gt=0)
    #: Dijet functions (number of parameters) the F-test chooses among. The 3-parameter one
    #: is biased for QCD-like spectra at high statistics (benchmarks/calibration.py).
    n_params: list[Literal[3, 4, 5]] = Field(default_factory=lambda: [4, 5])
    ftest_alpha: float = Field(default=0.05, gt=0, lt=1)
    #: SR background from the dijet function alone, or dijet mean + Gaussian process
    #: (covariance of both propagated into the pyhf model).
    background: Literal["dijet", "gp"] = "dijet"


class StatsConfig(_Strict):
    #: Fractions of the sideband events (fit range outside the SR) each score cut keeps; the SR
    #: does not set the threshold (``pipeline.evaluate.selection_threshold``).
    selections: list[float] = Field(default_factory=lambda: [0.1, 0.01, 0.002])
    cl: float = Field(default=0.95, gt=0.5, lt=1)
    #: Background-only pseudo-experiments for the global significance (0: none).
    global_toys: int = Field(default=20_000, ge=0)
    #: Local p-values: asymptotic (q0 of the pyhf model), from pseudo-experiments of the whole
    #: background procedure (toys), or toys where the expected SR background is below
    #: ``toys_below`` events, where the asymptotic formula overstates Z (auto).
    p_value: Literal["auto", "toys", "asymptotic"] = "auto"
    toys_below: float = Field(default=1000.0, ge=0)
    #: Most pseudo-experiments per toy-based p-value (fewer when 50 reach the observed Z).
    local_toys: int = Field(default=10_000, ge=100)
    #: Signal template (LHCO features layout, signal-labelled events): each test also gets the
    #: template's efficiency through its selection, limits on produced signal events and the
    #: median expected discovery Z (CLI: --signal-model).
    signal_model: str | None = None
    #: Produced signal events for that expected Z; null: the number of events in the template
    #: file (CLI: --signal-events).
    signal_events: float | None = Field(default=None, gt=0)

    @field_validator("selections")
    @classmethod
    def _fractions(cls, v):
        bad = [x for x in v if not 0 < x <= 1]
        if bad:
            raise ValueError(f"selection efficiencies must lie in (0, 1], got {bad}")
        return sorted(set(v), reverse=True)

    @model_validator(mode="after")
    def _signal_events_need_a_model(self):
        if self.signal_events is not None and self.signal_model is None:
            raise ValueError(f"signal_events={self.signal_events:g} needs a signal template: set stats.signal_model "
                             "(--signal-model FILE) or drop stats.signal_events")
        return self


#: CATHODE's flow in the default scan: one flow per window, at batch 4096. Wider than it was
#: (3 transforms, hidden 48, 40 epochs, patience 6): with 10 pure-noise features added that flow
#: kept 0.65 of CATHODE's max SIC, this one 0.96, for about twice the flow time (README).
SCAN_FLOW = {"n_transforms": 4, "hidden": 96, "n_bins": 8, "epochs": 100, "batch_size": 4096, "lr": 0.003,
             "patience": 10, "n_average": 3}

#: CWoLa's default inputs: the jet masses in units of mjj. Trained to tell the SR from its
#: sidebands, CWoLa learns the masses' rise with mjj; with these its selections read +2.7%
#: instead of +7.0% above the fit on 20 independent background samples at 1/10 statistics,
#: and global Z = 3 moved from S/sqrt(B) 1.60 to 1.31 over four full-size samples at 3.5 TeV;
#: at 3.0 TeV (the scan's lowest window) the masses in GeV reach further (docs/detectors.md).
CWOLA_FEATURES = ("mj1_over_mjj", "delta_mj_over_mjj", "tau21_j1", "tau21_j2")


class DetectorConfig(_Strict):
    enabled: bool = True
    folds: int = Field(default=5, ge=2)
    features: list[str] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    #: Detectors with a sideband stage (CATHODE's flow): one stage serves several scan windows
    #: whose SRs lie apart (regions.stage_groups; never trained on any of their SRs) instead of
    #: one stage per window.
    shared_stage: bool = False


class ComputeConfig(_Strict):
    #: None: a LocalCluster on this machine; "synchronous": in-process; an address or scheduler file.
    scheduler: str | None = None
    n_workers: int | None = Field(default=None, gt=0)
    threads_per_worker: int = Field(default=1, gt=0)
    processes: bool = True
    #: Where torch training runs: auto (on a GPU where the workers have one, for the stages that
    #: train faster there: the CATHODE flow; the autoencoder and MLP classifiers are small
    #: enough to run faster on a CPU worker), cpu (CUDA never touched), or cuda (every torch stage).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Local GPU machine: Dask workers sharing each GPU (each its own process and CUDA context).
    #: Small models leave a GPU idle between kernel launches, so several trainings fill it: four
    #: CATHODE flows at once on an H200 trained 1.7x as many epochs per second as one.
    #: None: 4, but at most a quarter of the workers.
    gpu_workers_per_device: int | None = Field(default=None, ge=1, le=16)
    retries: int = Field(default=2, ge=0)
    #: Seconds to wait for an external scheduler before giving up.
    connect_timeout: float = Field(default=10.0, gt=0)

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v):
        import re

        if v is None or v == "synchronous" or v.endswith(".json") or "://" in v or re.fullmatch(r"[\w.\-\[\]:]+:\d+", v):
            return v
        raise ValueError(f"{v!r} is not 'synchronous', a scheduler file (*.json) or an address "
                         "(tcp://host:8786 or host:8786)")


class TriggerConfig(_Strict):
    """Fixed-point export of a trigger model (hls4ml)."""

    #: "auto": each layer's ap_fixed<max_bits,I> from hls4ml profiling on the calibration
    #: events (inputs scaled by powers of two); or one ap_fixed<W,I> for every layer.
    precision: str = "auto"
    #: Total bits of every fixed-point type of the "auto" export.
    max_bits: int = Field(default=16, ge=4, le=64)
    #: Integer bits above the profiled range, for layer outputs.
    headroom_bits: int = Field(default=1, ge=0, le=8)
    #: Events per second reaching the trigger (40 MHz bunch crossings, or a preselection rate).
    input_rate_hz: float = Field(default=40e6, gt=0)
    #: L1 pre-scale: rate = acceptance x input_rate_hz / prescale.
    prescale: float = Field(default=1.0, ge=1)
    #: Background acceptances of the rate menu.
    rate_targets: list[float] = Field(default_factory=lambda: [1e-2, 1e-3, 1e-4, 1e-5])
    #: Warn when fewer calibration events than this pass a threshold.
    min_events_above: int = Field(default=10, ge=1)
    reuse_factor: int = Field(default=1, ge=1)
    backend: str = "Vitis"
    part: str = "xcvu13p-flga2577-2-e"
    io_type: Literal["io_parallel", "io_stream"] = "io_parallel"
    clock_period_ns: float = Field(default=5.0, gt=0)
    emulation_events: int = Field(default=20_000, gt=0)

    @field_validator("rate_targets")
    @classmethod
    def _acceptances(cls, v):
        bad = [x for x in v if not 0 < x < 1]
        if bad:
            raise ValueError(f"rate targets are background acceptances in (0, 1), got {bad}")
        return v


class InjectionConfig(_Strict):
    """Signal-injection scan (sideband inject)."""

    counts: list[int] = Field(default_factory=lambda: [0, 300, 600, 1200])
    #: Instead of ``counts``: target S/sqrt(B) in each signal's SR before selection (e.g. [0, 1, 2, 3]);
    #: a signal's counts are level x sqrt(B_SR) / (its fraction of events in the SR), so signals of
    #: different masses are compared at equal strength (a signal grid).
    levels: list[float] = Field(default_factory=list)
    seeds: int = Field(default=3, ge=1)
    signals: list[str] = Field(default_factory=list)
    #: 1: every seed analyses the whole background file (a seed changes the training and the injected
    #: signal events only). P > 1: the file is split into P disjoint parts (``data.split``) and the k-th
    #: seed analyses part k mod P, so up to P seeds are independent background samples, each with 1/P of
    #: the file's events (S/sqrt(B) levels are then per part).
    background_parts: int = Field(default=1, ge=1)

    @field_validator("levels")
    @classmethod
    def _levels_non_negative(cls, v):
        bad = [x for x in v if not x >= 0]
        if bad:
            raise ValueError(f"S/sqrt(B) levels must be >= 0, got {bad}")
        return sorted(set(v))

    @field_validator("counts")
    @classmethod
    def _non_negative(cls, v):
        bad = [c for c in v if c < 0]
        if bad:
            raise ValueError(f"injected counts must be >= 0, got {bad}")
        return sorted(set(v))


class Config(_Strict):
    seed: int = Field(default=42, ge=0)
    features: list[str] = Field(default_factory=lambda: ["mj1", "delta_mj", "tau21_j1", "tau21_j2"])
    data: DataConfig = Field(default_factory=DataConfig)
    regions: RegionsConfig = Field(default_factory=RegionsConfig)
    fit: FitConfig = Field(default_factory=FitConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    detectors: dict[str, DetectorConfig] = Field(
        default_factory=lambda: {
            "cwola": DetectorConfig(features=list(CWOLA_FEATURES),
                                    params={"model": "hgb", "n_ensemble": 5, "balance_sidebands": True}),
            "cathode": DetectorConfig(params={"model": "hgb", "n_ensemble": 5, "oversampling": 4.0,
                                              "flow_params": dict(SCAN_FLOW)}),
            "autoencoder": DetectorConfig(params={"hidden": [16], "latent": 2, "train_on": "sidebands"}),
        }
    )
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    trigger: TriggerConfig = Field(default_factory=TriggerConfig)
    injection: InjectionConfig = Field(default_factory=InjectionConfig)

    @model_validator(mode="after")
    def _semantics(self):
        problems = []
        # Features: any column of the event table, including a column the input file carries beyond the
        # standard layout. Names outside FEATURE_COLUMNS are checked here against the headers of the input
        # files that exist on this machine (no events read); the tables are checked again when loaded.
        for where, feats in [("features", self.features)] + [
            (f"detectors.{n}.features", d.features) for n, d in self.detectors.items() if d.features
        ]:
            if not feats:
                problems.append(f"{where}: empty; name at least one column, e.g. {FEATURE_COLUMNS[:4]}")
            for name, why in (("mjj", "it defines the regions"), ("label", "it is the truth")):
                if name in feats:
                    problems.append(f"{where}: {name} cannot be a detector input ({why})")
            for x in sorted({f.removesuffix("_over_mjj") for f in feats if f.endswith("_over_mjj")} & set(feats)):
                problems.append(f"{where}: {x} and {x}_over_mjj together give mjj, which defines the regions; keep one")
            if len(set(feats)) < len(feats):
                problems.append(f"{where}: {sorted({f for f in feats if feats.count(f) > 1})} listed twice")
            unknown = [f for f in feats if f not in FEATURE_COLUMNS and f not in ("mjj", "label")]
            if unknown:
                from .io import event_columns

                data = self.data
                files = [(data.path or str(demo_data_path()), data.format)]
                files += [(data.inject.path, data.inject.format)] if data.inject else []
                files += [(data.reference, "auto")] if data.reference else []
                for path, fmt in files:
                    try:
                        columns = event_columns(path, fmt, key=data.key, tree=data.tree,
                                                substructure=data.substructure)
                    except Exception:  # absent or unreadable here: the reader reports it at load time
                        continue
                    absent = [f for f in unknown if f not in columns]
                    if absent:
                        choose = [c for c in columns if c not in ("mjj", "label")]
                        hint = ("; the extended N-subjettiness set needs data.substructure: extended (particle inputs)"
                                if data.substructure == "standard" and set(absent) & set(EXTENDED_COLUMNS) else "")
                        problems.append(f"{where}: unknown feature(s) {absent} (not in {path}); choose from {choose}"
                                        f"{hint}")
                        break
        if self.data.split is not None and self.injection.background_parts > 1:
            problems.append(f"injection.background_parts: {self.injection.background_parts} splits the background "
                            "per seed itself; drop data.split (or set background_parts: 1)")
        lo, hi = self.fit.range
        if lo >= hi:
            problems.append(f"fit.range: low edge {lo} must be below high edge {hi}")
        regions = self.regions
        if regions.signal_region is None:
            if regions.scan_centers:
                problems.append("regions.scan_centers: needs regions.signal_region (their width); "
                                "or drop them and use regions.scan")
            scan = regions.scan
            windows = [("regions.scan.range", (scan.range[0] * (1 - scan.width / 2), scan.range[1] * (1 + scan.width / 2)))]
        else:
            width = regions.signal_region[1] - regions.signal_region[0]
            windows = [("regions.signal_region", regions.signal_region)] + [
                (f"regions.scan_centers={c:g}", (c - width / 2, c + width / 2)) for c in regions.scan_centers]
        for name, (a, b) in windows:
            if a < lo or b > hi:
                problems.append(f"{name}: window {a:g}-{b:g} GeV lies outside fit.range {lo:g}-{hi:g} GeV")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def enabled_detectors(self) -> dict[str, DetectorConfig]:
        return {n: d for n, d in self.detectors.items() if d.enabled}

    def detector_features(self, name: str) -> tuple[str, ...]:
        """The inputs of detector ``name``: its own ``features`` if set, else the config's
        (also for a name not among ``detectors``, e.g. a benchmark's idealized detector)."""
        det = self.detectors.get(name)
        return tuple(det.features if det is not None and det.features else self.features)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def _format_errors(source: str, exc: ValidationError) -> str:
    items = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        items.append(f"{loc}: {msg}" + (f" (got {err['input']!r})" if err["type"] != "extra_forbidden"
                                          and not isinstance(err.get("input"), dict) else ""))
    return f"{source}: invalid configuration: " + "; ".join(items)


ConfigCheck = Callable[[Config], None]


def config_from_dict(raw: dict, source: str = "config", check: ConfigCheck | None = None) -> Config:
    """Validate a mapping (as read from YAML) into a :class:`Config`.

    ``check(cfg)`` adds semantic checks of an upper layer (it raises ConfigError).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None
    if check is not None:
        try:
            check(cfg)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return cfg


def load_config(path: str | Path | None = None, overrides: dict | None = None,
                check: ConfigCheck | None = None) -> Config:
    """Load, merge ``overrides`` (nested dict) into, and validate a YAML config."""
    if path is None and not DEFAULT_CONFIG.exists():  # installed without the repository
        return config_from_dict(_merge({}, overrides or {}), "built-in defaults", check)
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.exists():
        raise ConfigError(f"{path}: config file not found; pass --config with an existing YAML file")
    if not path.is_file():
        raise ConfigError(f"{path}: is a directory, not a config file; pass --config with a YAML file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix the syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); pass --config with a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    if overrides:
        raw = _merge(raw, overrides)
    return config_from_dict(raw, str(path), check)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out
