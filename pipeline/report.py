"""Results file, terminal table and plots of a search."""

from __future__ import annotations

import json
import logging
import math
import platform
from pathlib import Path

import numpy as np

from .cache import atomic_path, write_json
from .scanplots import img_html as _img
from .scanplots import plot_sic_curves, plot_training, run_label

__all__ = ["write_results", "format_table", "format_signal_table", "format_summary", "fmt_value", "plot_spectra",
           "package_versions", "write_html_report", "RESULTS_SCHEMA_VERSION"]

log = logging.getLogger(__name__)
#: Version of results.json (pipeline/results.schema.json); 2: records, relative paths, models, ceilings.
RESULTS_SCHEMA_VERSION = 2


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


def fmt_value(v, spec: str, missing: str = "-") -> str:
    """``format(v, spec)``, or ``missing`` for None and non-finite floats."""
    return missing if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _ul(cl: float) -> str:
    """'UL95' for a 95% CL limit column (the run's stats.cl)."""
    return f"UL{100 * cl:g}"


def format_table(rows: list[dict], cl: float = 0.95) -> str:
    """A plain-text table, one line per window x detector x selection, with the sideband-fit p-value.

    Marks: ``!`` after a fit p-value below 0.01 (:data:`.verdict.FIT_P_MIN`), ``t`` after a Z
    from pseudo-experiments, ``>`` / ``<=`` before a global Z that is a bound; a legend line
    follows for each mark used.
    """
    from .verdict import FIT_P_MIN, poor_fit, z_global_text

    head = (f"{'window [GeV]':<13} {'detector':<11} {'sel':>7} {'n_sel':>8} {'B_exp (SR)':>16} "
            f"{'obs (SR)':>8} {'Z_local':>7} {'Z_glob':>7} {_ul(cl):>8} {_ul(cl) + ' exp':>8} {'fit p':>7}  fit")
    lines = [head, "-" * len(head)]
    for r in rows:
        b = r.get("n_expected_sr")
        bexp = "-" if b is None else f"{b:9.1f}±{r['n_expected_sr_unc']:<6.1f}"
        fit = r.get("fit") or {}
        fit_s = (f"{fit['n_params']}p chi2/ndf={fit['chi2']:.1f}/{fit['ndf']}" if fit.get("n_params") is not None
                 else f"chi2/ndf={fit['chi2']:.1f}/{fit['ndf']:.3g}" if fit else "")
        if r.get("status", "ok") != "ok":
            fit_s = (fit_s + "  " if fit_s else "") + f"[{r.get('status')}]"
        hidden = "blind" if r.get("n_observed_sr") is None else "-"
        zg = z_global_text(r, ".2f") or hidden
        pfit = fmt_value(fit.get("p_value"), ".2g") + ("!" if poor_fit(r) else "")
        lines.append(f"{r['window']:<13} {r['detector']:<11} {r['selection']:>7.3g} "
                     f"{fmt_value(r.get('n_selected'), '8d', hidden):>8} {bexp:>16} "
                     f"{fmt_value(r.get('n_observed_sr'), '8d', hidden):>8} {_z_text(r, hidden):>7} "
                     f"{zg:>7} "
                     f"{fmt_value(r.get('upper_limit'), '8.1f', hidden):>8} "
                     f"{fmt_value(r.get('upper_limit_expected'), '8.1f'):>8} {pfit:>7}  {fit_s}")
    if any(poor_fit(r) for r in rows):
        lines.append(f"!: sideband fit chi2 p-value < {FIT_P_MIN:g} (background model doubtful in this test)")
    if any(r.get("p_value_method") == "toys" for r in rows):
        lines.append("t: Z_local from pseudo-experiments of the whole background procedure (stats.p_value)")
    if any(r.get("z_global_is_bound") for r in rows):
        lines.append("> / <=: global Z is a bound (look-elsewhere toys ran out, or capped at the local Z)")
    return "\n".join(lines)


def _z_text(r: dict, hidden: str) -> str:
    z = fmt_value(r.get("z_local"), ".2f", hidden)
    return z + "t" if r.get("p_value_method") == "toys" and r.get("z_local") is not None else z


