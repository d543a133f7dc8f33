"""Background models of a binned mjj spectrum: the dijet-function family.

The dijet function, with x = mjj / sqrt(s),

    f(x) = p0 (1 - x)^p1 / x^(p2 + p3 ln x + p4 ln^2 x)

(3, 4 or 5 parameters) is fitted as a density to the binned spectrum outside the
signal region by a Poisson likelihood, integrating over each bin (Gauss-Legendre). The
number of parameters is chosen by an F-test. :func:`predict_background` gives the
predicted SR background with the fit's and the function choice's uncertainties;
:func:`predict_background_batch` runs the same procedure on many spectra at once
(pseudo-experiments). Both evaluate one likelihood (:class:`_DijetLikelihood`: expectation,
deviance, gradient, information, covariance, convergence criterion) and one F-test
(:func:`_ftest_choice`); only the minimiser differs (scipy trust-exact for one spectrum,
vectorised Fisher scoring for many). A function needs more non-empty fit bins than
parameters: with as many it interpolates them and predicts the SR with no uncertainty.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from .dijet import SQRT_S, _basis, _bin_jacobian, _DijetLikelihood, _expected, _quad_points, _start  # noqa: F401

__all__ = [
    "SQRT_S",
    "SEARCH_N_PARAMS",
    "SpectrumFit",
    "BackgroundPrediction",
    "make_edges",
    "fit_dijet",
    "fit_dijet_ftest",
    "predict_background",
    "predict_background_batch",
    "start_parameters",
]

log = logging.getLogger(__name__)

def make_edges(fit_range: tuple[float, float], bin_width: float, sr: tuple[float, float]) -> np.ndarray:
    """Bin edges over ``fit_range`` of about ``bin_width``, with the SR bounds as edges."""
    lo, hi = fit_range
    sr_lo, sr_hi = sr

    def segment(a: float, b: float) -> np.ndarray:
        n = max(1, int(round((b - a) / bin_width)))
        return np.linspace(a, b, n + 1)

    parts = [segment(lo, sr_lo)[:-1] if sr_lo > lo else np.array([]), segment(sr_lo, sr_hi)[:-1]]
    parts.append(segment(sr_hi, hi) if hi > sr_hi else np.array([sr_hi]))
    return np.unique(np.concatenate(parts))


@dataclass(frozen=True)
class SpectrumFit:
    """Result of a dijet-function fit; arrays are per bin of ``edges``."""

    n_params: int
    params: np.ndarray
    cov: np.ndarray
    edges: np.ndarray
    counts: np.ndarray
    fit_mask: np.ndarray
    expected: np.ndarray
    deviance: float
    chi2: float
    ndf: int
    converged: bool
    message: str = ""

    @property
    def pulls(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.expected > 0, (self.counts - self.expected) / np.sqrt(self.expected), 0.0)

    @property
    def p_value(self) -> float:
        return float(stats.chi2.sf(self.chi2, self.ndf)) if self.ndf > 0 else float("nan")

    def predict(self, mask: np.ndarray) -> tuple[float, float]:
        """Predicted count in the bins of ``mask`` and its standard deviation from the fit."""
        jac = _bin_jacobian(self.edges, self.params, self.n_params)[mask].sum(axis=0)
        b = float(self.expected[mask].sum())
        var = float(jac @ self.cov @ jac)
        return b, float(np.sqrt(max(var, 0.0)))

    def summary(self) -> dict:
        return {
            "function": "dijet",
            "n_params": self.n_params,
            "params": [float(p) for p in self.params],
            "chi2": float(self.chi2),
            "ndf": int(self.ndf),
            "p_value": self.p_value,
            "converged": bool(self.converged),
            "message": self.message,
        }

def fit_dijet(
    edges: np.ndarray, counts: np.ndarray, fit_mask: np.ndarray, n_params: int = 4
) -> SpectrumFit:
    """Poisson-likelihood fit of the dijet function to ``counts`` in the bins ``fit_mask``.

    Minimised with scipy's trust-region method and the exact Hessian of the likelihood that
    :func:`predict_background_batch` uses too (:class:`_DijetLikelihood`).
    """
    lik = _DijetLikelihood(edges, fit_mask, n_params)
    counts = np.asarray(counts, dtype=np.float64)
    n = counts[lik.fit_mask]
    theta0 = _start(lik, n)
    result, theta, converged, message = _minimise(lik, counts, theta0)
    return SpectrumFit(
        n_params=n_params,
        params=theta,
        cov=result.cov[0],
        edges=lik.edges,
        counts=counts,
        fit_mask=lik.fit_mask,
        expected=result.expected[0],
        deviance=float(result.deviance[0]),
        chi2=float(result.chi2[0]),
        ndf=int(lik.fit_mask.sum() - n_params),
        converged=converged,
        message=message,
    )


def _minimise(lik: _DijetLikelihood, counts, theta0):
    """trust-exact with the exact Hessian from ``theta0`` (and a nudged copy if it fails).

    Returns (fit results, parameters, converged, message). Far from the optimum (a few
    sparse bins) scipy can meet non-finite values and raise ValueError: the fit then fails, as
    it always has (the F-test skips that function)."""
    n = counts[lik.fit_mask]

    def nll(theta):
        return float(lik.nll(theta[None], n)[0])

    def grad(theta):
        return lik.gradient(theta[None], n)[0]

    def hess(theta):
        return lik.hessian(theta[None], n)[0]

    best = None
    for start in (theta0, theta0 + 1e-3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = optimize.minimize(nll, start, jac=grad, hess=hess, method="trust-exact",
                                    options={"maxiter": 500, "gtol": 1e-6})
        if best is None or res.fun < best.fun:
            best = res
        if res.success:
            break
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a diverged fit: not converged
        result = _finish(lik, best.x[None], counts[None])
    converged = bool(best.success) or (best.fun == best.fun and bool(result.converged[0]))
    return result, best.x, converged, str(best.message)


@dataclass(frozen=True)
class _Fits:
    """Fits of one dijet function to many spectra; arrays have a leading spectrum axis."""

    params: np.ndarray  # (T, p)
    expected: np.ndarray  # (T, bins), every bin
    jacobian: np.ndarray  # (T, bins, p), every bin
    cov: np.ndarray  # (T, p, p)
    deviance: np.ndarray  # (T,), fit bins
    chi2: np.ndarray  # (T,), fit bins
    converged: np.ndarray  # (T,)

    def predict(self, mask) -> tuple[np.ndarray, np.ndarray]:
        """Predicted counts in the bins of ``mask`` and their standard deviations from the fits."""
        jac = self.jacobian[:, mask].sum(1)
        var = np.einsum("tp,tpr,tr->t", jac, self.cov, jac)
        return self.expected[:, mask].sum(1), np.sqrt(np.maximum(var, 0.0))


def _finish(lik: _DijetLikelihood, theta, counts) -> _Fits:
    """Everything a fit reports at its final parameters ``theta`` (T, p) for ``counts`` (T, bins)."""
    n = counts[:, lik.fit_mask]
    e_all = lik.points(theta, all_bins=True)
    expected = e_all.sum(-1)
    dmu = lik.jacobian(e_all, all_bins=True)
    mu, dmu_fit = expected[:, lik.fit_mask], dmu[:, lik.fit_mask]
    grad = lik._gradient(mu, dmu_fit, n)
    return _Fits(params=theta, expected=expected, jacobian=dmu, cov=lik.covariance(lik.fisher(mu, dmu_fit)),
                 deviance=lik.deviance(n, mu), chi2=lik.chi2(n, mu), converged=lik.converged(grad, n))


def _fit_batch(edges, counts, fit_mask, n_params, theta0, max_iter: int = 60) -> _Fits:
    """Poisson fits of the dijet function to many spectra at once (Fisher scoring).

    ``counts`` is (toys, bins); every fit starts from ``theta0`` (the parameters the toys
    were drawn near), so a few vectorised Newton-like steps with step halving converge.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # failures end up unconverged
        return _fisher_scoring(_DijetLikelihood(edges, fit_mask, n_params), np.asarray(counts, dtype=np.float64),
                               theta0, max_iter)


