"""Signal region, sidebands, sliding windows and k-fold assignment (all masses in GeV)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .exceptions import RegionError

__all__ = ["Window", "make_windows", "scan_windows", "search_windows", "stage_groups", "assign_folds",
           "check_window_counts"]


@dataclass(frozen=True)
class Window:
    """One signal region [sr_lo, sr_hi) with sidebands [sb_lo, sr_lo) and [sr_hi, sb_hi)."""

    sr_lo: float
    sr_hi: float
    sb_lo: float
    sb_hi: float

    def __post_init__(self) -> None:
        if not (self.sb_lo <= self.sr_lo < self.sr_hi <= self.sb_hi):
            raise RegionError(
                f"window {self.name}: need sb_lo <= sr_lo < sr_hi <= sb_hi, got "
                f"sb=({self.sb_lo:g}, {self.sb_hi:g}) sr=({self.sr_lo:g}, {self.sr_hi:g}); fix "
                "regions in the config"
            )

    @property
    def name(self) -> str:
        return f"{self.sr_lo:g}-{self.sr_hi:g}"

    @property
    def center(self) -> float:
        return 0.5 * (self.sr_lo + self.sr_hi)

    def in_sr(self, m: np.ndarray) -> np.ndarray:
        return (m >= self.sr_lo) & (m < self.sr_hi)

    def in_sb(self, m: np.ndarray) -> np.ndarray:
        return ((m >= self.sb_lo) & (m < self.sr_lo)) | ((m >= self.sr_hi) & (m < self.sb_hi))

    def in_window(self, m: np.ndarray) -> np.ndarray:
        """SR or SB: the events a detector may train on."""
        return (m >= self.sb_lo) & (m < self.sb_hi)

    def to_dict(self) -> dict:
        return {"name": self.name, "sr": [self.sr_lo, self.sr_hi], "sb": [self.sb_lo, self.sb_hi]}


def make_windows(
    signal_region: tuple[float, float],
    fit_range: tuple[float, float],
    sideband_width: float | None = None,
    scan_centers: list[float] | tuple[float, ...] = (),
) -> list[Window]:
    """The main window plus one per scan centre, all of the main SR's width.

    Sidebands reach ``sideband_width`` GeV on each side of the SR, clipped to the fit
    range, or (``None``) the whole fit range outside the SR.
    """
    width = signal_region[1] - signal_region[0]
    srs = [tuple(signal_region)] + [(c - width / 2, c + width / 2) for c in scan_centers]
    return _windows(srs, fit_range, sideband_width)


def _windows(srs, fit_range, sideband_width) -> list[Window]:
    lo, hi = fit_range
    windows: list[Window] = []
    for sr_lo, sr_hi in srs:
        if sr_lo < lo or sr_hi > hi:
            raise RegionError(
                f"signal region {sr_lo:g}-{sr_hi:g} GeV lies outside the fit range "
                f"{lo:g}-{hi:g} GeV; move the window or widen fit.range"
            )
        if sideband_width is None:
            sb = (lo, hi)
        else:
            sb = (max(lo, sr_lo - sideband_width), min(hi, sr_hi + sideband_width))
        w = Window(float(sr_lo), float(sr_hi), float(sb[0]), float(sb[1]))
        if w not in windows:
            windows.append(w)
    return windows


def scan_windows(centre_range: tuple[float, float], width: float, step: float, fit_range: tuple[float, float],
                 sideband_width: float | None = None) -> list[Window]:
    """Sliding windows whose SR width is ``width`` x the centre, centres ``step`` SR widths apart.

    Centres run from ``centre_range[0]`` up to ``centre_range[1]`` (the last one included when
    the steps land within 1 GeV of it); SR edges are rounded to 10 GeV.
    """
    centres = [float(centre_range[0])]
    while centres[-1] * (1 + step * width) <= centre_range[1] + 1.0:
        centres.append(centres[-1] * (1 + step * width))
    srs = [(10 * round(c * (1 - width / 2) / 10), 10 * round(c * (1 + width / 2) / 10)) for c in centres]
    return _windows(srs, fit_range, sideband_width)


def search_windows(regions, fit_range: tuple[float, float]) -> list[Window]:
    """The windows a search config asks for: one signal region (plus ``scan_centers``), or the scan."""
    if regions.signal_region is not None:
        return make_windows(regions.signal_region, fit_range, regions.sideband_width, regions.scan_centers)
    s = regions.scan
    return scan_windows(s.range, s.width, s.step, fit_range, regions.sideband_width)


def stage_groups(windows: list[Window], min_gap: float = 0.25) -> list[tuple[Window, ...]]:
    """Windows grouped so that one sideband stage (e.g. one CATHODE flow) can serve each group.

    A group's stage trains on the union of its windows' sidebands minus *every* SR of the
    group, so no window's SR is ever in the training data of the stage that predicts it. Two
    windows share a group only when their SRs are at least ``min_gap`` x the wider SR apart:
    the stage then interpolates across separate gaps, never across one merged, wider hole.
    Greedy in order of SR position (first group that fits); a single window is its own group.
    With the default scan (SR 12% of the centre, half-width steps) windows i, i+3, i+6 share:
    9 windows -> 3 stages.
    """
    groups: list[list[Window]] = []
    for w in sorted(windows, key=lambda w: w.sr_lo):
        for grp in groups:
            if all(_apart(w, v, min_gap) for v in grp):
                grp.append(w)
                break
        else:
            groups.append([w])
    return [tuple(g) for g in groups]


def _apart(a: Window, b: Window, min_gap: float) -> bool:
    gap = max(a.sr_lo - b.sr_hi, b.sr_lo - a.sr_hi)
    return gap >= min_gap * max(a.sr_hi - a.sr_lo, b.sr_hi - b.sr_lo)


def check_window_counts(window: Window, m: np.ndarray, n_folds: int, source: str = "data") -> None:
    """Raise :class:`RegionError` if the SR or SB cannot support ``n_folds`` folds."""
    n_sr = int(window.in_sr(m).sum())
    n_sb = int(window.in_sb(m).sum())
    need = max(2 * n_folds, 10)
    for what, n in (("signal region", n_sr), ("sidebands", n_sb)):
        if n < need:
            raise RegionError(
                f"{source}: {what} of window {window.name} GeV holds {n} events, fewer than "
                f"the {need} needed for {n_folds} folds; widen the region or use more data"
            )


def assign_folds(in_sr: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index (0..n_folds-1) per event, balanced and stratified by SR/SB membership."""
    if n_folds < 2:
        raise RegionError(f"folds = {n_folds}: k-folding needs at least 2 folds; set folds >= 2")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(in_sr), dtype=np.int64)
    for cls in (False, True):
        idx = np.flatnonzero(in_sr == cls)
        perm = rng.permutation(len(idx))
        folds[idx[perm]] = np.arange(len(idx)) % n_folds
    return folds
