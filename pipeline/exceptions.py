"""All exceptions raised by sideband, in one place.

User errors (bad input files, bad configuration, empty regions) derive from
:class:`SidebandUserError`; the command line turns them into a one-line message
and exit code 2. Messages name the offending file or value and say how to fix it.
"""

from __future__ import annotations

__all__ = [
    "SidebandError",
    "SidebandUserError",
    "InputFileError",
    "ConfigError",
    "RegionError",
    "NotFittedError",
    "FitError",
    "MissingExtraError",
    "optional_import",
]


class SidebandError(Exception):
    """Base class of every error raised by sideband."""


class SidebandUserError(SidebandError):
    """An error caused by the user's input or configuration (CLI exit code 2)."""


class InputFileError(SidebandUserError):
    """An input file is missing, unreadable, or does not have the expected layout."""


class ConfigError(SidebandUserError):
    """The configuration file is invalid."""


class RegionError(SidebandUserError):
    """A signal region, sideband or selection holds too few events to proceed."""


class NotFittedError(SidebandError, AttributeError):
    """A detector was asked to score before ``fit`` was called."""


class FitError(SidebandError):
    """A numerical fit did not converge (recorded in results, never fatal to a scan)."""


class MissingExtraError(SidebandUserError):
    """An optional dependency of one task is not installed (install the named extra)."""


def optional_import(module: str, extra: str, task: str):
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{task} needs the Python package '{module.split('.')[0]}' ({exc}); install it with "
            f"pip install 'sideband[{extra}]'"
        ) from None
