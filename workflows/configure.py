"""The search configuration with every check: the schema (pipeline) plus the detectors' own.

Use these rather than :mod:`sideband.pipeline.config` directly: they also reject unknown
detectors and wrong detector parameter values, before anything runs.
"""

from __future__ import annotations

from pathlib import Path

from sideband.detectors.base import check_config
from sideband.pipeline import config as _config
from sideband.pipeline.config import Config

__all__ = ["load_config", "config_from_dict"]


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Load, merge ``overrides`` into, and fully validate a YAML config (default: configs/default.yaml)."""
    return _config.load_config(path, overrides, check=check_config)


def config_from_dict(raw: dict, source: str = "config") -> Config:
    """Fully validate a mapping (as read from YAML) into a :class:`Config`."""
    return _config.config_from_dict(raw, source, check=check_config)
