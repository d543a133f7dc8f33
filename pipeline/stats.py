"""Background fit of the mjj spectrum and pyhf statistics.

The dijet function, with x = mjj / sqrt(s),

    f(x) = p0 (1 - x)^p1 / x^(p2 + p3 ln x + p4 ln^2 x)

(3, 4 or 5 parameters) is fitted as a density to the binned spectrum outside the
signal region by a Poisson likelihood, integrating over each bin. The number of
parameters is chosen by an F-test. The predicted SR background and its uncertainty
(from the fit covariance) enter a one-bin pyhf model in which the background
uncertainty is a Poisson-constrained nuisance parameter (``shapesys``); pyhf gives the
discovery significance (q0) and the 95% CLs upper limit on signal events.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

__all__ = [
    "SQRT_S",
    "SpectrumFit",
    "SignificanceResult",
    "make_edges",
    "fit_dijet",
    "fit_dijet_ftest",
    "predict_background",
    "BackgroundPrediction",
    "discovery_and_limit",
    "z_on_off",
    "global_significance",
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


def predict_background(edges, counts, fit_mask, target_mask, n_params_options=(3, 4, 5),
                       alpha: float = 0.05) -> BackgroundPrediction:
    """Dijet-function prediction for ``target_mask`` bins from the ``fit_mask`` bins.

    Two uncertainties, added in quadrature: the fit's (parameter covariance) and the
    function choice's, the difference to the prediction of the next more flexible dijet
    function (one fewer parameter for the 5-parameter one). Without the second, the F-test's
    occasional choice of a too-simple function biases the prediction beyond its quoted error
    (benchmarks/calibration.py: 7x the nominal 3 sigma rate at inclusive statistics).
    """
    fit = fit_dijet_ftest(edges, counts, fit_mask, n_params_options, alpha)
    b, sigma_fit = fit.predict(target_mask)
    other = fit.n_params + 1 if fit.n_params < 5 else fit.n_params - 1
    try:
        alt = fit_dijet(edges, counts, fit_mask, other)
        sigma_fn = abs(alt.predict(target_mask)[0] - b) if alt.converged else 0.0
    except (ValueError, np.linalg.LinAlgError):
        sigma_fn = 0.0
    return BackgroundPrediction(fit, b, sigma_fit, float(sigma_fn))


@dataclass(frozen=True)
class SignificanceResult:
    """pyhf results of one counting experiment in the signal region."""

    n_observed: int
    b_expected: float
    b_uncertainty: float
    z_local: float
    p0: float
    upper_limit: float
    upper_limit_expected: float
    status: str = "ok"
    notes: tuple[str, ...] = field(default_factory=tuple)


def _model(b: float, sigma_b: float, s0: float, mu_max: float):
    import pyhf

    pyhf.set_backend("numpy")
    bkg = {"name": "background", "data": [b], "modifiers": []}
    if sigma_b > 1e-6 * max(b, 1.0):
        bkg["modifiers"].append({"name": "bkg_fit", "type": "shapesys", "data": [sigma_b]})
    spec = {
        "channels": [
            {
                "name": "sr",
                "samples": [
                    {"name": "signal", "data": [s0],
                     "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
                    bkg,
                ],
            }
        ],
        "parameters": [{"name": "mu", "bounds": [[0.0, mu_max]], "inits": [0.0]}],
    }
    return pyhf.Model(spec, poi_name="mu", validate=False)


def discovery_and_limit(n_obs: int, b: float, sigma_b: float, cl: float = 0.95,
                        limit: bool = True) -> SignificanceResult:
    """Discovery Z (q0, asymptotic) and CLs upper limit on signal events, with pyhf.

    The signal template is normalised to ``s0 = max(1, sqrt(b))`` events so that the POI
    stays of order one; the limit is reported in events (``mu * s0``).
    """
    import pyhf

    notes: list[str] = []
    b_used = max(float(b), 1e-3)
    if b_used != b:
        notes.append(f"background {b:.3g} raised to {b_used:g} for the model")
    sigma_b = float(max(sigma_b, 0.0))
    s0 = max(1.0, float(np.sqrt(b_used)))
    reach = max(float(n_obs) - b_used, 0.0) + 10.0 * np.sqrt(b_used + sigma_b**2 + n_obs + 1.0) + 10.0
    mu_max = reach / s0
    model = _model(b_used, sigma_b, s0, mu_max)
    data = [float(n_obs)] + model.config.auxdata
    status = "ok"
    z, p0 = float("nan"), float("nan")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p0 = float(pyhf.infer.hypotest(0.0, data, model, test_stat="q0"))
        z = float(stats.norm.isf(p0)) if p0 < 0.5 else 0.0
    except Exception as exc:  # pyhf raises FailedMinimization and numpy errors
        status = "q0 fit failed"
        notes.append(f"hypotest(q0): {exc.__class__.__name__}: {exc}")
    ul_obs, ul_exp = float("nan"), float("nan")
    # First a root-finding scan over the POI bounds; if that fails (e.g. CLs undefined at
    # mu = 0 for n = 0), an explicit grid that avoids mu = 0, widened if it is too short.
    scans = [None] + [np.linspace(mu_max * f / 400.0, mu_max * f, 161) for f in (1.0, 3.0)] if limit else []
    for attempt, scan in enumerate(scans):
        try:
            if scan is not None:
                model = _model(b_used, sigma_b, s0, float(scan[-1]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                obs, exp = pyhf.infer.intervals.upper_limits.upper_limit(data, model, scan=scan, level=1.0 - cl)
            ul_obs, ul_exp = float(obs) * s0, float(exp[2]) * s0
            if np.isfinite(ul_obs) and (scan is None or float(obs) < scan[-1]):  # scan is in POI units
                break
            notes.append(f"upper_limit attempt {attempt + 1}: limit {ul_obs:g} not bracketed")
        except Exception as exc:
            notes.append(f"upper_limit attempt {attempt + 1}: {exc.__class__.__name__}: {exc}")
        ul_obs, ul_exp = float("nan"), float("nan")
    else:
        if limit:
            status = "limit failed" if status == "ok" else status + "; limit failed"
    return SignificanceResult(
        n_observed=int(n_obs),
        b_expected=float(b),
        b_uncertainty=sigma_b,
        z_local=z,
        p0=p0,
        upper_limit=ul_obs,
        upper_limit_expected=ul_exp,
        status=status,
        notes=tuple(notes),
    )


def z_on_off(n_obs, b, sigma_b):
    """Asymptotic discovery Z of the on/off problem that the pyhf model encodes (vectorised).

    The pyhf ``shapesys`` constraint is an auxiliary Poisson count m = (b/sigma_b)^2 with
    tau = b / sigma_b^2; with n observed, Z = sqrt(2 [n ln(n (1+tau) / (n+m)) +
    m ln(m (1+tau) / (tau (n+m)))]) for n > m / tau, else 0 (Cowan, "Discovery sensitivity
    for a counting experiment with background uncertainty", 2012).
    """
    n = np.asarray(n_obs, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    s2 = np.maximum(np.asarray(sigma_b, dtype=np.float64) ** 2, 1e-12 * np.maximum(b, 1.0))
    tau = b / s2
    m = b * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(n > 0, n * np.log(n * (1 + tau) / (n + m)), 0.0)
        t2 = m * np.log(m * (1 + tau) / (tau * (n + m)))
        z = np.sqrt(np.maximum(2 * (t1 + t2), 0.0))
    return np.where(n > m / tau, z, 0.0)


def global_significance(rows: list[dict], n_toys: int = 20_000, seed: int = 0) -> dict:
    """Look-elsewhere effect over all tests of a run, from background-only pseudo-experiments.

    Each test (window x detector x selection) is a counting experiment with its fitted
    background b and uncertainty sigma_b; each pseudo-experiment draws the SR count
    n ~ Poisson(b) and the auxiliary sideband measurement m ~ Poisson(b^2/sigma_b^2) for
    every test, computes each test's Z, and keeps the largest. A test's global p-value is
    the fraction of pseudo-experiments whose largest Z reaches its observed local Z.
    Tests are drawn independently: nested selections of one detector are in fact
    correlated, which makes this estimate of the trials factor conservative.
    """
    tests = [r for r in rows if r.get("z_local") is not None and r.get("n_expected_sr") is not None]
    if not tests or n_toys <= 0:
        return {"n_toys": 0, "n_tests": len(tests), "max_z_quantiles": None}
    b = np.array([max(r["n_expected_sr"], 1e-3) for r in tests])
    sb = np.array([max(r["n_expected_sr_unc"] or 0.0, 1e-6 * max(r["n_expected_sr"], 1.0)) for r in tests])
    rng = np.random.default_rng(seed)
    m_nom = b**2 / sb**2
    n = rng.poisson(b, size=(n_toys, len(tests)))
    m = rng.poisson(m_nom, size=(n_toys, len(tests))).astype(np.float64)
    tau = b / sb**2
    b_hat = np.maximum(m / tau, 1e-6)
    s_hat = np.sqrt(np.maximum(m, 1.0)) / tau  # the sideband-estimate uncertainty of each toy
    zmax = z_on_off(n, b_hat, s_hat).max(axis=1)
    zmax.sort()
    for r in tests:
        p = (n_toys - np.searchsorted(zmax, r["z_local"], side="left")) / n_toys
        p = max(p, 1.0 / n_toys) if r["z_local"] > 0 else 1.0
        r["p_global"] = float(p)
        r["z_global"] = float(max(stats.norm.isf(p), 0.0))
    return {"n_toys": int(n_toys), "n_tests": len(tests), "method": "background-only pseudo-experiments",
            "max_z_quantiles": {q: float(np.quantile(zmax, float(q))) for q in ("0.5", "0.84", "0.977", "0.99865")}}
