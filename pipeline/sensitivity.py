"""Sensitivity curves of an injection scan: the blind scan's global Z, medians over seeds, crossings.

Look-elsewhere. For cost, an injection point trains and tests only in the signal's own
window(s) (``regions.signal_region``). Its global significance must still count every test of
the scan a user would run blind: the windows of ``regions.scan`` (the default
:class:`~.config.ScanConfig` unless the config changes it, also when it sets one signal
region) x the search detectors x the selections, plus each window's inclusive test.
:func:`scan_model` builds, per point, that scan's background-only model for
:func:`.lee.global_significance`:

* the windows the point ran carry its observed tests (fitted b, sigma_b, local Z); each takes
  the place of the scan window its SR overlaps most, so the number of tests stays the blind
  scan's (an observed window overlapping no scan window is added);
* every other scan window w gets, per detector d and selection eps (eps = 1: inclusive), a test
  without excess (Z = 0: a trial of the maximum, not an observation) with expected SR
  background b = eps x B_w, B_w the point's background events in w's SR (truth label 0 where
  the event table has labels, else all events), and uncertainty sigma_b = sigma_own x
  sqrt(b / b_own), the point's own fitted uncertainty of (d, eps) scaled like a statistical
  one (a (d, eps) without a usable own fit borrows the same selection's of another detector,
  else the inclusive test's).

The toys draw every test of the scan (nested selections by binomial thinning; windows and
detectors independent, which is conservative, see :mod:`.lee`); a detector's global Z at a
point is that of its best test. Approximations: a selection keeps exactly eps of the
background in every SR (no sculpting); the other windows' b are counts, not fits; their
sigma_b follows sqrt(b); the injected signal only affects the windows the point ran.
Ceilings (truth-based benchmarks, not searches) get their global Z as one more detector of the
scan: their tests, in every window, join the trials in a separate toy run.

Curves: per detector and injected count, the median and 16-84% band over seeds of the global
and of the local Z (best over selections, per seed) against the median S/sqrt(B) in the SR
before selection. Crossings (:func:`crossing`): the S/sqrt(B) where the median Z first rises
through 3 and 5 (linear interpolation), with a bootstrap over seeds for the uncertainty.
"""

from __future__ import annotations

import math

import numpy as np

from .lee import global_significance

__all__ = ["background_in_windows", "scan_model", "point_global", "seed_band", "crossing", "sensitivity_curves",
           "crossing_text", "format_sensitivity", "LEVELS", "CONSTRUCTION", "CROSSING_METHOD"]

LEVELS = (3.0, 5.0)  #: Z levels whose crossings are reported
N_BOOT = 1000  #: bootstrap resamples of the seeds per crossing
_GLOBAL_KEYS = ("p_global", "z_global", "z_global_method", "z_global_is_bound")
CONSTRUCTION = (
    "global Z: background-only toys (pipeline/lee.py) of every test of the blind scan (windows of regions.scan x "
    "(inclusive + search detectors x selections)); the windows a point ran carry its observed tests and stand for "
    "the scan window they overlap most; every other window's tests have no excess, b = selection x background "
    "events in its SR, sigma_b = the point's own fitted sigma_b of that detector/selection x sqrt(b / b_own). "
    "Approximations: no sculpting (a selection keeps its fraction of the background in every SR), counts instead "
    "of fits in the other windows, windows and detectors independent in the toys (conservative). Ceilings: as one "
    "more detector of the scan (their tests join the trials in a separate toy run).")
CROSSING_METHOD = (f"linear interpolation of the median Z vs the median S/sqrt(B); uncertainty: 16-84% of the "
                   f"crossing over {N_BOOT} bootstrap resamples of the seeds at every point, asymmetric (a resample "
                   "whose median curve does not reach the level counts as a crossing above the largest point, one "
                   "already above it at the lowest point as one below; a side of the band among those is unbounded)")


