"""The one-sentence answer of a search, read from its results.json.

:func:`verdict` turns a parsed ``results.json`` into the sentence that opens the terminal
summary and ``report.html``. Its rules:

* **Which tests count.** Only searches: rows of the detectors named in ``doc["ceilings"]``
  (truth-based benchmarks: supervised, idealized) never make or enter the verdict. A test
  whose background fit failed or did not converge (``status`` other than ``"ok"`` or
  ``"limit failed"``), or an unblinded test without a local Z, has no valid significance:
  it cannot be the best test, and the sentence names it ("N tests without a usable
  background fit, not in the look-elsewhere maximum: ...") instead of dropping it silently.
* **Best test** (:func:`best_test`). Unblinded: the usable test with the largest global Z
  (``z_global``), ties and runs without a look-elsewhere correction decided by the local Z.
  Blind, with a signal model (``--signal-model``): the usable test with the smallest median
  expected upper limit on *produced* signal events (``signal_upper_limit_expected``: the
  limit after selection over the template's efficiency through it). Without one there is no
  best blind test: a limit on events after selection always favours the tightest selection
  (its background is smallest whatever the signal does), so the sentence gives the range.
* **Threshold.** "Excess at ..." when the best global Z is >= 3 (:data:`Z_EXCESS`), otherwise
  "No significant excess: largest global Z ...". The wording comes from the numbers only.
  Without any global Z (look-elsewhere correction not run) the local Z is compared with the
  same threshold and the sentence says that no global Z exists.
* **A global Z that is a bound** (``z_global_is_bound``) prints as "> x", except the cap
  "at most the local Z" of :mod:`.lee` (an upper bound), which prints as "<= x". A global
  Z from the Gross-Vitells tail says so ("...; global Z from the Gross-Vitells tail").
* **Estimated resonance mass** (:func:`estimated_mass`): the Z^2-weighted mean of the SR
  centres of the usable tests of the best test's detector and selection whose SR overlaps or
  touches the best test's SR and whose local Z is > 0 (the best window alone when its
  neighbours show nothing). Z^2 is twice the log-likelihood ratio, so a neighbour that shares
  the excess pulls the estimate towards it; the SR width bounds the resolution.
* **Fitted signal** (:func:`fitted_signal`): n_observed_sr - n_expected_sr, with uncertainty
  sqrt(n_observed_sr + n_expected_sr_unc^2), in the best test's SR.
* **The other detectors in the same SR** (:func:`other_detectors`): for an excess, each other
  search detector's largest local Z among its usable tests of the best test's SR, so that an
  excess seen by one detector alone reads as such (an excess in one detector's loose selection
  only, such as one-flow CATHODE's 10% selection on background, docs/detectors.md, is weaker
  evidence than one that a second method sees too).
* **Fit quality.** Every usable test whose sideband fit has ``fit.p_value`` < 0.01
  (:data:`FIT_P_MIN`) is listed ("N sideband fits with p < 0.01: ..."); when the best test is
  one of them, its parenthesis says so.
* **Blind runs** (``doc["blinded"]``) never print an observed number: the number of tests
  and windows, the best expected limit on produced signal events with a signal model, else
  the range of expected limits after selection (events, at ``config.stats.cl``), and the fit
  flags.
"""

from __future__ import annotations

import math

__all__ = ["verdict", "best_test", "searches", "confidence_level", "problem", "observed_z", "poor_fit", "short_label",
           "mass_text", "estimated_mass", "fitted_signal", "other_detectors", "z_global_text", "window_summary",
           "FIT_P_MIN", "Z_EXCESS"]

FIT_P_MIN = 0.01  #: sideband fits with a chi2 p-value below this are flagged (here and in results' flags)
Z_EXCESS = 3.0  #: global Z from which the verdict reads "Excess at ..."
_USABLE = ("ok", "limit failed")  # statuses whose background prediction and Z are valid
_LISTED = 4  # tests named in a list before "..."


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def searches(doc: dict) -> list[dict]:
    """The rows of ``doc`` that are searches (not truth-based ceilings)."""
    ceilings = set(doc.get("ceilings") or ())
    return [r for r in doc.get("results", []) if r.get("detector") not in ceilings]


def confidence_level(doc: dict) -> float:
    """The run's ``stats.cl`` (0.95 where the document does not say)."""
    return _num(((doc.get("config") or {}).get("stats") or {}).get("cl")) or 0.95


def observed_z(row: dict) -> float | None:
    """The local Z the look-elsewhere correction compares with its toys: ``z_local_asymptotic``
    (the on/off statistic the toys draw) where it is a number, else ``z_local``; +inf is kept
    (the correction caps it); None when neither is a number."""
    for key in ("z_local_asymptotic", "z_local"):
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v):
            return float(v)
    return None


