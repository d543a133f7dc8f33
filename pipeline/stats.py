"""pyhf statistics of one signal-region counting experiment.

The predicted SR background and its uncertainty (:mod:`.fits`) enter a one-bin pyhf model
in which the background uncertainty is a Poisson-constrained nuisance parameter
(``shapesys``); pyhf gives the discovery significance (q0) and the CLs upper limit on
signal events. At small backgrounds the local p-value comes from pseudo-experiments of the
whole background procedure (:mod:`.toys`). The look-elsewhere effect is in
:mod:`.lee`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

__all__ = [
    "SignificanceResult",
    "discovery_and_limit",
    "z_on_off",
]

log = logging.getLogger(__name__)


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
        # the two logarithms written with log1p: their arguments approach 1 for small sigma_b
        t1 = np.where(n > 0, n * np.log1p(tau * (n - b) / (n + m)), 0.0)
        t2 = m * np.log1p((b - n) / (n + m))
        z = np.sqrt(np.maximum(2 * (t1 + t2), 0.0))
    return np.where(n > m / tau, z, 0.0)
