"""User-facing workflows (each behind one ``sideband`` subcommand)."""

from .search import run_search

__all__ = ["run_search"]
