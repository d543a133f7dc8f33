"""``report.html`` of an injection scan: sensitivity curves, crossings, the summary, one point in detail.

The sensitivity curves (:mod:`.sensitivity`) come first: per signal, the median global Z
(top) and local Z (bottom) over seeds with their 16-84% bands against the injected S/sqrt(B)
in the SR before selection, per detector, with the 3 and 5 sigma levels; then the table of
the S/sqrt(B) where the median crosses them, and how many tests the global Z counts.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from .cache import atomic_path
from .report import fmt_value, html_page
from .scanplots import _style, figure_uri, plot_sic_curves, plot_training
from .scanplots import img_html as _img
from .scanplots import png_b64 as _png_b64
from .sensitivity import BAND, crossing_text

__all__ = ["write_injection_report", "plot_sensitivity", "plot_signal_map"]

_XLABEL = "injected S/√B in the SR (before selection)"


def _colour(det: str, dets: list[str]) -> str:
    return "k" if det == "none" else f"C{dets.index(det) % 10}"


def plot_sensitivity(curves: list[dict], ceilings=()) -> str | None:
    """Global Z (top) and local Z (bottom) vs S/sqrt(B): median over seeds and 16-84% band per
    detector (inclusive test black, ceilings dashed), 3 and 5 sigma dotted. A data URI, or None."""
    curves = [c for c in curves if any(p["z_local_median"] is not None for p in c["points"])]
    if not curves:
        return None
    dets = sorted({c["detector"] for c in curves if c["detector"] != "none"})
    plt, style = _style()
    with style:
        fig, axes = plt.subplots(2, 1, figsize=(9, 10), sharex=True, gridspec_kw={"hspace": 0.08})
        top = 5.6
        for ax, key, ylabel in ((axes[0], "z_global", "global Z (blind scan)"), (axes[1], "z_local", "local Z")):
            for c in curves:
                pts = [p for p in c["points"] if p[f"{key}_median"] is not None and p["s_over_sqrt_b"] is not None]
                if not pts:
                    continue
                x = [p["s_over_sqrt_b"] for p in pts]
                med = np.array([p[f"{key}_median"] for p in pts])
                band = np.array([p[f"{key}_band"] for p in pts])
                colour = _colour(c["detector"], dets)
                ls = "--" if c["detector"] in ceilings else "-"
                label = "inclusive (no selection)" if c["detector"] == "none" else c["detector"]
                ax.plot(x, med, ls, marker="o", ms=5, color=colour, label=label if key == "z_global" else None)
                ax.fill_between(x, band[:, 0], band[:, 1], color=colour, alpha=0.15, lw=0)
                top = max(top, 1.1 * float(band[:, 1].max()))
            for level in (3, 5):
                ax.axhline(level, color="grey", lw=1, ls=":")
                ax.text(1.0, level, f" {level}σ", transform=ax.get_yaxis_transform(), va="center", fontsize=12,
                        color="grey")
            ax.set_ylabel(ylabel)
        for ax in axes:
            ax.set_ylim(0, top)
        axes[1].set_xlabel(_XLABEL)
        axes[0].legend(fontsize=11, title=f"signal {Path(curves[0]['signal']).name}", title_fontsize=10)
        return figure_uri(fig)


def plot_signal_map(sens: dict, signals: list[dict], level: float = 3.0) -> str | None:
    """The sensitivity map of a signal grid: per signal (ordered by its window, labelled with it)
    and detector, the injected S/sqrt(B) at which the median global Z crosses ``level``;
    signals whose curve never crosses are drawn as a triangle at the largest level tested. A
    data URI, or None for fewer than two signals."""
    if len(signals) < 2:
        return None
    found = {(x["signal"], x["detector"]): x for x in sens.get("crossings", [])
             if x["statistic"] == "global" and x["level"] == level}
    tested = {}
    for c in sens.get("curves", []):
        xs = [p["s_over_sqrt_b"] for p in c["points"] if p["s_over_sqrt_b"] is not None]
        tested[(c["signal"], c["detector"])] = max(xs, default=None)
    order = sorted(signals, key=lambda p: (p["signal_region"][0], p["signal"]))
    dets = sorted({d for _, d in found if d != "none"})
    if not dets:
        return None
    plt, style = _style()
    from matplotlib.lines import Line2D

    with style:
        fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(order)), 5.5))
        for j, det in enumerate(dets):
            off = (j - (len(dets) - 1) / 2) * 0.12
            for i, plan in enumerate(order):
                x = found.get((plan["signal"], det))
                if x is None:
                    continue
                if x["s_over_sqrt_b"] is not None:
                    lo, hi = x.get("uncertainty_low"), x.get("uncertainty_high")
                    ax.errorbar(i + off, x["s_over_sqrt_b"], yerr=[[lo or 0.0], [hi or 0.0]], fmt="o",
                                color=f"C{j % 10}")
                    if hi is None and (x.get("bootstrap") or {}).get("band"):  # upper side unbounded
                        ax.annotate("", xy=(i + off, x["s_over_sqrt_b"] * 1.25), xytext=(i + off, x["s_over_sqrt_b"]),
                                    arrowprops={"arrowstyle": "->", "color": f"C{j % 10}"})
                elif (top := tested.get((plan["signal"], det))) is not None:
                    ax.plot(i + off, top, marker="^", ms=10, color=f"C{j % 10}", ls="none")
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([f"{_signal_label(p['signal'])}\n{p['signal_region'][0]:g}-{p['signal_region'][1]:g}"
                            for p in order], fontsize=9, rotation=20)
        ax.set_ylabel(f"S/√B in the SR for global Z = {level:g}")
        ax.set_ylim(bottom=0)
        # one entry per detector, also for a detector drawn only as triangles (never crossing)
        handles = [Line2D([], [], marker="o", color=f"C{j % 10}", ls="none", label=det) for j, det in enumerate(dets)]
        ax.legend(handles=handles, fontsize=10, title="triangles: not reached up to the largest level",
                  title_fontsize=9)
        return figure_uri(fig)


def _signal_label(path: str) -> str:
    """A signal file's name without the layout suffix of ``sideband generate`` (``_features``)."""
    stem = Path(path).stem
    return stem.removesuffix("_features")


