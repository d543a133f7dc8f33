"""The statistics stage of one (window, detector): selections -> background fit -> pyhf.

For each selection (a score threshold that keeps a fraction of the sideband events,
:func:`selection_threshold`; the inclusive spectrum for detector ``none``) the selected mjj
spectrum is fitted outside the SR (:mod:`.fits` or the Gaussian process of :mod:`.gp`,
``fit.background``), the SR background is predicted with its uncertainty, and :mod:`.stats`
gives the discovery significance and limits; at small backgrounds the local p-value comes
from pseudo-experiments (:mod:`.toys`).

With ``blind`` nothing that depends on the selected SR data is computed or written:
observed SR counts, Z, p0 and the observed limit are None, SR bins of the spectra are None,
and the expected limit uses the background prediction as the data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .cache import cache_key
from .config import FitConfig, StatsConfig
from .records import EventTable, TestResult, WindowScores, WindowTests
from .regions import Window
from .table import read_table, table_columns
from .verdict import FIT_P_MIN

__all__ = ["evaluate_window", "node_seed", "selection_threshold"]


def node_seed(*parts) -> int:
    """A reproducible 28-bit seed from any JSON-serialisable parts."""
    return int(cache_key(*parts)[:7], 16)


def selection_threshold(score: np.ndarray, in_sidebands: np.ndarray, eff: float) -> float | None:
    """The score threshold of the selection with efficiency ``eff``: the (1 - eff) quantile of
    the scores of the sideband events in the fit range (None for ``eff`` >= 1, no cut).

    The efficiency is defined on the sidebands, where the background dominates, so it is the
    selection's background efficiency (the x axis of a SIC curve), and nothing in the signal
    region sets the cut. Two things follow that a quantile over the whole fit range lacks:
    the threshold is blind (SR data cannot move it), and a signal cannot take the selection's
    sideband events away. With the fit-range quantile a strong SR excess fills most of a tight
    selection's quota: on the demo data the CWoLa 0.2% selection kept 37 SR events and only
    14 sideband events, from which the SR background (11.0 +- 5.1) had to be extrapolated;
    with the sideband quantile 0.2% of the sidebands (39 events) pass and fix the fit.
    Under background only the two agree up to the SR's share of the quantile's sampling noise.
    """
    if eff >= 1.0:
        return None
    side = score[in_sidebands]
    if side.size == 0:
        raise ValueError("no sideband events in the fit range to set the selection threshold")
    return float(np.quantile(side, 1.0 - eff))


@dataclass(frozen=True)
class _Background:
    b: float
    sigma: float
    expected: np.ndarray
    fit_summary: dict
    converged: bool
    extra: dict
    model: object = None  # the fitted model (the GP's pseudo-experiments start from it)
    at_bound: tuple[str, ...] = ()  # fitted hyperparameters at a bound of their range (a finding, flagged)


def _background(edges, counts, sr_bins, fit: FitConfig) -> _Background:
    """SR prediction of the configured background model from the sideband bins."""
    n_params = tuple(fit.n_params)
    if fit.background == "gp":
        from .gp import gp_predict

        pred = gp_predict(edges, counts, ~sr_bins, sr_bins, n_params_options=n_params, alpha=fit.ftest_alpha)
        summary = pred.summary()
        return _Background(pred.b, pred.sigma, np.asarray(pred.expected), summary | {"background": "gp"},
                           bool(pred.converged), {"gp": summary}, pred, tuple(pred.at_bound))
    from .fits import predict_background

    pred = predict_background(edges, counts, ~sr_bins, sr_bins, n_params, fit.ftest_alpha)
    return _Background(pred.b, pred.sigma, pred.fit.expected, pred.fit.summary() | {"background": "dijet"},
                       bool(pred.fit.converged),
                       {"n_expected_sr_unc_fit": pred.sigma_fit, "n_expected_sr_unc_function": pred.sigma_function})


def _toy_significance(sig, edges, counts, sr_bins, *, bkg: _Background, fit: FitConfig, stats_cfg: StatsConfig,
                      seed: int) -> dict:
    """Local Z and p0 from pseudo-experiments of the background procedure (fields of a TestResult).

    The asymptotic values stay where no pseudo-experiment reached the observed Z (they only
    bound p0 then); ``p_value_method`` says which. The gp background's pseudo-experiments keep
    the observed fit's hyperparameters (:func:`.toys.toy_p_value_gp`).
    """
    from .stats import z_on_off
    from .toys import toy_p_value, toy_p_value_gp

    n_obs = int(counts[sr_bins].sum())
    z_obs = float(z_on_off(n_obs, bkg.b, bkg.sigma))
    if fit.background == "gp":
        toy = toy_p_value_gp(bkg.model, z_obs, n_toys=int(stats_cfg.local_toys), seed=seed)
    else:
        toy = toy_p_value(edges, counts, ~sr_bins, sr_bins, z_obs, n_toys=int(stats_cfg.local_toys), seed=seed,
                          n_params_options=tuple(fit.n_params), alpha=fit.ftest_alpha)
    out = {"p0_toys": toy}
    if toy["z"] is None:
        return out | {"z_local": sig.z_local, "p0": sig.p0, "p_value_method":
                      f"asymptotic (none of {toy['n_toys']} pseudo-experiments could be fitted)"}
    if toy["bound"] and sig.z_local > toy["z"]:
        return out | {"z_local": sig.z_local, "p0": sig.p0, "p_value_method":
                      f"asymptotic (beyond toy reach: none of {toy['n_toys']} pseudo-experiments reached it)"}
    return out | {"z_local": toy["z"], "p0": toy["p0"], "p_value_method": "toys"}


def _test(base: TestResult, edges, counts, sr_bins, *, fit: FitConfig, stats_cfg: StatsConfig, blind: bool,
          seed: int) -> tuple[TestResult, np.ndarray | None]:
    """Background, significance and limits of one selection; the fitted expectation per bin."""
    from .stats import discovery_and_limit
    from .toys import use_toys

    n_obs = int(counts[sr_bins].sum())
    try:
        bkg = _background(edges, counts, sr_bins, fit)
        # small background: p-values from toys and limits from exact Poisson counts
        toys = use_toys(stats_cfg.p_value, bkg.b, stats_cfg.toys_below)
        sig = discovery_and_limit(bkg.b if blind else n_obs, bkg.b, bkg.sigma, stats_cfg.cl, counting=toys)
    except (ValueError, np.linalg.LinAlgError) as exc:
        return dataclasses.replace(base, status=f"fit failed: {exc}", flags=("fit failed",)), None
    flags = []
    p_fit = bkg.fit_summary.get("p_value")
    if p_fit is not None and np.isfinite(p_fit) and p_fit < FIT_P_MIN:
        flags.append(f"fit p < {FIT_P_MIN:g} (chi2 {bkg.fit_summary['chi2']:.1f}/{bkg.fit_summary['ndf']})")
    if not bkg.converged:
        flags.append("fit not converged")
    if bkg.at_bound:
        flags.append(f"GP hyperparameter at bound: {', '.join(bkg.at_bound)}")
    fields = dict(bkg.extra, flags=tuple(flags), n_expected_sr=bkg.b, n_expected_sr_unc=bkg.sigma, fit=bkg.fit_summary,
                  upper_limit_expected=sig.upper_limit_expected, limit_method=sig.limit_method,
                  upper_limit_expected_band=getattr(sig, "upper_limit_expected_band", None),
                  status=sig.status if bkg.converged else "fit not converged")
    if not blind:
        fields.update(z_local=sig.z_local, p0=sig.p0, z_local_asymptotic=sig.z_local, upper_limit=sig.upper_limit)
        if toys:
            fields.update(_toy_significance(sig, edges, counts, sr_bins, bkg=bkg, fit=fit, stats_cfg=stats_cfg,
                                            seed=seed))
        else:
            fields["p_value_method"] = "asymptotic"
    return dataclasses.replace(base, **fields), bkg.expected


@dataclass(frozen=True)
class _SignalTemplate:
    """A signal template in one window: which of its events lie in the SR, and their scores.

    A template event passes a selection when it lies in the SR and its score exceeds the
    threshold the data set (:func:`selection_threshold`, from the data's sideband scores), so
    its efficiency is that of the very selection tested. Nothing here depends on SR data;
    observed limits stay None when blind.
    """

    in_sr: np.ndarray
    scores: np.ndarray | None
    n_signal: float
    note: str | None

    @classmethod
    def read(cls, template: EventTable, scores: WindowScores | None, w: Window, stats: StatsConfig):
        mjj = read_table(template, ["mjj"])["mjj"].to_numpy()
        n_signal = float(stats.signal_events) if stats.signal_events is not None else float(len(mjj))
        if scores is None:  # the inclusive test: no score cut
            return cls(w.in_sr(mjj), None, n_signal, None)
        values = np.asarray(scores.scores, dtype=np.float64)
        if len(values) != len(mjj):
            raise ValueError(f"template scores hold {len(values)} events, the template {len(mjj)}")
        note = None if scores.model_paths and np.isfinite(values).all() else (
            "no saved fold models to score the template")
        return cls(w.in_sr(mjj), values, n_signal, note)

    def fields(self, row: TestResult, threshold: float | None) -> dict:
        """The signal-model fields of ``row`` (a test whose data selection used ``threshold``)."""
        n = len(self.in_sr)
        out = {"signal_template_events": n, "signal_events": self.n_signal}
        if self.note is not None:
            return out | {"signal_note": self.note}
        passed = self.in_sr if threshold is None else self.in_sr & (self.scores > threshold)
        k = int(passed.sum())
        eff = k / n
        out |= {"signal_template_passed": k, "signal_efficiency": eff,
                "signal_efficiency_unc": float(np.sqrt(eff * (1.0 - eff) / n)),
                "signal_expected_sr": eff * self.n_signal}
        b, sigma_b = row.n_expected_sr, row.n_expected_sr_unc
        if b is None or sigma_b is None or not np.isfinite(b):
            return out | {"signal_note": f"no background prediction ({row.status})"}
        out["signal_z_expected"] = _expected_z(eff * self.n_signal, b, sigma_b)
        if k == 0:
            return out | {"signal_note": "no template event passes this selection in the SR (efficiency 0): "
                                         "no limit on produced events"}
        band = row.upper_limit_expected_band
        return out | {"signal_upper_limit": _per_eff(row.upper_limit, eff),
                      "signal_upper_limit_expected": _per_eff(row.upper_limit_expected, eff),
                      "signal_upper_limit_expected_band": None if band is None else
                      tuple(_per_eff(v, eff) for v in band)}


def _expected_z(s: float, b: float, sigma_b: float) -> float:
    """Median expected discovery Z of ``s`` signal events on ``b`` +- ``sigma_b``.

    The discovery Z of the Asimov data set of signal + background (n = s + b, auxiliary
    sideband count at the fitted background) in the test's own pyhf model, in its closed form
    (:func:`.stats.z_on_off`, Cowan's formula for that model). pyhf's q0 on the same Asimov
    data (``stats.discovery_and_limit(b + s, b, sigma_b)``) gives the same Z to 1e-8, except
    where its p0 underflows (Z beyond about 37); the closed form has no such limit.
    """
    from .stats import z_on_off

    return float(z_on_off(b + s, b, sigma_b))


def _per_eff(limit: float | None, eff: float) -> float | None:
    """A limit on SR signal events as one on produced events (None stays None, NaN becomes None)."""
    return None if limit is None or not np.isfinite(limit) else float(limit) / eff


def _detector_metrics(scores, m, truth, w: Window, detector: str) -> dict | None:
    """ROC/SIC of the out-of-fold scores on the SR events, where truth labels exist."""
    if truth is None:
        return None
    from .metrics import sic_curve

    in_sr = w.in_sr(m)
    sig, bkg = in_sr & (truth > 0.5), in_sr & (truth < 0.5)
    if sig.sum() < 5 or bkg.sum() < 50:
        return {"window": w.name, "detector": detector, "auc": None, "max_sic": None, "n_signal": int(sig.sum())}
    curve = sic_curve(scores[sig], scores[bkg], min_background=50)
    return {"window": w.name, "detector": detector, **curve.to_dict()}


def evaluate_window(table: EventTable, scores: WindowScores | None, *, window: Window, detector: str,
                    fit: FitConfig, stats: StatsConfig, blind: bool, seed: int, template: EventTable | None = None,
                    template_scores: WindowScores | None = None) -> WindowTests:
    """Every selection's test for one (window, detector); ``scores`` None is the inclusive test.

    With a signal ``template`` (its events; ``template_scores``: their scores by this window's
    fold models, calibrated like the data's) each row also gets the template's efficiency
    through the same selection and what follows from it (:class:`_SignalTemplate`).
    """
    from .fits import make_edges

    cols = ["mjj"] + (["label"] if "label" in table_columns(table) else [])
    events = read_table(table, cols)
    m = events["mjj"].to_numpy()
    w = window
    lo, hi = fit.range
    in_fit = (m >= lo) & (m < hi)
    edges = make_edges((lo, hi), fit.bin_width, (w.sr_lo, w.sr_hi))
    sr_bins = (edges[:-1] >= w.sr_lo) & (edges[1:] <= w.sr_hi)
    truth = events["label"].to_numpy() if "label" in events else None
    in_sr = w.in_sr(m)
    in_sidebands = in_fit & ~in_sr
    if scores is None:
        score, selections, wall, histories = np.ones(len(m)), [1.0], 0.0, []
    else:
        score, selections = scores.scores, stats.selections
        wall, histories = scores.wall_s, [h for h in scores.histories if h is not None]
    signal = _SignalTemplate.read(template, template_scores, w, stats) if template is not None else None
    rows, spectra = [], []
    for eff in selections:
        threshold = selection_threshold(score, in_sidebands, eff)
        passed = in_fit if threshold is None else in_fit & (score > threshold)
        counts, _ = np.histogram(m[passed], edges)
        base = TestResult(
            window=w.name, sr=(w.sr_lo, w.sr_hi), detector=detector, selection=float(eff),
            n_selected=None if blind else int(passed.sum()), n_selected_sidebands=int(counts[~sr_bins].sum()),
            n_observed_sr=None if blind else int(counts[sr_bins].sum()),
            n_signal_sr_truth=int(np.sum(passed & in_sr & (truth > 0.5))) if truth is not None and not blind else None)
        row, expected = _test(base, edges, counts, sr_bins, fit=fit, stats_cfg=stats, blind=blind,
                              seed=node_seed(seed, w.name, detector, float(eff)))
        if signal is not None:
            row = dataclasses.replace(row, **signal.fields(row, threshold))
        rows.append(row)
        shown = [None if (blind and in_sr_bin) else int(c) for c, in_sr_bin in zip(counts, sr_bins)]
        spectra.append({"edges": edges.tolist(), "counts": shown,
                        "expected": None if expected is None else expected.tolist(), "sr_bins": sr_bins.tolist()})
    return WindowTests(
        rows=tuple(rows), spectra=tuple(spectra),
        timing={"window": w.name, "detector": detector, "train_wall_s": wall},
        training={"window": w.name, "detector": detector, "folds": histories} if histories else None,
        metrics=_detector_metrics(score, m, truth, w, detector) if scores is not None and not blind else None,
        model_paths=tuple(scores.model_paths) if scores is not None else ())
