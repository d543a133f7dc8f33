"""The binned Poisson likelihood of the dijet function, shared by every fit of :mod:`.fits`.

With x = mjj / sqrt(s), f(x) = p0 (1 - x)^p1 / x^(p2 + p3 ln x + p4 ln^2 x) (3, 4 or 5
parameters), integrated over each bin with 6-point Gauss-Legendre quadrature.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SQRT_S"]

SQRT_S = 13_000.0
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(6)


def _basis(m: np.ndarray, n_params: int) -> np.ndarray:
    x = np.asarray(m, dtype=np.float64) / SQRT_S
    lx = np.log(x)
    cols = [np.ones_like(x), np.log1p(-x), -lx, -(lx**2), -(lx**3)]
    return np.stack(cols[:n_params], axis=-1)


def _quad_points(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    half = 0.5 * np.diff(edges)[:, None]
    mid = 0.5 * (edges[1:] + edges[:-1])[:, None]
    return mid + half * _GL_NODES[None, :], half * _GL_WEIGHTS[None, :]


class _DijetLikelihood:
    """The binned Poisson likelihood of one dijet function: the only implementation.

    Built once per (bins, fit bins, number of parameters); every method takes parameters with
    a leading spectrum axis, ``theta`` (T, p), and counts of the fit bins, ``n`` (T, fit bins),
    so that the single fit (:func:`fit_dijet`, T = 1) and the pseudo-experiments
    (:func:`_fit_batch`) evaluate the same expressions. The expected count of a bin is the
    dijet density integrated over the bin (Gauss-Legendre, 6 points).
    """

    def __init__(self, edges, fit_mask, n_params: int):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.fit_mask = np.asarray(fit_mask, dtype=bool)
        self.n_params = int(n_params)
        pts, w = _quad_points(self.edges)
        self._phi_all, self._w_all = _basis(pts, self.n_params), w  # (bins, q, p), (bins, q)
        self._phi, self._w = self._phi_all[self.fit_mask], w[self.fit_mask]

    def _basis_for(self, all_bins: bool):
        return (self._phi_all, self._w_all) if all_bins else (self._phi, self._w)

    def points(self, theta, all_bins: bool = False) -> np.ndarray:
        """exp(phi . theta) times the quadrature weight at every point: (T, bins, q)."""
        phi, w = self._basis_for(all_bins)
        theta = np.atleast_2d(theta)
        lin = (theta @ phi.reshape(-1, self.n_params).T).reshape(len(theta), *w.shape)
        return np.exp(np.clip(lin, -700, 700)) * w

    def expected(self, theta, all_bins: bool = False) -> np.ndarray:
        """Expected counts per bin: (T, bins)."""
        return self.points(theta, all_bins).sum(-1)

    def jacobian(self, e: np.ndarray, all_bins: bool = False) -> np.ndarray:
        """d mu_b / d theta_p = sum_q e_bq phi_bqp from :meth:`points`' ``e``: (T, bins, p)."""
        phi, _ = self._basis_for(all_bins)
        return np.matmul(e.transpose(1, 0, 2), phi).transpose(1, 0, 2)

    @staticmethod
    def _floor(mu):
        return np.maximum(mu, 1e-300)

    @classmethod
    def _nll(cls, mu, n) -> np.ndarray:
        mu = cls._floor(mu)
        return np.sum(mu - n * np.log(mu), axis=-1)

    @classmethod
    def _gradient(cls, mu, dmu, n) -> np.ndarray:
        return ((1.0 - n / cls._floor(mu))[..., None] * dmu).sum(-2)

    def nll(self, theta, n) -> np.ndarray:
        """Negative log-likelihood (up to a constant) of the fit bins: (T,)."""
        return self._nll(self.expected(theta), n)

    def gradient(self, theta, n) -> np.ndarray:
        e = self.points(theta)
        return self._gradient(e.sum(-1), self.jacobian(e), n)

    def evaluate(self, theta, n):
        """(nll, gradient, expected information, expected counts) in one pass (Fisher scoring)."""
        e = self.points(theta)
        mu, dmu = e.sum(-1), self.jacobian(e)
        return self._nll(mu, n), self._gradient(mu, dmu, n), self.fisher(mu, dmu), mu

    def hessian(self, theta, n) -> np.ndarray:
        """Exact Hessian of :meth:`nll`: (T, p, p)."""
        e = self.points(theta)
        mu = self._floor(e.sum(-1))
        dmu = self.jacobian(e)
        d2 = np.einsum("tbq,bqp,bqr->tbpr", e, self._phi, self._phi)
        return (np.einsum("tb,tbpr->tpr", 1.0 - n / mu, d2)
                + np.einsum("tb,tbp,tbr->tpr", n / mu**2, dmu, dmu))

    @staticmethod
    def fisher(mu, dmu) -> np.ndarray:
        """Expected information sum_b dmu_bp dmu_br / mu_b: (T, p, p)."""
        return np.matmul((dmu / np.maximum(mu, 1e-300)[..., None]).transpose(0, 2, 1), dmu)

    @staticmethod
    def covariance(fisher) -> np.ndarray:
        """Parameter covariance, the inverse of the information (pseudo-inverse where singular,
        NaN where it is not finite)."""
        fisher = np.asarray(fisher, dtype=np.float64)
        ok = np.isfinite(fisher).all(axis=(-2, -1))
        if ok.all():
            try:
                return np.linalg.inv(fisher)
            except np.linalg.LinAlgError:
                return np.linalg.pinv(fisher)
        cov = np.full_like(fisher, np.nan)
        if ok.any():
            cov[ok] = _DijetLikelihood.covariance(fisher[ok])
        return cov

    @staticmethod
    def deviance(n, mu) -> np.ndarray:
        """Poisson deviance 2 sum [n ln(n/mu) - (n - mu)] over the fit bins: (T,)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return 2 * (np.where(n > 0, n * np.log(n / mu), 0.0) - (n - mu)).sum(-1)

    @staticmethod
    def chi2(n, mu) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(mu > 0, (n - mu) ** 2 / mu, 0.0).sum(-1)

    @staticmethod
    def converged(grad, n) -> np.ndarray:
        """The convergence criterion of every fit: largest |gradient| below 1e-3 sqrt(N)."""
        scale = np.maximum(np.sqrt(np.sum(n, axis=-1)), 1.0)
        return np.max(np.abs(grad), axis=-1) < 1e-3 * scale


def _expected(edges, theta, n_params):
    """Expected counts in every bin, the per-point terms and the basis (for the GP models)."""
    lik = _DijetLikelihood(edges, np.ones(len(edges) - 1, bool), n_params)
    e = lik.points(np.asarray(theta)[None], all_bins=True)[0]
    return e.sum(axis=1), e, lik._phi_all


def _bin_jacobian(edges, theta, n_params):
    """d(expected count per bin)/d(parameters): (bins, p)."""
    lik = _DijetLikelihood(edges, np.ones(len(edges) - 1, bool), n_params)
    return lik.jacobian(lik.points(np.asarray(theta)[None], all_bins=True), all_bins=True)[0]


def _start(lik: _DijetLikelihood, n: np.ndarray) -> np.ndarray:
    """Starting parameters: weighted least squares of the log density at bin centres (empty bins skipped)."""
    edges, fit_mask = lik.edges, lik.fit_mask
    centers = 0.5 * (edges[1:] + edges[:-1])[fit_mask]
    widths = np.diff(edges)[fit_mask]
    ok = n > 0
    if ok.sum() <= lik.n_params:  # as many parameters as points: an interpolation predicting the SR exactly
        raise ValueError(f"only {int(ok.sum())} non-empty bins for a {lik.n_params}-parameter fit "
                         f"(it needs at least {lik.n_params + 1})")
    phi_c = _basis(centers[ok], lik.n_params)
    y = np.log(n[ok] / widths[ok])
    sw = np.sqrt(n[ok])
    theta0, *_ = np.linalg.lstsq(phi_c * sw[:, None], y * sw, rcond=None)
    return theta0
