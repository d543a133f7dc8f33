import numpy as np
import pytest

from sideband.pipeline.exceptions import RegionError
from sideband.pipeline.regions import Window, assign_folds, check_window_counts, make_windows


def test_default_window_uses_the_fit_range_as_sidebands():
    (w,) = make_windows((3300, 3700), (2800, 6000))
    assert (w.sb_lo, w.sr_lo, w.sr_hi, w.sb_hi) == (2800, 3300, 3700, 6000)
    m = np.array([2799.0, 2800.0, 3299.9, 3300.0, 3699.9, 3700.0, 5999.0, 6000.0])
    assert w.in_sr(m).tolist() == [False, False, False, True, True, False, False, False]
    assert w.in_sb(m).tolist() == [False, True, True, False, False, True, True, False]
    assert not np.any(w.in_sr(m) & w.in_sb(m))


def test_sideband_width_and_sliding_windows():
    ws = make_windows((3300, 3700), (2800, 6000), sideband_width=300, scan_centers=[3000, 3500, 4000])
    assert [w.name for w in ws] == ["3300-3700", "2800-3200", "3800-4200"]  # 3500 duplicates the SR
    assert (ws[0].sb_lo, ws[0].sb_hi) == (3000, 4000)
    assert (ws[1].sb_lo, ws[1].sb_hi) == (2800, 3500)  # clipped to the fit range


def test_window_outside_fit_range_is_an_error():
    with pytest.raises(RegionError, match="outside the fit range"):
        make_windows((3300, 3700), (2800, 6000), scan_centers=[6000])
    with pytest.raises(RegionError, match="need sb_lo"):
        Window(3700, 3300, 2800, 6000)


def test_folds_balanced_and_stratified():
    rng = np.random.default_rng(0)
    in_sr = rng.random(10_003) < 0.15
    folds = assign_folds(in_sr, 5, seed=1)
    counts = np.bincount(folds, minlength=5)
    assert counts.max() - counts.min() <= 2
    sr_counts = np.bincount(folds[in_sr], minlength=5)
    assert sr_counts.max() - sr_counts.min() <= 1
    np.testing.assert_array_equal(folds, assign_folds(in_sr, 5, seed=1))
    assert not np.array_equal(folds, assign_folds(in_sr, 5, seed=2))


def test_empty_signal_region_is_reported():
    (w,) = make_windows((3300, 3700), (2800, 6000))
    m = np.r_[np.full(100, 3000.0), np.full(3, 3500.0)]
    with pytest.raises(RegionError, match="signal region of window 3300-3700 GeV holds 3 events"):
        check_window_counts(w, m, 5, source="data.h5")


def test_stage_groups_share_only_windows_whose_signal_regions_lie_apart():
    from sideband.pipeline.regions import scan_windows, stage_groups

    windows = scan_windows((3100, 5000), 0.12, 0.5, (2800, 6000))  # the default scan: 9 overlapping windows
    groups = stage_groups(windows)
    assert sorted(w.name for g in groups for w in g) == sorted(w.name for w in windows)  # each window once
    assert len(groups) == 3
    for g in groups:
        for a in g:
            for b in g:
                if a is not b:  # never overlapping or touching: a quarter SR width at least between them
                    gap = max(a.sr_lo - b.sr_hi, b.sr_lo - a.sr_hi)
                    assert gap >= 0.25 * max(a.sr_hi - a.sr_lo, b.sr_hi - b.sr_lo)
    one = scan_windows((3500, 3500), 0.12, 0.5, (2800, 6000))
    assert stage_groups(one) == [tuple(one)]
