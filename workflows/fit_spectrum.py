"""Fit any binned mjj spectrum with the GP and the dijet functions (sideband fit-spectrum).

Input: a CSV with columns ``low,high,count`` (bin edges in GeV) or ``center,width,count``,
rows in increasing mass, bins contiguous, counts >= 0, at least 6 bins.
Output: ``fit.json`` with, per model (``gp`` and ``dijet``), ``chi2``, ``ndf``,
``max_abs_pull``, ``pulls``, ``prediction`` and the parameters (``dijet``: ``n_params``, the
F-test choice among 3/4/5, and ``params``; ``gp``: its ``summary`` from
:mod:`sideband.pipeline.gp` - kernel, ``hyperparameters`` (also as ``params``), ``bounds``,
``at_bound``, ``warnings``, ``converged``), the GP scan of local significances, and a plot
of both fits with pulls.

chi2 uses the Poisson variance of the prediction (at least 1 per bin). The GP's ndf is
effective (bins minus the trace of its smoother, which counts the mean's parameters and
what the kernel bends); it is not an integer.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from sideband.pipeline.cache import atomic_path, write_json
from sideband.pipeline.exceptions import InputFileError

__all__ = ["fit_spectrum", "read_spectrum_csv"]

MIN_BINS = 6


def read_spectrum_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges and counts from a CSV (``low,high,count`` or ``center,width,count``)."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file; check --csv")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, expected a CSV file; pass the file with --csv")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a spreadsheet's BOM is not a column name
            reader = csv.DictReader(f)
            cols = [c.strip().lower() for c in (reader.fieldnames or [])]
            rows = []
            for line, r in enumerate(reader, start=2):
                if None in r:  # more fields than the header names
                    raise InputFileError(f"{path}: line {line} has more fields than the header {cols}; fix the CSV")
                rows.append({k.strip().lower(): v for k, v in r.items()})
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: not a text CSV (not UTF-8); pass a low,high,count CSV with --csv") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from None
    try:
        if {"low", "high", "count"} <= set(cols):
            lo = np.array([float(r["low"]) for r in rows])
            hi = np.array([float(r["high"]) for r in rows])
        elif {"center", "width", "count"} <= set(cols):
            c = np.array([float(r["center"]) for r in rows])
            w = np.array([float(r["width"]) for r in rows])
            lo, hi = c - w / 2, c + w / 2
        else:
            raise InputFileError(f"{path}: needs columns low,high,count or center,width,count; found {cols}")
        counts = np.array([float(r["count"]) for r in rows])
    except (ValueError, TypeError) as exc:
        raise InputFileError(f"{path}: a value is not a number ({exc}); fix the CSV") from None
    if len(lo) < MIN_BINS:
        raise InputFileError(f"{path}: {len(lo)} bins; a fit needs at least {MIN_BINS}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(np.isfinite(counts))):
        raise InputFileError(f"{path}: a value is not finite (nan or inf); fix the CSV")
    if np.any(hi <= lo):
        i = int(np.flatnonzero(hi <= lo)[0])
        raise InputFileError(f"{path}: data row {i + 1} has high {hi[i]:g} <= low {lo[i]:g}; each bin needs high > low")
    if np.any(np.diff(lo) <= 0):
        i = int(np.flatnonzero(np.diff(lo) <= 0)[0]) + 1
        raise InputFileError(f"{path}: rows must be in increasing mass order (data row {i + 1}: low {lo[i]:g} "
                             f"after {lo[i - 1]:g}); sort the CSV")
    if np.any(np.abs(lo[1:] - hi[:-1]) > 1e-6 * np.maximum(hi[:-1], 1)):
        raise InputFileError(f"{path}: bins must be contiguous (each low edge equal to the previous high edge)")
    if np.any(counts < 0):
        raise InputFileError(f"{path}: negative counts; counts must be >= 0")
    if np.median(hi) > 50_000:
        raise InputFileError(f"{path}: bin edges look like MeV (median {np.median(hi):.3g}); give GeV")
    return np.r_[lo, hi[-1]], counts


def _quality(counts, pred, ndf):
    pulls = (counts - pred) / np.sqrt(np.maximum(pred, 1.0))
    return {"chi2": float(np.sum(pulls**2)), "ndf": ndf, "max_abs_pull": float(np.max(np.abs(pulls))),
            "pulls": pulls.tolist(), "prediction": pred.tolist()}


def fit_spectrum(csv_path: str | Path, out_dir: str | Path, scan_step: float | None = None, seed: int = 0) -> dict:
    """Fit the spectrum of ``csv_path`` with the GP and the dijet functions; write fit.json and fit.png."""
    from sideband.pipeline.fits import fit_dijet_ftest
    from sideband.pipeline.gp import gp_predict, gp_scan

    from .search import check_output_dir

    edges, counts = read_spectrum_csv(csv_path)
    out = check_output_dir(Path(out_dir))  # before the fits: a bad --out costs nothing
    allb = np.ones(len(counts), bool)
    try:
        dijet = fit_dijet_ftest(edges, counts, allb)
        gp = gp_predict(edges, counts, allb, allb, seed=seed, reference=False)
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise InputFileError(f"{csv_path}: the spectrum cannot be fitted ({exc}); it needs more non-empty bins") from None
    centers = 0.5 * (edges[1:] + edges[:-1])
    step = scan_step or float(np.median(np.diff(edges))) * 2
    masses = np.arange(centers[2], centers[-3] + 1e-9, step)
    scan = gp_scan(gp, masses)
    summary = gp.summary()
    summary.pop("dijet_reference")
    summary["ndf"] = round(gp.ndf, 2)
    result = {
        "input": str(csv_path), "n_bins": len(counts), "range": [float(edges[0]), float(edges[-1])],
        "models": {
            "dijet": {**_quality(counts, dijet.expected, int(len(counts) - dijet.n_params)), "n_params": dijet.n_params,
                      "params": [float(p) for p in dijet.params], "converged": dijet.converged},
            "gp": {**_quality(counts, gp.expected, round(gp.ndf, 2)), **summary, "params": summary["hyperparameters"]},
        },
        "warnings": list(gp.warnings),
        "scan": [{"mass": p.mass, "z_local": p.z_local, "signal": p.signal, "signal_unc": p.signal_unc}
                 for p in scan],
    }
    write_json(out / "fit.json", result)
    _plot(edges, counts, dijet.expected, gp.expected, result, out / "fit.png")
    return result


def _plot(edges, counts, dijet, gp, result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    with plt.style.context(mplhep.style.CMS):
        fig, (ax, ap) = plt.subplots(2, 1, figsize=(9, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        c = 0.5 * (edges[1:] + edges[:-1])
        nz = counts > 0
        ax.errorbar(c[nz], counts[nz], yerr=np.sqrt(counts[nz]), fmt="ko", ms=3, label="data")
        d, g = result["models"]["dijet"], result["models"]["gp"]
        ax.stairs(dijet, edges, color="C0", label=f"dijet {d['n_params']}p: χ²/ndf {d['chi2']:.1f}/{d['ndf']}")
        ax.stairs(gp, edges, color="C1", ls="--", label=f"GP: χ²/ndf {g['chi2']:.1f}/{g['ndf']:.1f}")
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.3)
        ax.set_ylabel("Events / bin")
        ax.legend(fontsize=12)
        ap.stairs(np.asarray(d["pulls"]), edges, color="C0")
        ap.stairs(np.asarray(g["pulls"]), edges, color="C1", ls="--")
        ap.axhline(0, color="k", lw=0.8)
        ap.set_ylabel("Pull")
        ap.set_xlabel("m_jj [GeV]")
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