def background_in_windows(mjj, label, windows: list[dict]) -> dict[str, float]:
    """Background events in each window's SR: events with truth label 0, or all without labels."""
    m = np.asarray(mjj, dtype=float)
    if label is not None:
        m = m[np.asarray(label) < 0.5]
    return {w["name"]: float(np.count_nonzero((m >= w["sr"][0]) & (m < w["sr"][1]))) for w in windows}


def _overlap(a, b) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def _stands_for(observed: dict[str, tuple], scan: list[dict]) -> dict[str, str | None]:
    """Observed window -> the scan window it replaces (the same name, else the most overlapping free one)."""
    names = {w["name"] for w in scan}
    out = {name: name for name in observed if name in names}
    claimed = set(out)
    for name, sr in sorted(observed.items(), key=lambda kv: kv[1]):
        if name in out:
            continue
        free = [w for w in scan if w["name"] not in claimed and _overlap(sr, w["sr"]) > 0]
        best = max(free, key=lambda w: _overlap(sr, w["sr"]), default=None)
        out[name] = None if best is None else best["name"]
        claimed.add(out[name])
    return out


def _references(rows: list[dict]) -> dict[tuple[str, float], tuple[float, float]]:
    """(detector, selection) -> (b, sigma_b) of the point's own fitted test, first usable window."""
    refs: dict[tuple[str, float], tuple[float, float]] = {}
    for r in sorted(rows, key=lambda r: r["window"]):
        b, s = r.get("n_expected_sr"), r.get("n_expected_sr_unc")
        if b is not None and s is not None and b > 0 and s > 0 and math.isfinite(b) and math.isfinite(s):
            refs.setdefault((r["detector"], float(r["selection"])), (float(b), float(s)))
    return refs


def _reference(refs: dict, det: str, sel: float) -> tuple[float, float] | None:
    """The own test's (b, sigma_b), else the same selection's of another detector, else the inclusive's."""
    if (det, sel) in refs:
        return refs[(det, sel)]
    same = [v for (d, s), v in sorted(refs.items()) if s == sel]
    return same[0] if same else refs.get(("none", 1.0))


def scan_model(rows: list[dict], *, scan: list[dict], background: dict[str, float],
               detectors: list[str]) -> tuple[list[dict], dict]:
    """The blind scan's tests for one point: its observed tests plus no-excess tests elsewhere.

    ``rows``: the point's results rows; ``scan``: the scan windows (``Window.to_dict()``);
    ``background``: B_w per scan window (:func:`background_in_windows`); ``detectors``: those
    whose tests count (the inclusive test always does). Returns fresh rows for
    :func:`.lee.global_significance` (placeholders carry ``observed: False``) and what replaced
    what (``stands_for``) with the tests that could not be modelled (``unmodelled``).
    """
    observed = [{k: v for k, v in r.items() if k not in _GLOBAL_KEYS} for r in rows
                if r["detector"] == "none" or r["detector"] in detectors]
    stands_for = _stands_for({r["window"]: tuple(r["sr"]) for r in observed}, scan)
    covered = set(stands_for.values())
    selections = {d: sorted({float(r["selection"]) for r in observed if r["detector"] == d}, reverse=True)
                  for d in ["none", *detectors]}
    refs = _references(observed)
    model, missing = list(observed), []
    for w in scan:
        if w["name"] in covered:
            continue
        for det, sels in selections.items():
            for sel in sels:
                ref = _reference(refs, det, sel)
                if ref is None:
                    missing.append(f"{det} {sel:g} {w['name']}")
                    continue
                b = sel * background[w["name"]]
                model.append({"window": w["name"], "sr": list(w["sr"]), "detector": det, "selection": sel,
                              "n_expected_sr": b, "n_expected_sr_unc": ref[1] * math.sqrt(max(b, 1e-3) / ref[0]),
                              "z_local": 0.0, "z_local_asymptotic": 0.0, "observed": False})
    return model, {"n_scan_windows": len(scan), "stands_for": stands_for, "unmodelled": missing}


