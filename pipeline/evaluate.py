"""The statistics stage of one (window, detector): selections -> background fit -> pyhf.

For each selection (the top fraction of events in the fit range by score; the inclusive
spectrum for detector ``none``) the selected mjj spectrum is fitted outside the SR
(:mod:`.fits` or the Gaussian process of :mod:`.gp`, ``fit.background``), the SR background
is predicted with its uncertainty, and :mod:`.stats` gives the discovery significance and
limits; at small backgrounds the local p-value comes from pseudo-experiments (:mod:`.toys`).

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

__all__ = ["evaluate_window", "node_seed"]


def node_seed(*parts) -> int:
    """A reproducible 28-bit seed from any JSON-serialisable parts."""
    return int(cache_key(*parts)[:7], 16)


@dataclass(frozen=True)
class _Background:
    b: float
    sigma: float
    expected: np.ndarray
    fit_summary: dict
    converged: bool
    extra: dict


def _background(edges, counts, sr_bins, fit: FitConfig) -> _Background:
    """SR prediction of the configured background model from the sideband bins."""
    n_params = tuple(fit.n_params)
    if fit.background == "gp":
        from .gp import gp_predict

        pred = gp_predict(edges, counts, ~sr_bins, sr_bins, n_params_options=n_params, alpha=fit.ftest_alpha)
        summary = pred.summary()
        return _Background(pred.b, pred.sigma, np.asarray(pred.expected), summary | {"background": "gp"},
                           bool(pred.converged), {"gp": summary})
    from .fits import predict_background

    pred = predict_background(edges, counts, ~sr_bins, sr_bins, n_params, fit.ftest_alpha)
    return _Background(pred.b, pred.sigma, pred.fit.expected, pred.fit.summary() | {"background": "dijet"},
                       bool(pred.fit.converged),
                       {"n_expected_sr_unc_fit": pred.sigma_fit, "n_expected_sr_unc_function": pred.sigma_function})


def _toy_significance(sig, edges, counts, sr_bins, *, bkg: _Background, fit: FitConfig, stats_cfg: StatsConfig,
                      seed: int) -> dict:
    """Local Z and p0 from pseudo-experiments of the background procedure (fields of a TestResult).

    The asymptotic values stay where no pseudo-experiments exist (gp background) or none
    reached the observed Z (they only bound p0 then); ``p_value_method`` says which.
    """
    from .stats import z_on_off
    from .toys import toy_p_value

    if fit.background == "gp":
        return {"z_local": sig.z_local, "p0": sig.p0,
                "p_value_method": "asymptotic (no pseudo-experiments for the gp background)"}
    n_obs = int(counts[sr_bins].sum())
    toy = toy_p_value(edges, counts, ~sr_bins, sr_bins, float(z_on_off(n_obs, bkg.b, bkg.sigma)),
                      n_toys=int(stats_cfg.local_toys), seed=seed, n_params_options=tuple(fit.n_params),
                      alpha=fit.ftest_alpha)
    out = {"p0_toys": toy}
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
        sig = discovery_and_limit(bkg.b if blind else n_obs, bkg.b, bkg.sigma, stats_cfg.cl)
    except (ValueError, np.linalg.LinAlgError) as exc:
        return dataclasses.replace(base, status=f"fit failed: {exc}", flags=("fit failed",)), None
    flags = []
    p_fit = bkg.fit_summary.get("p_value")
    if p_fit is not None and np.isfinite(p_fit) and p_fit < FIT_P_MIN:
        flags.append(f"fit p < {FIT_P_MIN:g} (chi2 {bkg.fit_summary['chi2']:.1f}/{bkg.fit_summary['ndf']})")
    if not bkg.converged:
        flags.append("fit not converged")
    fields = dict(bkg.extra, flags=tuple(flags), n_expected_sr=bkg.b, n_expected_sr_unc=bkg.sigma, fit=bkg.fit_summary,
                  upper_limit_expected=sig.upper_limit_expected,
                  upper_limit_expected_band=getattr(sig, "upper_limit_expected_band", None),
                  status=sig.status if bkg.converged else "fit not converged")
    if not blind:
        fields.update(z_local=sig.z_local, p0=sig.p0, z_local_asymptotic=sig.z_local, upper_limit=sig.upper_limit)
        if use_toys(stats_cfg.p_value, bkg.b, stats_cfg.toys_below):
            fields.update(_toy_significance(sig, edges, counts, sr_bins, bkg=bkg, fit=fit, stats_cfg=stats_cfg,
                                            seed=seed))
        else:
            fields["p_value_method"] = "asymptotic"
    return dataclasses.replace(base, **fields), bkg.expected


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
                    fit: FitConfig, stats: StatsConfig, blind: bool, seed: int) -> WindowTests:
    """Every selection's test for one (window, detector); ``scores`` None is the inclusive test."""
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
    if scores is None:
        score, selections, wall, histories = np.ones(len(m)), [1.0], 0.0, []
    else:
        score, selections = scores.scores, stats.selections
        wall, histories = scores.wall_s, [h for h in scores.histories if h is not None]
    rows, spectra = [], []
    for eff in selections:
        passed = in_fit if eff >= 1.0 else in_fit & (score > np.quantile(score[in_fit], 1.0 - eff))
        counts, _ = np.histogram(m[passed], edges)
        base = TestResult(
            window=w.name, sr=(w.sr_lo, w.sr_hi), detector=detector, selection=float(eff),
            n_selected=None if blind else int(passed.sum()), n_selected_sidebands=int(counts[~sr_bins].sum()),
            n_observed_sr=None if blind else int(counts[sr_bins].sum()),
            n_signal_sr_truth=int(np.sum(passed & in_sr & (truth > 0.5))) if truth is not None and not blind else None)
        row, expected = _test(base, edges, counts, sr_bins, fit=fit, stats_cfg=stats, blind=blind,
                              seed=node_seed(seed, w.name, detector, float(eff)))
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
