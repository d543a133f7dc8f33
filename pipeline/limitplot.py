"""Upper limits on signal events against mass: observed over the expected band (Brazil plot).

One panel per detector and selection (rows: detectors, the inclusive test first; columns: the
detector's selections, tightest right),
sharing both axes: the expected median (dashed) inside its green (+-1 sigma) and yellow
(+-2 sigma) band, and the observed limit (solid, with markers) where the run is unblinded,
each at its window's centre. Limits are CLs upper limits on signal events in the SR
(:func:`.stats.discovery_and_limit`).
"""

from __future__ import annotations

import base64
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from .cache import atomic_path
from .scanplots import png_uri, run_label
from .verdict import problem

__all__ = ["plot_limits", "limits_uri"]


def _centre(row: dict) -> float:
    lo, hi = row["sr"]
    return 0.5 * (float(lo) + float(hi))


def _value(v) -> float:
    return float("nan") if v is None else float(v)


def _panels(rows: list[dict]) -> tuple[list[str], dict[str, list[float]], dict]:
    """Detectors (the inclusive test first), each one's selections (loosest first), rows per panel."""
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(str(r["detector"]), float(r.get("selection") or 1.0))].append(r)
    detectors = sorted({d for d, _ in groups}, key=lambda d: (d != "none", d))
    selections = {d: sorted({s for dd, s in groups if dd == d}, reverse=True) for d in detectors}
    return detectors, selections, groups


def plot_limits(rows: list[dict], path) -> Path:
    """Draw the limits of ``rows`` against window centre into ``path`` (PNG); returns the path.

    ``rows`` are test results with keys ``window``, ``sr`` [lo, hi], ``detector``,
    ``selection``, ``upper_limit`` (None when blind), ``upper_limit_expected`` and
    ``upper_limit_expected_band`` (expected limits at -2, -1, 0, +1, +2 sigma; without it only
    the median is drawn). Rows without an expected limit are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    rows = [r for r in rows if r.get("upper_limit_expected") is not None]
    if not rows:
        raise ValueError("no row has an expected limit: nothing to plot")
    detectors, selections, groups = _panels(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fonts = logging.getLogger("matplotlib.font_manager")
    level = fonts.level
    fonts.setLevel(logging.ERROR)  # mplhep's mathtext fontset names a 'cursive' family absent here
    try:
        with plt.style.context(mplhep.style.CMS):
            n_cols = max(len(v) for v in selections.values())
            fig, axes = plt.subplots(len(detectors), n_cols, squeeze=False, sharex=True, sharey=True,
                                     figsize=(4.2 * n_cols + 1.0, 3.4 * len(detectors) + 0.8))
            for i, det in enumerate(detectors):
                for j in range(n_cols):
                    if j < len(selections[det]):
                        sel = selections[det][j]
                        _panel(axes[i][j], sorted(groups[(det, sel)], key=_centre), det, sel)
                    else:
                        axes[i][j].set_visible(False)
            for ax in axes[-1]:
                ax.set_xlabel(r"$m_{jj}$ window centre [GeV]", fontsize=13)
            for row in axes:
                row[0].set_ylabel("CLs upper limit on signal events", fontsize=13)
            handles, labels = next(a for a in axes.ravel() if a.get_visible()).get_legend_handles_labels()
            fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=12, frameon=False,
                       bbox_to_anchor=(0.5, 1.0 + 0.04 / len(detectors)))
            run_label(axes[0][0], fontsize=13)
            fig.tight_layout()
            with atomic_path(path, ".png") as tmp:
                fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight")
            plt.close(fig)
    finally:
        fonts.setLevel(level)
    return path


def _panel(ax, group: list[dict], detector: str, selection: float) -> None:
    x = np.array([_centre(r) for r in group])
    band = np.array([[_value(v) for v in (r.get("upper_limit_expected_band") or [None] * 5)] for r in group])
    median = np.array([_value(r["upper_limit_expected"]) for r in group])
    observed = np.array([_value(r.get("upper_limit")) for r in group])
    if np.isfinite(band).all(axis=1).any():
        ok = np.isfinite(band).all(axis=1)
        ax.fill_between(x[ok], band[ok, 0], band[ok, 4], color="#ffcc00", lw=0, label=r"expected $\pm 2\sigma$")
        ax.fill_between(x[ok], band[ok, 1], band[ok, 3], color="#00cc00", lw=0, label=r"expected $\pm 1\sigma$")
    ax.plot(x, median, "k--", lw=1.5, label="expected (median)")
    if np.isfinite(observed).any():
        ax.plot(x, observed, "k-", marker="o", ms=4, lw=1.8, label="observed")
    ax.set_yscale("log")
    title = "no selection" if detector == "none" else f"{detector}, top {selection:.3g}"
    ax.set_title(title, fontsize=13)
    ax.tick_params(labelsize=11)


def limits_uri(rows: list[dict], out_dir: Path, blinded: bool) -> str | None:
    """The limits-vs-mass picture of the searches with limits as a data URI (written under
    ``out_dir/plots``); None for fewer than two windows."""
    rows = [r for r in rows if problem(r, blinded) is None and r.get("upper_limit_expected") is not None]
    if len({tuple(r["sr"]) for r in rows}) < 2:
        return None
    (Path(out_dir) / "plots").mkdir(parents=True, exist_ok=True)
    path = Path(plot_limits(rows, Path(out_dir) / "plots" / "limits.png"))
    if path.suffix == ".svg":
        return "data:image/svg+xml;base64," + base64.b64encode(path.read_bytes()).decode()
    return png_uri(path.read_bytes())