def _fisher_scoring(lik: _DijetLikelihood, counts, theta0, max_iter: int) -> _Fits:
    """Newton steps with the expected information (Fisher scoring), each halved until the
    likelihood improves; a spectrum stops when its gradient vanishes or nothing is gained."""
    n_params = lik.n_params
    n = counts[:, lik.fit_mask]
    theta = np.broadcast_to(np.asarray(theta0, dtype=np.float64), (n.shape[0], n_params)).copy()
    eye = np.eye(n_params)
    scale = np.maximum(np.sqrt(n.sum(1)), 1.0)
    active = np.arange(len(n))  # toys still iterating; the others have stopped
    for _ in range(max_iter):
        if not len(active):
            break
        th, nn = theta[active], n[active]
        nll, grad, info, _ = lik.evaluate(th, nn)
        done = np.max(np.abs(grad), axis=1) < 1e-6 * scale[active]
        step = np.linalg.solve(info + 1e-12 * eye, grad[..., None])[..., 0]
        alpha = np.ones(len(active))
        trial, nll_t = th.copy(), nll.copy()
        todo = ~done
        for _halving in range(30):  # halve each toy's step until its likelihood improves
            if not todo.any():
                break
            cand = th[todo] - alpha[todo, None] * step[todo]
            nll_c = lik.nll(cand, nn[todo])
            better = nll_c <= nll[todo]
            idx = np.flatnonzero(todo)
            trial[idx[better]], nll_t[idx[better]] = cand[better], nll_c[better]
            todo[idx[better]] = False
            alpha[todo] *= 0.5
        stalled = todo | (nll - nll_t <= 1e-10 * np.maximum(np.abs(nll), 1.0))  # nothing left to gain
        theta[active] = trial
        active = active[~(done | stalled)]
    fits = _finish(lik, theta, counts)
    fitted = (n > 0).sum(1) > n_params  # fit_dijet refuses the others (ValueError)
    if fitted.all():
        return fits
    return dataclasses.replace(fits, deviance=np.where(fitted, fits.deviance, np.nan),
                               converged=fits.converged & fitted)


