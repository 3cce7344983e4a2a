"""Exceptions and warnings raised by nsm.

Errors stop the analysis (the CLI maps them to exit codes); warnings are collected in the
report and rendered next to the results, never swallowed.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass


class NsmError(Exception):
    """Base class of every error nsm raises on purpose."""


class UsageError(NsmError, ValueError):
    """Settings or flags that cannot work together (CLI exit code 2)."""


class InputError(NsmError, ValueError):
    """Input data that cannot be analysed (CLI exit code 3).

    The message names the file, the column and the row when they are known, and says what
    was expected.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: int | None = None,
    ) -> None:
        self.file = file
        self.column = column
        self.row = row
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file else "",
                f"column '{column}'" if column else "",
                f"line {row}" if row is not None else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class SchemaError(InputError):
    """A required column is missing or has the wrong type."""


class InsufficientDataError(InputError):
    """Too few accounts or events for the statistics to mean anything."""


class WriteError(NsmError):
    """A file nsm had to write could not be written: a full disk, a read-only or forbidden folder
    (CLI exit code 4, with this message rather than an internal error's)."""

    # Failures that only writing meets: no space, over quota, a read-only file system.
    _WRITE_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)

    @classmethod
    def of(cls, what: str, exc: OSError, advice: str = "") -> WriteError:
        """The error "cannot write `what`: <the system's reason>[; `advice`]". Polars' OSErrors carry the
        reason only in their text, as "<reason> (os error N)"."""
        reason = exc.strerror or re.sub(r" \(os error \d+\).*", "", str(exc), flags=re.S)
        return cls(f"cannot write {what}: {reason}" + (f"; {advice}" if advice else ""))

    @classmethod
    def is_write_only_failure(cls, exc: OSError) -> bool:
        """Whether `exc` is a failure that reading never meets (so, during a scan, the scratch file's)."""
        codes = re.findall(r"\(os error (\d+)\)", str(exc))
        return exc.errno in cls._WRITE_ONLY or any(int(c) in cls._WRITE_ONLY for c in codes)


@dataclass(frozen=True, slots=True)
class DataWarning:
    """A data problem that cost rows or accounts but left the analysis possible.

    `count` is how many rows/accounts were affected; `example_row` is a 1-based line number
    in `file` (header = line 1) when one is known.
    """

    code: str
    message: str
    count: int = 0
    file: str | None = None
    column: str | None = None
    example_row: int | None = None
    advice: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "message": self.message,
            "count": self.count,
            "file": self.file,
            "column": self.column,
            "example_row": self.example_row,
            "advice": self.advice,
        }
