"""Look-elsewhere effect over every test (window x detector x selection) of a run.

The global p-value of a test is the probability that, with background only, *some* test of
the search reaches its local Z. It comes from two sources, and each row says which:

1. **Pseudo-experiments** ("toys") of all the counting experiments at once, vectorised and
   extended adaptively (start with the configured number, double while some observed Z is
   reached by fewer than ``min_count`` toys, up to ``max_toys`` and ``max_draws`` test
   draws). Only per-threshold counts are kept, so memory does not grow with the toys.
2. Beyond their reach, the **asymptotic tail** of Gross & Vitells: the expected number of
   upcrossings <N(u)> of the max-Z process, measured on the same toys at the highest
   threshold u0 they resolve, extrapolated as <N(u)> = <N(u0)> exp(-(u^2 - u0^2)/2).

Upcrossings of a discrete, nested search. In one window the tests form a tree: the inclusive
spectrum, then each detector's selections from loose to tight (:func:`_nesting`); windows and
detectors are independent in the toys. For a threshold u let N(u) count, in one toy, every
tree root above u and every parent -> child step with Z_parent <= u < Z_child. A toy whose
largest Z exceeds u has at least one such crossing (the first test above u on the path from
its root), so P(max Z > u) <= <N(u)> (Davies' bound, as used by Gross & Vitells), and the two
agree in the tail, where a second crossing in the same toy is rare. For Gaussian tests
<N(u)> / phi(u) is non-increasing in u: constant for a smoothly correlated chain (Rice's
formula, the continuous case Gross & Vitells treat) and falling like the Mills ratio
~1/u for weakly correlated or independent tests (a root contributes P(chi2_1 > u^2)/2).
The extrapolation above is therefore exact for the former and conservative for the latter,
by a factor of at most about u/u0; u0 is taken as high as the toys allow (the highest grid
threshold at or below the observed Z with at least ``min_count`` crossings) to keep it
small. ``benchmarks/lee.py`` checks the tail, fitted on 2e4-1e6 toys, against millions of
brute-force toys at global Z 3 and 4 (within 0.15 sigma; ``tests/test_lee.py`` pins it).
Limits: the tail assumes Gaussian-like marginal tails beyond u0; small-count tests deviate
(in this toy model a test with b ~ 15 reaches Z > 6 about 1.8x as often as a Gaussian).

References: E. Gross and O. Vitells, Eur. Phys. J. C 70 (2010) 525, arXiv:1005.1891;
R. B. Davies, Biometrika 74 (1987) 33; G. Cowan, "Discovery sensitivity for a counting
experiment with background uncertainty" (2012) for the on/off Z.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from .stats import z_on_off_counts
from .verdict import observed_z, problem

__all__ = ["global_significance"]

H = 0.01  #: spacing of the thresholds on which crossings are counted
_GRID = np.round(np.arange(1201) * H, 2)  # 0 ... 12


def _nesting(tests: list[dict]) -> list[tuple[int, int | None]]:
    """Tests in drawing order, each with the index of the test whose SR events contain its own.

    The parent of a detector's selection is the same detector's next looser selection in the
    same window, or for its loosest one the window's inclusive test (detector ``none``).
    Tests without window/detector/selection keys have no parent.
    """
    def key(i):
        r = tests[i]
        return (r.get("detector") != "none", -float(r.get("selection") or 1.0))

    order = sorted(range(len(tests)), key=key)
    seen: dict[tuple, int] = {}  # (window, detector) -> last drawn (loosest so far: tightest) index
    inclusive: dict = {}
    out = []
    for i in order:
        r = tests[i]
        if not all(k in r for k in ("window", "detector", "selection")):
            out.append((i, None))
            continue
        w, d = r["window"], r["detector"]
        if d == "none":
            parent = None
            inclusive.setdefault(w, i)
        else:
            parent = seen.get((w, d), inclusive.get(w))
            seen[(w, d)] = i
        out.append((i, parent))
    return out


def _model(tests: list[dict]) -> dict:
    """Toy model of the tests: expected SR counts b, sideband ratios tau = b / sigma_b^2, tree."""
    b = np.array([max(r["n_expected_sr"], 1e-3) for r in tests])
    sb = np.array([max(r.get("n_expected_sr_unc") or 0.0, 1e-6 * max(r["n_expected_sr"], 1.0)) for r in tests])
    nest = _nesting(tests)
    parent = np.full(len(tests), -1)
    for i, p in nest:
        parent[i] = -1 if p is None else p
    return {"b": b, "tau": b / sb**2, "order": [i for i, _ in nest], "parent": parent}


def _draw(rng: np.random.Generator, model: dict, size: int) -> np.ndarray:
    """Local Z of every test in ``size`` background-only pseudo-experiments, shape (size, tests).

    SR counts are Poisson; a nested selection keeps a binomial subset of its parent's events
    (n_child ~ Binomial(n_parent, b_child / b_parent): still Poisson(b_child) marginally);
    each test's sideband count m ~ Poisson(b tau) is independent.
    """
    b, tau, parent = model["b"], model["tau"], model["parent"]
    n = np.empty((size, len(b)), dtype=np.int64)
    for i in model["order"]:
        p = parent[i]
        n[:, i] = rng.poisson(b[i], size) if p < 0 else rng.binomial(n[:, p], min(b[i] / b[p], 1.0))
    return z_on_off_counts(n, rng.poisson(b * tau, size=n.shape), tau)


def _crossings(z: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Upcrossings N(u) of a block of toys summed over toys, on the threshold grid."""
    zp = np.where(parent >= 0, z[:, np.maximum(parent, 0)], 0.0)  # a root's "parent" is Z = 0
    up = z > zp  # crossings at u with zp <= u < z, i.e. grid indices ceil(zp/H) ... ceil(z/H) - 1
    lo = np.minimum(np.ceil(zp[up] / H), len(_GRID)).astype(np.intp)
    hi = np.minimum(np.ceil(z[up] / H), len(_GRID)).astype(np.intp)
    diff = np.bincount(lo, minlength=len(_GRID) + 1) - np.bincount(hi, minlength=len(_GRID) + 1)
    return np.cumsum(diff)[:len(_GRID)]