def _ftest_choice(options, deviance: dict, converged: dict, n_fit: int, alpha: float, first=None) -> np.ndarray:
    """The F-test ladder, for one spectrum or many: the chosen number of parameters of each.

    ``options`` are the fitted functions in increasing order; a spectrum's ladder starts at
    ``first`` (per spectrum; default the first option). ``deviance``/``converged`` map each
    function to (T,) arrays. Climb to the next function while it converged and either improves
    the deviance significantly (F-test p-value below ``alpha``) or the current one did not
    converge.

    The F ratio divides the deviance gain per added parameter by the dispersion estimated from
    the richer fit, dev / ndf, floored at 1, the Poisson variance (quasi-Poisson: counts are
    never less variable than Poisson). Without the floor a sparse spectrum, whose many empty
    or single-event bins give dev / ndf far below 1, inflates F and climbs to the most flexible
    function on noise (a 0.2% selection with 14 sideband events: 5 parameters, chi2 3.0 / 23,
    and an SR prediction of 4.9 +- 7.4 events).
    """
    opts = sorted(options)
    n = len(deviance[opts[0]])
    first = np.full(n, opts[0]) if first is None else np.asarray(first)
    chosen = first.copy()
    alive = np.ones(n, bool)  # still climbing the ladder
    for lo, hi in zip(opts[:-1], opts[1:]):
        ndf_hi = n_fit - hi
        if ndf_hi <= 0:
            break
        on = lo >= first  # spectra whose ladder has reached ``lo``
        dev_lo, dev_hi = deviance[lo], deviance[hi]
        with np.errstate(invalid="ignore"):
            f_stat = ((dev_lo - dev_hi) / (hi - lo)) / np.maximum(dev_hi / ndf_hi, 1.0)
            better = stats.f.sf(f_stat, hi - lo, ndf_hi) < alpha
        up = on & alive & converged[hi] & (better | ~converged[lo])
        chosen[up] = hi
        alive = np.where(on, up, alive)
    return chosen


#: Below this many events in the fitted bins the 3-parameter function joins the F-test ladder
#: as its first rung (:func:`ladder`).
SPARSE_EVENTS = 1000