def format_summary(doc: dict) -> str:
    """The terminal summary of a search: the verdict sentence, then :func:`format_table` (and
    :func:`format_signal_table` with a signal model)."""
    from .verdict import confidence_level, verdict

    cl = confidence_level(doc)
    text = verdict(doc) + "\n\n" + format_table(doc["results"], cl)
    if doc.get("signal_model"):
        text += "\n\n" + format_signal_table(doc["results"], doc["signal_model"], cl)
    return text


def format_signal_table(rows: list[dict], info: dict, cl: float = 0.95) -> str:
    """The signal template per test: efficiency through the selection (SR, same threshold as
    the data), CLs limits on produced signal events (SR limit / efficiency) and the median
    expected discovery Z for ``info['signal_events']`` produced events."""
    head = (f"{'window [GeV]':<13} {'detector':<11} {'sel':>7} {'sig. eff.':>17} {'S exp (SR)':>10} "
            f"{'Z exp':>6} {_ul(cl) + ' prod':>10} {_ul(cl) + ' prod exp [-1s, +1s]':>30}")
    title = (f"signal model {info['path']}: {info['n_events']} template events; Z exp for "
             f"{info['signal_events']:g} produced signal events ({info['signal_events_from']}); "
             f"{_ul(cl)} prod: {100 * cl:g}% CL limits on produced signal events")
    lines = [title, head, "-" * len(head)]
    for r in rows:
        eff = r.get("signal_efficiency")
        eff_s = "-" if eff is None else f"{eff:.4f}±{r['signal_efficiency_unc']:.4f}"
        band = r.get("signal_upper_limit_expected_band") or [None] * 5
        exp = (f"{fmt_value(r.get('signal_upper_limit_expected'), '.4g')} [{fmt_value(band[1], '.4g')}, "
               f"{fmt_value(band[3], '.4g')}]")
        hidden = "blind" if r.get("n_observed_sr") is None else "-"
        lines.append(f"{r['window']:<13} {r['detector']:<11} {r['selection']:>7.3g} {eff_s:>17} "
                     f"{fmt_value(r.get('signal_expected_sr'), '10.1f'):>10} "
                     f"{fmt_value(r.get('signal_z_expected'), '6.2f'):>6} "
                     f"{fmt_value(r.get('signal_upper_limit'), '10.4g', hidden):>10} {exp:>30}"
                     + (f"  [{r['signal_note']}]" if r.get("signal_note") else ""))
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
                label = "no selection" if row["detector"] == "none" else f"top {row['selection']:.3g} of sidebands"
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
            run_label(ax)
            name = f"mjj_{rows[0]['detector']}_{rows[0]['window']}.png"
            with atomic_path(plot_dir / name, ".png") as tmp:
                fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
            plt.close(fig)
        written.append(str(Path("plots") / name))
    return written


# --------------------------------------------------------------------------- HTML report
_LEGEND = ("! sideband fit χ² p-value < 0.01: background model doubtful in this test (flagged in the verdict). "
           "Struck-through rows: no usable background fit, not in the look-elsewhere maximum. "
           "Bold row: the test the verdict quotes. Global Z prefixed by &gt; or ≤ is a bound.")
_SIGNAL_LEGEND = (" Signal model: eff. = template events in the SR passing the selection (the data's threshold) / "
                  "template events, ± binomial error; {ul} prod. = CLs limits on produced signal events (SR limit / "
                  "eff.); Z exp. = median expected discovery Z for {n} produced events.")
_SIGNAL_COLS = [("signal_efficiency", "sig. eff.", ".3g"), ("signal_upper_limit", "{ul} prod. obs.", ".4g"),
                ("signal_upper_limit_expected", "{ul} prod. exp.", ".4g"), ("signal_z_expected", "Z exp.", ".2f")]


