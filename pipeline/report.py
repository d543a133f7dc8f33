"""Results file, terminal table and plots of a search."""

from __future__ import annotations

import logging
import math
import platform
from pathlib import Path

import numpy as np

from .cache import atomic_path, write_json

__all__ = ["write_results", "format_table", "plot_spectra", "package_versions", "RESULTS_SCHEMA_VERSION"]

log = logging.getLogger(__name__)
RESULTS_SCHEMA_VERSION = 1


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("sideband", "numpy", "scipy", "scikit-learn", "torch", "pyhf", "dask", "distributed",
                "uproot", "awkward", "fastjet", "nflows", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _clean(obj):
    """JSON-safe copy: NaN/inf become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def write_results(out_dir: Path, rows: list[dict], meta: dict) -> Path:
    """Write ``results.json``: metadata plus one entry per window x detector x selection."""
    rows = sorted(rows, key=lambda r: (r["window"], r["detector"] != "none", r["detector"], -r["selection"]))
    doc = {"schema_version": RESULTS_SCHEMA_VERSION, **meta, "versions": package_versions(), "results": rows}
    return write_json(Path(out_dir) / "results.json", _clean(doc))


def _fmt(v, spec: str, missing: str = "-") -> str:
    return missing if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def format_table(rows: list[dict]) -> str:
    """A plain-text table, one line per window x detector x selection."""
    head = (f"{'window [GeV]':<13} {'detector':<11} {'sel':>7} {'n_sel':>8} {'B_exp (SR)':>16} "
            f"{'obs (SR)':>8} {'Z_local':>7} {'UL95':>8} {'UL95 exp':>8}  fit")
    lines = [head, "-" * len(head)]
    for r in rows:
        b = r.get("n_expected_sr")
        bexp = "-" if b is None else f"{b:9.1f}±{r['n_expected_sr_unc']:<6.1f}"
        fit = r.get("fit") or {}
        fit_s = (f"{fit['n_params']}p chi2/ndf={fit['chi2']:.1f}/{fit['ndf']}" if fit else r.get("status", ""))
        hidden = "blind" if r.get("n_observed_sr") is None else "-"
        lines.append(f"{r['window']:<13} {r['detector']:<11} {r['selection']:>7.3g} "
                     f"{_fmt(r.get('n_selected'), '8d', hidden):>8} {bexp:>16} "
                     f"{_fmt(r.get('n_observed_sr'), '8d', hidden):>8} {_fmt(r.get('z_local'), '7.2f', hidden):>7} "
                     f"{_fmt(r.get('upper_limit'), '8.1f', hidden):>8} "
                     f"{_fmt(r.get('upper_limit_expected'), '8.1f'):>8}  {fit_s}")
    return "\n".join(lines)


def plot_spectra(stats_outputs: list[dict], plot_dir: Path) -> list[str]:
    """One PNG per window x detector: selected mjj spectra, fits and pulls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for out in stats_outputs:
        rows, spectra = out["rows"], out["spectra"]
        if not rows:
            continue
        with plt.style.context(mplhep.style.CMS):
            fig, (ax, axp) = plt.subplots(2, 1, figsize=(9, 8), sharex=True,
                                          gridspec_kw={"height_ratios": [3, 1], "hspace": 0.05})
            for i, (row, spec) in enumerate(zip(rows, spectra)):
                edges = np.asarray(spec["edges"])
                counts = np.asarray([np.nan if c is None else c for c in spec["counts"]], dtype=float)
                color = f"C{i}"
                label = "no selection" if row["detector"] == "none" else f"top {row['selection']:.3g}"
                z = row.get("z_local")
                if z is not None:
                    label += f" (Z={z:.2f})"
                centers = 0.5 * (edges[1:] + edges[:-1])
                nz = np.nan_to_num(counts) > 0
                ax.errorbar(centers[nz], counts[nz], yerr=np.sqrt(counts[nz]), fmt="o", ms=3, color=color,
                            label=label)
                if spec["expected"] is not None:
                    exp = np.asarray(spec["expected"])
                    ax.stairs(exp, edges, color=color, lw=1.2)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        pull = np.where(exp > 0, (counts - exp) / np.sqrt(exp), 0.0)
                    axp.stairs(pull, edges, color=color, lw=1.2)
            sr = rows[0]["sr"]
            for a in (ax, axp):
                a.axvspan(sr[0], sr[1], color="grey", alpha=0.15, lw=0)
            ax.set_yscale("log")
            ax.set_ylim(bottom=0.3)
            ax.set_ylabel("Events / bin")
            ax.legend(fontsize=11, title=f"{rows[0]['detector']}, SR {rows[0]['window']} GeV", title_fontsize=11)
            axp.axhline(0, color="k", lw=0.8)
            axp.set_ylabel("Pull")
            axp.set_xlabel(r"$m_{jj}$ [GeV]")
            mplhep.label.exp_label(exp="sideband", llabel="", rlabel="13 TeV", ax=ax)
            name = f"mjj_{rows[0]['detector']}_{rows[0]['window']}.png"
            with atomic_path(plot_dir / name, ".png") as tmp:
                fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
            plt.close(fig)
        written.append(str(Path("plots") / name))
    return written
