"""Gaussian-process model of a binned mjj spectrum (Frate, Cranmer, Kalia, Vandenberg-Rodes,
Whiteson, arXiv:1709.05681).

Background kernel (x in TeV): a Gibbs kernel whose length scale grows linearly with mass,
l(x) = b x + c, times an exponential decay,

    k(x, x') = A sqrt(2 l(x) l(x') / (l(x)^2 + l(x')^2)) exp(-(x - x')^2 / (l(x)^2 + l(x')^2))
               exp(-(x + x') / (2 a)).

The mean function is the dijet-function fit (the F-test choice), so the GP models what the
function misses. The noise of each bin is Poisson with the variance taken from the fit (never
zero, also for empty bins). Hyperparameters maximise the marginal likelihood of a
background-only fit. Signal: a Gaussian kernel localised at mass m with width w,

    k_s(x, x') = A_s exp(-(x - x')^2 / (2 w^2)) exp(-((x - m)^2 + (x' - m)^2) / (2 w^2)),

added for the signal-plus-background fit; the likelihood ratio gives a local significance
per mass hypothesis (:func:`scan_spectrum`). :meth:`GPSpectrum.predict` conditions on
sideband bins and predicts signal-region bins with their full covariance, which the
statistics propagate into pyhf.

This module is a spectrum model, not an event scorer: it defines no ``Detector``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import linalg, optimize

__all__ = ["GPSpectrum", "scan_spectrum", "ScanPoint", "gp_background", "MIN_LENGTH_TEV"]

#: Smallest background length-scale offset (TeV).
MIN_LENGTH_TEV = 0.5

log = logging.getLogger(__name__)


def _gibbs_decay(x1, x2, amp, decay, slope, offset):
    l1 = slope * x1[:, None] + offset
    l2 = slope * x2[None, :] + offset
    s = l1**2 + l2**2
    return (amp * np.sqrt(2 * l1 * l2 / s) * np.exp(-((x1[:, None] - x2[None, :]) ** 2) / s)
            * np.exp(-(x1[:, None] + x2[None, :]) / (2 * decay)))


def _signal_kernel(x1, x2, amp, mass, width):
    return (amp * np.exp(-((x1[:, None] - x2[None, :]) ** 2) / (2 * width**2))
            * np.exp(-((x1[:, None] - mass) ** 2 + (x2[None, :] - mass) ** 2) / (2 * width**2)))


@dataclass
class GPSpectrum:
    """GP fit of counts in bins (centres in GeV). Fit with :meth:`fit`."""

    edges: np.ndarray
    counts: np.ndarray
    mean: np.ndarray  # mean function per bin (dijet fit), > 0
    theta: np.ndarray | None = None  # log(amp, decay, slope, offset)
    nll: float = float("nan")
    converged: bool = False

    @property
    def x(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1]) / 1000.0

    @property
    def noise(self) -> np.ndarray:
        return np.maximum(self.mean, 1.0)

    def kernel(self, x1, x2, theta=None) -> np.ndarray:
        amp, decay, slope, offset = np.exp(self.theta if theta is None else theta)
        return _gibbs_decay(x1, x2, amp, decay, slope, offset)

    def _nll(self, theta, mask, extra=None) -> float:
        x = self.x[mask]
        K = self.kernel(x, x, theta) + np.diag(self.noise[mask])
        if extra is not None:
            K = K + extra(x)
        r = (self.counts - self.mean)[mask]
        try:
            c, low = linalg.cho_factor(K, lower=True, check_finite=False)
        except linalg.LinAlgError:
            return 1e300
        alpha = linalg.cho_solve((c, low), r, check_finite=False)
        return float(0.5 * r @ alpha + np.log(np.diag(c)).sum() + 0.5 * len(r) * np.log(2 * np.pi))

    def fit(self, mask: np.ndarray | None = None, n_starts: int = 4, seed: int = 0) -> "GPSpectrum":
        """Maximise the marginal likelihood of the bins in ``mask`` (default: all)."""
        mask = np.ones(len(self.counts), bool) if mask is None else np.asarray(mask, bool)
        resid_var = float(np.var((self.counts - self.mean)[mask])) + 1.0
        rng = np.random.default_rng(seed)
        best = None
        starts = [np.log([resid_var * 10, 0.5, 0.1, 1.0])]
        starts += [np.log([resid_var * 10 ** rng.uniform(-1, 2), 10 ** rng.uniform(-1, 0.5),
                           10 ** rng.uniform(-2, 0), 10 ** rng.uniform(np.log10(MIN_LENGTH_TEV), 0.5)])
                   for _ in range(n_starts - 1)]
        # The length scale l(x) = b x + c is kept above MIN_LENGTH_TEV so that the background
        # kernel stays smoother than a resonance (width ~5% of its mass) and cannot absorb one.
        bounds = [(np.log(1e-6), np.log(1e12)), (np.log(0.02), np.log(50.0)), (np.log(1e-4), np.log(5.0)),
                  (np.log(MIN_LENGTH_TEV), np.log(5.0))]
        for start in starts:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = optimize.minimize(self._nll, start, args=(mask,), method="L-BFGS-B", bounds=bounds)
            if best is None or res.fun < best.fun:
                best = res
        self.theta, self.nll, self.converged = best.x, float(best.fun), bool(best.success)
        return self

    def predict(self, train: np.ndarray, target: np.ndarray, signal=None) -> tuple[np.ndarray, np.ndarray]:
        """Conditional mean and covariance of the counts in ``target`` bins given ``train`` bins."""
        x, xs = self.x[train], self.x[target]
        K = self.kernel(x, x) + np.diag(self.noise[train])
        if signal is not None:
            K = K + signal(x, x)
        Ks = self.kernel(x, xs)
        Kss = self.kernel(xs, xs)
        c = linalg.cho_factor(K, lower=True)
        r = (self.counts - self.mean)[train]
        mu = self.mean[target] + Ks.T @ linalg.cho_solve(c, r)
        cov = Kss - Ks.T @ linalg.cho_solve(c, Ks)
        return mu, 0.5 * (cov + cov.T)

    def fitted(self) -> np.ndarray:
        """The GP background per bin, conditioned on all bins."""
        allb = np.ones(len(self.counts), bool)
        return self.predict(allb, allb)[0]

    def params(self) -> dict:
        amp, decay, slope, offset = np.exp(self.theta)
        return {"amplitude": float(amp), "decay_TeV": float(decay), "length_slope": float(slope),
                "length_offset_TeV": float(offset), "neg_log_marginal_likelihood": self.nll,
                "converged": self.converged}


@dataclass(frozen=True)
class ScanPoint:
    mass: float
    signal_amplitude: float
    delta_nll: float
    z_local: float


def scan_spectrum(gp: GPSpectrum, masses: np.ndarray, width_fraction: float = 0.05) -> list[ScanPoint]:
    """Local significance of a localised excess at each mass (GeV), background kernel fixed.

    For each hypothesis the signal kernel's amplitude is fitted (>= 0) with the background
    hyperparameters fixed at the background-only fit; Z = sqrt(2 (NLL_b - NLL_s+b)).
    """
    allb = np.ones(len(gp.counts), bool)
    nll_b = gp._nll(gp.theta, allb)
    out = []
    for m in masses:
        mass, width = m / 1000.0, width_fraction * m / 1000.0

        def nll(log_amp, mass=mass, width=width):
            return gp._nll(gp.theta, allb, extra=lambda x: _signal_kernel(x, x, np.exp(log_amp), mass, width))

        grid = np.linspace(np.log(1e-2), np.log(max(gp.counts.max(), 10.0) * 10), 25)
        vals = [nll(g) for g in grid]
        start = grid[int(np.argmin(vals))]
        res = optimize.minimize_scalar(nll, bracket=(start - 1, start, start + 1) if min(vals) < nll_b else None,
                                       bounds=(grid[0], grid[-1]), method="bounded")
        dnll = max(nll_b - float(res.fun), 0.0)
        out.append(ScanPoint(float(m), float(np.exp(res.x)), dnll, float(np.sqrt(2 * dnll))))
    return out


def gp_background(edges, counts, fit_mask, target_mask, n_params_options=(3, 4, 5), alpha=0.05):
    """Background prediction in ``target_mask`` bins from the ``fit_mask`` bins.

    Returns (dijet fit, GP, mean per target bin, covariance of the target bins). The
    covariance adds the dijet fit's parameter covariance (J C J^T, the mean function's
    uncertainty) and the GP's conditional covariance (what the function misses).
    """
    from sideband.pipeline.fits import _bin_jacobian, fit_dijet_ftest

    fit = fit_dijet_ftest(edges, counts, fit_mask, n_params_options, alpha)
    gp = GPSpectrum(np.asarray(edges, float), np.asarray(counts, float), np.maximum(fit.expected, 1e-9))
    gp.fit(fit_mask)
    mu, cov = gp.predict(fit_mask, target_mask)
    jac = _bin_jacobian(fit.edges, fit.params, fit.n_params)[target_mask]
    cov = cov + jac @ fit.cov @ jac.T
    return fit, gp, mu, cov