def problem(row: dict, blinded: bool = False) -> str | None:
    """Why ``row`` has no valid test (failed or unconverged fit, no Z), or None when it has one.

    The one predicate for "a trial of the look-elsewhere maximum" (unblinded): the correction
    counts exactly the rows without a problem, and the verdict names the others.
    """
    status = str(row.get("status", "ok"))
    if status not in _USABLE:
        return status
    if row.get("n_expected_sr") is None:
        return "no background prediction"
    if not blinded and observed_z(row) is None:
        return "no local Z"
    return None


def poor_fit(row: dict) -> bool:
    """True when the row's sideband fit has a chi2 p-value below :data:`FIT_P_MIN`."""
    p = _num((row.get("fit") or {}).get("p_value"))
    return p is not None and p < FIT_P_MIN


def short_label(row: dict) -> str:
    """'cwola 1%' for a selection, 'inclusive' for the unselected spectrum."""
    if row.get("detector") == "none":
        return "inclusive"
    return f"{row['detector']} {100 * float(row['selection']):.3g}%"


def mass_text(row: dict) -> str:
    """The row's signal region in TeV, e.g. '3.5-3.9 TeV'."""
    lo, hi = row["sr"]
    return f"{lo / 1000:.3g}-{hi / 1000:.3g} TeV"


def best_test(rows: list[dict], blinded: bool = False) -> dict | None:
    """The most significant usable test; blind: the one with the smallest expected limit on
    produced signal events (None without a signal model: see the module docstring)."""
    usable = [r for r in rows if problem(r, blinded) is None]
    if blinded:
        usable = [r for r in usable if _num(r.get("signal_upper_limit_expected")) is not None]
        return min(usable, key=lambda r: r["signal_upper_limit_expected"], default=None)
    return max(usable, key=_significance, default=None)


def _expected_limits(rows: list[dict], blinded: bool) -> tuple[float, float] | None:
    """Smallest and largest expected limit (signal events after selection) of the usable tests."""
    vals = [r["upper_limit_expected"] for r in rows
            if problem(r, blinded) is None and _num(r.get("upper_limit_expected")) is not None]
    return (min(vals), max(vals)) if vals else None


def _significance(row: dict) -> tuple[float, float]:
    """Sort key: global Z (-1 without one), then local Z."""
    g = _num(row.get("z_global"))
    return (-1.0 if g is None else g, row["z_local"])


def estimated_mass(rows: list[dict], best: dict) -> float:
    """Z^2-weighted mean SR centre of the best test's neighbours (GeV); see the module docstring."""
    lo, hi = best["sr"]
    near = [r for r in rows if r["detector"] == best["detector"] and r["selection"] == best["selection"]
            and problem(r) is None and r["sr"][0] <= hi and r["sr"][1] >= lo and r["z_local"] > 0]
    if not near:
        return 0.5 * (lo + hi)
    w = [r["z_local"] ** 2 for r in near]
    return sum(wi * 0.5 * (r["sr"][0] + r["sr"][1]) for wi, r in zip(w, near)) / sum(w)


def other_detectors(rows: list[dict], best: dict) -> list[dict]:
    """Per other search detector, its usable test of the best test's SR with the largest local Z
    (most significant first; the inclusive spectrum is not a detector)."""
    top: dict[str, dict] = {}
    for r in rows:
        if (r["detector"] in ("none", best["detector"]) or list(r["sr"]) != list(best["sr"])
                or problem(r) is not None):
            continue
        if r["detector"] not in top or r["z_local"] > top[r["detector"]]["z_local"]:
            top[r["detector"]] = r
    return sorted(top.values(), key=lambda r: -r["z_local"])


def fitted_signal(row: dict) -> tuple[float, float]:
    """Observed minus expected SR events and its uncertainty sqrt(n_obs + sigma_b^2)."""
    n, b, sb = row["n_observed_sr"], row["n_expected_sr"], row.get("n_expected_sr_unc") or 0.0
    return n - b, math.sqrt(max(n, 0) + sb**2)


def z_global_text(row: dict, spec: str = ".1f") -> str | None:
    """The global Z as printed: '4.9', '> 4.2' (lower bound), '<= 6.0' (capped at the local Z)."""
    z = _num(row.get("z_global"))
    if z is None:
        return None
    text = format(z, spec)
    method = str(row.get("z_global_method") or "")
    if row.get("z_global_is_bound"):
        return f"<= {text}" if "at most the local Z" in method else f"> {text}"
    return text


def _where(row: dict) -> str:
    """'cwola 1%, 3.5-3.9 TeV', plus the fit p-value when the fit is flagged and the method of a
    global Z from the Gross-Vitells tail."""
    text = f"{short_label(row)}, {mass_text(row)}"
    if poor_fit(row):
        text += f"; its sideband fit has p = {row['fit']['p_value']:.2g}"
    if z_global_text(row) and str(row.get("z_global_method") or "").startswith("asymptotic tail"):
        text += "; global Z from the Gross-Vitells tail"
    return text


def _listing(rows: list[dict], item) -> str:
    named = ", ".join(item(r) for r in rows[:_LISTED])
    return named + (f" and {len(rows) - _LISTED} more" if len(rows) > _LISTED else "")