def _table_html(rows: list[dict], best: dict | None = None, ceilings=(), blinded: bool = False,
                cl: float = 0.95) -> str:
    """All tests, with the fit p-value column and the flag classes (best, poor fit, failed, ceiling)."""
    import html

    from .verdict import poor_fit, problem, z_global_text

    cols = [("window", "window [GeV]", None), ("detector", "detector", None), ("selection", "selection", ".3g"),
            ("n_selected", "selected", "d"), ("n_expected_sr", "B exp. (SR)", ".1f"),
            ("n_expected_sr_unc", "± unc.", ".1f"), ("n_observed_sr", "observed (SR)", "d"),
            ("z_local", "Z local", ".2f"), ("upper_limit", "{ul} obs.", ".1f"),
            ("upper_limit_expected", "{ul} exp.", ".1f")]
    if any("z_global" in r for r in rows):
        cols.insert(8, ("z_global", "Z global", ".2f"))
    signal = [r for r in rows if r.get("signal_template_events") is not None]
    if signal:
        cols += _SIGNAL_COLS
    cols = [(key, label.format(ul=_ul(cl)), spec) for key, label, spec in cols]
    head = "".join(f"<th>{html.escape(c[1])}</th>" for c in cols) + "<th>fit p</th><th>fit</th>"
    body = []
    for r in rows:
        blind = r.get("n_observed_sr") is None
        cells = []
        for key, _, spec in cols:
            v = r.get(key)
            if v is None and blind and key in ("n_observed_sr", "z_local", "upper_limit", "n_selected", "z_global",
                                               "signal_upper_limit"):
                text = "blind"
            elif key == "signal_efficiency" and v is not None:
                text = f"{v:.3g} ± {r['signal_efficiency_unc']:.1g}"
            elif key.startswith("signal_") and v is None and r.get("signal_note"):
                text = f"<span title=\"{html.escape(r['signal_note'])}\">n/a</span>"
            elif key == "z_global":
                text = html.escape(z_global_text(r, ".2f") or "-")
            else:
                text = fmt_value(v, spec) if spec else html.escape(str(v))
            if key == "z_local" and v is not None and (r.get("p0_toys") or {}).get("n_toys"):
                text += f" <small>({r['p0_toys']['n_toys']} toys)</small>"
            cells.append("<td>" + text + "</td>")
        fit = r.get("fit") or {}
        cells.append(f"<td>{fmt_value(fit.get('p_value'), '.2g')}{' !' if poor_fit(r) else ''}</td>")
        desc = (f"{fit['n_params']}p, " if fit.get("n_params") is not None else f"{fit.get('background', '')}, "
                ) + f"χ²/ndf {fit['chi2']:.1f}/{fit['ndf']:.3g}" if fit else ""
        status = r.get("status", "ok")
        desc += "" if status == "ok" else (" " if desc else "") + f"[{html.escape(str(status))}]"
        cells.append(f"<td>{desc}</td>")
        cls = [c for c, on in (("best", r is best), ("poor", poor_fit(r)), ("failed", problem(r, blinded)),
                               ("ceiling", r.get("detector") in ceilings)) if on]
        body.append(f"<tr class=\"{' '.join(cls)}\">" if cls else "<tr>")
        body[-1] += "".join(cells) + "</tr>"
    legend = _LEGEND + (_SIGNAL_LEGEND.format(n=f"{signal[0]['signal_events']:g}", ul=_ul(cl)) if signal else "")
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<p class='legend'>{legend}</p>")


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:1.2em auto;color:#222}h1{margin:0 0 .4em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;"
        "text-align:right}th{background:#eee}figure{display:inline-block;margin:6px}"
        "img{max-width:520px}figure.wide img{max-width:1000px}figcaption{font-size:12px;color:#555}"
        "code{background:#f4f4f4}.verdict{font-size:1.3em;line-height:1.4;padding:.6em .9em;margin:.3em 0 1em;"
        "border-left:8px solid #2a7;background:#eef8f1}.verdict.excess{border-color:#d40;background:#fdeee8}"
        ".verdict.blind{border-color:#37b;background:#eef3fb}tr.best td{font-weight:bold;background:#fff6d5}"
        "tr.poor td{background:#fde8e8}tr.failed td{text-decoration:line-through;color:#888}"
        "tr.ceiling td{color:#666;font-style:italic}.legend{font-size:12px;color:#555}"
        "details{margin:.3em 0;border:1px solid #ddd;padding:.2em .6em}summary{cursor:pointer}"
        "summary.flag{color:#b00}")


def html_page(title: str, sections: list[tuple[str, str]], lead: str = "") -> str:
    """A self-contained page: title, ``lead`` (raw HTML, e.g. the verdict), then one h2 per section."""
    import html

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{lead}"]
    for head, content in sections:
        parts.append(f"<h2>{html.escape(head)}</h2>{content}")
    parts.append("</body></html>")
    return "".join(parts)