def ladder(n_params_options, n_fit_events, sparse_below: float = SPARSE_EVENTS) -> np.ndarray:
    """The first rung of the F-test ladder per spectrum with ``n_fit_events`` fitted events.

    The search leaves the 3-parameter function out of :data:`SEARCH_N_PARAMS` because at
    inclusive statistics (~60k sideband events) its SR prediction is biased by ~1.8 standard
    deviations. A bias of the function's shape is fixed while the statistical error grows
    like 1/sqrt(N) relative to the prediction, so the bias in units of the error scales like
    sqrt(N): about 0.2 sigma at 1,000 events. Below ``sparse_below`` fitted events (tight
    selections) the 3-parameter function is the first rung: with tens of sideband events a
    4- or 5-parameter function is barely constrained across the SR gap and its uncertainty,
    not a bias, dominates.
    """
    opts = sorted(n_params_options)
    n = np.atleast_1d(np.asarray(n_fit_events, dtype=np.float64))
    return np.where(n < sparse_below, min(3, opts[0]), opts[0])


def _options(n_params_options, n_fit_events, sparse_below: float) -> list[int]:
    """The functions a ladder over ``n_fit_events`` can choose among."""
    return sorted(set(n_params_options) | {int(f) for f in np.unique(ladder(n_params_options, n_fit_events,
                                                                             sparse_below))})


def fit_dijet_ftest(
    edges: np.ndarray,
    counts: np.ndarray,
    fit_mask: np.ndarray,
    n_params_options: tuple[int, ...] = (3, 4, 5),
    alpha: float = 0.05,
    *,
    sparse_below: float = 0,
) -> SpectrumFit:
    """Fit with increasing numbers of parameters; keep adding one while an F-test prefers it.

    With ``sparse_below`` > 0 the ladder starts at 3 parameters below that many fitted
    events (:func:`ladder`); by default it starts at the first option.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n_events = counts[np.asarray(fit_mask, bool)].sum()
    options = _options(n_params_options, n_events, sparse_below)
    fits: dict[int, SpectrumFit] = {}
    for n_par in options:
        try:
            fits[n_par] = fit_dijet(edges, counts, fit_mask, n_par)
        except (ValueError, np.linalg.LinAlgError) as exc:
            log.debug("dijet fit with %d parameters failed: %s", n_par, exc)
    if not fits:
        raise ValueError("no dijet fit succeeded (too few non-empty bins?)")
    first = ladder(n_params_options, n_events, sparse_below)
    first = np.array([min((p for p in fits if p >= first[0]), default=min(fits))])
    chosen = _ftest_choice(list(fits), {p: np.array([f.deviance]) for p, f in fits.items()},
                           {p: np.array([f.converged]) for p, f in fits.items()},
                           int(np.asarray(fit_mask, bool).sum()), alpha, first)
    return fits[int(chosen[0])]


@dataclass(frozen=True)
class BackgroundPrediction:
    """Predicted background in the target bins and its uncertainty components (``fit``: the
    chosen fit, a :class:`SpectrumFit` here, a :class:`.ratio.RatioFit` for the efficiency ratio)."""

    fit: SpectrumFit
    b: float
    sigma_fit: float
    sigma_function: float

    @property
    def sigma(self) -> float:
        return float(np.hypot(self.sigma_fit, self.sigma_function))


#: Functions the search chooses among by default. The 3-parameter function is left out:
#: fitted to the R&D QCD sidebands it is biased in the SR by ~1.8 standard deviations at
#: inclusive statistics, and the F-test keeps it in ~7% of pseudo-experiments, where no
#: function-choice uncertainty covers the bias (benchmarks/calibration.py).
SEARCH_N_PARAMS = (4, 5)


def _alternative(n_params: int) -> int:
    """The dijet function whose difference to ``n_params``' is the function-choice uncertainty."""
    return n_params + 1 if n_params < 5 else n_params - 1


