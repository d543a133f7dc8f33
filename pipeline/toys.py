"""Local p-values from pseudo-experiments of the whole background procedure.

At small expected backgrounds the asymptotic formula misstates the significance; here each
pseudo-experiment repeats the sideband fit (F-test), the SR prediction with its uncertainties
and the on/off Z (:func:`.stats.z_on_off`), and the p-value is the probability that the
procedure gives a Z at least as large as the observed one under the background-only
hypothesis.

The background-only hypothesis (:func:`toy_p_value`) is fitted to the sidebands only, the bins
the test itself fits, so an SR excess cannot pull it; its parameter uncertainty is propagated
by drawing each pseudo-experiment's parameters from the fit's Gaussian approximation (the
prior-predictive treatment of a nuisance parameter constrained by a subsidiary measurement:
Cousins & Highland, Nucl. Instrum. Meth. A320 (1992) 331; Demortier, "P values and nuisance
parameters", PHYSTAT-LHC 2007, CERN-2008-001 p. 23). Fitted to all bins instead, SR included
(the profile construction), the null follows a strong excess into the SR and its
pseudo-experiments carry the signal. The null's function is the simplest of the procedure's
options (reasons in :func:`toy_p_value`).

The SR count of a pseudo-experiment is Poisson and independent of its sidebands, and Z grows
with it; so instead of drawing it, each pseudo-experiment contributes the exact Poisson
probability that its SR count reaches the observed Z (conditional Monte Carlo, a
Rao-Blackwellised estimate). It is exact in the SR count, more precise than counting, and
reaches significances (Z of 5 and beyond) that counting pseudo-experiments could only bound.
:func:`toy_p_value_known_background` draws from a known spectrum: the oracle of the
calibration and power benchmarks.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import special, stats

from .fits import (
    SEARCH_N_PARAMS,
    SPARSE_EVENTS,
    _DijetLikelihood,
    _options,
    fit_dijet,
    predict_background_batch,
    start_parameters,
)
from .stats import z_on_off

__all__ = ["toy_p_value", "toy_p_value_gp", "toy_p_value_known_background", "toy_p_value_ratio", "use_toys"]

log = logging.getLogger(__name__)

_FIRST_BATCH = 500
_N_MAX = 1e9  # SR counts beyond this never reach the observed Z (e.g. a predicted background of 0)


def use_toys(method: str, b: float, toys_below: float) -> bool:
    """Whether a test with expected SR background ``b`` gets a toy-based p-value."""
    return method == "toys" or (method == "auto" and np.isfinite(b) and b < toys_below)


def _no_excess(null: str = "none needed (no excess)") -> dict:
    """The p-value result of an observed Z of 0 (Z is clipped at 0: every pseudo-experiment reaches it)."""
    return {"p0": 1.0, "p0_err": 0.0, "z": 0.0, "n_toys": 0, "n_above": 0, "n_failed": 0, "bound": False,
            "null_n_params": None, "null": null}


def _smallest_count(z_obs: float, b, sigma_b) -> np.ndarray:
    """The smallest SR count n with ``z_on_off(n, b, sigma_b) >= z_obs`` (vectorised; inf if none).

    Z is 0 up to n = b and increases with n beyond; integer bisection between them.
    """
    with np.errstate(divide="ignore", invalid="ignore"):  # b = 0: Z is 0 for every n (inf returned)
        return _bisect_count(float(z_obs), b, sigma_b)


def _bisect_count(z_obs: float, b, sigma_b) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64)
    s = np.asarray(sigma_b, dtype=np.float64)
    lo = np.floor(np.maximum(b, 0.0))  # z(lo) = 0 < z_obs
    hi = np.maximum(lo + 1.0, np.ceil(b + z_obs * np.sqrt(b + s**2 + 1.0) + z_obs**2))
    for _ in range(64):  # widen until z(hi) reaches z_obs
        short = z_on_off(hi, b, s) < z_obs
        if not short.any() or (hi[short] >= _N_MAX).all():
            break
        hi = np.where(short & (hi < _N_MAX), np.minimum(2 * hi, _N_MAX), hi)
    reach = z_on_off(hi, b, s) >= z_obs
    while True:  # invariant: z(lo) < z_obs <= z(hi)
        open_ = reach & (hi - lo > 1)
        if not open_.any():
            break
        mid = np.floor(0.5 * (lo + hi))
        up = z_on_off(mid, b, s) >= z_obs
        hi = np.where(open_ & up, mid, hi)
        lo = np.where(open_ & ~up, mid, lo)
    return np.where(reach, hi, np.inf)


def _tail(n_min, mean) -> np.ndarray:
    """P(N >= n_min) for N ~ Poisson(mean) (the regularised lower incomplete gamma function)."""
    n_min = np.asarray(n_min, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    finite = np.isfinite(n_min)
    a = np.where(finite, np.maximum(n_min, 1.0), 1.0)
    p = special.gammainc(a, np.maximum(mean, 0.0))
    return np.where(~finite, 0.0, np.where(n_min <= 0, 1.0, p))


def _dijet_procedure(edges, fit_mask, target_mask, *, start: dict, n_params_options, alpha: float):
    """The search's dijet procedure on many spectra: counts (T, bins) -> SR (b, sigma)."""
    def predict(toys):
        return predict_background_batch(edges, toys, fit_mask, target_mask, start=start,
                                        n_params_options=n_params_options, alpha=alpha)
    return predict