def _tail(ups: np.ndarray, n: int, z: float, min_count: int) -> tuple[float, float, int] | None:
    """Gross-Vitells P(max Z >= z) from the upcrossing counts ``ups`` of ``n`` toys: (p, u0, count).

    u0 is the highest grid threshold at or below z with at least ``min_count`` crossings;
    None when there is none.
    """
    ok = np.flatnonzero((ups >= min_count) & (_GRID <= z))
    if not ok.size:
        return None
    u0, count = float(_GRID[ok[-1]]), int(ups[ok[-1]])
    return min(count / n * math.exp(-(z * z - u0 * u0) / 2), 1.0), u0, count


def global_significance(rows: list[dict], n_toys: int = 20_000, seed: int = 0, *, max_toys: int = 2_000_000,
                        max_draws: int = 10_000_000, min_count: int = 100) -> dict:
    """Look-elsewhere effect over all tests of a run: sets each row's global p and Z in place.

    Each test (window x detector x selection) is a counting experiment with fitted
    background b and uncertainty sigma_b. A pseudo-experiment draws every test's SR count
    n ~ Poisson(b) and sideband measurement m ~ Poisson(b^2 / sigma_b^2), nested selections
    by binomial thinning (:func:`_draw`), and evaluates every test's on/off Z; the observed Z
    compared with it is the row's ``z_local_asymptotic`` (else ``z_local``), the same
    statistic (:func:`~.verdict.observed_z`). The tests are the rows without a
    :func:`~.verdict.problem` (usable fit, a background prediction, a local Z): the ones the
    verdict counts. Different detectors and windows, and the sideband measurements, are drawn
    independently, which overstates the trials factor somewhat (conservative).

    ``n_toys`` toys are always drawn; while an observed Z is reached by fewer than
    ``min_count`` toys their number doubles, up to ``max(n_toys, min(max_toys, max_draws /
    n_tests))``. A row's global p is then the fraction of toys whose largest Z reaches its Z
    (method ``"toys"``), else the Gross-Vitells tail of the module docstring, else, if
    neither applies, the bound 1 / (toys drawn). p is made non-increasing in the observed Z
    (a row that takes the p of a lower Z is flagged a bound) and never below the row's local
    ``p0`` (a row at that floor is flagged a bound: its global Z is at most its local Z). Sets ``p_global``, ``z_global``, ``z_global_method`` and
    ``z_global_is_bound`` on those rows; returns
    a summary (toys drawn, tail thresholds and measured upcrossings, max-Z quantiles).
    Deterministic for a fixed ``seed``.
    """
    tests = [r for r in rows if problem(r) is None]
    if not tests or n_toys <= 0:
        return {"n_toys": 0, "n_tests": len(tests), "max_z_quantiles": None}
    k = len(tests)
    z_obs = np.minimum(np.array([observed_z(r) for r in tests]), 40.0)
    model = _model(tests)
    cap = max(n_toys, min(max_toys, max_draws // k))
    chunk = max(1, 2**20 // k)  # ~8 MB per (toys x tests) array
    rng = np.random.default_rng(seed)
    order = np.argsort(z_obs, kind="stable")
    zs = z_obs[order]
    hits = np.zeros(k, dtype=np.int64)  # toys whose max Z reaches zs[j]
    ups = np.zeros(len(_GRID), dtype=np.int64)  # upcrossings at each grid threshold
    zmax_hist = np.zeros(len(_GRID) + 1, dtype=np.int64)  # histogram of ceil(max Z / H)
    done, target = 0, n_toys
    while True:
        while done < target:
            z = _draw(rng, model, min(chunk, target - done))
            zmax = z.max(axis=1)
            idx = np.bincount(np.searchsorted(zs, zmax, side="right"), minlength=k + 1)
            hits += np.cumsum(idx[::-1])[::-1][1:]
            ups += _crossings(z, model["parent"])
            zmax_hist += np.bincount(np.minimum(np.ceil(zmax / H), len(_GRID)).astype(np.intp),
                                     minlength=len(_GRID) + 1)
            done += len(z)
        if done >= cap or not np.any((zs > 0) & (hits < min_count)):
            break
        target = min(2 * done, cap)

    p = np.ones(k)
    how = ["no excess"] * k
    bound = np.zeros(k, dtype=bool)
    used: dict[float, int] = {}
    for j in np.flatnonzero(zs > 0):
        tail = _tail(ups, done, zs[j], min_count)
        if hits[j] >= min_count or (hits[j] > 0 and tail is None):
            p[j], how[j] = hits[j] / done, "toys"
        elif tail is not None:
            p[j], u0, used[u0] = tail
            how[j] = f"asymptotic tail (Gross-Vitells, fitted on {done} toys)"
        else:
            p[j], how[j], bound[j] = 1.0 / done, f"bound: fewer than 1 in {done} toys", True
    for j in range(1, k):  # a higher Z cannot be less significant: P(max >= z) <= P(max >= z') for z' < z
        if p[j] > p[j - 1]:
            p[j], bound[j] = p[j - 1], True
            how[j] = how[j - 1] if how[j - 1].startswith("bound") else f"bound: at most the p of a lower Z ({how[j - 1]})"

    for j, i in enumerate(order):
        r, pj, is_bound = tests[i], float(p[j]), bool(bound[j])
        p0 = r.get("p0")
        if p0 is not None and np.isfinite(p0) and pj < p0:  # never more significant globally than locally
            pj, how[j], is_bound = float(p0), "bound: at most the local Z (look-elsewhere estimate below local p0)", True
        r["p_global"] = pj
        r["z_global"] = float(max(stats.norm.isf(pj), 0.0))
        r["z_global_method"] = how[j]
        r["z_global_is_bound"] = is_bound

    n_above = np.cumsum(zmax_hist[::-1])[::-1][1:]  # toys with max Z > grid threshold
    quantiles = {q: float(_GRID[np.append(np.flatnonzero(n_above <= (1 - float(q)) * done), -1)[0]])
                 for q in ("0.5", "0.84", "0.977", "0.99865")}
    top = np.flatnonzero(ups >= min_count)
    check = None
    if top.size and top[-1] + 50 < len(_GRID):  # the extrapolation from the top threshold, 0.5 higher
        u0, u1 = _GRID[top[-1]], _GRID[top[-1] + 50]
        check = {"u0": float(u0), "u": float(u1), "upcrossings_measured": int(ups[top[-1] + 50]),
                 "upcrossings_extrapolated": float(ups[top[-1]] * math.exp(-(u1**2 - u0**2) / 2))}
    curve = {f"{u:.1f}": float(ups[round(u / H)] / done) for u in np.arange(0.5, 12.0, 0.5)
             if ups[round(u / H)] > 0}
    return {
        "n_toys": int(done), "n_tests": k, "max_z_quantiles": quantiles,
        "method": {
            "toys": "background-only pseudo-experiments of all tests (on/off counting experiments, nested "
                    "selections by binomial thinning), extended adaptively",
            "tail": "Gross-Vitells: P(max Z > u) <= <N(u0)> exp(-(u^2 - u0^2)/2), N = upcrossings along the "
                    "nesting tree measured on the toys (arXiv:1005.1891)",
            "n_toys_initial": int(n_toys), "n_toys_cap": int(cap), "min_count": int(min_count),
            "tail_thresholds": [{"u0": u0, "upcrossings": c, "mean_upcrossings": c / done}
                                for u0, c in sorted(used.items())],
            "mean_upcrossings": curve, "tail_check": check,
            "rows_by_method": {m: how.count(m) for m in sorted(set(how))},
        },
    }