def _flags(rows: list[dict], blinded: bool) -> list[str]:
    """The clauses on fit quality: flagged fits and tests without a usable fit."""
    out = []
    bad = sorted((r for r in rows if problem(r, blinded) is None and poor_fit(r)),
                 key=lambda r: r["fit"]["p_value"])
    if bad:
        out.append(f"{len(bad)} sideband fit{'s' if len(bad) > 1 else ''} with p < {FIT_P_MIN:g}: "
                   + _listing(bad, lambda r: f"{short_label(r)} {mass_text(r)} (p {r['fit']['p_value']:.1g})"))
    failed = [r for r in rows if problem(r, blinded) is not None]
    if failed:
        out.append(f"{len(failed)} test{'s' if len(failed) > 1 else ''} without a usable background fit, "
                   "not in the look-elsewhere maximum: "
                   + _listing(failed, lambda r: f"{short_label(r)} {mass_text(r)} ({problem(r, blinded)})"))
    return out


def _blind(doc: dict, rows: list[dict]) -> str:
    windows = sorted({tuple(r["sr"]) for r in rows})
    span = f"{windows[0][0] / 1000:.3g}-{max(w[1] for w in windows) / 1000:.3g} TeV"
    head = (f"Blind scan (signal-region data hidden): {len(rows)} tests in {len(windows)} "
            f"window{'s' if len(windows) > 1 else ''} ({span})")
    best = best_test(rows, blinded=True)
    cl = confidence_level(doc)
    if best is not None:
        head += (f"; best expected {100 * cl:.3g}% CL limit {best['signal_upper_limit_expected']:.3g} produced "
                 f"signal events ({short_label(best)}, {mass_text(best)}; signal efficiency "
                 f"{best['signal_efficiency']:.3g})")
    elif (span := _expected_limits(rows, True)) is not None:
        head += (f"; expected {100 * cl:.3g}% CL limits {span[0]:.3g}-{span[1]:.3g} signal events after selection "
                 "(a signal model, --signal-model, turns them into limits on produced events that rank the tests)")
    flags = _flags(rows, True)
    if not any(poor_fit(r) for r in rows if problem(r, True) is None):
        flags.insert(0, f"no sideband fit with p < {FIT_P_MIN:g}")
    return "; ".join([head, *flags]) + "."


def verdict(doc: dict) -> str:
    """The one sentence that answers the search (rules in the module docstring)."""
    rows = searches(doc)
    if not rows:
        return "No search test in this run (only ceilings or no results)."
    if doc.get("blinded"):
        return _blind(doc, rows)
    best = best_test(rows)
    flags = _flags(rows, False)
    if best is None:
        return "No test could be evaluated: " + "; ".join(flags) + "."
    has_global = _num(best.get("z_global")) is not None
    z_cut = best["z_global"] if has_global else best["z_local"]
    if z_cut >= Z_EXCESS:
        s, ds = fitted_signal(best)
        mass = estimated_mass(rows, best)
        z = f"local Z {best['z_local']:.1f}, " + (f"global Z {z_global_text(best)}" if has_global
                                                   else "no global Z computed")
        head = (f"Excess at {mass_text(best)}: {z} ({_where(best)}); fitted signal {s:.0f} ± {ds:.0f} events "
                f"in the SR, estimated resonance mass {mass / 1000:.3g} TeV")
        others = other_detectors(rows, best)
        if others:
            head += "; in the same SR " + ", ".join(
                f"{r['detector']} local Z {r['z_local']:.1f} ({100 * float(r['selection']):.3g}%)" for r in others)
    elif has_global:
        head = f"No significant excess: largest global Z {z_global_text(best)} ({_where(best)})"
    else:
        head = (f"No significant excess: largest local Z {best['z_local']:.1f} ({_where(best)}; "
                "no global Z computed)")
    return "; ".join([head, *flags]) + "."


def window_summary(rows: list[dict], blinded: bool) -> str:
    """One line for a window's <summary>: its best test and its fit flags."""
    text = f"SR {mass_text(rows[0])} ({rows[0]['window']} GeV)"
    best = best_test(rows, blinded)
    if best is not None and blinded:
        text += f": best expected limit {best['signal_upper_limit_expected']:.3g} produced events ({short_label(best)})"
    elif blinded and (span := _expected_limits(rows, True)) is not None:
        text += f": expected limits {span[0]:.3g}-{span[1]:.3g} events after selection"
    elif best is not None:
        text += f": max local Z {best['z_local']:.2f} ({short_label(best)})"
        text += f", global Z {z_global_text(best, '.2f')}" if z_global_text(best) else ""
    n_poor = sum(poor_fit(r) and problem(r, blinded) is None for r in rows)
    n_failed = sum(problem(r, blinded) is not None for r in rows)
    text += f"; {n_poor} fit{'s' * (n_poor > 1)} with p < {FIT_P_MIN:g}" if n_poor else ""
    return text + (f"; {n_failed} without a usable fit" if n_failed else "")