def predict_background(edges, counts, fit_mask, target_mask, n_params_options=SEARCH_N_PARAMS,
                       alpha: float = 0.05, *, sparse_below: float = SPARSE_EVENTS) -> BackgroundPrediction:
    """Dijet-function prediction for ``target_mask`` bins from the ``fit_mask`` bins.

    Two uncertainties, added in quadrature: the fit's (parameter covariance) and the
    function choice's, the difference to the prediction of the next more flexible dijet
    function (one fewer parameter for the 5-parameter one). Without the second, the F-test's
    occasional choice of a too-simple function biases the prediction beyond its quoted error.
    Below ``sparse_below`` fitted events the ladder starts at 3 parameters (:func:`ladder`).
    """
    fit = fit_dijet_ftest(edges, counts, fit_mask, n_params_options, alpha, sparse_below=sparse_below)
    b, sigma_fit = fit.predict(target_mask)
    other = _alternative(fit.n_params)
    try:
        alt = fit_dijet(edges, counts, fit_mask, other)
        sigma_fn = abs(alt.predict(target_mask)[0] - b) if alt.converged else 0.0
    except (ValueError, np.linalg.LinAlgError):
        sigma_fn = 0.0
    return BackgroundPrediction(fit, b, sigma_fit, float(sigma_fn))


def _functions_needed(n_params_options) -> list[int]:
    """The dijet functions the procedure fits: the F-test's options and their alternatives."""
    return sorted(set(n_params_options) | {_alternative(p) for p in n_params_options})


def start_parameters(edges, spectrum, fit_mask, n_params_options=SEARCH_N_PARAMS) -> dict[int, np.ndarray]:
    """Starting parameters for :func:`predict_background_batch`: each needed function fitted
    to the ``fit_mask`` bins of ``spectrum`` (the spectrum the batch is drawn around). A
    function the batch needs beyond these (the sparse ladder's) starts from the batch's mean."""
    return {p: fit_dijet(edges, spectrum, fit_mask, p).params for p in _functions_needed(n_params_options)}


def predict_background_batch(edges, counts, fit_mask, target_mask, *, start: dict[int, np.ndarray],
                             n_params_options=SEARCH_N_PARAMS, alpha: float = 0.05,
                             sparse_below: float = SPARSE_EVENTS):
    """:func:`predict_background` for many spectra (rows of ``counts``) at once.

    The same procedure (F-test choice, fit covariance, function-choice uncertainty), with the
    fits of every function in ``start`` (n_params -> starting parameters) done as one batch.
    Returns ``(b, sigma)`` arrays, NaN for spectra where no function can be fitted (fewer
    non-empty fit bins than parameters: :func:`predict_background` raises there). Used for
    toy-based p-values and in the calibration benchmark.
    """
    fit_mask = np.asarray(fit_mask, bool)
    target_mask = np.asarray(target_mask, bool)
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    n_events = counts[:, fit_mask].sum(1)
    opts = _options(n_params_options, n_events, sparse_below)
    needed = _functions_needed(opts)
    start = dict(start)
    for p in set(needed) - set(start):
        start[p] = fit_dijet(edges, counts.mean(0), fit_mask, p).params
    fits = {p: _fit_batch(edges, counts, fit_mask, p, start[p]) for p in needed}
    chosen = _ftest_choice(opts, {p: fits[p].deviance for p in opts}, {p: fits[p].converged for p in opts},
                           int(fit_mask.sum()), alpha, ladder(n_params_options, n_events, sparse_below))
    pred = {p: fits[p].predict(target_mask) for p in needed}

    def pick(which, item):  # per spectrum, ``item`` of the prediction of function ``which``
        return np.choose(np.searchsorted(needed, which), [pred[p][item] for p in needed])

    alt = np.array([_alternative(p) for p in chosen])
    b, s_fit = pick(chosen, 0), pick(chosen, 1)
    alt_conv = np.choose(np.searchsorted(needed, alt), [fits[p].converged for p in needed])
    s_fn = np.where(alt_conv, np.abs(pick(alt, 0) - b), 0.0)
    # no function could be fitted (too few non-empty bins): predict_background raises there
    failed = np.logical_and.reduce([np.isnan(fits[p].deviance) for p in opts])
    return np.where(failed, np.nan, b), np.where(failed, np.nan, np.hypot(s_fit, s_fn))
