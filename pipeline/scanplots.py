"""Pictures of a search for report.html: significance and fit quality against mass, the windows'
spectra (the best window open, the others in ``<details>``), SIC and training curves, and
compact image encoding.

Every figure of the HTML report is embedded as a data URI; :func:`figure_uri` writes both a
palette PNG and an SVG and keeps the smaller, :func:`compress_png` shrinks the spectrum PNGs
written by :func:`.report.plot_spectra` (a line plot has few colours: a 256-colour palette
is visually lossless and about three times smaller than RGBA). The limits-vs-mass picture is
:mod:`.limitplot`'s.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .verdict import FIT_P_MIN, poor_fit, problem, short_label, window_summary

__all__ = ["run_label", "compress_png", "png_uri", "figure_uri", "plot_significance", "plot_fit_quality",
           "plot_sic_curves", "plot_training", "spectrum_uris", "centre_tev", "png_b64", "img_html",
           "windows_html"]


def run_label(ax, fontsize: float = 16) -> None:
    """The experiment label above ``ax`` ("sideband" left, "13 TeV" right) as two plain texts:
    mplhep's ``exp_label`` draws the figure to place them and took 40% of each spectrum plot."""
    ax.text(0.0, 1.01, "sideband", transform=ax.transAxes, ha="left", va="bottom", fontweight="bold",
            fontsize=fontsize * 1.25)
    ax.text(1.0, 1.01, "13 TeV", transform=ax.transAxes, ha="right", va="bottom", fontsize=fontsize)


