"""The verdict sentence, the terminal table and report.html of a scan, read as a physicist would.

Synthetic results documents: 10 overlapping windows x (inclusive + 2 detectors x 3
selections) + one truth-based ceiling, with an injected excess (cwola 0.2%, SR 3.5-3.9 TeV),
one poor sideband fit and one failed fit, written through the real writers
(``plot_spectra``, ``write_results``) so that report.html has its real size.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from sideband.pipeline.report import format_summary, format_table, plot_spectra, write_html_report, write_results
from sideband.pipeline.scanplots import compress_png, plot_significance
from sideband.pipeline.verdict import best_test, estimated_mass, fitted_signal, mass_text, problem, short_label, verdict

WINDOWS = [(lo, lo + 400.0) for lo in np.arange(2900.0, 4900.0, 200.0)]  # 10 overlapping windows, 2.9-5.1 TeV
SELECTIONS = (0.1, 0.01, 0.002)
EXCESS = ("cwola", 0.002, "3500-3900")
POOR = ("cathode", 0.01, "3100-3500")
FAILED = ("cathode", 0.1, "4300-4700")
EDGES = np.arange(2800.0, 6001.0, 100.0)


def _name(lo, hi):
    return f"{lo:g}-{hi:g}"


def _bkg(eff: float) -> np.ndarray:
    """Expected events per bin of a falling dijet-like spectrum (500k events) after a selection ``eff``."""
    x = 0.5 * (EDGES[1:] + EDGES[:-1]) / 13000.0
    shape = (1 - x) ** 8 / x**4
    return 5.0e5 * eff * shape / shape.sum()


def _row(window, det, sel, *, blinded, z=0.3, b=None, p_fit=0.4):
    lo, hi = window
    sr_bins = (EDGES[:-1] >= lo) & (EDGES[1:] <= hi)
    b = float(_bkg(sel)[sr_bins].sum()) if b is None else b
    n_obs = int(round(b))
    row = {
        "window": _name(lo, hi), "sr": [lo, hi], "detector": det, "selection": sel,
        "n_selected": None if blinded else int(round(b * 4)), "n_selected_sidebands": int(round(b * 3)),
        "n_observed_sr": None if blinded else n_obs, "n_expected_sr": b, "n_expected_sr_unc": 0.05 * b + 1.0,
        "z_local": None if blinded else z, "z_local_asymptotic": None if blinded else z,
        "p0": None if blinded else 0.3, "p_value_method": None if blinded else "asymptotic",
        "upper_limit": None if blinded else 2.0 * np.sqrt(b) + 3, "upper_limit_expected": 2.0 * np.sqrt(b) + 3,
        "upper_limit_expected_band": [f * (2.0 * np.sqrt(b) + 3) for f in (0.55, 0.75, 1.0, 1.4, 1.9)],
        "fit": {"function": "dijet", "n_params": 4, "params": [1.0, 2.0, 3.0, 4.0], "chi2": 24.0, "ndf": 24,
                "p_value": p_fit, "converged": True, "message": "ok", "background": "dijet"},
        "status": "ok", "n_signal_sr_truth": None, "gp": None,
    }
    if not blinded:
        row.update(p_global=0.9, z_global=0.0, z_global_method="toys", z_global_is_bound=False)
    return row


def _scan_rows(blinded: bool) -> list[dict]:
    rows = []
    for w in WINDOWS:
        name = _name(*w)
        rows.append(_row(w, "none", 1.0, blinded=blinded, z=0.1))
        for det in ("cwola", "cathode"):
            for sel in SELECTIONS:
                rows.append(_row(w, det, sel, blinded=blinded, z=0.2 + 0.1 * (sel == 0.01),
                                 p_fit=0.004 if (det, sel, name) == POOR else 0.4))
        rows.append(_row(w, "supervised", 0.01, blinded=blinded, z=0.5))
    ex = _find(rows, *EXCESS)
    if not blinded:
        ex.update(n_expected_sr=60.0, n_expected_sr_unc=5.0, n_observed_sr=130, z_local=6.0,
                  z_local_asymptotic=6.0, z_global=4.9, p_global=4.8e-7, upper_limit=95.0)
        # the neighbour below shares part of the excess, the one above does not (mass estimate)
        _find(rows, "cwola", 0.002, "3300-3700").update(z_local=3.0, z_global=1.1)
        _find(rows, "cwola", 0.002, "3700-4100").update(z_local=0.0)
        _find(rows, "supervised", 0.01, "3500-3900").update(z_local=9.0, z_global=8.0)  # a ceiling: never the verdict
    failed = _find(rows, *FAILED)
    failed.update(n_expected_sr=None, n_expected_sr_unc=None, z_local=None, z_local_asymptotic=None, p0=None,
                  upper_limit=None, upper_limit_expected=None, upper_limit_expected_band=None, fit=None,
                  status="fit failed: singular covariance", z_global=None, p_global=None)
    for k in ("z_global_method", "z_global_is_bound"):
        failed.pop(k, None)
    return rows


def _find(rows, det, sel, window):
    (row,) = [r for r in rows if r["detector"] == det and r["selection"] == sel and r["window"] == window]
    return row


def _write_scan(out: Path, blinded: bool) -> Path:
    """results.json, spectrum plots and report.html of the synthetic scan in ``out``.

    plot_spectra draws two windows (the excess and one other, ~0.5 s a plot); the other
    windows get copies of the second one's files, so report.html has its real size.
    """
    rows = _scan_rows(blinded)
    shown = []
    for w in (WINDOWS[3], WINDOWS[0]):
        sr_bins = (EDGES[:-1] >= w[0]) & (EDGES[1:] <= w[1])
        for det in ("none", "cwola", "cathode", "supervised"):
            wrows = [r for r in rows if r["detector"] == det and r["window"] == _name(*w)]
            spectra = []
            for r in wrows:
                exp = _bkg(r["selection"])
                counts = np.random.default_rng(len(shown)).poisson(exp)
                if r["detector"] == EXCESS[0] and r["selection"] == EXCESS[1] and r["window"] == EXCESS[2]:
                    counts[(EDGES[:-1] >= 3600) & (EDGES[1:] <= 3800)] += 35
                spectra.append({"edges": EDGES.tolist(),
                                "counts": [None if blinded and s else int(c) for c, s in zip(counts, sr_bins)],
                                "expected": None if r["fit"] is None else exp.tolist()})
            shown.append({"rows": wrows, "spectra": spectra})
    plots = plot_spectra(shown, out / "plots")
    for w in WINDOWS[1:3] + WINDOWS[4:]:
        for det in ("none", "cwola", "cathode", "supervised"):
            src = out / "plots" / f"mjj_{det}_{_name(*WINDOWS[0])}.png"
            shutil.copy(src, out / "plots" / f"mjj_{det}_{_name(*w)}.png")
            plots.append(f"plots/mjj_{det}_{_name(*w)}.png")
    meta = {"mode": "search", "seed": 1, "blinded": blinded, "config": {"stats": {"cl": 0.95}},
            "windows": [{"name": _name(*w), "sr": list(w), "sb": [2800.0, 6000.0]} for w in WINDOWS],
            "inputs": [], "n_events": 10**6, "n_injected": 0, "event_table": "t.parquet", "models": [],
            "ceilings": ["supervised"], "plots": plots, "detector_metrics": [], "look_elsewhere": None}
    write_results(out, rows, meta)
    return write_html_report(out)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    out = tmp_path_factory.mktemp("scan")
    return out, _write_scan(out, blinded=False)


@pytest.fixture(scope="module")
def blind_scan(tmp_path_factory):
    out = tmp_path_factory.mktemp("blind")
    return out, _write_scan(out, blinded=True)


def _doc(blinded=False):
    return {"blinded": blinded, "ceilings": ["supervised"], "config": {"stats": {"cl": 0.95}},
            "results": _scan_rows(blinded)}


# ----------------------------------------------------------------------------- the verdict
def test_verdict_names_the_excess_its_mass_and_signal():
    doc = _doc()
    text = verdict(doc)
    assert text.startswith("Excess at 3.5-3.9 TeV: local Z 6.0, global Z 4.9 (cwola 0.2%, 3.5-3.9 TeV); "
                           "fitted signal 70 ± 12 events in the SR, estimated resonance mass 3.66 TeV;"), text
    # 70 = 130 - 60; 12 = sqrt(130 + 5^2); mass: Z^2-weighted (36 x 3.7 + 9 x 3.5) / 45 TeV
    assert fitted_signal(_find(doc["results"], *EXCESS)) == pytest.approx((70.0, np.sqrt(155.0)))
    assert estimated_mass(doc["results"], _find(doc["results"], *EXCESS)) == pytest.approx(3660.0, abs=1.0)
    assert "1 sideband fit with p < 0.01: cathode 1% 3.1-3.5 TeV (p 0.004)" in text
    assert ("1 test without a usable background fit, not in the look-elsewhere maximum: cathode 10% 4.3-4.7 TeV "
            "(fit failed: singular covariance)") in text
    assert "supervised" not in text and text.endswith(".") and "\n" not in text


def test_verdict_says_what_the_other_detectors_read_in_the_excess_sr():
    # An excess one detector alone sees reads differently from one a second method confirms:
    # the sentence gives each other search detector's largest local Z in the same SR.
    doc = _doc()
    text = verdict(doc)
    assert "estimated resonance mass 3.66 TeV; in the same SR cathode local Z 0.3 (1%);" in text
    _find(doc["results"], "cathode", 0.1, "3500-3900").update(z_local=4.2, z_global=2.5)
    _find(doc["results"], "cathode", 0.01, "3300-3700").update(z_local=7.0)  # another SR: not this excess's
    text = verdict(doc)
    assert "; in the same SR cathode local Z 4.2 (10%);" in text
    assert "supervised" not in text  # a ceiling (local Z 9.0 in this SR) never corroborates
    _find(doc["results"], "cathode", 0.1, "3500-3900").update(status="fit not converged")
    assert "in the same SR cathode local Z 0.3 (1%);" in verdict(doc)  # unusable tests do not count
    doc["results"] = [r for r in doc["results"] if r["detector"] != "cathode"]
    assert "in the same SR" not in verdict(doc)  # one detector: nothing to compare with


def test_verdict_below_threshold_says_no_significant_excess():
    doc = _doc()
    ex = _find(doc["results"], *EXCESS)
    ex.update(z_local=2.1, z_global=0.9)
    _find(doc["results"], "cwola", 0.002, "3300-3700").update(z_local=1.5, z_global=0.4)
    assert verdict(doc).startswith("No significant excess: largest global Z 0.9 (cwola 0.2%, 3.5-3.9 TeV);")
    ex.update(z_global=2.99)
    assert verdict(doc).startswith("No significant excess: largest global Z 3.0")  # 2.99 rounds, the rule does not
    ex.update(z_global=3.0)
    assert verdict(doc).startswith("Excess at 3.5-3.9 TeV")


def test_verdict_ceilings_never_decide():
    doc = _doc()
    for r in doc["results"]:
        if r["detector"] != "supervised":
            r.update(z_local=0.2, z_global=0.0)
    text = verdict(doc)
    assert text.startswith("No significant excess: largest global Z 0.0") and "supervised" not in text


def test_verdict_flags_the_best_test_with_a_poor_fit():
    doc = _doc()
    _find(doc["results"], *EXCESS)["fit"]["p_value"] = 0.003
    text = verdict(doc)
    assert "(cwola 0.2%, 3.5-3.9 TeV; its sideband fit has p = 0.003)" in text
    assert "2 sideband fits with p < 0.01: cwola 0.2% 3.5-3.9 TeV (p 0.003), cathode 1% 3.1-3.5 TeV" in text


def test_failed_fit_is_never_the_best_test_and_is_named():
    doc = _doc()
    stale = _find(doc["results"], "cwola", 0.1, "4500-4900")
    stale.update(status="fit not converged", z_local=8.0, z_global=7.0)  # a number that must not count
    assert best_test(doc["results"]) is _find(doc["results"], "supervised", 0.01, "3500-3900")
    assert best_test([r for r in doc["results"] if r["detector"] != "supervised"]) is _find(doc["results"], *EXCESS)
    text = verdict(doc)
    assert text.startswith("Excess at 3.5-3.9 TeV: local Z 6.0, global Z 4.9")
    assert "2 tests without a usable background fit" in text and "cwola 10% 4.5-4.9 TeV (fit not converged)" in text


def test_verdict_global_bounds_and_methods():
    doc = _doc()
    ex = _find(doc["results"], *EXCESS)
    ex.update(z_global=3.9, z_global_is_bound=True, z_global_method="bound: fewer than 1 in 2000000 toys")
    assert "global Z > 3.9 (cwola 0.2%" in verdict(doc)
    ex.update(z_global=4.4, z_global_is_bound=False,
              z_global_method="asymptotic tail (Gross-Vitells, fitted on 250000 toys)")
    assert "global Z 4.4 (cwola 0.2%, 3.5-3.9 TeV; global Z from the Gross-Vitells tail);" in verdict(doc)
    ex.update(z_global=6.0, z_global_is_bound=True, z_global_method="bound: at most the local Z (...)")
    assert "global Z <= 6.0" in verdict(doc)


def test_verdict_without_look_elsewhere_uses_local_z_and_says_so():
    doc = _doc()
    for r in doc["results"]:
        r.pop("z_global", None)
    text = verdict(doc)
    assert text.startswith("Excess at 3.5-3.9 TeV: local Z 6.0, no global Z computed (cwola 0.2%")
    _find(doc["results"], *EXCESS)["z_local"] = 1.0
    _find(doc["results"], "cwola", 0.002, "3300-3700")["z_local"] = 0.5
    assert verdict(doc).startswith("No significant excess: largest local Z 1.0 (cwola 0.2%, 3.5-3.9 TeV; "
                                   "no global Z computed)")


def test_blind_verdict_reveals_no_observed_number():
    doc = _doc(blinded=True)
    text = verdict(doc)
    # without a signal model no test is "best": a limit after selection always favours the tightest cut
    usable = [r for r in doc["results"] if r["detector"] != "supervised" and r["upper_limit_expected"]
              and problem(r, True) is None]
    lims = sorted(r["upper_limit_expected"] for r in usable)
    assert text.startswith(f"Blind scan (signal-region data hidden): 70 tests in 10 windows (2.9-5.1 TeV); "
                           f"expected 95% CL limits {lims[0]:.3g}-{lims[-1]:.3g} signal events after selection "
                           "(a signal model"), text
    assert "1 sideband fit with p < 0.01: cathode 1% 3.1-3.5 TeV" in text and "1 test without a usable" in text
    assert " Z " not in text and "Excess" not in text and "observed" not in text
    # with one, the best test is the one with the smallest limit on produced events, not after selection
    for r in usable:
        r["signal_efficiency"] = 0.5 if r["selection"] == 0.1 else 0.01
        r["signal_upper_limit_expected"] = r["upper_limit_expected"] / r["signal_efficiency"]
    best = min(usable, key=lambda r: r["signal_upper_limit_expected"])
    assert best["selection"] == 0.1 and best is not min(usable, key=lambda r: r["upper_limit_expected"])
    assert f"best expected 95% CL limit {best['signal_upper_limit_expected']:.3g} produced signal events " \
           f"({short_label(best)}, {mass_text(best)}; signal efficiency 0.5)" in verdict(doc)
    for r in doc["results"]:
        r["fit"] and r["fit"].update(p_value=0.5)
    assert "no sideband fit with p < 0.01" in verdict(doc)


def test_no_search_rows():
    assert verdict({"results": [], "ceilings": []}).startswith("No search test")


# ----------------------------------------------------------------------------- terminal table
def test_format_table_has_fit_p_flags_and_legend():
    doc = _doc()
    _find(doc["results"], *EXCESS).update(z_global_is_bound=True, z_global_method="bound: fewer than 1 in 10 toys")
    text = format_table(doc["results"])
    lines = text.splitlines()
    assert "fit p" in lines[0]
    poor = [ln for ln in lines if ln.startswith("3100-3500") and " cathode " in ln and "0.01 " in ln]
    assert len(poor) == 1 and "0.004!" in poor[0]
    assert sum("!" in ln for ln in lines[2:]) == 2  # the flagged row and its legend line
    assert any(ln.startswith("!: sideband fit chi2 p-value < 0.01") for ln in lines)
    assert "> 4.90" in text and any(ln.startswith("> / <=:") for ln in lines)
    assert "[fit failed: singular covariance]" in text
    summary = format_summary(doc)
    assert summary.startswith("Excess at 3.5-3.9 TeV") and summary.endswith(text)


def test_format_table_without_flags_has_no_legend():
    rows = [r for r in _scan_rows(False) if r["window"] == "2900-3300"]
    text = format_table(rows)
    assert "!" not in text and len(text.splitlines()) == 2 + len(rows)
    assert "UL95 exp" in text.splitlines()[0]
    assert "UL90 exp" in format_table(rows, cl=0.9).splitlines()[0]  # the run's stats.cl, not a fixed 95


# ----------------------------------------------------------------------------- plots
def test_significance_plot_has_one_line_per_test_and_sigma_levels():
    import matplotlib.pyplot as plt

    rows = [r for r in _scan_rows(False) if r["detector"] != "supervised"]
    fig = plot_significance(rows)
    try:
        top, bottom = fig.axes
        curves = [ln for ln in top.lines if not ln.get_label().startswith("_") and len(ln.get_xdata())]
        assert len(curves) == 7  # inclusive + 2 detectors x 3 selections
        for ax in (top, bottom):
            assert sorted(ln.get_ydata()[0] for ln in ax.lines if ln.get_linestyle() == ":") == [3, 5]
        assert all(ln.get_linestyle() == "-" for ln in curves)
        assert sum(ln.get_linestyle() == "--" for ln in bottom.lines) == 7  # global Z dashed
        assert len(top.get_legend().get_texts()) == 8  # 7 tests + the red ring of a poor fit
        cw = [ln for ln in curves if ln.get_label() == "cwola 0.2%"][0]
        assert max(cw.get_ydata()) == 6.0 and len(cw.get_xdata()) == 10
        cath = [ln for ln in curves if ln.get_label() == "cathode 10%"][0]
        assert len(cath.get_xdata()) == 9  # the failed fit is a gap, not a zero
    finally:
        plt.close(fig)
    assert plot_significance([r for r in rows if r["window"] == "3500-3900"]) is None


def test_compress_png_is_smaller_and_readable(scan):
    from PIL import Image

    out, _ = scan
    raw = (out / "plots" / "mjj_cwola_3500-3900.png").read_bytes()
    small = compress_png(raw)
    assert len(small) < 0.7 * len(raw)
    with Image.open(io.BytesIO(raw)) as a, Image.open(io.BytesIO(small)) as b:
        assert a.size == b.size
        diff = np.abs(np.asarray(a.convert("RGB"), float) - np.asarray(b.convert("RGB"), float))
        assert diff.mean() < 3.0
        assert b.convert("RGB").getpixel((3, 3)) == a.convert("RGB").getpixel((3, 3)) == (255, 255, 255)


# ----------------------------------------------------------------------------- report.html
def _images(page: str) -> list[tuple[str, bytes]]:
    return [(m.group(1), base64.b64decode(m.group(2)))
            for m in re.finditer(r'<img src="data:([a-z/+]+);base64,([A-Za-z0-9+/=]+)"', page)]


def _check_images(page: str) -> int:
    """Every <img> is an inline PNG or SVG that decodes; returns how many."""
    from PIL import Image

    imgs = _images(page)
    assert len(imgs) == page.count("<img ")
    for mime, data in imgs:
        if mime == "image/png":
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                assert im.size[0] > 100 and im.size[1] > 100
        else:
            assert mime == "image/svg+xml" and ET.fromstring(data).tag.endswith("svg")
    return len(imgs)


def test_report_opens_with_the_verdict_then_pictures_in_order(scan):
    out, path = scan
    page = path.read_text()
    doc = json.loads((out / "results.json").read_text())
    body = page[page.index("<body>"):]
    first = re.search(r"<p id='verdict' class='verdict excess'>([^<]*)</p>", body)
    assert first and html.unescape(first.group(1)) == verdict(doc)
    assert body.index("<h1>") < first.start() < body.index("<h2>")
    heads = re.findall(r"<h2>([^<]*)</h2>", page)
    want = ["Significance vs mass", "Upper limits vs mass",
            "Window of the most significant test: SR 3500-3900 GeV (spectra, background fits, pulls)",
            "Other windows (9, collapsed)", "Sideband fit quality", "All tests", "Run"]
    assert heads == want
    best = page[page.index("Window of the most significant test"):page.index("<details")]
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", best)
    assert captions[0] == "cwola, SR 3500-3900 GeV" and len(captions) == 4  # its detector first, all 4 plots
    assert page.count("<details>") == 9 and "<details open" not in page
    flagged = [html.unescape(t) for t in re.findall(r"<summary class='flag'>([^<]*)</summary>", page)]
    assert len(flagged) == 2 and any("1 fit with p < 0.01" in s for s in flagged)
    assert any("1 without a usable fit" in s for s in flagged)


def test_report_is_self_contained_small_and_images_decode(scan):
    out, path = scan
    page = path.read_text()
    assert "src=\"http" not in page and "src='http" not in page and "<link" not in page and "<script" not in page
    n = _check_images(page)
    assert n == 3 + 40  # Z vs mass, fit quality, limits, 10 windows x 4 spectra
    size = path.stat().st_size
    print(f"report.html of a 10-window synthetic scan: {size / 1e6:.2f} MB, {n} images")
    assert size < 5e6
    assert page.count("<tr class=\"poor\">") == 1 and page.count("<tr class=\"failed\">") == 1
    assert page.count("class=\"best\"") == 1 and "0.004 !" in page and "Struck-through rows" in page


def _fake_limitplot(monkeypatch, calls, fail=False):
    def plot_limits(rows, path):
        if fail:
            raise ValueError("no bands")
        calls.append(rows)
        from PIL import Image

        Image.new("RGB", (400, 300), (255, 255, 255)).save(path)
        return path

    monkeypatch.setattr("sideband.pipeline.limitplot.plot_limits", plot_limits)


def test_limits_plot_follows_the_significance_and_its_failure_is_shown(scan, tmp_path, monkeypatch):
    out, _ = scan
    run = tmp_path / "run"
    shutil.copytree(out, run)
    calls = []
    _fake_limitplot(monkeypatch, calls)
    page = write_html_report(run).read_text()
    heads = re.findall(r"<h2>([^<]*)</h2>", page)
    assert heads[:3] == ["Significance vs mass", "Upper limits vs mass",
                         "Window of the most significant test: SR 3500-3900 GeV (spectra, background fits, pulls)"]
    (rows,) = calls
    assert len(rows) == 69 and {r["detector"] for r in rows} == {"none", "cwola", "cathode"}  # searches with a fit
    assert all(len(r["upper_limit_expected_band"]) == 5 and r["upper_limit"] is not None for r in rows)
    _check_images(page)
    _fake_limitplot(monkeypatch, [], fail=True)
    page = write_html_report(run).read_text()
    assert "limits plot failed: ValueError(&#x27;no bands&#x27;)" in page and "Significance vs mass" in page


def test_blind_report_hides_the_signal_region(blind_scan):
    out, path = blind_scan
    page = path.read_text()
    assert "class='verdict blind'>Blind scan (signal-region data hidden): 70 tests in 10 windows" in page
    heads = re.findall(r"<h2>([^<]*)</h2>", page)
    assert "Significance vs mass" not in heads and heads[0].startswith("Upper limits")  # no signal model: no best blind test
    assert "BLINDED" in page and "<td>blind</td>" in page and "Sideband fit quality" in heads
    _check_images(page)
    doc = json.loads((out / "results.json").read_text())
    assert all(r["n_observed_sr"] is None and r["z_local"] is None for r in doc["results"])


def test_report_of_a_real_small_search(small_h5, fast_config, tmp_path):
    """One real (one-window) search: the verdict opens the page and the terminal summary."""
    from sideband.workflows.search import run_search

    cfg = fast_config(small_h5)
    res = run_search(cfg, tmp_path / "run", progress=False, unblind=True)
    page = (tmp_path / "run" / "report.html").read_text()
    text = verdict(res)
    assert text.startswith(("No significant excess: largest global Z", "Excess at "))
    assert "class='verdict" in page and _images(page)
    assert "Significance vs mass" not in page  # one window: no Z-vs-mass picture
    assert format_summary(res).startswith(text)
    _check_images(page)


# ----------------------------------------------------------------------------- in a browser
CHECK_JS = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images), broken = imgs.filter(function (i) { return !(i.naturalWidth > 0); });
  var v = document.getElementById('verdict').getBoundingClientRect();
  var r = document.createElement('pre'); r.id = 'check';
  r.textContent = 'CHECK ' + JSON.stringify({n: imgs.length, broken: broken.length, top: v.top, bottom: v.bottom,
                                              first: document.body.children[1].id});
  document.body.appendChild(r);
});
</script>"""


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _headless(browser: str, *args: str) -> str:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,900",
           "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.slow
