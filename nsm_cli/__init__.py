"""nsm: find and validate a SaaS company's North Star Metric from its own exports.

    >>> from nsm_cli import Settings, analyze
    >>> report = analyze(Settings(accounts="accounts.csv", usage="events.csv"))  # doctest: +SKIP
    >>> report.candidates[0].name  # doctest: +SKIP
    'report_shared.count'
"""

__version__ = "0.1.0"

from nsm_cli.config import Settings  # noqa: E402
from nsm_cli.errors import InputError, NsmError, UsageError  # noqa: E402
from nsm_cli.pipeline import analyze  # noqa: E402
from nsm_cli.results import Report  # noqa: E402

__all__ = ["Settings", "analyze", "Report", "NsmError", "InputError", "UsageError", "__version__"]
