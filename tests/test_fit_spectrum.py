"""GP and dijet fits of binned spectra (sideband fit-spectrum)."""

import json

import numpy as np
import pytest

from sideband.workflows.cli import main


def _spectrum(path, seed=3, shape=(10.0, 5.0, 0.3), lo=1200.0, hi=9000.0, width=100.0, log_norm=3.82, fmt="lowhigh",
              bump=None):
    """Poisson counts from a falling dijet-like function: ~10^6 per bin at low mass to empty bins."""
    rng = np.random.default_rng(seed)
    e = np.arange(lo, hi + 1, width)
    c = 0.5 * (e[1:] + e[:-1])
    x = c / 13000
    p1, p2, p3 = shape
    f = np.exp(log_norm) * (1 - x) ** p1 * x ** -(p2 + p3 * np.log(x)) * width / 13000 * 1e3
    if bump:
        mass, n_sig = bump
        f = f + n_sig * width * np.exp(-0.5 * ((c - mass) / (0.05 * mass)) ** 2) / (np.sqrt(2 * np.pi) * 0.05 * mass)
    n = rng.poisson(f)
    with open(path, "w") as fh:
        if fmt == "lowhigh":
            fh.write("low,high,count\n" + "".join(f"{a},{b},{k}\n" for a, b, k in zip(e[:-1], e[1:], n)))
        else:
            fh.write("center,width,count\n" + "".join(f"{m},{width},{k}\n" for m, k in zip(c, n)))
    return n, f