def compress_png(data: bytes) -> bytes:
    """``data`` re-encoded as an optimised 256-colour palette PNG, or unchanged if that is not smaller."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    pal = rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    colours = np.asarray(pal.getpalette()[:768], dtype=int).reshape(-1, 3)
    colours[np.argmax(colours.sum(axis=1))] = 255  # octree buckets average: keep the background pure white
    pal.putpalette(colours.astype(np.uint8).ravel().tolist())
    buf = io.BytesIO()
    pal.save(buf, format="PNG", optimize=True)
    small = buf.getvalue()
    return small if len(small) < len(data) else data


def png_uri(data: bytes) -> str:
    """A data URI of PNG bytes, compressed."""
    return "data:image/png;base64," + base64.b64encode(compress_png(data)).decode()


def figure_uri(fig, dpi: int = 80) -> str:
    """The figure as a data URI: palette PNG or SVG, whichever is smaller; closes the figure."""
    import matplotlib.pyplot as plt

    png, svg = io.BytesIO(), io.BytesIO()
    fonts = logging.getLogger("matplotlib.font_manager")
    level = fonts.level
    fonts.setLevel(logging.ERROR)  # mplhep's mathtext fontset names a 'cursive' family absent here
    try:
        fig.savefig(png, format="png", dpi=dpi, bbox_inches="tight")
        with plt.rc_context({"svg.fonttype": "none"}):  # text as text: much smaller than glyph paths
            fig.savefig(svg, format="svg", bbox_inches="tight")
    finally:
        fonts.setLevel(level)
    plt.close(fig)
    png_b = compress_png(png.getvalue())
    if len(svg.getvalue()) < len(png_b):
        return "data:image/svg+xml;base64," + base64.b64encode(svg.getvalue()).decode()
    return "data:image/png;base64," + base64.b64encode(png_b).decode()


def centre_tev(row: dict) -> float:
    return 0.5 * (row["sr"][0] + row["sr"][1]) / 1000.0


def _style():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    return plt, plt.style.context(mplhep.style.CMS)


def _lines(rows: list[dict]) -> dict[tuple[str, float], list[dict]]:
    """Rows grouped per (detector, selection), each sorted by window centre; inclusive first."""
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["detector"], float(r["selection"]))].append(r)
    keys = sorted(groups, key=lambda k: (k[0] != "none", k[0], -k[1]))
    return {k: sorted(groups[k], key=centre_tev) for k in keys}


def _line_style(key: tuple[str, float], detectors: list[str], selections: list[float]) -> dict:
    """Colour per detector (black: inclusive), marker per selection."""
    det, sel = key
    color = "k" if det == "none" else f"C{detectors.index(det) % 10}"
    markers = "osD^v<>p*h"
    return {"color": color, "marker": markers[selections.index(sel) % len(markers)] if det != "none" else "s"}


def plot_significance(rows: list[dict]):
    """Local Z (top, solid) and global Z (bottom, dashed) vs SR centre, one line per detector and
    selection, the 3 and 5 sigma levels marked; sideband fits with p < 0.01 ringed in red,
    tests without a usable fit left out (a gap). None without Z values or with fewer than 2 windows."""
    rows = [r for r in rows if problem(r) is None]
    if len({tuple(r["sr"]) for r in rows}) < 2:
        return None
    groups = _lines(rows)
    detectors = sorted({k[0] for k in groups if k[0] != "none"})
    selections = sorted({k[1] for k in groups}, reverse=True)
    has_global = any(r.get("z_global") is not None for r in rows)
    plt, style = _style()
    with style:
        fig, axes = plt.subplots(2 if has_global else 1, 1, figsize=(10, 8.5 if has_global else 5.5), sharex=True,
                                 squeeze=False, gridspec_kw={"hspace": 0.08})
        panels = [("z_local", "local Z", "-")] + ([("z_global", "global Z", "--")] if has_global else [])
        zmax = 0.0
        for ax, (key, ylabel, ls) in zip(axes[:, 0], panels):
            for gkey, grp in groups.items():
                pts = [(centre_tev(r), r.get(key), r) for r in grp if r.get(key) is not None]
                if not pts:
                    continue
                x = np.array([p[0] for p in pts])
                y = np.array([float(p[1]) for p in pts])
                zmax = max(zmax, float(y.max()))
                st = _line_style(gkey, detectors, selections)
                label = short_label({"detector": gkey[0], "selection": gkey[1]})
                ax.plot(x, y, ls, lw=1.4, ms=5, label=label if key == "z_local" else None, **st)
                bad = [i for i, p in enumerate(pts) if poor_fit(p[2])]
                if bad:
                    ax.plot(x[bad], y[bad], "o", ms=13, mfc="none", mec="red", mew=1.5)
            for level in (3, 5):
                ax.axhline(level, color="grey", lw=1, ls=":")
                ax.text(1.0, level, f" {level}σ", transform=ax.get_yaxis_transform(), va="center", fontsize=12,
                        color="grey")
            ax.set_ylabel(ylabel)
            ax.set_ylim(0, max(5.6, 1.1 * zmax))
        if any(poor_fit(r) for r in rows):
            axes[0, 0].plot([], [], "o", ms=10, mfc="none", mec="red", mew=1.5, label=f"fit p < {FIT_P_MIN:g}")
        axes[0, 0].legend(fontsize=11, loc="upper left", bbox_to_anchor=(1.06, 1.0), frameon=False)
        axes[-1, 0].set_xlabel("signal-region centre [TeV]")
        return fig


def plot_fit_quality(rows: list[dict], blinded: bool = False):
    """Sideband-fit chi2 p-value vs SR centre per detector and selection (log scale, the p = 0.01
    gate marked). None with fewer than 2 windows or no fit p-values."""
    rows = [r for r in rows if problem(r, blinded) is None and (r.get("fit") or {}).get("p_value") is not None]
    if len({tuple(r["sr"]) for r in rows}) < 2:
        return None
    groups = _lines(rows)
    detectors = sorted({k[0] for k in groups if k[0] != "none"})
    selections = sorted({k[1] for k in groups}, reverse=True)
    plt, style = _style()
    with style:
        fig, ax = plt.subplots(figsize=(10, 4.5))
        pmin = 1.0
        for gkey, grp in groups.items():
            x = [centre_tev(r) for r in grp]
            p = [max(float(r["fit"]["p_value"]), 1e-12) for r in grp]
            pmin = min(pmin, *p)
            ax.plot(x, p, "-", lw=1.2, ms=5, label=short_label({"detector": gkey[0], "selection": gkey[1]}),
                    **_line_style(gkey, detectors, selections))
        ax.axhline(FIT_P_MIN, color="red", lw=1, ls="--")
        ax.text(1.0, FIT_P_MIN, f" p = {FIT_P_MIN:g}", transform=ax.get_yaxis_transform(), va="center",
                fontsize=12, color="red")
        ax.set_yscale("log")
        ax.set_ylim(10 ** math.floor(math.log10(min(pmin, 1e-3))), 1.5)
        ax.set_ylabel("sideband fit p-value (χ²)")
        ax.set_xlabel("signal-region centre [TeV]")
        ax.legend(fontsize=11, loc="upper left", bbox_to_anchor=(1.12, 1.0), frameon=False)
        return fig


def png_b64(fig) -> str:
    """The figure as base64 palette PNG (closes it)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(compress_png(buf.getvalue())).decode()


