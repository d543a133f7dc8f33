"""sideband pipeline: data, regions, DAG, statistics and report."""

from .config import Config, load_config
from .exceptions import ConfigError, InputFileError, RegionError, SidebandError, SidebandUserError
from .features import CANONICAL_COLUMNS, FEATURE_COLUMNS
from .io import load_events, read_events
from .regions import Window, make_windows

__all__ = [
    "CANONICAL_COLUMNS",
    "FEATURE_COLUMNS",
    "Config",
    "ConfigError",
    "InputFileError",
    "RegionError",
    "SidebandError",
    "SidebandUserError",
    "Window",
    "load_config",
    "load_events",
    "make_windows",
    "read_events",
]