def _p_value(target_mask, z_obs: float, draw_means, predict, *, n_toys: int, seed: int, enough: int,
             sample=None) -> dict:
    """The p-value of ``z_obs`` over pseudo-experiments whose expected spectra ``draw_means(rng, k)`` gives,
    each analysed by ``predict`` (counts -> SR b, sigma) and drawn by ``sample(rng, means)``
    (Poisson by default).

    Batches of 500, then doubling, until the estimate's relative standard error is below
    1/sqrt(``enough``) (the precision of ``enough`` pseudo-experiments beyond Z when counting)
    or ``n_toys`` pseudo-experiments are used. Pseudo-experiments whose sidebands no dijet
    function can be fitted to (the search reports "fit failed" for those) are left out and counted.
    """
    rng = np.random.default_rng(seed)
    terms, used, above, failed = [], 0, 0, 0
    t, p, err = np.empty(0), float("nan"), float("inf")
    batch = _FIRST_BATCH
    while used < n_toys:
        k = min(batch, n_toys - used)
        batch *= 2
        means = draw_means(rng, k)
        toys = rng.poisson(means) if sample is None else sample(rng, means)
        b, sb = predict(toys)
        ok = np.isfinite(b) & np.isfinite(sb)
        failed += int((~ok).sum())
        mean_sr = means[:, target_mask].sum(1)
        n_min = _smallest_count(z_obs, b[ok], sb[ok])
        terms.append(_tail(n_min, mean_sr[ok]))
        above += int(np.sum(rng.poisson(mean_sr[ok]) >= n_min))  # the plain count, for the record
        used += k
        t = np.concatenate(terms)
        p = float(t.mean()) if len(t) else float("nan")
        err = float(t.std(ddof=1) / np.sqrt(len(t))) if len(t) > 1 else float("inf")
        if p > 0 and err <= p / np.sqrt(enough):
            break
    if failed:  # conditional on a possible fit, as for the observed spectrum; recorded in n_failed
        (log.warning if failed > 0.5 * used else log.info)(
            "%d of %d pseudo-experiments left out: no dijet function could be fitted to their sidebands",
            failed, used)
    if not len(t):  # no pseudo-experiment could be fitted: no toy p-value (the caller keeps the asymptotic one)
        return {"p0": None, "p0_err": None, "z": None, "n_toys": int(used), "n_above": 0,
                "n_failed": int(failed), "bound": False}
    bound = not p > 0  # every tail probability underflowed: Z beyond ~37
    if bound:
        p = float(np.finfo(float).tiny)
    return {"p0": p, "p0_err": err, "z": float(max(stats.norm.isf(p), 0.0)), "n_toys": int(used),
            "n_above": int(above), "n_failed": int(failed), "bound": bool(bound)}


