"""Background models of a binned mjj spectrum: the dijet-function family.

The dijet function, with x = mjj / sqrt(s),

    f(x) = p0 (1 - x)^p1 / x^(p2 + p3 ln x + p4 ln^2 x)

(3, 4 or 5 parameters) is fitted as a density to the binned spectrum outside the
signal region by a Poisson likelihood, integrating over each bin (Gauss-Legendre). The
number of parameters is chosen by an F-test. :func:`predict_background` gives the
predicted SR background with the fit's and the function choice's uncertainties;
:func:`predict_background_batch` runs the same procedure on many spectra at once
(pseudo-experiments).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

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

SQRT_S = 13_000.0
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(6)


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


def _basis(m: np.ndarray, n_params: int) -> np.ndarray:
    x = np.asarray(m, dtype=np.float64) / SQRT_S
    lx = np.log(x)
    cols = [np.ones_like(x), np.log1p(-x), -lx, -(lx**2), -(lx**3)]
    return np.stack(cols[:n_params], axis=-1)


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


def _quad_points(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    half = 0.5 * np.diff(edges)[:, None]
    mid = 0.5 * (edges[1:] + edges[:-1])[:, None]
    return mid + half * _GL_NODES[None, :], half * _GL_WEIGHTS[None, :]


def _expected(edges, theta, n_params):
    pts, w = _quad_points(edges)
    phi = _basis(pts, n_params)  # (bins, q, p)
    e = np.exp(np.clip(phi @ theta, -700, 700)) * w
    return e.sum(axis=1), e, phi


def _bin_jacobian(edges, theta, n_params):
    _, e, phi = _expected(edges, theta, n_params)
    return np.einsum("bq,bqp->bp", e, phi)


def fit_dijet(
    edges: np.ndarray, counts: np.ndarray, fit_mask: np.ndarray, n_params: int = 4
) -> SpectrumFit:
    """Poisson-likelihood fit of the dijet function to ``counts`` in the bins ``fit_mask``."""
    edges = np.asarray(edges, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    fit_mask = np.asarray(fit_mask, dtype=bool)
    n = counts[fit_mask]

    def parts(theta):
        mu_all, e, phi = _expected(edges[:], theta, n_params)
        return mu_all[fit_mask], e[fit_mask], phi[fit_mask]

    def nll(theta):
        mu, _, _ = parts(theta)
        mu = np.maximum(mu, 1e-300)
        return float(np.sum(mu - n * np.log(mu)))

    def grad(theta):
        mu, e, phi = parts(theta)
        dmu = np.einsum("bq,bqp->bp", e, phi)
        return ((1.0 - n / np.maximum(mu, 1e-300))[:, None] * dmu).sum(axis=0)

    def hess(theta):
        mu, e, phi = parts(theta)
        mu = np.maximum(mu, 1e-300)
        dmu = np.einsum("bq,bqp->bp", e, phi)
        d2 = np.einsum("bq,bqp,bqr->bpr", e, phi, phi)
        return np.einsum("b,bpr->pr", 1.0 - n / mu, d2) + np.einsum("b,bp,br->pr", n / mu**2, dmu, dmu)

    # Start: weighted least squares of log density at bin centres (empty bins skipped).
    centers = 0.5 * (edges[1:] + edges[:-1])[fit_mask]
    widths = np.diff(edges)[fit_mask]
    ok = n > 0
    if ok.sum() < n_params:
        raise ValueError(f"only {int(ok.sum())} non-empty bins for a {n_params}-parameter fit")
    phi_c = _basis(centers[ok], n_params)
    y = np.log(n[ok] / widths[ok])
    sw = np.sqrt(n[ok])
    theta0, *_ = np.linalg.lstsq(phi_c * sw[:, None], y * sw, rcond=None)
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
    theta = best.x
    mu_all, _, _ = _expected(edges, theta, n_params)
    mu = mu_all[fit_mask]
    jac = _bin_jacobian(edges, theta, n_params)[fit_mask]
    fisher = (jac / np.maximum(mu, 1e-300)[:, None]).T @ jac
    try:
        cov = np.linalg.inv(fisher)
    except np.linalg.LinAlgError:
        cov = np.linalg.pinv(fisher)
    with np.errstate(divide="ignore", invalid="ignore"):
        dev_terms = np.where(n > 0, n * np.log(n / mu), 0.0) - (n - mu)
        chi2_terms = np.where(mu > 0, (n - mu) ** 2 / mu, 0.0)
    grad_norm = float(np.max(np.abs(grad(theta)))) if best.fun == best.fun else float("inf")
    converged = bool(best.success) or grad_norm < 1e-3 * max(1.0, float(n.sum())) ** 0.5
    return SpectrumFit(
        n_params=n_params,
        params=theta,
        cov=cov,
        edges=edges,
        counts=counts,
        fit_mask=fit_mask,
        expected=mu_all,
        deviance=float(2 * dev_terms.sum()),
        chi2=float(chi2_terms.sum()),
        ndf=int(fit_mask.sum() - n_params),
        converged=converged,
        message=str(best.message),
    )


def fit_dijet_ftest(
    edges: np.ndarray,
    counts: np.ndarray,
    fit_mask: np.ndarray,
    n_params_options: tuple[int, ...] = (3, 4, 5),
    alpha: float = 0.05,
) -> SpectrumFit:
    """Fit with increasing numbers of parameters; keep adding one while an F-test prefers it."""
    fits: list[SpectrumFit] = []
    for n_par in sorted(n_params_options):
        try:
            fits.append(fit_dijet(edges, counts, fit_mask, n_par))
        except (ValueError, np.linalg.LinAlgError) as exc:
            log.debug("dijet fit with %d parameters failed: %s", n_par, exc)
    if not fits:
        raise ValueError("no dijet fit succeeded (too few non-empty bins?)")
    chosen = fits[0]
    for nxt in fits[1:]:
        if nxt.ndf <= 0 or not nxt.converged:
            break
        dof = nxt.n_params - chosen.n_params
        f_stat = ((chosen.deviance - nxt.deviance) / dof) / max(nxt.deviance / nxt.ndf, 1e-12)
        p = stats.f.sf(f_stat, dof, nxt.ndf)
        if p < alpha or not chosen.converged:
            chosen = nxt
        else:
            break
    return chosen


@dataclass(frozen=True)
class BackgroundPrediction:
    """Predicted background in the target bins and its uncertainty components."""

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
                       alpha: float = 0.05) -> BackgroundPrediction:
    """Dijet-function prediction for ``target_mask`` bins from the ``fit_mask`` bins.

    Two uncertainties, added in quadrature: the fit's (parameter covariance) and the
    function choice's, the difference to the prediction of the next more flexible dijet
    function (one fewer parameter for the 5-parameter one). Without the second, the F-test's
    occasional choice of a too-simple function biases the prediction beyond its quoted error.
    """
    fit = fit_dijet_ftest(edges, counts, fit_mask, n_params_options, alpha)
    b, sigma_fit = fit.predict(target_mask)
    other = _alternative(fit.n_params)
    try:
        alt = fit_dijet(edges, counts, fit_mask, other)
        sigma_fn = abs(alt.predict(target_mask)[0] - b) if alt.converged else 0.0
    except (ValueError, np.linalg.LinAlgError):
        sigma_fn = 0.0
    return BackgroundPrediction(fit, b, sigma_fit, float(sigma_fn))


def _fit_dijet_batch(edges, counts, fit_mask, n_params, theta0, max_iter: int = 60):
    """Poisson fits of the dijet function to many spectra at once (Fisher scoring).

    ``counts`` is (toys, bins); every fit starts from ``theta0`` (the parameters the toys
    were drawn near), so a few vectorised Newton-like steps with step halving converge.
    Returns the parameters, the expected counts in every bin, the deviance over the fit bins,
    the parameter covariance and a converged flag, each with a leading toy axis.
    """
    pts, w = _quad_points(np.asarray(edges, dtype=np.float64))
    phi_all = _basis(pts, n_params)  # (bins, q, p)
    phi, wf = phi_all[fit_mask], w[fit_mask]
    n = np.asarray(counts, dtype=np.float64)[:, fit_mask]
    theta = np.broadcast_to(np.asarray(theta0, dtype=np.float64), (n.shape[0], n_params)).copy()
    eye = np.eye(n_params)

    nb, nq = wf.shape
    phi_flat = phi.reshape(nb * nq, n_params)

    def per_point(th, ph, ww):  # exp(phi . theta) * weight, shape (toys, bins, q), via one matmul
        return np.exp(np.clip((th @ ph.reshape(-1, n_params).T).reshape(len(th), *ww.shape), -700, 700)) * ww

    def bin_jac(e, ph):  # d mu_b / d theta_p = sum_q e_bq phi_bqp
        return np.matmul(e.transpose(1, 0, 2), ph).transpose(1, 0, 2)

    def parts(th, nn):
        e = per_point(th, phi_flat, wf)
        mu = np.maximum(e.sum(-1), 1e-300)
        return e, mu, np.sum(mu - nn * np.log(mu), axis=1)

    def gradient(dmu, mu, nn):
        return ((1.0 - nn / mu)[..., None] * dmu).sum(1)

    scale = np.maximum(np.sqrt(n.sum(1)), 1.0)
    active = np.arange(len(n))  # toys still iterating; the others have stopped
    for _ in range(max_iter):
        if not len(active):
            break
        th, nn = theta[active], n[active]
        e, mu, nll = parts(th, nn)
        dmu = bin_jac(e, phi)
        grad = gradient(dmu, mu, nn)
        done = np.max(np.abs(grad), axis=1) < 1e-6 * scale[active]
        fisher = np.matmul((dmu / mu[..., None]).transpose(0, 2, 1), dmu) + 1e-12 * eye
        step = np.linalg.solve(fisher, grad[..., None])[..., 0]
        alpha = np.ones(len(active))
        trial, nll_t = th.copy(), nll.copy()
        todo = ~done
        for _halving in range(30):  # halve each toy's step until its likelihood improves
            if not todo.any():
                break
            cand = th[todo] - alpha[todo, None] * step[todo]
            _, _, nll_c = parts(cand, nn[todo])
            better = nll_c <= nll[todo]
            idx = np.flatnonzero(todo)
            trial[idx[better]], nll_t[idx[better]] = cand[better], nll_c[better]
            todo[idx[better]] = False
            alpha[todo] *= 0.5
        stalled = todo | (nll - nll_t <= 1e-10 * np.maximum(np.abs(nll), 1.0))  # nothing left to gain
        theta[active] = trial
        active = active[~(done | stalled)]
    e = per_point(theta, phi_flat, wf)
    mu = np.maximum(e.sum(-1), 1e-300)
    grad = gradient(bin_jac(e, phi), mu, n)
    converged = np.max(np.abs(grad), axis=1) < 1e-3 * scale  # the criterion of fit_dijet
    e_all = per_point(theta, phi_all, w)
    expected = e_all.sum(-1)
    dmu = bin_jac(e_all, phi_all)
    dmu_fit = dmu[:, fit_mask]
    fisher = np.matmul((dmu_fit / mu[..., None]).transpose(0, 2, 1), dmu_fit)
    cov = np.linalg.pinv(fisher)
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = 2 * (np.where(n > 0, n * np.log(n / mu), 0.0) - (n - mu)).sum(1)
    return theta, expected, dev, cov, dmu, converged


def _functions_needed(n_params_options) -> list[int]:
    """The dijet functions the procedure fits: the F-test's options and their alternatives."""
    return sorted(set(n_params_options) | {_alternative(p) for p in n_params_options})


