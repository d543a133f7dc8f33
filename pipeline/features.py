"""Jet clustering, N-subjettiness and the canonical event table.

The canonical table is a :class:`pandas.DataFrame` of float32 columns in GeV, one row
per event, with the columns in :data:`CANONICAL_COLUMNS` (plus ``label`` when the
input carries truth labels). Jets are ordered by mass: ``j1`` is the lighter jet.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

from .exceptions import optional_import

__all__ = [
    "JET_COLUMNS",
    "CANONICAL_COLUMNS",
    "FEATURE_COLUMNS",
    "events_from_jets",
    "cluster_particles",
    "cluster_four_vectors",
    "jets_to_lhco_frame",
]

log = logging.getLogger(__name__)

#: Per-jet columns of the LHC Olympics high-level feature layout, for jets 1 and 2.
JET_COLUMNS = ["px", "py", "pz", "m", "tau1", "tau2", "tau3"]
LHCO_FEATURE_COLUMNS = [f"{c}j{i}" for i in (1, 2) for c in JET_COLUMNS]

#: Columns of the canonical event table, in order (all float32, GeV).
CANONICAL_COLUMNS = [
    "mjj",
    "mj1",
    "mj2",
    "delta_mj",
    "tau21_j1",
    "tau21_j2",
    "tau32_j1",
    "tau32_j2",
    "pt_j1",
    "pt_j2",
    "eta_j1",
    "eta_j2",
]
#: Columns usable as detector inputs (everything except mjj).
FEATURE_COLUMNS = [c for c in CANONICAL_COLUMNS if c != "mjj"]

#: Jet definition used everywhere (readers and event generation).
JET_R = 1.0
JET_MIN_PT = 20.0
JET_MAX_ETA = 2.5
NSUB_AXES_R = 1.5


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


# NaN/inf inputs (counted, named and dropped by the reader) give NaN/inf outputs silently:
# inf - inf, inf**2 and float32 overflow would otherwise warn once per chunk.
@np.errstate(invalid="ignore", over="ignore", divide="ignore")
def events_from_jets(
    jets: dict[str, np.ndarray], label: np.ndarray | None = None
) -> pd.DataFrame:
    """Build the canonical table from two jets in the LHCO feature layout.

    ``jets`` maps the LHCO column names (``pxj1`` ... ``tau3j2``) to arrays. The jets
    are re-ordered by mass so that ``j1`` is the lighter one; ``delta_mj = mj2 - mj1``.
    Non-finite ratios (e.g. ``tau1 = 0``) and non-finite inputs become NaN/inf without a
    warning; the reader counts the affected events and drops them.
    """
    j = {k: np.asarray(v, dtype=np.float64) for k, v in jets.items()}
    e = {}
    for i in (1, 2):
        p2 = j[f"pxj{i}"] ** 2 + j[f"pyj{i}"] ** 2 + j[f"pzj{i}"] ** 2
        e[i] = np.sqrt(p2 + j[f"mj{i}"] ** 2)
    px = j["pxj1"] + j["pxj2"]
    py = j["pyj1"] + j["pyj2"]
    pz = j["pzj1"] + j["pzj2"]
    m2 = (e[1] + e[2]) ** 2 - px**2 - py**2 - pz**2
    mjj = np.sqrt(np.clip(m2, 0.0, None))

    swap = j["mj1"] > j["mj2"]

    def ordered(col: str) -> tuple[np.ndarray, np.ndarray]:
        a, b = j[f"{col}j1"], j[f"{col}j2"]
        return np.where(swap, b, a), np.where(swap, a, b)

    out = {"mjj": mjj}
    mlight, mheavy = ordered("m")
    out["mj1"], out["mj2"] = mlight, mheavy
    out["delta_mj"] = mheavy - mlight
    t1, t1b = ordered("tau1")
    t2, t2b = ordered("tau2")
    t3, t3b = ordered("tau3")
    out["tau21_j1"], out["tau21_j2"] = _ratio(t2, t1), _ratio(t2b, t1b)
    out["tau32_j1"], out["tau32_j2"] = _ratio(t3, t2), _ratio(t3b, t2b)
    pxa, pxb = ordered("px")
    pya, pyb = ordered("py")
    pza, pzb = ordered("pz")
    out["pt_j1"], out["pt_j2"] = np.hypot(pxa, pya), np.hypot(pxb, pyb)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["eta_j1"] = np.arcsinh(_ratio(pza, out["pt_j1"]))
        out["eta_j2"] = np.arcsinh(_ratio(pzb, out["pt_j2"]))
    frame = pd.DataFrame({c: out[c].astype(np.float32) for c in CANONICAL_COLUMNS})
    if label is not None:
        frame["label"] = np.asarray(label, dtype=np.float32)
    return frame


def _nsubjettiness(constituents, n_max: int = 3) -> np.ndarray:
    """N-subjettiness tau_1..tau_n_max (beta = 1) of each jet in a jagged array.

    ``constituents`` is an awkward array (n_jets, var) of Momentum4D records. Axes are
    the exclusive kT jets (R = 1.5) of the reclustered constituents; distances in
    rapidity-azimuth; normalised by the scalar sum of constituent pT (no R0 factor).
    A jet with at most N constituents has tau_N = 0.
    """
    import awkward as ak
    fastjet = optional_import("fastjet", "particles", "reading particle-level inputs (jet clustering)")

    n_jets = len(constituents)
    taus = np.zeros((n_jets, n_max), dtype=np.float64)
    if n_jets == 0:
        return taus
    pt = np.hypot(constituents.px, constituents.py)
    rap = constituents.rapidity
    phi = constituents.phi
    sum_pt = ak.to_numpy(ak.sum(pt, axis=1))
    n_const = ak.to_numpy(ak.num(constituents, axis=1))
    kt = fastjet.JetDefinition(fastjet.kt_algorithm, NSUB_AXES_R)
    for n in range(1, n_max + 1):
        ok = n_const > n
        if not np.any(ok):
            continue
        sub = constituents[ok]
        with warnings.catch_warnings():
            # fastjet warns about dcut semantics for non-kT algorithms; ours is kT.
            warnings.filterwarnings("ignore", message="dcut and exclusive jets")
            cs = fastjet.ClusterSequence(sub, kt)
            axes = cs.exclusive_jets(n_jets=n)
        pairs = ak.cartesian(
            {
                "c": ak.zip({"y": rap[ok], "phi": phi[ok]}),
                "a": ak.zip({"y": axes.rapidity, "phi": axes.phi}),
            },
            axis=1,
            nested=True,
        )
        dphi = (pairs.c.phi - pairs.a.phi + np.pi) % (2 * np.pi) - np.pi
        dist = np.sqrt((pairs.c.y - pairs.a.y) ** 2 + dphi**2)
        dmin = ak.min(dist, axis=2)
        num = ak.to_numpy(ak.sum(pt[ok] * dmin, axis=1))
        taus[ok, n - 1] = num / sum_pt[ok]
    return taus


def cluster_particles(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> tuple[dict, np.ndarray]:
    """Cluster massless particles into the two leading anti-kT R = 1.0 jets.

    ``pt``, ``eta``, ``phi`` are (n_events, n_particles) arrays, zero-padded (pT = 0
    marks padding) or awkward jagged arrays. See :func:`cluster_four_vectors`.
    """
    import awkward as ak

    if isinstance(pt, np.ndarray):
        mask = pt > 0
        counts = mask.sum(axis=1)
        ptj = ak.unflatten(pt[mask].astype(np.float64), counts)
        etaj = ak.unflatten(eta[mask].astype(np.float64), counts)
        phij = ak.unflatten(phi[mask].astype(np.float64), counts)
    else:
        ptj, etaj, phij = (ak.values_astype(a, np.float64) for a in (pt, eta, phi))
    return cluster_four_vectors(ptj * np.cos(phij), ptj * np.sin(phij), ptj * np.sinh(etaj), ptj * np.cosh(etaj))


def cluster_four_vectors(px, py, pz, E) -> tuple[dict, np.ndarray]:
    """Cluster particles (jagged awkward arrays of px, py, pz, E in GeV) into two jets.

    Jets: anti-kT R = 1.0 with pT > 20 GeV and |eta| < 2.5; j1, j2 are the two leading-pT
    jets among those. Returns the jets in the LHCO feature layout (a dict of column ->
    array, for events that have two jets) and the boolean mask of events kept.
    Vectorised with fastjet's awkward interface: no per-event loop. Used by the readers
    and by event generation alike.
    """
    import awkward as ak
    fastjet = optional_import("fastjet", "particles", "reading particle-level inputs (jet clustering)")
    import vector

    vector.register_awkward()
    parts = ak.zip({"px": px, "py": py, "pz": pz, "E": E}, with_name="Momentum4D")
    n_events = len(parts)
    cs = fastjet.ClusterSequence(parts, fastjet.JetDefinition(fastjet.antikt_algorithm, JET_R))
    jets = cs.inclusive_jets(min_pt=JET_MIN_PT)
    const = cs.constituents(min_pt=JET_MIN_PT)
    central = abs(jets.eta) < JET_MAX_ETA
    jets, const = jets[central], const[central]
    order = ak.argsort(np.hypot(jets.px, jets.py), axis=1, ascending=False)
    jets, const = jets[order][:, :2], const[order][:, :2]
    keep = ak.to_numpy(ak.num(jets, axis=1)) == 2
    jets, const = jets[keep], const[keep]
    flat = ak.flatten(const, axis=1)
    flat = ak.zip({k: flat[k] for k in ("px", "py", "pz", "E")}, with_name="Momentum4D")
    taus = _nsubjettiness(flat).reshape(-1, 2, 3)
    out = {}
    for i in (0, 1):
        jet = jets[:, i]
        out[f"pxj{i + 1}"] = ak.to_numpy(jet.px)
        out[f"pyj{i + 1}"] = ak.to_numpy(jet.py)
        out[f"pzj{i + 1}"] = ak.to_numpy(jet.pz)
        out[f"mj{i + 1}"] = ak.to_numpy(jet.mass)
        for n in range(3):
            out[f"tau{n + 1}j{i + 1}"] = taus[:, i, n]
    if n_events and not keep.all():
        log.debug("%d of %d events have fewer than two jets", int((~keep).sum()), n_events)
    return out, keep


def jets_to_lhco_frame(jets: dict, label: np.ndarray | None = None) -> pd.DataFrame:
    """The LHCO high-level feature layout (float64, key ``df``) for jets from :func:`cluster_particles`."""
    frame = pd.DataFrame({c: np.asarray(jets[c], dtype=np.float64) for c in LHCO_FEATURE_COLUMNS})
    if label is not None:
        frame["label"] = np.asarray(label, dtype=np.float64)
    return frame