def _null_fit(edges, counts, fit_mask, n_params_options):
    """The background-only hypothesis: the simplest dijet function of the procedure fitted to the
    sidebands (the next one where that fit fails or does not converge)."""
    last = None
    for n_par in sorted(n_params_options):
        try:
            fit = fit_dijet(edges, counts, fit_mask, n_par)
        except (ValueError, np.linalg.LinAlgError) as exc:
            last = exc
            continue
        if fit.converged or n_par == max(n_params_options):
            return fit
    raise ValueError(f"no dijet function could be fitted to the sidebands for the null hypothesis: {last}")


def _parameter_draws(lik: _DijetLikelihood, fit, n_fit, cut_quantile: float = 1e-4):
    """A function drawing k parameter vectors from the fit's Gaussian approximation N(params, cov).

    Far from the data the Gaussian approximation is poor (an empty bin excludes a large
    expectation much more strongly than the curvature at the optimum says): draws whose
    likelihood ratio to the fit, 2 (nll - nll_min), exceeds the chi2 quantile ``1 - cut_quantile``
    are redrawn, which removes only ``cut_quantile`` of the draws where the approximation holds.
    Where the covariance is unusable the fitted parameters themselves are returned.
    Returns ``(draw, note)``.
    """
    cov = 0.5 * (fit.cov + fit.cov.T)
    if not np.all(np.isfinite(cov)):
        return (lambda rng, k: np.broadcast_to(fit.params, (k, len(fit.params)))), "fit covariance unusable: no sampling"
    val, vec = np.linalg.eigh(cov)
    root = vec * np.sqrt(np.clip(val, 0.0, None))
    n_fit = np.asarray(n_fit, dtype=np.float64)[None]
    nll_min = float(lik.nll(fit.params[None], n_fit)[0])
    cut = float(stats.chi2.isf(cut_quantile, len(fit.params)))

    def draw(rng, k):
        kept, n_kept = [], 0
        for _ in range(20):
            theta = fit.params + rng.standard_normal((k, len(fit.params))) @ root.T
            with np.errstate(over="ignore", invalid="ignore"):
                ok = 2 * (lik.nll(theta, n_fit) - nll_min) < cut
            kept.append(theta[ok])
            n_kept += int(ok.sum())
            if n_kept >= k:
                break
        theta = np.concatenate(kept)[:k]
        if len(theta) < k:  # the approximation fails almost everywhere: the fit itself for the rest
            log.warning("only %d of %d parameter draws within the likelihood cut; the fitted parameters for the rest",
                        len(theta), k)
            theta = np.concatenate([theta, np.broadcast_to(fit.params, (k - len(theta), len(fit.params)))])
        return theta

    return draw, "parameters drawn from its Gaussian uncertainty"


