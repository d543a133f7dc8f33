"""Background of a selection from the spectrum it selects from: a smooth selection efficiency.

A tight selection keeps a fraction of the sideband events: tens of events in the
sidebands at 0.2%. Fitted on their own, its sideband bins hardly constrain the shape of a
3-5 parameter dijet function across the signal region, and the SR prediction's uncertainty
(and with it the significance) is set by that freedom rather than by the events. The
inclusive spectrum the selection is taken from has thousands of events per bin and fixes the
shape; what the selection adds is its efficiency as a function of mjj, which for a detector
trained not to see mjj varies slowly. So the selected counts are modelled bin by bin as

    pass_i ~ Binomial(all_i, eps(m_i)),   logit eps(m) = sum_k theta_k t^k,  t in [-1, 1]

(t the bin centre scaled over the fit range; degree 0-2, i.e. 1-3 parameters, chosen by the
F-test ladder of :mod:`.fits` with its quasi-Poisson dispersion floor; at most linear below
:data:`.fits.SPARSE_EVENTS` selected sideband events), fitted to the sideband
bins by maximum likelihood (a logistic regression, convex: Newton's method converges), and the
SR background is sum_SR all_i eps(m_i). The inference is conditional on the inclusive counts
(they are not modelled); under background only the SR count is then Binomial with that mean.
This is the transfer-factor ("pass-fail ratio") method of CMS searches for resonances in
selected jet samples (e.g. CMS, JHEP 01 (2018) 097; Phys. Rev. D 100 (2019) 112007), with the
inclusive spectrum as the reference.

Signal in the SR: its events that fail the selection stay in all_i, so the prediction carries
eps x S_SR of them (under one event at eps = 0.2% and S_SR ~ 400): slightly conservative.
An efficiency sculpted in mjj more sharply than a quadratic logit (a detector that learned
mjj) is not described; the sideband fit's chi2 p-value shows it where the sidebands see it.

Uncertainty: the fit's (the parameter covariance propagated to the SR sum) and the function
choice's (the difference to the next degree), in quadrature, as for the dijet function.
:func:`ratio_predict_batch` runs the same procedure on many selected spectra at once (the
pseudo-experiments of :mod:`.toys`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from .fits import SPARSE_EVENTS, BackgroundPrediction, _ftest_choice

__all__ = ["RATIO_N_PARAMS", "RatioFit", "fit_ratio", "ratio_predict", "ratio_predict_batch"]

#: Degrees of the logit polynomial the F-test chooses among, as numbers of parameters.
RATIO_N_PARAMS = (1, 2, 3)


def _design(edges, n_params: int) -> np.ndarray:
    """Powers of the bin centre scaled to [-1, 1] over the bins: (bins, n_params)."""
    edges = np.asarray(edges, dtype=np.float64)
    mid = 0.5 * (edges[1:] + edges[:-1])
    t = (2 * mid - edges[0] - edges[-1]) / (edges[-1] - edges[0])
    return np.vander(t, n_params, increasing=True)


def _newton(x, total, passed, max_iter: int = 50):
    """Logistic-regression fits of many spectra at once: (theta, cov, converged).

    ``x`` (bins, p); ``total``, ``passed`` (T, bins), bins outside the fit zeroed in ``total``.
    Newton steps on the binomial log-likelihood with step halving; converged when the step's
    predicted NLL decrease is below 1e-9.
    """
    n_spec, p = len(total), x.shape[1]
    frac = passed.sum(1) / np.maximum(total.sum(1), 1.0)
    theta = np.zeros((n_spec, p))
    theta[:, 0] = special.logit(np.clip(frac, 1e-9, 1 - 1e-9))
    nll = _nll(x, theta, total, passed)
    converged = np.zeros(n_spec, bool)
    for _ in range(max_iter):
        eps = special.expit(theta @ x.T)
        grad = (total * eps - passed) @ x
        w = total * eps * (1 - eps)
        hess = np.einsum("tb,bi,bj->tij", w, x, x) + 1e-12 * np.eye(p)
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        decrease = 0.5 * np.einsum("ti,ti->t", grad, step)
        converged |= decrease < 1e-9
        scale = np.ones(n_spec)
        for _ in range(30):  # halve the step where it does not lower the NLL
            trial = theta - scale[:, None] * step
            new = _nll(x, trial, total, passed)
            worse = ~(new <= nll + 1e-12) & ~converged
            if not worse.any():
                break
            scale = np.where(worse, 0.5 * scale, scale)
        theta = np.where(converged[:, None], theta, trial)
        nll = np.where(converged, nll, new)
        if converged.all():
            break
    eps = special.expit(theta @ x.T)
    w = total * eps * (1 - eps)
    info = np.einsum("tb,bi,bj->tij", w, x, x)
    cov = np.full_like(info, np.nan)
    ok = np.linalg.cond(info) < 1e12
    cov[ok] = np.linalg.inv(info[ok])
    return theta, cov, converged & ok


def _nll(x, theta, total, passed) -> np.ndarray:
    """Binomial negative log-likelihood (without the constant) of each spectrum."""
    lin = theta @ x.T
    return np.sum(total * np.logaddexp(0.0, lin) - passed * lin, axis=1)


def _deviance(total, passed, mean) -> np.ndarray:
    """Binomial deviance per spectrum over the bins with ``total`` > 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(passed > 0, passed * np.log(passed / mean), 0.0)
        fail, fail_mu = total - passed, total - mean
        b = np.where(fail > 0, fail * np.log(fail / fail_mu), 0.0)
    return 2 * np.sum(np.where(total > 0, a + b, 0.0), axis=1)