def _run_info_html(doc: dict) -> str:
    import html

    items = [f"mode: <b>{html.escape(str(doc.get('mode')))}</b>, seed {doc.get('seed')}, "
             f"{'<b>BLINDED</b> (signal-region data hidden; rerun with --unblind)' if doc.get('blinded') else 'unblinded'}",
             f"events: {doc.get('n_events')}, injected signal: {doc.get('n_injected')}"]
    for s in doc.get("inputs", []):
        items.append(f"input <code>{html.escape(s['path'])}</code> ({s.get('format')}, "
                     f"hash {s.get('content_hash', '')[:12]}, {s.get('n_kept')} events kept, "
                     f"{s.get('n_nonfinite_dropped', 0)} NaN/inf dropped)")
    if doc.get("ceilings"):
        items.append("ceilings (truth-based benchmarks, not searches: outside the verdict and the look-elsewhere "
                     "correction): " + ", ".join(html.escape(c) for c in doc["ceilings"]))
    v = doc.get("versions", {})
    items.append("versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def write_html_report(out_dir: Path) -> Path:
    """``report.html`` of a search: the verdict first, then significance and limits vs mass, the best
    window's spectra, the other windows collapsed, fit quality, all tests, run, SIC curves, training."""
    import html

    from .limitplot import limits_uri
    from .scanplots import figure_uri, plot_fit_quality, plot_significance, windows_html
    from .verdict import best_test, confidence_level, searches, verdict

    out_dir = Path(out_dir)
    doc = json.loads((out_dir / "results.json").read_text())
    training = json.loads((out_dir / "training.json").read_text()) if (out_dir / "training.json").exists() else []
    blinded = bool(doc.get("blinded"))
    rows = searches(doc)
    best = best_test(rows, blinded)
    text = verdict(doc)
    kind = "blind" if blinded else "excess" if text.startswith("Excess") else "none"
    lead = f"<p id='verdict' class='verdict {kind}'>{html.escape(text)}</p>"
    sections = []
    if not blinded and (fig := plot_significance(rows)) is not None:
        sections.append(("Significance vs mass", _img(figure_uri(fig), "local Z (top, solid) and global Z (bottom, "
                         "dashed) per detector and selection; red rings: sideband fit p < 0.01; ceilings not shown",
                                                        wide=True)))
    try:
        uri = limits_uri(rows, out_dir, blinded)
    except Exception as exc:  # noqa: BLE001 - an optional picture must not cost the run its report
        log.warning("limits plot failed: %r", exc)
        sections.append(("Upper limits vs mass", f"<p class='legend'>limits plot failed: {html.escape(repr(exc))}</p>"))
    else:
        if uri:
            sections.append(("Upper limits vs mass", _img(uri, "CLs upper limits on signal events: observed and "
                                                          "expected ±1σ/±2σ bands", wide=True)))
    sections += windows_html(doc, out_dir, rows, best)
    if (fig := plot_fit_quality(rows, blinded)) is not None:
        sections.append(("Sideband fit quality", _img(figure_uri(fig), "χ² p-value of each sideband fit vs mass",
                                                      wide=True)))
    sections.append(("All tests", _table_html(doc["results"], best, doc.get("ceilings") or (), blinded,
                                                  confidence_level(doc))))
    sections.append(("Run", _run_info_html(doc)))
    metrics = doc.get("detector_metrics") or []
    windows = sorted({m["window"] for m in metrics})
    sic_imgs = [_img(b, f"SIC curves, SR {w} GeV") for w in windows
                if (b := plot_sic_curves([m for m in metrics if m["window"] == w], f"SR {w} GeV"))]
    if sic_imgs:
        sections.append(("SIC curves (truth labels; dashed: supervised and idealized ceilings)", "".join(sic_imgs)))
    if (b := plot_training(training)):
        sections.append(("Training curves", _img(b, "validation loss per fold")))
    path = out_dir / "report.html"
    with atomic_path(path, ".html") as tmp:
        tmp.write_text(html_page("sideband search report", sections, lead=lead))
    return path
