"""pyhf statistics of one signal-region counting experiment.

The predicted SR background and its uncertainty (:mod:`.fits`) enter a one-bin pyhf model
(``pyhf.simplemodels.uncorrelated_background``: the background uncertainty is a
Poisson-constrained nuisance parameter, ``shapesys``); pyhf gives the discovery significance
(q0) and the CLs upper limits on signal events at the requested confidence level: observed,
and expected with its +-1 and +-2 sigma band. Nothing here changes pyhf's global state (no
``set_backend``: pyhf's default numpy backend, POI bounds and starting values passed per
call). At small backgrounds the local p-value comes from pseudo-experiments of the whole
background procedure (:mod:`.toys`). The look-elsewhere effect is in :mod:`.lee`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

__all__ = [
    "SignificanceResult",
    "counting_cls_limits",
    "discovery_and_limit",
    "z_on_off",
    "z_on_off_counts",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignificanceResult:
    """pyhf results of one counting experiment in the signal region.

    Limits are CLs upper limits on signal events in the SR at confidence level ``cl``:
    ``upper_limit`` observed, ``upper_limit_expected`` the median expected under background
    only, ``upper_limit_expected_band`` the expected limits at -2, -1, 0, +1, +2 standard
    deviations of the background-only distribution (increasing; the middle one is the median),
    pre-fit: they depend on the predicted background, not on the observed count.
    ``limit_method``: ``"asymptotic"`` (pyhf, q~mu) or ``"counting"`` (exact Poisson counts,
    :func:`counting_cls_limits`, with ``counting``).
    """

    n_observed: int
    b_expected: float
    b_uncertainty: float
    z_local: float
    p0: float
    upper_limit: float
    upper_limit_expected: float
    status: str = "ok"
    notes: tuple[str, ...] = field(default_factory=tuple)
    upper_limit_expected_band: tuple[float, float, float, float, float] = (float("nan"),) * 5
    limit_method: str = "asymptotic"


def _model(b: float, sigma_b: float, s0: float):
    """One-bin pyhf model: signal ``s0`` x mu on background ``b`` with a Poisson-constrained
    uncertainty ``sigma_b`` (``pyhf.simplemodels.uncorrelated_background``: shapesys), or no
    nuisance parameter where ``sigma_b`` is negligible (shapesys needs sigma_b > 0)."""
    import pyhf

    if sigma_b > 1e-6 * max(b, 1.0):
        return pyhf.simplemodels.uncorrelated_background([s0], [b], [sigma_b], validate=False)
    spec = {"channels": [{"name": "sr", "samples": [
        {"name": "signal", "data": [s0], "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
        {"name": "background", "data": [b], "modifiers": []}]}]}
    return pyhf.Model(spec, poi_name="mu", validate=False)


def _fit_options(model, mu_max: float, gamma_max: float = 10.0) -> dict:
    """hypotest keyword arguments: POI bounded to [0, mu_max] and started at 0 (no global state).

    The background's scale factor (pyhf's default bound: 10) may reach ``gamma_max``: with an
    observed count far above a small, uncertain background the background-only fit wants a
    larger scale, and a fit stopped at the bound overstates q0 (b = 6 +- 3.3, n = 306: Z 23.4
    at pyhf's bound, 15.5 without it, as the closed form).
    """
    poi = model.config.poi_index
    bounds = [list(b) for b in model.config.suggested_bounds()]
    for i, b in enumerate(bounds):
        if i != poi:
            bounds[i] = [b[0], max(b[1], float(gamma_max))]
    bounds[poi] = [0.0, float(mu_max)]
    init = list(model.config.suggested_init())
    init[poi] = 0.0
    return {"par_bounds": bounds, "init_pars": init}


def _limits(data, model, level: float, lo: float, hi: float, mu_max: float):
    """Observed and expected (-2..+2 sigma) CLs limits on mu at CLs = ``level``.

    pyhf's ``upper_limit(scan=None)`` ignores ``level`` (it always finds CLs = 0.05,
    scikit-hep/pyhf#2563) and brackets from the model's suggested bounds, so the root finder
    it wraps (``toms748_scan``) is called directly with the level and the bracket.
    """
    from pyhf.infer.intervals.upper_limits import toms748_scan

    obs, exp = toms748_scan(data, model, lo, hi, level=level, **_fit_options(model, mu_max))
    return float(obs), [float(e) for e in exp]


def _grid_limits(data, model, level: float, scan: np.ndarray):
    """The same limits from a grid of POI values (linear interpolation of CLs); None if the grid
    does not bracket every limit."""
    from pyhf.infer.intervals.upper_limits import linear_grid_scan

    obs, exp = linear_grid_scan(data, model, scan, level=level, **_fit_options(model, float(scan[-1])))
    values = [float(obs)] + [float(e) for e in exp]
    if all(np.isfinite(v) and scan[0] < v < scan[-1] for v in values):
        return values[0], values[1:]
    return None


def discovery_and_limit(n_obs: int, b: float, sigma_b: float, cl: float = 0.95,
                        limit: bool = True, counting: bool = False) -> SignificanceResult:
    """Discovery Z (q0, asymptotic) and CLs upper limits on signal events, with pyhf.

    The signal template is normalised to ``s0 = max(1, sqrt(b))`` events so that the POI
    stays of order one; limits are reported in events (``mu * s0``): observed, median
    expected and the expected band (-2, -1, 0, +1, +2 sigma). The expected limits are pre-fit:
    computed on the data set n = b (pyhf's expected band on the observed data comes from a
    background-only fit to it, which an excess pulls up: b = 10 +- 3 gave a median expected
    limit of 6.8 at n = 0 and 13.7 at n = 40 instead of 9.0). With ``counting`` (the search sets
    it where p-values come from toys: :func:`.toys.use_toys`) the limits are the exact counting
    CLs of :func:`counting_cls_limits` (the asymptotic ones are too strong at small background). Uses pyhf's current backend (numpy by default)
    and changes no global pyhf state.
    """
    import pyhf

    if not 0.0 < cl < 1.0:
        raise ValueError(f"confidence level cl={cl!r} must lie strictly between 0 and 1 (e.g. 0.95)")
    notes: list[str] = []
    b_used = max(float(b), 1e-3)
    if b_used != b:
        notes.append(f"background {b:.3g} raised to {b_used:g} for the model")
    sigma_b = float(max(sigma_b, 0.0))
    s0 = max(1.0, float(np.sqrt(b_used)))
    reach = max(float(n_obs) - b_used, 0.0) + 10.0 * np.sqrt(b_used + sigma_b**2 + n_obs + 1.0) + 10.0
    mu_reach = reach / s0  # above every limit: the root finder's upper bracket
    mu_max = 100.0 * mu_reach  # the POI's bound in the fits, room for the bracket to widen
    model = _model(b_used, sigma_b, s0)
    data = [float(n_obs)] + model.config.auxdata
    status = "ok"
    z, p0 = float("nan"), float("nan")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p0 = float(pyhf.infer.hypotest(0.0, data, model, test_stat="q0",
                                           **_fit_options(model, mu_max, 10.0 + 3.0 * (n_obs + 1.0) / b_used)))
        z = float(stats.norm.isf(p0)) if p0 < 0.5 else 0.0
    except Exception as exc:  # pyhf raises FailedMinimization and numpy errors
        status = "q0 fit failed"
        notes.append(f"hypotest(q0): {exc.__class__.__name__}: {exc}")
    ul_obs, band = float("nan"), [float("nan")] * 5
    method = "counting" if counting else "asymptotic"
    if limit and method == "counting":
        try:
            ul_obs, band = counting_cls_limits(float(n_obs), b_used, sigma_b, cl)
        except (ValueError, RuntimeError) as exc:
            notes.append(f"upper limit (counting): {exc.__class__.__name__}: {exc}")
            status = "limit failed" if status == "ok" else status + "; limit failed"
    elif limit:
        level = 1.0 - cl
        asimov = [b_used] + model.config.auxdata  # the expected limits' data set (pre-fit)
        # First root finding (toms748) between mu_reach/400 and mu_reach; if that fails (e.g. CLs
        # undefined near mu = 0), an explicit grid that avoids mu = 0, widened if it is too short.
        attempts = [("root finding", None)] + [(f"grid to {f:g}x", np.linspace(mu_reach * f / 400.0, mu_reach * f, 161))
                                              for f in (1.0, 3.0)]
        for name, scan in attempts:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    found = []
                    for d in ([data] if float(n_obs) == b_used else [data, asimov]):
                        found.append(_limits(d, model, level, mu_reach / 400.0, mu_reach, mu_max) if scan is None
                                     else _grid_limits(d, model, level, scan))
            except Exception as exc:  # pyhf/scipy: failed fits, brackets without a sign change
                notes.append(f"upper limit ({name}): {exc.__class__.__name__}: {exc}")
                continue
            if any(f is None for f in found) or not all(np.isfinite([found[0][0], *found[-1][1]])):
                notes.append(f"upper limit ({name}): not bracketed")
                continue
            ul_obs, band = found[0][0] * s0, [e * s0 for e in found[-1][1]]
            break
        else:
            status = "limit failed" if status == "ok" else status + "; limit failed"
    return SignificanceResult(
        n_observed=int(n_obs),
        b_expected=float(b),
        b_uncertainty=sigma_b,
        z_local=z,
        p0=p0,
        upper_limit=ul_obs,
        upper_limit_expected=band[2],
        status=status,
        notes=tuple(notes),
        upper_limit_expected_band=tuple(float(e) for e in band),
        limit_method=method,
    )


def _background_nodes(b: float, sigma_b: float, n_nodes: int = 64) -> np.ndarray:
    """Equal-probability nodes of the background's distribution: a Gamma with mean ``b`` and
    standard deviation ``sigma_b`` (the on/off model's: shape m = (b/sigma_b)^2, rate tau =
    b/sigma_b^2), or ``b`` itself without an uncertainty."""
    if sigma_b <= 1e-6 * max(b, 1.0):
        return np.array([b])
    shape = (b / sigma_b) ** 2
    return stats.gamma.ppf((np.arange(n_nodes) + 0.5) / n_nodes, shape, scale=b / shape)


def counting_cls_limits(n_obs: float, b: float, sigma_b: float, cl: float = 0.95) -> tuple[float, list[float]]:
    """CLs upper limits on signal events of one counting experiment, exact in the Poisson counts.

    The test statistic is the count itself (LEP/Tevatron counting CLs): CLs(s) = P(N <= n | s +
    B) / P(N <= n | B), the background B averaged over its uncertainty (Cousins-Highland:
    :func:`_background_nodes`); the limit is the s with CLs = 1 - cl. The expected limits are
    those at the counts n of the background-only distribution's quantiles at -2..+2 sigma
    (pre-fit: they do not move with the observed count). Used where the background is small
    (``stats.toys_below``), where the asymptotic formulae are too strong: with b = 0.01 and no
    event they give 1.94 events at 95% CL (coverage ~92% for s = 2.5), this gives 3.00.
    Returns ``(observed, [expected at -2, -1, 0, +1, +2 sigma])``; a non-integer ``n_obs``
    (blind runs pass the expectation) uses the continuous extension of the Poisson CDF.
    """
    from scipy import optimize, special

    nodes = _background_nodes(float(b), float(sigma_b))
    log_level = np.log(1.0 - cl)

    def log_cdf(n, mean):  # log P(N <= n), N ~ Poisson(mean) averaged over the background nodes
        mean = np.maximum(mean, 1e-300)
        if float(n).is_integer():  # summed in logs: n = 0 on b = 900 is e^-900, not 0
            k = np.arange(int(n) + 1)[:, None]
            v = special.logsumexp(k * np.log(mean)[None, :] - special.gammaln(k + 1.0), axis=0) - mean
        else:  # blind runs: n = b, far from any underflow
            with np.errstate(divide="ignore"):
                v = np.log(special.gammaincc(n + 1.0, mean))
        return float(special.logsumexp(v) - np.log(len(v)))

    def limit(n):
        log_cb = log_cdf(n, nodes)

        def f(sig):
            return log_cdf(n, nodes + sig) - log_cb - log_level

        hi = max(10.0, n + 10.0 * np.sqrt(n + 1.0))
        while f(hi) > 0:
            hi *= 2.0
        return float(optimize.brentq(f, 0.0, hi, xtol=1e-6, rtol=1e-8))

    # background-only counts at the band's quantiles: the smallest n with P(N <= n) >= q
    qs = stats.norm.cdf([-2.0, -1.0, 0.0, 1.0, 2.0])
    n_max = int(np.ceil(np.max(nodes) + 10.0 * np.sqrt(np.max(nodes) + 1.0))) + 10
    ns = np.arange(n_max + 1)
    cum = np.mean(special.gammaincc(ns[:, None] + 1.0, nodes[None, :]), axis=1)
    band_n = [int(ns[np.searchsorted(cum, q)]) for q in qs]
    at = {n: limit(float(n)) for n in sorted(set(band_n))}
    return limit(float(n_obs)), [at[n] for n in band_n]


def z_on_off(n_obs, b, sigma_b):
    """Asymptotic discovery Z of the on/off problem that the pyhf model encodes (vectorised).

    The pyhf ``shapesys`` constraint is an auxiliary Poisson count m = (b/sigma_b)^2 with
    tau = b / sigma_b^2; with n observed, Z = sqrt(2 [n ln(n (1+tau) / (n+m)) +
    m ln(m (1+tau) / (tau (n+m)))]) for n > m / tau, else 0 (Cowan, "Discovery sensitivity
    for a counting experiment with background uncertainty", 2012).
    """
    b = np.asarray(b, dtype=np.float64)
    s2 = np.maximum(np.asarray(sigma_b, dtype=np.float64) ** 2, 1e-12 * np.maximum(b, 1.0))
    tau = b / s2
    return z_on_off_counts(n_obs, b * tau, tau)


def z_on_off_counts(n, m, tau):
    """:func:`z_on_off` in the counts of the on/off problem: SR count ``n``, auxiliary (sideband)
    count ``m`` and ratio ``tau`` (vectorised). With m = 0 it is the limit sqrt(2 n ln(1 + tau)).

    Written with log1p (the logarithms' arguments approach 1 for small background uncertainties)
    and in place (the look-elsewhere pseudo-experiments call it on millions of counts).
    """
    n, m, tau = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (n, m, tau)))
    shape = n.shape
    n, m, tau = (np.atleast_1d(v) for v in (n, m, tau))
    s = np.maximum(n + m, 1.0)
    d = n * tau - m  # > 0: an excess over the auxiliary estimate m / tau
    with np.errstate(divide="ignore", invalid="ignore"):
        t2 = m * np.log1p(-d / (tau * s))
        t2[m == 0] = 0.0
        z2 = n * np.log1p(d / s)
        z2 += t2
    z2[d <= 0] = 0.0
    z2 *= 2.0
    return np.sqrt(np.maximum(z2, 0.0, out=z2), out=z2).reshape(shape)
