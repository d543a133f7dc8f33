"""User-facing workflows (each behind one ``sideband`` subcommand)."""

from .configure import load_config
from .fit_spectrum import fit_spectrum
from .generate import generate
from .inject import run_injection
from .search import run_search
from .trigger import export_trigger

__all__ = ["export_trigger", "fit_spectrum", "generate", "load_config", "run_injection", "run_search"]