def _best_global(model: list[dict], det: str, window: str, n_tests: int) -> dict:
    """The global Z of ``det``'s best observed test in ``window`` (largest global Z, then local Z)."""
    rows = [r for r in model if r["detector"] == det and r["window"] == window and r.get("observed", True)
            and r.get("z_global") is not None]
    if not rows:
        return {"z_global": None, "reason": "no observed test with a background fit"}
    best = max(rows, key=lambda r: (r["z_global"], r["z_local"]))
    return {k: best[k] for k in _GLOBAL_KEYS} | {"selection": best["selection"], "n_tests": n_tests}


def point_window(doc: dict) -> str:
    """The window an injection point put its signal in: ``point["window"]`` (the planned SR; a
    point may run other windows too, e.g. ``regions.scan_centers``), else the first row's."""
    return (doc.get("point") or {}).get("window") or doc["results"][0]["window"]


def point_global(doc: dict, *, scan: list[dict], background: dict[str, float], n_toys: int, seed: int) -> dict:
    """Global Z of each detector's best test at one injection point, over the whole blind scan.

    ``doc``: the point's results.json (``results`` rows, ``ceilings``, ``point``); the best test
    is taken in the point's signal region (``point["window"]``; the first row's window for
    records without it), every observed window counts as a trial. One toy run for the
    inclusive test and the searches; one more per ceiling, with its tests added. Returns
    ``{"n_tests", "n_toys", "windows", "detectors": {name: {"z_global", ..., "n_tests"}}}``.
    """
    rows = doc["results"]
    where = point_window(doc)
    ceilings = set(doc.get("ceilings") or ())
    present = sorted({r["detector"] for r in rows} - {"none"})
    searches = [d for d in present if d not in ceilings]
    out: dict = {"detectors": {}}
    for extra in [None, *[d for d in present if d in ceilings]]:
        trials = searches + ([extra] if extra else [])
        model, info = scan_model(rows, scan=scan, background=background, detectors=trials)
        lee = global_significance(model, int(n_toys), seed=seed)
        for det in (["none", *searches] if extra is None else [extra]):
            out["detectors"][det] = (_best_global(model, det, where, lee["n_tests"]) if lee["n_toys"] else
                                     {"z_global": None, "reason": "stats.global_toys is 0: no look-elsewhere toys"})
        if extra is None:
            out.update(n_tests=lee["n_tests"], n_toys=lee["n_toys"], windows=info)
    return out


def seed_band(values) -> tuple[float | None, list[float] | None]:
    """Median and [16%, 84%] percentiles of the non-None ``values`` (None, None if there are none)."""
    xs = np.array([v for v in values if v is not None], dtype=float)
    if not xs.size:
        return None, None
    return float(np.median(xs)), [float(np.percentile(xs, 16)), float(np.percentile(xs, 84))]


def crossing(x, y, level: float) -> tuple[float | None, str | None]:
    """S/sqrt(B) where the piecewise-linear y(x) first rises through ``level``: (value, None) or (None, reason)."""
    pts = sorted((float(a), float(b)) for a, b in zip(x, y) if a is not None and b is not None)
    if len(pts) < 2:
        return None, "fewer than 2 injection points with a Z"
    if pts[0][1] >= level:
        return None, f"already at or above {level:g} at the lowest S/sqrt(B) {pts[0][0]:.2f}: inject less"
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if y0 < level <= y1:
            return x0 + (level - y0) * (x1 - x0) / (y1 - y0), None
    return None, f"not reached: median Z at most {max(p[1] for p in pts):.2f} up to S/sqrt(B) {pts[-1][0]:.2f}"