def test_fit_spectrum_on_a_steep_known_function(tmp_path, capsys):
    n, f = _spectrum(tmp_path / "s.csv")
    assert n.max() > 1e6 and (n == 0).any() and f.max() / f.min() > 1e6  # the regime of real searches
    assert main(["fit-spectrum", "--csv", str(tmp_path / "s.csv"), "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "fit.json").read_text())
    for name in ("gp", "dijet"):
        mod = res["models"][name]
        assert {"chi2", "ndf", "max_abs_pull", "params"} <= set(mod)
        assert mod["chi2"] / mod["ndf"] < 1.6 and mod["max_abs_pull"] < 4.5
    assert res["models"]["dijet"]["n_params"] in (3, 4, 5)
    gp = res["models"]["gp"]
    assert {"hyperparameters", "bounds", "at_bound", "warnings", "converged", "kernel"} <= set(gp)
    assert set(gp["hyperparameters"]) == {"amplitude", "decay", "length_slope"}
    assert set(gp["at_bound"]) <= set(gp["hyperparameters"]) and len(gp["warnings"]) >= len(gp["at_bound"])
    assert max(p["z_local"] for p in res["scan"]) < 3.5  # no bump where none was put
    assert (tmp_path / "o" / "fit.png").stat().st_size > 1000
    assert "chi2/ndf" in capsys.readouterr().out


def test_center_width_csv_and_bump_is_found(tmp_path):
    _spectrum(tmp_path / "b.csv", fmt="centerwidth", bump=(4000.0, 1500.0), seed=5)
    assert main(["fit-spectrum", "--csv", str(tmp_path / "b.csv"), "--out", str(tmp_path / "o")]) == 0
    scan = json.loads((tmp_path / "o" / "fit.json").read_text())["scan"]
    top = max(scan, key=lambda p: p["z_local"])
    assert abs(top["mass"] - 4000) <= 400 and top["z_local"] > 3


def _two_shapes_csv(path, seed=0):
    """Two dijet shapes, (1-x)^5 x^-10 + (1-x)^8 x^-3 equal at 2.5 TeV, 42 bins, 10^8 events in
    the first: a spectrum the dijet function cannot describe (benchmarks/gp.py)."""
    e = np.geomspace(1100.0, 8000.0, 43)
    x = 0.5 * (e[1:] + e[:-1]) / 13000
    soft, hard = (1 - x) ** 5 * x**-10, (1 - x) ** 8 * x**-3
    i = int(np.argmin(np.abs(x * 13000 - 2500)))
    f = (soft + hard * soft[i] / hard[i]) * np.diff(e)
    n = np.random.default_rng(seed).poisson(f / f[0] * 1e8)
    path.write_text("low,high,count\n" + "".join(f"{a},{b},{k}\n" for a, b, k in zip(e[:-1], e[1:], n)))
    return n


def test_gp_is_its_own_model_where_the_dijet_function_fails(tmp_path):
    """The issue: the GP gave the dijet fit's prediction in every digit. Here the dijet fit fails
    and the GP does not, and their predictions differ."""
    n = _two_shapes_csv(tmp_path / "t.csv")
    assert main(["fit-spectrum", "--csv", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "fit.json").read_text())
    gp, dijet = res["models"]["gp"], res["models"]["dijet"]
    assert gp["chi2"] / gp["ndf"] <= 1.5 < dijet["chi2"] / dijet["ndf"] / 3
    diff = np.abs(np.array(gp["prediction"]) - np.array(dijet["prediction"])) / np.sqrt(np.maximum(n, 1))
    assert diff.max() > 3
    assert gp["at_bound"] == [] and res["warnings"] == []


def _rows(n=12, lo=2800.0, width=100.0):
    return [(lo + i * width, lo + (i + 1) * width, 1000 - 60 * i) for i in range(n)]


def _csv(rows):
    return "low,high,count\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows)


@pytest.mark.parametrize("content,match", [
    ("a,b,c\n1,2,3\n", "needs columns low,high,count"),
    ("low,high,count\n" + "".join(f"{1000 + 100 * i},{1100 + 100 * i},x\n" for i in range(8)), "not a number"),
    ("low,high,count\n" + "".join(f"{1000 + 200 * i},{1100 + 200 * i},5\n" for i in range(8)), "contiguous"),
    (_csv([(a, b + 50, c) for a, b, c in _rows()]), "contiguous"),  # overlapping bins
    (_csv([(a, b, -3 if i == 4 else c) for i, (a, b, c) in enumerate(_rows())]), "negative counts"),
    (_csv(_rows()[6:] + _rows()[:6]), "increasing mass order"),  # unsorted rows
    (_csv(_rows()[:-1] + [(3900, 3850, 10)]), "high 3850 <= low 3900"),  # inverted bin
    (_csv(_rows(5)), "5 bins; a fit needs at least 6"),  # fewer bins than parameters
    (_csv([(a, b, 0) for a, b, _ in _rows()]), "cannot be fitted"),  # nothing to fit
    (_csv(_rows()).replace(",1000\n", ",1000,7\n", 1), "line 2 has more fields than the header"),  # a stray field
])
def test_bad_csv_is_a_user_error(tmp_path, capsys, content, match):
    (tmp_path / "bad.csv").write_text(content)
    assert main(["fit-spectrum", "--csv", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1, err


def test_unusable_out_or_binary_csv_is_a_user_error_before_fitting(tmp_path, capsys, monkeypatch):
    """An --out that is a file and a CSV that is not text: one line, exit 2, and no fit is run
    (an unwritable --out was an internal error after both fits)."""
    _spectrum(tmp_path / "s.csv")
    (tmp_path / "taken").write_text("a file")
    fitted = []
    import sideband.pipeline.fits as fits

    monkeypatch.setattr(fits, "fit_dijet_ftest", lambda *a, **k: fitted.append(1))
    assert main(["fit-spectrum", "--csv", str(tmp_path / "s.csv"), "--out", str(tmp_path / "taken")]) == 2
    assert "taken" in capsys.readouterr().err and not fitted
    (tmp_path / "b.csv").write_bytes(b"\xff\xfe\x00\x81 binary")
    assert main(["fit-spectrum", "--csv", str(tmp_path / "b.csv"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a text CSV" in err and len(err.splitlines()) == 1


def test_a_csv_saved_with_a_byte_order_mark_is_read(tmp_path, capsys):
    """Spreadsheets write UTF-8 with a BOM: the first column is still 'low'."""
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + _csv(_rows()).encode())
    assert main(["fit-spectrum", "--csv", str(tmp_path / "bom.csv"), "--out", str(tmp_path / "o")]) == 0