def _band_plot(points, summary_key, y_of, ylabel, *, ceilings=()):
    """Median over seeds with the 16-84% band, per detector, against S/sqrt(B) before selection."""
    plt, style = _style()
    dets = sorted({d for p in points for d in p["detectors"] if d != "none" or summary_key == "z"})
    with style:
        fig, ax = plt.subplots(figsize=(8, 6))
        for i, det in enumerate(dets):
            xs, med, lo, hi = [], [], [], []
            for n in sorted({p["n_inject"] for p in points}):
                grp = [p for p in points if p["n_inject"] == n and det in p["detectors"]]
                vals = [v for v in (y_of(p, det) for p in grp) if v is not None]
                if not vals:
                    continue
                xs.append(np.median([p["s_over_sqrt_b"] or 0 for p in grp]))
                med.append(np.median(vals))
                lo.append(np.percentile(vals, 16))
                hi.append(np.percentile(vals, 84))
            if xs:
                ax.plot(xs, med, "--" if det in ceilings else "-", marker="o", color=f"C{i}", label=det)
                ax.fill_between(xs, lo, hi, color=f"C{i}", alpha=0.15)
        ax.set_xlabel(_XLABEL)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=11)
        return _png_b64(fig)


def _crossing_text(x: dict | None) -> str:
    if x is None:
        return "-"
    if x["s_over_sqrt_b"] is None:
        frac = (x.get("bootstrap") or {}).get("fraction_crossing")
        extra = f" ({frac:.0%} of bootstrap resamples cross)" if frac else ""
        return f"<small>{html.escape(x['reason'])}{extra}</small>"
    return html.escape(crossing_text(x, ascii_only=False))


def _crossings_html(sens: dict) -> str:
    """Signal x detector: the S/sqrt(B) where the median global (and local) Z crosses 3 and 5."""
    found = {(x["signal"], x["detector"], x["statistic"], x["level"]): x for x in sens["crossings"]}
    levels = sens["levels"]
    head = ("<tr><th>signal</th><th>detector</th>" + "".join(f"<th>global Z = {lv:g}</th>" for lv in levels)
            + "".join(f"<th>local Z = {lv:g}</th>" for lv in levels) + "</tr>")
    body = []
    for sig, det in sorted({(k[0], k[1]) for k in found}):
        cells = [found.get((sig, det, stat, lv)) for stat in ("global", "local") for lv in levels]
        body.append(f"<tr><td>{html.escape(Path(sig).name)}</td><td>{html.escape(det)}</td>"
                    + "".join(f"<td>{_crossing_text(c)}</td>" for c in cells) + "</tr>")
    lee = sens.get("look_elsewhere") or {}
    windows = lee.get("scan_windows") or []
    note = (f"S/√B in the SR before selection at which the median Z over seeds crosses the level: "
            f"{html.escape(sens['crossing_method'])}. Global Z counts <b>{lee.get('n_tests')}</b> tests "
            f"(blind scan: {len(windows)} windows {html.escape(', '.join(windows))}). "
            f"{html.escape(lee.get('construction', ''))}")
    return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table><p class='legend'>{note}</p>"


def _band_text(med, band) -> str:
    return "-" if med is None else f"{med:.2f}" + (f" [{band[0]:.2f}, {band[1]:.2f}]" if band else "")