def _band_quantile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, 100 q)`` (linear) of sorted ``values`` that may hold -inf/+inf: a
    quantile that falls next to an infinite value is that infinite value (an unbounded side)."""
    pos = q * (len(values) - 1)
    i, j = int(np.floor(pos)), int(np.ceil(pos))
    lo, hi, t = values[i], values[j], pos - np.floor(pos)
    if t == 0 or lo == hi:
        return float(lo)
    if np.isfinite(lo) and np.isfinite(hi):
        return float(lo + t * (hi - lo))
    return float(lo if not np.isfinite(lo) else hi)


def _bootstrap(groups: list[tuple[np.ndarray, np.ndarray]], level: float, seed: int) -> dict:
    """Crossing of the median curve over resamples of the seeds at every point.

    A resample whose median curve never reaches ``level`` crosses somewhere above the largest
    injected point (+inf here), one already above it at the lowest point somewhere below (-inf):
    leaving them out would pull the band inside the tested range. ``band`` holds None on an
    unbounded side.
    """
    rng = np.random.default_rng(seed)
    mx, my = [], []
    for xs, ys in groups:
        idx = rng.integers(0, len(ys), size=(N_BOOT, len(ys)))
        mx.append(np.median(xs[idx], axis=1))
        my.append(np.median(ys[idx], axis=1))
    vals = []
    for a, b in zip(np.transpose(mx), np.transpose(my)):
        c, reason = crossing(a, b, level)
        if c is not None:
            vals.append(c)
        elif reason.startswith("already"):
            vals.append(-np.inf)
        elif reason.startswith("not reached"):
            vals.append(np.inf)
    vals = np.sort(np.asarray(vals, dtype=float))
    n_found = int(np.isfinite(vals).sum())
    band = None
    if n_found:
        band = [_band_quantile(vals, 0.16), _band_quantile(vals, 0.84)]
        band = [v if np.isfinite(v) else None for v in band]
    return {"n_resamples": N_BOOT, "fraction_crossing": n_found / N_BOOT,
            "fraction_below": float(np.mean(vals == -np.inf)) if vals.size else 0.0,
            "fraction_above": float(np.mean(vals == np.inf)) if vals.size else 0.0, "band": band}


def _crossing_record(groups, level: float, seed: int) -> dict:
    """The crossing with its bootstrap band: ``uncertainty_low``/``_high`` (None: unbounded on that
    side) and ``uncertainty``, half the band's width, only where both sides are bounded."""
    value, reason = crossing([float(np.median(x)) for x, _ in groups], [float(np.median(y)) for _, y in groups],
                             level)
    boot = _bootstrap(groups, level, seed) if groups else None
    low = high = unc = None
    if value is not None and boot and boot["band"]:
        lo, hi = boot["band"]
        low = None if lo is None else max(value - lo, 0.0)
        high = None if hi is None else max(hi - value, 0.0)
        if lo is not None and hi is not None:
            unc = 0.5 * (hi - lo)
    return {"level": level, "s_over_sqrt_b": value, "uncertainty": unc, "uncertainty_low": low,
            "uncertainty_high": high, "reason": reason, "bootstrap": boot}


def crossing_text(x: dict, ascii_only: bool = True) -> str:
    """'1.79 +0.05 -0.08' (or '+unbounded' with the share of resamples that do not reach the level)."""
    v = x["s_over_sqrt_b"]
    if v is None:
        return x["reason"]
    boot = x.get("bootstrap") or {}
    if not boot.get("band"):
        return f"{v:.2f} (no bootstrap band)"
    lo, hi = x.get("uncertainty_low"), x.get("uncertainty_high")
    minus = "-" if ascii_only else "\u2212"
    up = (f"+{hi:.2f}" if hi is not None
          else f"+unbounded ({boot.get('fraction_above', 0):.0%} of resamples do not reach it)")
    down = (f"{minus}{lo:.2f}" if lo is not None
            else f"{minus}unbounded ({boot.get('fraction_below', 0):.0%} of resamples start above it)")
    return f"{v:.2f} {up} {down}"