def test_report_in_a_headless_browser(scan, tmp_path):
    """Chromium renders report.html: the verdict within the first 900 px, no broken image, a
    non-blank top. The screenshot is kept at /tmp/report_screenshot.png."""
    from PIL import Image

    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium)")
    _, path = scan
    checked = tmp_path / "checked.html"
    checked.write_text(path.read_text().replace("</body>", CHECK_JS + "</body>"))
    dom = _headless(browser, "--dump-dom", checked.as_uri())
    m = re.search(r"CHECK (\{.*?\})", dom)
    assert m, dom[-2000:]
    res = json.loads(m.group(1).replace("&quot;", '"'))
    assert res["n"] == path.read_text().count("<img ") and res["broken"] == 0
    assert res["first"] == "verdict" and 0 <= res["top"] and res["bottom"] < 900
    shot = tmp_path / "shot.png"
    _headless(browser, f"--screenshot={shot}", path.as_uri())
    shutil.copy(shot, "/tmp/report_screenshot.png")
    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB"), dtype=float)
    assert px.shape[:2] == (900, 1280)
    top = px[: int(res["bottom"]) + 10]
    assert top.std() > 10  # title and verdict drawn, not a blank page
    box = px[int(res["top"]) + 5:int(res["bottom"]) - 5, 120:200]  # the verdict box: its tinted background
    assert (np.abs(box - [253, 238, 232]).sum(axis=-1) < 12).mean() > 0.3