def _summary_html(summary: list[dict]) -> str:
    head = ("<table><thead><tr><th>signal</th><th>injected</th><th>S/B (SR)</th><th>S/√B (SR)</th>"
            "<th>detector</th><th>global Z median [16, 84%]</th><th>tests</th><th>local Z median [16, 84%]</th>"
            "<th>max SIC (median)</th><th>AUC</th><th>seeds</th></tr></thead><tbody>")
    body = "".join(
        f"<tr><td>{html.escape(Path(r['signal']).name)}</td><td>{r['n_inject']}</td>"
        f"<td>{fmt_value(r['s_over_b'], '.4f')}</td><td>{fmt_value(r['s_over_sqrt_b'], '.2f')}</td>"
        f"<td>{html.escape(r['detector'])}</td><td>{_band_text(r['z_global_median'], r['z_global_band'])}</td>"
        f"<td>{html.escape(str(r['n_tests_global']))}</td><td>{_band_text(r['z_best_median'], r['z_best_band'])}</td>"
        f"<td>{fmt_value(r['max_sic_median'], '.2f')}</td><td>{fmt_value(r['auc_median'], '.3f')}</td>"
        f"<td>{r['n_seeds']}</td></tr>" for r in summary)
    return head + body + "</tbody></table>"


def _detail_html(out_dir: Path, result: dict, docs: list[dict]) -> tuple[str, str]:
    """The largest injection's first seed: SIC curves, spectra, training curves."""
    best = max(range(len(docs)), key=lambda i: (docs[i]["point"]["n_inject"], -docs[i]["point"]["seed"]))
    doc, pdir = docs[best], Path(out_dir) / result["points_dirs"][best]
    detail = []
    if (b := plot_sic_curves(doc.get("detector_metrics") or [],
                             f"{doc['point']['n_inject']} injected, seed {doc['point']['seed']}")):
        detail.append(_img(b, "SIC curves with the ceilings"))
    for p in doc.get("plots", []):
        if (pdir / p).exists():
            detail.append(_img(base64.b64encode((pdir / p).read_bytes()).decode(), Path(p).stem))
    training = json.loads((pdir / "training.json").read_text()) if (pdir / "training.json").exists() else []
    if (b := plot_training(training)):
        detail.append(_img(b, "training curves"))
    return (f"Point in detail: {doc['point']['n_inject']} injected, seed {doc['point']['seed']} "
            f"({result['points_dirs'][best]}/report.html)", "".join(detail))


def write_injection_report(out_dir: Path, result: dict, docs: list[dict]) -> Path:
    """``report.html`` of an injection scan (curves, crossings, summary, panels, one point in detail)."""
    points = result["points"]
    ceilings = {c for d in docs for c in d.get("ceilings", [])}
    sens = result.get("sensitivity") or {}
    n_tests = (sens.get("look_elsewhere") or {}).get("n_tests")
    sections = []
    curves = sens.get("curves") or []
    imgs = [_img(uri, f"{Path(sig).name}: median and band ({sens.get('band', BAND)}); global Z over "
                      f"the blind scan ({n_tests} tests), local Z best over the selections; dashed: ceilings", wide=True)
            for sig in sorted({c["signal"] for c in curves})
            if (uri := plot_sensitivity([c for c in curves if c["signal"] == sig], ceilings))]
    if imgs:
        sections.append(("Sensitivity curves", "".join(imgs)))
    if (uri := plot_signal_map(sens, result.get("signals") or [])):
        sections.append(("Sensitivity map of the signal grid",
                         _img(uri, "per signal (its window below the name) and detector: the injected S/√B at "
                                   "which the median global Z crosses 3", wide=True)))
    if sens.get("crossings"):
        sections.append(("Crossing points (3σ and 5σ)", _crossings_html(sens)))
    sections.append(("Summary (median over seeds)", _summary_html(result["summary"])))
    panels = [
        _img(_band_plot(points, "sic", lambda p, d: p["detectors"][d].get("max_sic"), "max SIC", ceilings=ceilings),
             "max SIC vs injection (dashed: supervised and idealized ceilings)"),
        _img(_band_plot(points, "ul", lambda p, d: min((v for v in p["detectors"][d]["upper_limit"].values()
                                                        if v is not None), default=None),
                        "95% CLs upper limit on signal events (tightest selection)"),
             "upper limits vs injection"),
    ]
    sections.append(("SIC and limits", "".join(panels)))
    sections.append(_detail_html(Path(out_dir), result, docs))
    path = Path(out_dir) / "report.html"
    with atomic_path(path, ".html") as tmp:
        tmp.write_text(html_page("sideband injection scan", sections))
    return path