def _seed_values(points: list[dict], det: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(S/sqrt(B), Z) of the seeds of one point group where both exist."""
    pairs = [(p["s_over_sqrt_b"], p["detectors"][det].get(key)) for p in points if det in p["detectors"]]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    return np.array([a for a, _ in pairs], dtype=float), np.array([b for _, b in pairs], dtype=float)


#: What the bands span. A seed changes the training (seeds, folds) and which signal events are
#: injected, never the background events: background-only points of several seeds are one
#: background sample analysed several times, so their spread is not the data's fluctuation.
BAND = ("16-84% over seeds: a seed changes the training and the injected signal events, not the background "
        "events, so the background-only rows are one background sample analysed several times (their band is "
        "the training spread; calibrate on independent background samples)")


def band_text(points: list[dict]) -> str:
    """What the bands of ``points`` span: :data:`BAND`, or with ``injection.background_parts`` the
    independent background parts the seeds analysed."""
    parts = {tuple(p["background_part"]) for p in points if p.get("background_part")}
    if not parts:
        return BAND
    n_parts = max(P for _, P in parts)
    return (f"16-84% over seeds: seed k analyses part k mod {n_parts} of {n_parts} disjoint parts of the background "
            f"file (injection.background_parts), so the bands span the training, the injected signal events and "
            f"{len(parts)} independent background samples, each with 1/{n_parts} of the file's events")


def sensitivity_curves(points: list[dict], seed: int = 0) -> dict:
    """Per signal and detector: the curve (median and band over seeds per injected count) and crossings.

    ``points``: one record per (signal, count, seed) with ``s_over_sqrt_b`` and per detector
    ``z_best`` (local) and ``z_global``. Crossings of :data:`LEVELS` for the global and the
    local Z (:data:`CROSSING_METHOD`).
    """
    curves, crossings = [], []
    for sig in sorted({p["signal"] for p in points}):
        mine = [p for p in points if p["signal"] == sig]
        counts = sorted({p["n_inject"] for p in mine})
        for det in sorted({d for p in mine for d in p["detectors"]}):
            rows, groups = [], {"z_global": [], "z_best": []}
            for n in counts:
                grp = [p for p in mine if p["n_inject"] == n and det in p["detectors"]]
                if not grp:
                    continue
                row = {"n_inject": n, "n_seeds": len(grp),
                       "s_over_sqrt_b": seed_band(p["s_over_sqrt_b"] for p in grp)[0]}
                for key, name in (("z_global", "z_global"), ("z_best", "z_local")):
                    row[f"{name}_median"], row[f"{name}_band"] = seed_band(p["detectors"][det].get(key) for p in grp)
                    if (vals := _seed_values(grp, det, key))[1].size:
                        groups[key].append(vals)
                rows.append(row)
            curves.append({"signal": sig, "detector": det, "points": rows})
            for key, name in (("z_global", "global"), ("z_best", "local")):
                for level in LEVELS:
                    crossings.append({"signal": sig, "detector": det, "statistic": name}
                                     | _crossing_record(groups[key], level, seed))
    return {"curves": curves, "crossings": crossings, "levels": list(LEVELS), "band": band_text(points),
            "crossing_method": CROSSING_METHOD}


def _fmt(v, band=None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" + (f" [{band[0]:.2f},{band[1]:.2f}]" if band else "")


def format_sensitivity(sens: dict) -> str:
    """Plain-text tables: detector x S/sqrt(B) -> median global and local Z [16%,84%]; the crossings."""
    lines = [f"{'signal':<24} {'detector':<11} {'inj':>5} {'S/sqrtB':>7} {'seeds':>5}  "
             f"{'Z global med [16,84]':<22} {'Z local med [16,84]':<22}"]
    for c in sens["curves"]:
        for p in c["points"]:
            lines.append(f"{c['signal'].rsplit('/', 1)[-1][:24]:<24} {c['detector']:<11} {p['n_inject']:>5} "
                         f"{_fmt(p['s_over_sqrt_b']):>7} {p['n_seeds']:>5}  "
                         f"{_fmt(p['z_global_median'], p['z_global_band']):<22} "
                         f"{_fmt(p['z_local_median'], p['z_local_band']):<22}")
    lines.append("")
    lines.append(f"bands: {sens.get('band', BAND)}")
    lines.append("")
    lines.append(f"crossings ({sens['crossing_method']}):")
    for x in sens["crossings"]:
        what = f"S/sqrtB = {crossing_text(x)}" if x["s_over_sqrt_b"] is not None else x["reason"]
        lines.append(f"  {x['signal'].rsplit('/', 1)[-1][:24]:<24} {x['detector']:<11} {x['statistic']:<6} "
                     f"Z={x['level']:g}: {what}")
    return "\n".join(lines)