@dataclass(frozen=True)
class RatioFit:
    """One efficiency fit: ``n_params`` coefficients of the logit polynomial and their covariance."""

    n_params: int
    params: np.ndarray
    cov: np.ndarray
    expected: np.ndarray  # fitted selected counts in every bin
    efficiency: np.ndarray  # eps per bin
    deviance: float
    chi2: float
    ndf: int
    converged: bool

    @property
    def p_value(self) -> float:
        return float(stats.chi2.sf(self.chi2, self.ndf)) if self.ndf > 0 else float("nan")

    def summary(self) -> dict:
        return {"model": "efficiency ratio", "n_params": self.n_params, "params": self.params.tolist(),
                "chi2": self.chi2, "ndf": self.ndf, "p_value": self.p_value, "converged": self.converged}


class _Batch:
    """The fits of one logit degree to many spectra, and their SR predictions."""

    def __init__(self, edges, total, passed, fit_mask, n_params: int):
        self.x = _design(edges, n_params)
        self.total = np.atleast_2d(total).astype(np.float64)
        self.passed = np.atleast_2d(passed).astype(np.float64)
        t_fit = np.where(fit_mask, self.total, 0.0)
        self.theta, self.cov, converged = _newton(self.x, t_fit, np.where(fit_mask, self.passed, 0.0))
        self.eps = special.expit(self.theta @ self.x.T)
        self.mean = self.total * self.eps
        used = fit_mask & (self.total > 0)
        n_fit = used.sum(1)
        self.ndf = n_fit - n_params
        self.deviance = np.where(self.ndf > 0, _deviance(np.where(used, self.total, 0), self.passed, self.mean),
                                 np.nan)
        self.converged = converged & (self.ndf > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            var = self.mean * (1 - self.eps)
            self.chi2 = np.sum(np.where(used & (var > 0), (self.passed - self.mean) ** 2 / var, 0.0), axis=1)

    def fit(self, i: int) -> RatioFit:
        """The fit of spectrum ``i``."""
        return RatioFit(n_params=self.x.shape[1], params=self.theta[i], cov=self.cov[i], expected=self.mean[i],
                        efficiency=self.eps[i], deviance=float(self.deviance[i]), chi2=float(self.chi2[i]),
                        ndf=int(self.ndf[i]), converged=bool(self.converged[i]))

    def predict(self, target_mask) -> tuple[np.ndarray, np.ndarray]:
        """SR background and its fit uncertainty per spectrum."""
        w = self.total[:, target_mask] * self.eps[:, target_mask] * (1 - self.eps[:, target_mask])
        grad = w @ self.x[target_mask]  # d b / d theta
        var = np.einsum("ti,tij,tj->t", grad, self.cov, grad)
        return self.mean[:, target_mask].sum(1), np.sqrt(np.maximum(var, 0.0))


def ratio_predict_batch(edges, total, passed, fit_mask, target_mask, *, n_params_options=RATIO_N_PARAMS,
                        alpha: float = 0.05, sparse_below: float = SPARSE_EVENTS):
    """SR background ``(b, sigma, chosen, fits)`` of many selected spectra (rows of ``passed``).

    The F-test ladder over ``n_params_options`` (:func:`.fits._ftest_choice`), the fit's and the
    function choice's uncertainties in quadrature (the alternative is the next degree up, or
    down from the top). Spectra with fewer than ``sparse_below`` selected sideband events climb
    to 2 parameters at most: a quadratic logit fitted to tens of events can dip across the SR
    gap and predict almost no background with a small uncertainty, a fluke that dominates the
    tail of the statistic's null distribution (and so costs the test its power). ``total`` may
    be one spectrum for all rows. b and sigma are NaN where the chosen fit did not converge.
    """
    fit_mask = np.asarray(fit_mask, bool)
    target_mask = np.asarray(target_mask, bool)
    passed = np.atleast_2d(np.asarray(passed, dtype=np.float64))
    total = np.broadcast_to(np.atleast_2d(np.asarray(total, dtype=np.float64)), passed.shape)
    opts = sorted(n_params_options)
    top = np.where(passed[:, fit_mask].sum(1) < sparse_below, min(2, opts[-1]), opts[-1])
    fits = {p: _Batch(edges, total, passed, fit_mask, p) for p in opts}
    allowed = {p: fits[p].converged & (p <= top) for p in opts}
    n_fit = int((fit_mask & (total[0] > 0)).sum())
    chosen = _ftest_choice(opts, {p: fits[p].deviance for p in opts}, allowed, n_fit, alpha)
    pred = {p: fits[p].predict(target_mask) for p in opts}

    def pick(which, values):  # per spectrum, the value of function ``which``
        return np.choose(np.searchsorted(opts, which), values)

    b = pick(chosen, [pred[p][0] for p in opts])
    s_fit = pick(chosen, [pred[p][1] for p in opts])
    alt = np.where(chosen < top, chosen + 1, chosen - 1)
    alt_ok = np.isin(alt, opts)
    alt = np.where(alt_ok, alt, chosen)
    b_alt = pick(alt, [pred[p][0] for p in opts])
    alt_ok &= pick(alt, [fits[p].converged for p in opts])
    s_fn = np.where(alt_ok, np.abs(b_alt - b), 0.0)
    ok = pick(chosen, [fits[p].converged for p in opts])
    return (np.where(ok, b, np.nan), np.where(ok, np.hypot(s_fit, s_fn), np.nan), chosen, fits)


def fit_ratio(edges, total, passed, fit_mask, n_params: int) -> RatioFit:
    """One efficiency fit of ``n_params`` logit coefficients to the ``fit_mask`` bins."""
    return _Batch(edges, total, passed, np.asarray(fit_mask, bool), n_params).fit(0)


def ratio_predict(edges, total, passed, fit_mask, target_mask, *, n_params_options=RATIO_N_PARAMS,
                  alpha: float = 0.05, sparse_below: float = SPARSE_EVENTS) -> BackgroundPrediction:
    """:func:`ratio_predict_batch` for one selected spectrum, as the dijet family's
    :class:`.fits.BackgroundPrediction` (its ``fit`` a :class:`RatioFit`); raises ValueError if
    the chosen fit did not converge."""
    b, sigma, chosen, fits = ratio_predict_batch(edges, total, passed, fit_mask, target_mask,
                                                 n_params_options=n_params_options, alpha=alpha,
                                                 sparse_below=sparse_below)
    if not np.isfinite(b[0]):
        raise ValueError("no efficiency fit converged (too few selected sideband events?)")
    chosen_fit = fits[int(chosen[0])]
    s_fit = float(chosen_fit.predict(np.asarray(target_mask, bool))[1][0])
    return BackgroundPrediction(chosen_fit.fit(0), float(b[0]), s_fit, float(np.sqrt(max(sigma[0] ** 2 - s_fit**2, 0.0))))