def toy_p_value(edges, counts, fit_mask, target_mask, z_obs: float, *, n_toys: int = 10_000,
                seed: int = 0, n_params_options=SEARCH_N_PARAMS, alpha: float = 0.05,
                enough: int = 50) -> dict:
    """Local p-value of ``z_obs`` from background-only pseudo-experiments of the whole procedure.

    The background-only hypothesis is the simplest dijet function of ``n_params_options``
    fitted to the sideband bins ``fit_mask`` (the bins the test itself fits, which an SR excess
    cannot pull), with its parameter uncertainty: each pseudo-experiment draws its parameters
    from the fit's Gaussian approximation (:func:`_parameter_draws`), its sideband counts from
    that function, and repeats the procedure: sideband fits, F-test, SR prediction with both
    uncertainties, on/off Z (:func:`z_on_off`). Its SR count is not drawn: it contributes the
    Poisson probability that the SR count reaches ``z_obs`` (see the module docstring).

    The simplest function is that of the ladder the observed spectrum climbs (3 parameters
    below :data:`.fits.SPARSE_EVENTS` sideband events). Why the simplest function and not the
    F-test's choice: with few sideband events a more
    flexible function can dive (or rise) across the 400 GeV SR gap, predicting b far below any
    plausible truth with sigma_b >> b. As a null it makes its pseudo-experiments dive too, so
    an ordinary fluctuation looks rare. Measured on background-only experiments of a smooth
    dijet spectrum (SR 3.3-3.7 TeV): at B(SR) = 5, Z > 1 in 30% of 200 with the F-test's choice
    as the null, 13% with the simplest function, 14.5% for an oracle drawing from the truth
    (nominal 15.9%); at B = 35, Z > 2 in 5.8% / 4.3% / 4.5% of 400 experiments. The
    pseudo-experiments still run the F-test, so the procedure's flexibility is in the
    statistic's distribution.

    Returns a dict: ``p0``, its standard error ``p0_err``, ``z``, ``n_toys`` used, ``n_above``
    (pseudo-experiments whose drawn SR count reached ``z_obs``: the plain count), ``n_failed``
    (left out: no fit possible), ``bound`` (p0 underflowed: Z beyond ~37, a lower bound),
    ``null_n_params`` and ``null`` (the null hypothesis in words). ``n_toys`` caps the
    pseudo-experiments; they stop earlier once p0 is known to 1/sqrt(``enough``) relative
    precision. At small counts this replaces the asymptotic formula, which there misstates Z
    (benchmarks/calibration.py).
    """
    if not z_obs > 0:  # Z is clipped at 0: every pseudo-experiment reaches it
        return _no_excess()
    fit_mask = np.asarray(fit_mask, bool)
    target_mask = np.asarray(target_mask, bool)
    counts = np.asarray(counts, dtype=np.float64)
    ladder_options = _options(n_params_options, counts[fit_mask].sum(), SPARSE_EVENTS)  # 3 first when sparse
    null, draw_means, how = _sideband_null(edges, counts, fit_mask, ladder_options)
    start = start_parameters(edges, null.expected, fit_mask, n_params_options)
    predict = _dijet_procedure(edges, fit_mask, target_mask, start=start, n_params_options=n_params_options,
                               alpha=alpha)
    out = _p_value(target_mask, float(z_obs), draw_means, predict, n_toys=n_toys, seed=seed, enough=enough)
    return out | {"null_n_params": int(null.n_params),
                  "null": f"{null.n_params}-parameter dijet fit to the sidebands, {how}"}


def _sideband_null(edges, counts, fit_mask, n_params_options):
    """The null fit, a function drawing k expected spectra from it, and its description."""
    null = _null_fit(edges, counts, fit_mask, n_params_options)
    lik = _DijetLikelihood(edges, fit_mask, null.n_params)
    draw_params, how = _parameter_draws(lik, null, counts[fit_mask])

    def draw_means(rng, k):
        return lik.expected(draw_params(rng, k), all_bins=True)

    return null, draw_means, how


def toy_p_value_known_background(edges, background, fit_mask, target_mask, z_obs: float, *,
                                 n_toys: int = 10_000, seed: int = 0, n_params_options=SEARCH_N_PARAMS,
                                 alpha: float = 0.05, enough: int = 50) -> dict:
    """:func:`toy_p_value` with pseudo-experiments drawn from a known expected ``background``
    spectrum (every bin): the oracle that calibration and power benchmarks compare with."""
    if not z_obs > 0:
        return _no_excess("known background")
    background = np.asarray(background, dtype=np.float64)
    fit_mask = np.asarray(fit_mask, bool)
    target_mask = np.asarray(target_mask, bool)

    def draw_means(rng, k):
        return np.broadcast_to(background, (k, len(background)))

    start = start_parameters(edges, background, fit_mask, n_params_options)
    predict = _dijet_procedure(edges, fit_mask, target_mask, start=start, n_params_options=n_params_options,
                               alpha=alpha)
    out = _p_value(target_mask, float(z_obs), draw_means, predict, n_toys=n_toys, seed=seed, enough=enough)
    return out | {"null_n_params": None, "null": "known background"}


