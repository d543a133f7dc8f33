"""GP and dijet fits of binned spectra (sideband fit-spectrum), and the GP background predictor."""

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
    assert max(p["z_local"] for p in res["scan"]) < 3.5  # no bump where none was put
    assert (tmp_path / "o" / "fit.png").stat().st_size > 1000
    assert "chi2/ndf" in capsys.readouterr().out


def test_center_width_csv_and_bump_is_found(tmp_path):
    _spectrum(tmp_path / "b.csv", fmt="centerwidth", bump=(4000.0, 1500.0), seed=5)
    assert main(["fit-spectrum", "--csv", str(tmp_path / "b.csv"), "--out", str(tmp_path / "o")]) == 0
    scan = json.loads((tmp_path / "o" / "fit.json").read_text())["scan"]
    top = max(scan, key=lambda p: p["z_local"])
    assert abs(top["mass"] - 4000) <= 400 and top["z_local"] > 3


@pytest.mark.parametrize("content,match", [
    ("a,b,c\n1,2,3\n", "needs columns low,high,count"),
    ("low,high,count\n" + "".join(f"{1000 + 100 * i},{1100 + 100 * i},x\n" for i in range(8)), "not a number"),
    ("low,high,count\n" + "".join(f"{1000 + 200 * i},{1100 + 200 * i},5\n" for i in range(8)), "contiguous"),
])
def test_bad_csv_is_a_user_error(tmp_path, capsys, content, match):
    (tmp_path / "bad.csv").write_text(content)
    assert main(["fit-spectrum", "--csv", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o")]) == 2
    assert match in capsys.readouterr().err


def test_gp_background_prediction_covers_the_truth(tmp_path):
    from sideband.detectors.gp_fit import gp_background
    from sideband.pipeline.fits import make_edges

    edges = make_edges((2800, 6000), 100, (3300, 3700))
    sr = (edges[:-1] >= 3300) & (edges[1:] <= 3700)
    c = 0.5 * (edges[1:] + edges[:-1]) / 13000
    truth = np.exp(9.5) * (1 - c) ** 8 * c ** -(5 + 0.4 * np.log(c))
    pulls = []
    for seed in range(20):
        counts = np.random.default_rng(seed).poisson(truth)
        _, _, mu, cov = gp_background(edges, counts, ~sr, sr)
        pulls.append((mu.sum() - truth[sr].sum()) / np.sqrt(cov.sum()))
    pulls = np.array(pulls)
    assert np.all(np.isfinite(pulls)) and np.mean(np.abs(pulls) < 2) >= 0.8  # uncertainty is not dropped
