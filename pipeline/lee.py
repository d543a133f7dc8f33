"""Look-elsewhere effect over every test (window x detector x selection) of a run."""

from __future__ import annotations

import numpy as np
from scipy import stats

from .stats import z_on_off

__all__ = ["global_significance"]


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


def global_significance(rows: list[dict], n_toys: int = 20_000, seed: int = 0) -> dict:
    """Look-elsewhere effect over all tests of a run, from background-only pseudo-experiments.

    Each test (window x detector x selection) is a counting experiment with its fitted
    background b and uncertainty sigma_b; each pseudo-experiment draws the SR count
    n ~ Poisson(b) and the auxiliary sideband measurement m ~ Poisson(b^2/sigma_b^2) for
    every test, computes each test's Z, and keeps the largest. A test's global p-value is
    the fraction of pseudo-experiments whose largest Z reaches its observed local Z.
    Nested selections share their SR events: a detector's tighter selection keeps a subset
    of its looser one's, and its loosest a subset of the inclusive spectrum (detector
    ``none``) of the same window. Their counts are drawn that way, by binomial thinning
    (n_tight ~ Binomial(n_loose, b_tight / b_loose), which keeps every marginal Poisson).
    Different detectors and windows, and the sideband measurements, are drawn independently,
    which overstates the trials factor somewhat (conservative).
    """
    tests = [r for r in rows if r.get("z_local") is not None and r.get("n_expected_sr") is not None]
    # The toys below give the on/off model's asymptotic Z; compare like with like.
    z_obs = [r.get("z_local_asymptotic", r["z_local"]) for r in tests]
    if not tests or n_toys <= 0:
        return {"n_toys": 0, "n_tests": len(tests), "max_z_quantiles": None}
    b = np.array([max(r["n_expected_sr"], 1e-3) for r in tests])
    sb = np.array([max(r["n_expected_sr_unc"] or 0.0, 1e-6 * max(r["n_expected_sr"], 1.0)) for r in tests])
    rng = np.random.default_rng(seed)
    m_nom = b**2 / sb**2
    n = np.empty((n_toys, len(tests)), dtype=np.int64)
    for i, parent in _nesting(tests):
        if parent is None:
            n[:, i] = rng.poisson(b[i], size=n_toys)
        else:
            n[:, i] = rng.binomial(n[:, parent], min(b[i] / b[parent], 1.0))
    m = rng.poisson(m_nom, size=(n_toys, len(tests))).astype(np.float64)
    tau = b / sb**2
    b_hat = np.maximum(m / tau, 1e-6)
    s_hat = np.sqrt(np.maximum(m, 1.0)) / tau  # the sideband-estimate uncertainty of each toy
    zmax = z_on_off(n, b_hat, s_hat).max(axis=1)
    zmax.sort()
    for r, z_r in zip(tests, z_obs):
        p = (n_toys - np.searchsorted(zmax, z_r, side="left")) / n_toys
        p = max(p, 1.0 / n_toys) if z_r > 0 else 1.0
        if r.get("p0") is not None and np.isfinite(r["p0"]):
            p = max(p, float(r["p0"]))  # never more significant globally than locally
        r["p_global"] = float(p)
        r["z_global"] = float(max(stats.norm.isf(p), 0.0))
    return {"n_toys": int(n_toys), "n_tests": len(tests), "method": "background-only pseudo-experiments",
            "max_z_quantiles": {q: float(np.quantile(zmax, float(q))) for q in ("0.5", "0.84", "0.977", "0.99865")}}