def start_parameters(edges, spectrum, fit_mask, n_params_options=SEARCH_N_PARAMS) -> dict[int, np.ndarray]:
    """Starting parameters for :func:`predict_background_batch`: each needed function fitted
    to the ``fit_mask`` bins of ``spectrum`` (the spectrum the batch is drawn around)."""
    return {p: fit_dijet(edges, spectrum, fit_mask, p).params for p in _functions_needed(n_params_options)}


def predict_background_batch(edges, counts, fit_mask, target_mask, start: dict[int, np.ndarray],
                             n_params_options=SEARCH_N_PARAMS, alpha: float = 0.05):
    """:func:`predict_background` for many spectra (rows of ``counts``) at once.

    The same procedure (F-test choice, fit covariance, function-choice uncertainty), with the
    fits of every function in ``start`` (n_params -> starting parameters) done as one batch.
    Returns ``(b, sigma)`` arrays. Used for toy-based p-values and in the calibration benchmark.
    """
    fit_mask = np.asarray(fit_mask, bool)
    target_mask = np.asarray(target_mask, bool)
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    opts = sorted(n_params_options)
    needed = _functions_needed(opts)
    fits = {}
    for p in needed:
        _, expected, dev, cov, dmu, conv = _fit_dijet_batch(edges, counts, fit_mask, p, start[p])
        jac = dmu[:, target_mask].sum(1)
        var = np.einsum("tp,tpr,tr->t", jac, cov, jac)
        fits[p] = (expected[:, target_mask].sum(1), np.sqrt(np.maximum(var, 0.0)), dev, conv)
    n_fit = int(fit_mask.sum())
    chosen = np.full(len(counts), opts[0])
    alive = np.ones(len(counts), bool)  # still climbing the F-test ladder
    for lo, hi in zip(opts[:-1], opts[1:]):
        ndf_hi = n_fit - hi
        if ndf_hi <= 0:
            break
        dev_lo, dev_hi, conv_hi = fits[lo][2], fits[hi][2], fits[hi][3]
        f_stat = ((dev_lo - dev_hi) / (hi - lo)) / np.maximum(dev_hi / ndf_hi, 1e-12)
        up = alive & conv_hi & ((stats.f.sf(f_stat, hi - lo, ndf_hi) < alpha) | ~fits[lo][3])
        chosen[up] = hi
        alive = up

    def pick(which, item):  # per spectrum, ``item`` of the fit of function ``which``
        return np.choose(np.searchsorted(needed, which), [fits[p][item] for p in needed])

    alt = np.array([_alternative(p) for p in chosen])
    b, s_fit = pick(chosen, 0), pick(chosen, 1)
    s_fn = np.where(pick(alt, 3), np.abs(pick(alt, 0) - b), 0.0)
    return b, np.hypot(s_fit, s_fn)