def toy_p_value_ratio(edges, total, passed, fit_mask, target_mask, z_obs: float, *, n_toys: int = 10_000,
                      seed: int = 0, n_params_options=None, alpha: float = 0.05, enough: int = 50,
                      sparse_below: float = SPARSE_EVENTS) -> dict:
    """:func:`toy_p_value` for the efficiency-ratio background (:mod:`.ratio`).

    The background-only hypothesis is the efficiency the test fits to the sidebands (the F-test's
    degree), with its parameters drawn from the fit's Gaussian approximation (the logistic
    likelihood is log-concave, so the approximation holds far better than for the dijet
    function); the selected counts of a pseudo-experiment are Binomial(all_i, eps_i) with the
    inclusive counts ``total`` fixed (the conditional inference of :mod:`.ratio`). Each is
    analysed by the same procedure (ladder, both uncertainties, on/off Z); the SR count
    contributes its Poisson tail (the Binomial's variance is (1 - eps) times smaller, so the
    tail is slightly conservative).
    """
    from .ratio import RATIO_N_PARAMS, _design, ratio_predict, ratio_predict_batch

    opts = tuple(n_params_options or RATIO_N_PARAMS)
    if not z_obs > 0:
        return _no_excess()
    fit_mask = np.asarray(fit_mask, bool)
    target_mask = np.asarray(target_mask, bool)
    total = np.asarray(total, dtype=np.float64)
    null = ratio_predict(edges, total, passed, fit_mask, target_mask, n_params_options=opts, alpha=alpha,
                         sparse_below=sparse_below).fit
    x = _design(edges, null.n_params)
    cov = 0.5 * (null.cov + null.cov.T)
    root = np.linalg.cholesky(cov + 1e-12 * np.eye(len(cov))) if np.all(np.isfinite(cov)) else None

    def draw_means(rng, k):
        theta = null.params + (0.0 if root is None else rng.standard_normal((k, len(null.params))) @ root.T)
        return total * special.expit(np.atleast_2d(theta) @ x.T)

    def sample(rng, means):
        eps = np.divide(means, total, out=np.zeros_like(means), where=total > 0)
        return rng.binomial(total.astype(np.int64), np.clip(eps, 0.0, 1.0))

    def predict(toys):
        b, sb, _, _ = ratio_predict_batch(edges, total, toys, fit_mask, target_mask, n_params_options=opts,
                                          alpha=alpha, sparse_below=sparse_below)
        return b, sb

    out = _p_value(target_mask, float(z_obs), draw_means, predict, n_toys=n_toys, seed=seed, enough=enough,
                   sample=sample)
    how = "parameters drawn from its Gaussian uncertainty" if root is not None else "fit covariance unusable"
    return out | {"null_n_params": int(null.n_params),
                  "null": f"{null.n_params}-parameter efficiency fit to the sidebands, {how}"}


def toy_p_value_gp(pred, z_obs: float, *, n_toys: int = 10_000, seed: int = 0, enough: int = 50) -> dict:
    """:func:`toy_p_value` for the Gaussian-process background (:mod:`.gp`), hyperparameters fixed.

    ``pred`` is the :class:`.gp.GPPrediction` of the observed spectrum. The background-only
    hypothesis is its posterior: sideband bins at the posterior mean, the SR total drawn from
    the posterior N(b, sigma) (reflected at 0; the SR bins keep the posterior's shape). Each
    pseudo-experiment's sidebands are Poisson and analysed with the observed fit's
    hyperparameters, mean and noise (:func:`.gp.gp_predict_batch`, for which the prediction
    is linear in the counts and sigma fixed); refitting the hyperparameters per
    pseudo-experiment (~0.1 s each) is left out, so the spread of the fitted kernel is not in
    the statistic's distribution. The SR count contributes its Poisson tail as in
    :func:`toy_p_value`.
    """
    from .gp import gp_predict_batch

    if not z_obs > 0:
        return _no_excess()
    state = pred._state
    target = np.asarray(state["target_mask"], bool)
    shape = np.maximum(np.asarray(pred.expected, dtype=np.float64), 0.0)
    in_sr = shape[target].sum()

    def draw_means(rng, k):
        b = np.abs(pred.b + pred.sigma * rng.standard_normal(k))  # truncated by reflection at 0
        means = np.broadcast_to(shape, (k, len(shape))).copy()
        means[:, target] *= (b / in_sr)[:, None] if in_sr > 0 else 0.0
        return means

    def predict(toys):
        return gp_predict_batch(pred, toys)

    out = _p_value(target, float(z_obs), draw_means, predict, n_toys=n_toys, seed=seed, enough=enough)
    return out | {"null_n_params": None,
                  "null": "GP posterior of the sidebands (SR total drawn from it; hyperparameters fixed)"}
