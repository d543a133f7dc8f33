"""Event generation: Pythia 8 (pythia8mc) + FastJet dijet samples in the LHC Olympics layouts.

``qcd``: QCD 2->2 (``HardQCD:all``) with a pT-hat cut matched to the trigger.
``signal``: gg -> H2 (``--m-res``) -> A0 (``--m-x``) h0 (``--m-y``), each forced narrow and
decaying to light quarks (u, d, s, c) or, with ``decays="b"``, to quarks up to b.
``demo``: the two mixed (``n_signal`` signal events among ``events`` QCD events), shuffled;
this is how the shipped demo dataset is made.

Kept events have a leading anti-kT R = 1.0 jet (pT > 20 GeV, |eta| < 2.5 among jets) with
pT > 1.2 TeV, clustered from all visible final-state particles with their masses (the
same code as the readers). Outputs, per sample: ``<name>_features.h5`` (high-level layout),
``<name>_particles.h5`` (raw layout: up to 700 particles as massless (pT, eta, phi)),
``<name>.root`` (TTree ``events`` with jagged ``part_pt/part_eta/part_phi`` and ``label``)
and ``<name>_meta.json`` (generator version, settings, seeds, events tried and kept,
cross section, throughput). Work is split into chunks of fixed seeds, one Dask node each;
finished chunks are kept, so an interrupted run resumes; a seed gives the same events.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from sideband.pipeline.cache import atomic_path, cache_key, write_json
from sideband.pipeline.config import ComputeConfig
from sideband.pipeline.graph import Graph, Node
from sideband.pipeline.exceptions import SidebandUserError, optional_import
from sideband.pipeline.features import LHCO_FEATURE_COLUMNS, cluster_four_vectors, jets_to_lhco_frame

__all__ = ["pythia_settings", "generate_chunk", "generate", "LEADING_JET_PT_MIN"]

log = logging.getLogger(__name__)

LEADING_JET_PT_MIN = 1200.0
MAX_PARTICLES = 700
GEN_VERSION = 1
#: Largest seed Pythia accepts (Random:seed); 0 is time-based, negative values the default seed.
PYTHIA_SEED_MAX = 900_000_000


def pythia_settings(process: str, *, m_res: float = 3500.0, m_x: float = 500.0, m_y: float = 100.0,
                    pthat_min: float = 1100.0, decays: str = "light") -> list[str]:
    """Pythia settings for a process (no seeds; those are per chunk)."""
    common = ["Beams:eCM = 13000", "Tune:pp = 14"]
    if process == "qcd":
        return common + ["HardQCD:all = on", f"PhaseSpace:pTHatMin = {pthat_min:g}"]
    if process != "signal":
        raise SidebandUserError(f"unknown process '{process}'; choose qcd, signal or demo")
    if not m_res > m_x + m_y:
        raise SidebandUserError(f"--m-res {m_res:g} must exceed --m-x + --m-y = {m_x + m_y:g} GeV")
    quarks = {"light": "1 2 3 4", "b": "1 2 3 4 5"}.get(decays)
    if quarks is None:
        raise SidebandUserError(f"--decays {decays!r}: choose 'light' (u d s c) or 'b' (up to b)")
    return common + [
        "Higgs:useBSM = on", "HiggsBSM:gg2H2 = on",
        f"35:m0 = {m_res:g}", "35:mWidth = 10", "35:doForceWidth = on", "35:onMode = off",
        "35:addChannel = 1 1.0 100 36 25", "35:onIfMatch = 36 25",
        f"36:m0 = {m_x:g}", "36:mWidth = 0.01", "36:doForceWidth = on", "36:onMode = off",
        f"36:onIfAny = {quarks}",
        f"25:m0 = {m_y:g}", "25:mWidth = 0.01", "25:doForceWidth = on", "25:onMode = off",
        f"25:onIfAny = {quarks}",
        f"PhaseSpace:mHatMin = {max(m_res - 1000, 0):g}", f"PhaseSpace:mHatMax = {m_res + 1000:g}",
    ]


def _pythia(settings: list[str], seed: int):
    pythia8mc = optional_import("pythia8mc", "generate", "sideband generate")

    py = pythia8mc.Pythia("", False)  # no banner
    for line in settings + ["Random:setSeed = on", f"Random:seed = {seed}", "Next:numberCount = 0",
                            "Print:quiet = on"]:
        if not py.readString(line):
            raise RuntimeError(f"Pythia rejected the setting {line!r}")
    if not py.init():
        raise RuntimeError(f"Pythia failed to initialise with {settings}")
    return py


def _visible(event) -> np.ndarray:
    """(n, 4) px, py, pz, E of the visible final-state particles."""
    rows = [(q.px(), q.py(), q.pz(), q.e()) for q in event if q.isFinal() and q.isVisible()]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def _raw_rows(parts: list[np.ndarray], label: float) -> np.ndarray:
    """LHCO raw layout: up to 700 massless (pT, eta, phi) sorted by pT, zero padded, then label."""
    out = np.zeros((len(parts), 3 * MAX_PARTICLES + 1), dtype=np.float32)
    for i, p in enumerate(parts):
        pt = np.hypot(p[:, 0], p[:, 1])
        order = np.argsort(-pt)[:MAX_PARTICLES]
        pt = pt[order]
        eta = np.arcsinh(p[order, 2] / pt)
        phi = np.arctan2(p[order, 1], p[order, 0])
        trip = np.stack([pt, eta, phi], axis=1).ravel()
        out[i, : len(trip)] = trip
    out[:, -1] = label
    return out


def generate_chunk(settings: list[str], seed: int, n_events: int, label: float, out: str,
                   batch: int = 200) -> str:
    """Generate ``n_events`` kept events with one seed; write an .npz chunk (skipped if present)."""
    if Path(out).exists():
        return out
    import awkward as ak

    t0 = time.perf_counter()
    py = _pythia(settings, seed)
    feats, raw, jagged, tried = [], [], [], 0
    n_kept = 0
    while n_kept < n_events:
        parts = []
        while len(parts) < batch:
            if not py.next():
                continue
            parts.append(_visible(py.event))
        tried += len(parts)
        counts = [len(p) for p in parts]
        flat = np.concatenate(parts)
        cols = [ak.unflatten(flat[:, k], counts) for k in range(4)]
        jets, two = cluster_four_vectors(*cols)
        lead_pt = np.hypot(jets["pxj1"], jets["pyj1"])
        passed = np.flatnonzero(two)[lead_pt > LEADING_JET_PT_MIN]
        keep_jets = lead_pt > LEADING_JET_PT_MIN
        take = min(len(passed), n_events - n_kept)
        if take < len(passed):
            tried -= int(batch - 1 - passed[take - 1])  # events after the last kept one were not needed
        passed = passed[:take]
        sel = np.flatnonzero(keep_jets)[:take]
        feats.append({c: jets[c][sel] for c in LHCO_FEATURE_COLUMNS})
        kept_parts = [parts[i] for i in passed]
        raw.append(_raw_rows(kept_parts, label))
        jagged += [r[:-1].reshape(-1, 3)[r[:-1].reshape(-1, 3)[:, 0] > 0] for r in raw[-1]]
        n_kept += take
    info = py.infoPython()
    wall = time.perf_counter() - t0
    f = {c: np.concatenate([d[c] for d in feats]) for c in LHCO_FEATURE_COLUMNS}
    lengths = np.array([len(j) for j in jagged])
    with atomic_path(out, ".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, raw=np.concatenate(raw), lengths=lengths,
                     particles=np.concatenate(jagged) if jagged else np.zeros((0, 3), np.float32),
                     meta=json.dumps({"seed": seed, "tried": tried, "kept": n_kept, "wall_s": wall,
                                      "sigma_gen_mb": info.sigmaGen(), "sigma_err_mb": info.sigmaErr()}),
                     **{f"f_{c}": v for c, v in f.items()})
    return out


def _merge(chunks: list[str], name: str, out_dir: str, label: float, settings: list[str], *, process: dict,
           shuffle_seed: int | None = None) -> dict:
    """Concatenate chunks into the three output files plus metadata (atomic writes)."""
    import awkward as ak
    import uproot

    out = Path(out_dir)
    feats, raws, parts, lengths, metas = [], [], [], [], []
    for c in chunks:
        with np.load(c) as z:
            feats.append(pd.DataFrame({k: z[f"f_{k}"] for k in LHCO_FEATURE_COLUMNS}))
            raws.append(z["raw"])
            parts.append(z["particles"])
            lengths.append(z["lengths"])
            metas.append(json.loads(str(z["meta"])))
    labels = np.concatenate([r[:, -1] for r in raws])
    frame = jets_to_lhco_frame({c: pd.concat(feats)[c].to_numpy() for c in LHCO_FEATURE_COLUMNS}, labels)
    raw = np.concatenate(raws)
    lengths = np.concatenate(lengths)
    flat = np.concatenate(parts)
    order = np.arange(len(frame))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(frame))
        starts = np.r_[0, np.cumsum(lengths)[:-1]]
        flat = np.concatenate([flat[starts[i]:starts[i] + lengths[i]] for i in order]) if len(order) else flat
        lengths = lengths[order]
    frame = frame.iloc[order].reset_index(drop=True)
    raw = raw[order]
    with atomic_path(out / f"{name}_features.h5", ".h5") as tmp:
        frame.to_hdf(tmp, key="df", mode="w", complevel=9, complib="zlib")
    with atomic_path(out / f"{name}_particles.h5", ".h5") as tmp:
        pd.DataFrame(raw).to_hdf(tmp, key="df", mode="w", complevel=9, complib="zlib")
    jag = {k: ak.unflatten(flat[:, i].astype(np.float32), lengths) for i, k in enumerate(("pt", "eta", "phi"))}
    with atomic_path(out / f"{name}.root", ".root") as tmp:
        with uproot.recreate(tmp) as f:
            f.mktree("events", {"part_pt": jag["pt"].type.content, "part_eta": jag["eta"].type.content,
                                "part_phi": jag["phi"].type.content, "label": np.float32},
                     counter_name=lambda _: "n_part")
            f["events"].extend({"part_pt": jag["pt"], "part_eta": jag["eta"], "part_phi": jag["phi"],
                                "label": raw[:, -1]})
    from importlib.metadata import version

    tried = sum(m["tried"] for m in metas)
    kept = sum(m["kept"] for m in metas)
    core_s = sum(m["wall_s"] for m in metas)
    sig = [m["sigma_gen_mb"] for m in metas if m["kept"]]
    meta = {
        "generator": f"pythia8mc {version('pythia8mc')}", "fastjet": version("fastjet"),
        "sideband": version("sideband"),
        "process": process, "settings": settings, "seeds": [m["seed"] for m in metas],
        "events_tried": tried, "events_kept": kept, "acceptance": kept / tried if tried else None,
        "cross_section_pb": float(np.mean(sig) * 1e9) if sig else None,
        "cross_section_after_cuts_pb": float(np.mean(sig) * 1e9 * kept / tried) if sig and tried else None,
        "core_seconds": core_s, "kept_per_second_per_core": kept / core_s if core_s else None,
        "selection": f"leading anti-kT R=1.0 jet pT > {LEADING_JET_PT_MIN:g} GeV, |eta| < 2.5, >= 2 jets",
        "files": [f"{name}_features.h5", f"{name}_particles.h5", f"{name}.root"],
    }
    write_json(out / f"{name}_meta.json", meta)
    return meta


def generate(process: str, n_events: int, out_dir: str | Path, *, seed: int = 1001, chunk_size: int = 1000,
             name: str | None = None, n_signal: int = 0, compute: ComputeConfig | None = None,
             progress: bool | str = False, **physics) -> list[dict]:
    """Generate a sample (or the demo mixture); returns the metadata of each written sample."""
    if n_events <= 0:
        raise SidebandUserError(f"--events {n_events}: must be positive")
    if chunk_size <= 0:
        raise SidebandUserError(f"--chunk-size {chunk_size}: must be positive")
    # Pythia's Random:seed: 0 is a time-based seed, a negative one the default seed, above 9e8 refused
    last = seed + (100_000 if process == "demo" else 0) + -(-max(n_events, n_signal) // chunk_size) - 1
    if seed < 1 or last > PYTHIA_SEED_MAX:
        raise SidebandUserError(f"--seed {seed}: chunk seeds must lie in 1..{PYTHIA_SEED_MAX} (Pythia's range; 0 "
                                f"is a time-based seed), these would reach {last}; choose another --seed")
    out = Path(out_dir)
    try:
        (out / "chunks").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SidebandUserError(f"{out}: cannot create the output directory ({exc.strerror}); choose another --out")
    g = Graph()
    samples = []
    if process == "demo":
        samples = [("qcd", n_events, 0.0, seed), ("signal", n_signal, 1.0, seed + 100_000)]
    else:
        samples = [(process, n_events, 1.0 if process == "signal" else 0.0, seed)]
    merged_chunks, settings_of = [], {}
    for proc, n, label, base_seed in samples:
        if n <= 0:
            continue
        settings = pythia_settings(proc, **physics)
        settings_of[proc] = settings
        refs = []
        for i, start in enumerate(range(0, n, chunk_size)):
            size = min(chunk_size, n - start)
            key = cache_key(GEN_VERSION, settings, base_seed + i, size, label)
            refs.append(g.add(Node(f"gen-{proc}-{base_seed + i}-{key}", generate_chunk,
                                   {"settings": settings, "seed": base_seed + i, "n_events": size, "label": label,
                                    "out": str(out / "chunks" / f"{proc}-{key}.npz")}, kind="generate")))
        merged_chunks.append((proc, refs, label, settings))
    finals = []
    if process == "demo":
        all_refs = [r for _, refs, _, _ in merged_chunks for r in refs]
        finals.append(g.add(Node("merge-demo", _merge, {
            "chunks": all_refs, "name": name or "demo", "out_dir": str(out), "label": 0.0,
            "settings": settings_of.get("qcd", []) + settings_of.get("signal", []),
            "process": {"process": "demo", "qcd_events": n_events, "signal_events": n_signal,
                        "chunk_size": chunk_size, **physics},
            "shuffle_seed": seed}, kind="merge")))
    else:
        proc, refs, label, settings = merged_chunks[0]
        finals.append(g.add(Node(f"merge-{proc}", _merge, {
            "chunks": refs, "name": name or proc, "out_dir": str(out), "label": label, "settings": settings,
            "process": {"process": proc, "chunk_size": chunk_size, **physics}}, kind="merge")))
    g.final = finals[-1].key
    from .search import run_with_progress

    return [run_with_progress(g, compute or ComputeConfig(), progress)]
