"""nsm: find and validate a SaaS company's North Star Metric from its own exports.

    >>> from nsm_cli import Settings, analyze
    >>> report = analyze(Settings(accounts="accounts.csv", usage="events.csv"))  # doctest: +SKIP
    >>> report.candidates[0].name  # doctest: +SKIP
    'report_shared.count'

nsm runs a thread per core itself. The `nsm` command keeps OpenBLAS to one thread, whose own threads
would only compete with it, numpy to ordinary memory pages, glibc's malloc holding on to large freed
blocks and polars' allocator to an arena per core; a program calling `analyze` gets the same with the
environment variables and glibc.malloc tunables the README gives (set before numpy and polars load).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Imported on first use, so that the command line can configure the process (see `cli`) before numpy loads.
_EXPORTS = {"Settings": "nsm_cli.config", "analyze": "nsm_cli.pipeline", "Report": "nsm_cli.results",
            "NsmError": "nsm_cli.errors", "InputError": "nsm_cli.errors", "UsageError": "nsm_cli.errors"}
__all__ = ["Settings", "analyze", "Report", "NsmError", "InputError", "UsageError", "__version__"]

if TYPE_CHECKING:
    from nsm_cli.config import Settings
    from nsm_cli.errors import InputError, NsmError, UsageError
    from nsm_cli.pipeline import analyze
    from nsm_cli.results import Report


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nsm_cli' has no attribute {name!r}")