def plot_sic_curves(metrics: list[dict], title: str = "") -> str | None:
    """SIC vs signal efficiency per detector; the ceilings dashed."""
    metrics = [m for m in metrics if m.get("sic")]
    if not metrics:
        return None
    plt, style = _style()
    with style:
        fig, ax = plt.subplots(figsize=(8, 6))
        for i, m in enumerate(metrics):
            ls = "--" if m.get("ceiling") else "-"
            sic = [np.nan if v is None else v for v in m["sic"]]
            ax.plot(m["eps_s"], sic, ls, color=f"C{i}",
                    label=f"{m['detector']} (AUC {m['auc']:.2f}, max {m['max_sic']:.1f})")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("signal efficiency ε_S")
        ax.set_ylabel("SIC = ε_S / √ε_B")
        ax.set_xlim(0, 1)
        ax.legend(fontsize=12, title=title, title_fontsize=12)
        return png_b64(fig)


def plot_training(training: list[dict]) -> str | None:
    """Validation loss per fold and detector (iterations for boosted trees, epochs for nets)."""
    curves = []
    for t in training:
        for k, fold in enumerate(t["folds"]):
            members = fold if isinstance(fold, list) else [fold]
            for mem in members:
                vl = mem.get("validation_loss") if isinstance(mem, dict) else None
                vl = vl or (mem.get("val") if isinstance(mem, dict) else None)
                if vl:
                    curves.append((f"{t['detector']} {t['window']}", k, vl))
    if not curves:
        return None
    plt, style = _style()
    with style:
        fig, ax = plt.subplots(figsize=(8, 5))
        names = sorted({c[0] for c in curves})
        for label, k, vl in curves:
            i = names.index(label)
            ax.plot(np.arange(1, len(vl) + 1), vl, color=f"C{i}", alpha=0.6, lw=1,
                    label=label if k == 0 else None)
        ax.set_xlabel("epoch / boosting iteration")
        ax.set_ylabel("validation loss")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=11)
        return png_b64(fig)


def spectrum_uris(doc: dict, out_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """Spectrum plots per window: [(detector, uri)], from ``doc["plots"]`` (mjj_<detector>_<window>.png)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for p in doc.get("plots", []):
        stem = Path(p).stem
        if stem.startswith("mjj_") and (out_dir / p).exists():
            det, window = stem[4:].rsplit("_", 1)
            out.setdefault(window, []).append((det, png_uri((out_dir / p).read_bytes())))
    return out


def img_html(src: str, caption: str, wide: bool = False) -> str:
    """A figure; ``src`` is a data URI or base64 PNG."""
    import html

    src = src if src.startswith("data:") else f"data:image/png;base64,{src}"
    cls = ' class="wide"' if wide else ""
    return (f'<figure{cls}><img src="{src}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def windows_html(doc: dict, out_dir: Path, rows: list[dict], best: dict | None) -> list[tuple[str, str]]:
    """The best test's window open (its detector's plot first), every other window in a <details>."""
    import html

    blinded = bool(doc.get("blinded"))
    spectra = spectrum_uris(doc, out_dir)
    order = sorted({(tuple(r["sr"]), r["window"]) for r in doc["results"]})
    first = best["window"] if best else (order[0][1] if order else None)
    out = []
    if first in spectra:
        lead_det = best["detector"] if best else "none"
        figs = sorted(spectra[first], key=lambda d: (d[0] != lead_det, d[0] != "none", d[0]))
        what = ("Window of the most significant test" if not blinded else
                "Window of the best expected sensitivity test" if best else "Lowest window")
        out.append((f"{what}: SR {first} GeV (spectra, background fits, pulls)",
                    "".join(img_html(uri, f"{det}, SR {first} GeV") for det, uri in figs)))
    others = []
    for _, w in order:
        if w == first or w not in spectra:
            continue
        wrows = [r for r in rows if r["window"] == w]
        summary = window_summary(wrows, blinded) if wrows else f"SR {w} GeV"
        flag = " class='flag'" if any(poor_fit(r) or problem(r, blinded) for r in wrows) else ""
        figs = "".join(img_html(uri, f"{det}, SR {w} GeV")
                       for det, uri in sorted(spectra[w], key=lambda d: d[0] != "none"))
        others.append(f"<details><summary{flag}>{html.escape(summary)}</summary>{figs}</details>")
    if others:
        out.append((f"Other windows ({len(others)}, collapsed)", "".join(others)))
    return out
