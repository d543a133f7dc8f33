"""Jet clustering, N-subjettiness and the canonical event table.

The canonical table is a :class:`pandas.DataFrame` of float32 columns in GeV, one row
per event, with the columns in :data:`CANONICAL_COLUMNS` (plus ``label`` when the
input carries truth labels). Jets are ordered by mass: ``j1`` is the lighter jet.

Opt-in, the extended N-subjettiness set (Finke et al., arXiv:2309.13111): tau_N^beta for
N = 1..9 and beta in {0.5, 1, 2}, per jet, computed from particle-level inputs
(``substructure="extended"`` of the particle readers). In the LHCO-style jet layout the
columns are ``tau{N}_b{beta}j{1,2}`` (pT-ordered, like ``tau1j1``); in the event table they
are :data:`EXTENDED_COLUMNS`, ``tau{N}_b{beta}_j{1,2}`` (mass-ordered, like ``tau21_j1``).
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
    "EXTENDED_COLUMNS",
    "SUBSTRUCTURE",
    "events_from_jets",
    "nsubjettiness",
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
    "mj1_over_mjj",
    "delta_mj_over_mjj",
]
#: Columns usable as detector inputs (everything except mjj).
FEATURE_COLUMNS = [c for c in CANONICAL_COLUMNS if c != "mjj"]

#: Jet definition used everywhere (readers and event generation).
JET_R = 1.0
JET_MIN_PT = 20.0
JET_MAX_ETA = 2.5
NSUB_AXES_R = 1.5

#: Substructure sets of the particle readers: tau1..3 at beta = 1 (the LHCO layout), or
#: in addition the extended set below.
SUBSTRUCTURE = ("standard", "extended")
#: The extended N-subjettiness set: N = 1..EXTENDED_N_MAX for each beta.
EXTENDED_N_MAX = 9
EXTENDED_BETAS = (0.5, 1.0, 2.0)
#: Per-jet names of the extended set without the jet suffix, e.g. ``tau5_b0.5``.
EXTENDED_STEMS = [f"tau{n}_b{b:g}" for b in EXTENDED_BETAS for n in range(1, EXTENDED_N_MAX + 1)]
#: The extended set in the jet layout (pT-ordered jets, as ``tau1j1``).
EXTENDED_JET_COLUMNS = [f"{c}j{i}" for i in (1, 2) for c in EXTENDED_STEMS]
#: The extended set in the event table (mass-ordered jets, as ``tau21_j1``).
EXTENDED_COLUMNS = [f"{c}_j{i}" for c in EXTENDED_STEMS for i in (1, 2)]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


# NaN/inf inputs (counted, named and dropped by the reader) give NaN/inf outputs silently:
# inf - inf, inf**2 and float32 overflow would otherwise warn once per chunk.
@np.errstate(invalid="ignore", over="ignore", divide="ignore")
def events_from_jets(
    jets: dict[str, np.ndarray], label: np.ndarray | None = None, extra: dict | None = None
) -> pd.DataFrame:
    """Build the canonical table from two jets in the LHCO feature layout.

    ``jets`` maps the LHCO column names (``pxj1`` ... ``tau3j2``) to arrays. The jets
    are re-ordered by mass so that ``j1`` is the lighter one; ``delta_mj = mj2 - mj1``.
    Extended N-subjettiness columns in ``jets`` (``tau5_b0.5j1`` ...) become the mass-ordered
    :data:`EXTENDED_COLUMNS` after the canonical ones; ``extra`` (a user's per-event columns)
    follows unchanged (floats as float32), then ``label``.
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
    # jet masses in units of m_jj: inputs whose pass rate varies less across an SR and its
    # sidebands than mj1 and delta_mj do (docs/detectors.md, calibration over independent samples)
    out["mj1_over_mjj"] = _ratio(mlight, mjj)
    out["delta_mj_over_mjj"] = _ratio(out["delta_mj"], mjj)
    cols = {c: out[c].astype(np.float32) for c in CANONICAL_COLUMNS}
    for stem in EXTENDED_STEMS:
        if f"{stem}j1" in j:
            a, b = ordered(stem)
            cols[f"{stem}_j1"], cols[f"{stem}_j2"] = a.astype(np.float32), b.astype(np.float32)
    for c, v in (extra or {}).items():
        v = np.asarray(v)
        cols[c] = v.astype(np.float32) if v.dtype.kind == "f" else v
    frame = pd.DataFrame(cols)
    if label is not None:
        frame["label"] = np.asarray(label, dtype=np.float32)
    return frame


def nsubjettiness(constituents, n_max: int = 3, betas=(1.0,)) -> np.ndarray:
    """N-subjettiness tau_N^beta, N = 1..n_max, of each jet in a jagged array of constituents.

    ``constituents`` is an awkward array (n_jets, var) of Momentum4D records. Returns an
    array (n_jets, len(betas), n_max). Axes: the exclusive kT jets (R = 1.5) of the
    reclustered constituents, the same axes for every beta; distances in rapidity-azimuth;
    ``tau_N^beta = sum_i pT_i min_k dR_ik^beta / sum_i pT_i`` (no R0 factor). A jet with at
    most N constituents has tau_N = 0. Each jet is reclustered once (fastjet on the jagged
    array, grouped by how many exclusive axes it can have), then all N and beta are numpy.
    With these (not minimised) axes tau_N^beta need not fall with N for beta <= 1.
    """
    import awkward as ak
    fastjet = optional_import("fastjet", "particles", "reading particle-level inputs (jet clustering)")

    betas = [float(b) for b in betas]
    n_jets = len(constituents)
    taus = np.zeros((n_jets, len(betas), n_max), dtype=np.float64)
    if n_jets == 0:
        return taus
    pt = ak.to_numpy(ak.flatten(np.hypot(constituents.px, constituents.py)))
    rap = ak.to_numpy(ak.flatten(constituents.rapidity))
    phi = ak.to_numpy(ak.flatten(constituents.phi))
    n_const = ak.to_numpy(ak.num(constituents, axis=1))
    jet_of = np.repeat(np.arange(n_jets), n_const)
    sum_pt = np.bincount(jet_of, weights=pt, minlength=n_jets)
    kt = fastjet.JetDefinition(fastjet.kt_algorithm, NSUB_AXES_R)
    # exclusive_jets(N) fails on a jet with fewer than N constituents: group jets by the
    # largest N they need (tau_N = 0 beyond n_const - 1) and cluster each group once
    top = np.minimum(n_const - 1, n_max)
    for k in np.unique(top[top >= 1]):
        group = np.flatnonzero(top == k)
        mine = np.isin(jet_of, group)
        row = np.searchsorted(group, jet_of[mine])
        c_pt, c_rap, c_phi = pt[mine], rap[mine], phi[mine]
        with warnings.catch_warnings():
            # fastjet warns about dcut semantics for non-kT algorithms; ours is kT.
            warnings.filterwarnings("ignore", message="dcut and exclusive jets")
            cs = fastjet.ClusterSequence(constituents[group], kt)
            for n in range(1, int(k) + 1):
                axes = cs.exclusive_jets(n_jets=n)
                a_rap = ak.to_numpy(axes.rapidity).reshape(len(group), n)[row]
                a_phi = ak.to_numpy(axes.phi).reshape(len(group), n)[row]
                dphi = (c_phi[:, None] - a_phi + np.pi) % (2 * np.pi) - np.pi
                dmin = np.sqrt(np.min((c_rap[:, None] - a_rap) ** 2 + dphi**2, axis=1))
                for b, beta in enumerate(betas):
                    num = np.bincount(row, weights=c_pt * dmin**beta, minlength=len(group))
                    taus[group, b, n - 1] = num / sum_pt[group]
    return taus


def cluster_particles(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, *,
                      substructure: str = "standard") -> tuple[dict, np.ndarray]:
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
    return cluster_four_vectors(ptj * np.cos(phij), ptj * np.sin(phij), ptj * np.sinh(etaj), ptj * np.cosh(etaj),
                                substructure=substructure)


#: Events clustered by one fastjet multi-event call: its cost grows faster than linearly with the
#: number of events (100k raw events in one call did not finish in 40 min; in batches of 5,000
#: they took 124 s on one core), so larger chunks are clustered batch by batch.
CLUSTER_BATCH = 5000


def cluster_four_vectors(px, py, pz, E, *, substructure: str = "standard") -> tuple[dict, np.ndarray]:
    """:func:`_cluster_batch` over batches of at most :data:`CLUSTER_BATCH` events, joined."""
    n = len(px)
    if n <= CLUSTER_BATCH:
        return _cluster_batch(px, py, pz, E, substructure=substructure)
    parts = [_cluster_batch(px[i:i + CLUSTER_BATCH], py[i:i + CLUSTER_BATCH], pz[i:i + CLUSTER_BATCH],
                            E[i:i + CLUSTER_BATCH], substructure=substructure) for i in range(0, n, CLUSTER_BATCH)]
    jets = {k: np.concatenate([np.asarray(j[k]) for j, _ in parts]) for k in parts[0][0]}
    return jets, np.concatenate([np.asarray(keep) for _, keep in parts])


def _cluster_batch(px, py, pz, E, *, substructure: str = "standard") -> tuple[dict, np.ndarray]:
    """Cluster particles (jagged awkward arrays of px, py, pz, E in GeV) into two jets.

    Jets: anti-kT R = 1.0 with pT > 20 GeV and |eta| < 2.5; j1, j2 are the two leading-pT
    jets among those. Returns the jets in the LHCO feature layout (a dict of column ->
    array, for events that have two jets) and the boolean mask of events kept; with
    ``substructure="extended"`` also :data:`EXTENDED_JET_COLUMNS` (tau_N^beta, N = 1..9,
    beta = 0.5, 1, 2; tau1..3 are the beta = 1 ones). Vectorised with fastjet's awkward
    interface: no per-event loop. Used by the readers and by event generation alike.
    """
    if substructure not in SUBSTRUCTURE:
        raise ValueError(f"substructure must be one of {SUBSTRUCTURE}, got {substructure!r}")
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
    extended = substructure == "extended"
    betas = EXTENDED_BETAS if extended else (1.0,)
    n_max = EXTENDED_N_MAX if extended else 3
    taus = nsubjettiness(flat, n_max, betas).reshape(-1, 2, len(betas), n_max)
    std = betas.index(1.0)
    out = {}
    for i in (0, 1):
        jet = jets[:, i]
        out[f"pxj{i + 1}"] = ak.to_numpy(jet.px)
        out[f"pyj{i + 1}"] = ak.to_numpy(jet.py)
        out[f"pzj{i + 1}"] = ak.to_numpy(jet.pz)
        out[f"mj{i + 1}"] = ak.to_numpy(jet.mass)
        for n in range(3):
            out[f"tau{n + 1}j{i + 1}"] = taus[:, i, std, n]
        if extended:
            for b, beta in enumerate(betas):
                for n in range(EXTENDED_N_MAX):
                    out[f"tau{n + 1}_b{beta:g}j{i + 1}"] = taus[:, i, b, n]
    if n_events and not keep.all():
        log.debug("%d of %d events have fewer than two jets", int((~keep).sum()), n_events)
    return out, keep


def jets_to_lhco_frame(jets: dict, label: np.ndarray | None = None) -> pd.DataFrame:
    """The LHCO high-level feature layout (float64, key ``df``) for jets from :func:`cluster_particles`.

    The extended N-subjettiness columns follow the standard ones when ``jets`` has them; the
    feature reader turns them into the event table's :data:`EXTENDED_COLUMNS`.
    """
    cols = LHCO_FEATURE_COLUMNS + [c for c in EXTENDED_JET_COLUMNS if c in jets]
    frame = pd.DataFrame({c: np.asarray(jets[c], dtype=np.float64) for c in cols})
    if label is not None:
        frame["label"] = np.asarray(label, dtype=np.float64)
    return frame
