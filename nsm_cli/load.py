"""The only file reader: CSV/Parquet/globs -> polars frames with canonical column names.

Every input column is read as text first and parsed by explicit rules (ISO dates, numbers
with currency signs or thousands separators), so a stray "N/A" never becomes a number and
every value that fails to parse can be counted and traced to its line by `validate`.
Inputs are opened read-only and never modified.
"""

from __future__ import annotations

import difflib
import glob as globlib
import gzip
import io
import os
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from nsm_cli.errors import InputError, SchemaError, WriteError

LINE = "__line"  # 1-based line number of the record in its file (header = line 1)
FILE = "__file"

SYNONYMS: dict[str, tuple[str, ...]] = {
    "account_id": (
        "account_id", "account", "accountid", "customer_id", "customer", "org_id",
        "organization_id", "organisation_id", "company_id", "tenant_id", "workspace_id",
        "team_id", "client_id",
    ),
    "signup_date": (
        "signup_date", "signup", "signed_up_at", "signup_at", "created_at", "created",
        "created_date", "start_date", "started_at", "subscription_start", "first_seen",
    ),
    "churn_date": (
        "churn_date", "churned_at", "churn", "canceled_at", "cancelled_at", "cancel_date",
        "cancellation_date", "churned_on", "ended_at", "end_date",
    ),
    "expansion_date": (
        "expansion_date", "expanded_at", "first_expansion_date", "upgrade_date", "upgraded_at",
    ),
    "timestamp": (
        "timestamp", "event_time", "event_timestamp", "time", "ts", "occurred_at",
        "created_at", "datetime", "event_date",
    ),
    "event": ("event", "event_name", "event_type", "action", "name", "type"),
    "user_id": ("user_id", "user", "userid", "member_id", "person_id", "distinct_id"),
    "value": ("value", "amount", "quantity"),
    "date": ("date", "day", "week", "month", "period", "period_start", "snapshot_date"),
    "mrr": ("mrr", "monthly_recurring_revenue", "revenue", "amount"),
}
SEGMENT_NAMES = ("plan", "tier", "segment", "seats", "industry", "region", "company_size", "size")

_DATE_FORMATS = (  # fastest first; "Z" is matched literally (UTC), other offsets with %z
    "%Y-%m-%d",
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S%.fZ",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%d %H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%MZ",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%Y/%m/%d",
    "unix:s",  # Unix times (seconds, or milliseconds), as many analytics tools export them:
    "unix:ms",  # integers (seconds may have a fraction) between 2000 and 2100, so dates like 20250131 are not
)
_UNIX = {"unix:s": 1_000_000, "unix:ms": 1_000}  # microseconds per unit
_UNIX_RANGE = (946_684_800, 4_102_444_800)  # 2000-01-01 to 2100-01-01, in seconds
_NULL_WORDS = ("na", "n/a", "nan", "null", "none", "#n/a")
NULL_TOKENS = ("", "-", "--", *_NULL_WORDS, *(w.upper() for w in _NULL_WORDS), *(w.title() for w in _NULL_WORDS),
               "NaN", "N/a")


PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True, slots=True)
class Table:
    """One logical input (one file or a glob of files) as text columns plus line numbers."""

    name: str
    frame: pl.LazyFrame
    columns: tuple[str, ...]
    paths: tuple[str, ...]  # the files read


def normalise_name(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def read_table(source: str, *, what: str) -> Table:
    """Read a CSV/Parquet file or a glob of them; every column as text (CSV) or native (Parquet)."""
    paths = _expand(source, what=what)
    frames = [_read_one(path) for path in paths]
    columns = frames[0].collect_schema().names()
    for path, frame in zip(paths[1:], frames[1:], strict=True):
        other = frame.collect_schema().names()
        if sorted(other) != sorted(columns):
            raise SchemaError(
                f"its columns {other} differ from {paths[0]}'s {columns}; every file of a glob "
                "must have the same columns",
                file=path,
            )
    if len(frames) == 1:
        frame = frames[0].with_columns(pl.lit(paths[0]).alias(FILE))
    else:
        frame = pl.concat(
            [f.select(columns).with_columns(pl.lit(p).alias(FILE)) for p, f in zip(paths, frames, strict=True)]
        )
    data_columns = tuple(c for c in columns if c != LINE)
    return Table(name=source if len(paths) > 1 else paths[0], frame=frame, columns=data_columns, paths=tuple(paths))


def _matches(source: str) -> list[str]:
    """The files a source names: a glob's matches, sorted, or the path itself."""
    return sorted(globlib.glob(source)) if any(ch in source for ch in "*?[") else [source]


def _expand(source: str, *, what: str) -> list[str]:
    if any(ch in source for ch in "*?["):
        paths = _matches(source)
        if not paths:
            raise InputError(f"no file matches the {what} pattern {source!r}")
        return paths
    path = Path(source)
    if not path.exists():
        raise InputError(f"{what} file not found", file=source)
    if path.is_dir():
        raise InputError(f"{what} path is a folder; give a file or a glob like 'dir/*.csv'", file=source)
    if not os.access(path, os.R_OK):
        raise InputError(f"{what} file is not readable (permissions)", file=source)
    return [source]


def _read_one(path: str) -> pl.LazyFrame:
    if path.lower().endswith(PARQUET_SUFFIXES):
        try:
            frame = pl.scan_parquet(path)
            frame.collect_schema()
        except Exception as exc:  # noqa: BLE001 - polars raises many types for a corrupt file
            raise InputError(f"not a readable Parquet file ({exc.__class__.__name__})", file=path) from None
        return frame.with_row_index(LINE, offset=2)
    head, complete, compression = _head(path)
    if not head.strip():
        raise InputError("the file is empty; expected a header line and data rows", file=path)
    encoding = _sniff_encoding(head, complete=complete)
    text_head = head.decode(encoding, errors="replace").lstrip("\ufeff")
    lines = [line for line in text_head.splitlines() if line.strip()]
    if len(lines) < 2 and complete:
        raise InputError("the file has a header but no data rows", file=path)
    separator = _sniff_separator(lines[0])
    options = dict(
        separator=separator,
        infer_schema=False,
        row_index_name=LINE,
        row_index_offset=2,
        truncate_ragged_lines=True,
    )
    if encoding == "utf-8":  # polars reads gzip and zstd itself, streaming
        return pl.scan_csv(path, **options)
    with (gzip.open if compression == "gzip" else open)(path, "rb") as handle:  # Latin-1 (or cp1252):
        data = handle.read().decode(encoding).encode("utf-8")  # transcode in memory, never on disk
    return pl.read_csv(io.BytesIO(data), **options).lazy()


HEAD_BYTES = 1 << 16
# What a file's first bytes say it is, when it is not text: read (gzip, zstd) or refused with advice.
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"))
_NOT_CSV = (
    (b"PK\x03\x04", "a zip archive (an Excel .xlsx workbook is one); extract or export the CSV"),
    (b"PAR1", "a Parquet file; give it a .parquet name"),
    (b"\xfd7zXZ\x00", "xz-compressed; decompress it, or compress it with gzip or zstd"),
    (b"BZh", "bzip2-compressed; decompress it, or compress it with gzip or zstd"),
)


def _compression(start: bytes) -> str | None:
    return next((kind for magic, kind in _COMPRESSED if start.startswith(magic)), None)


def compression_of(path: str) -> str | None:
    """'gzip' or 'zstd' when the file is compressed so (by its first bytes), else None."""
    with open(path, "rb") as handle:
        return _compression(handle.read(4))


def _lines(path: str) -> pl.LazyFrame:
    """A (compressed) text file's lines as they are, as the column `line`; invalid UTF-8 becomes U+FFFD."""
    return pl.scan_csv(path, has_header=False, separator="\x1f", quote_char=None, infer_schema=False,
                       encoding="utf8-lossy", new_columns=["line"])


@contextmanager
def reading(*sources: str | None) -> Iterator[None]:
    """Turns what polars raises, inside the block, reading a damaged or cut-short gzip or zstd file of
    `sources` (files or globs; an OSError, or in polars 1.x a ComputeError) into an InputError naming
    the file. Other errors pass as they are: a file is blamed only when it does not decompress to its end."""
    try:
        yield
    except (OSError, pl.exceptions.ComputeError) as exc:
        if isinstance(exc, OSError) and WriteError.is_write_only_failure(exc):
            raise
        paths = [path for source in sources if source for path in _matches(source) if os.path.isfile(path)]
        damaged = next((path for path in paths if compression_of(path) and not _decompresses(path)), None)
        if damaged is None:
            raise
        raise _damaged(damaged, exc) from None


def _damaged(path: str, exc: Exception) -> InputError:
    return InputError(f"the compressed file is damaged or cut short ({exc}); compress or export it again", file=path)


def _decompresses(path: str) -> bool:
    try:
        _lines(path).select(pl.len()).collect(engine="streaming")
    except (OSError, pl.exceptions.PolarsError):
        return False
    return True


def _head(path: str) -> tuple[bytes, bool, str | None]:
    """The first HEAD_BYTES of a CSV file's text (decompressed), whether that is all of it, and its
    compression. Files of another kind are refused with advice."""
    with open(path, "rb") as handle:
        raw = handle.read(HEAD_BYTES)
    for magic, advice in _NOT_CSV:
        if raw.startswith(magic) and not (magic == b"BZh" and raw[4:10] != b"1AY&SY"):
            raise InputError(f"the file is {advice}", file=path)
    compression = _compression(raw)
    if compression is None:
        return raw, len(raw) < HEAD_BYTES, None
    if compression == "gzip":
        with gzip.open(path, "rb") as handle:
            try:
                text = handle.read(HEAD_BYTES + 1)
            except (OSError, EOFError, zlib.error) as exc:
                raise _damaged(path, exc) from None
        return text[:HEAD_BYTES], len(text) <= HEAD_BYTES, compression
    # zstd: Python's standard library has no decompressor; polars reads the first lines
    try:
        lines = _lines(path).head(1000).collect()["line"]
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _damaged(path, exc) from None
    text = "\n".join(lines.fill_null("").to_list())
    if "\ufffd" in text:
        raise InputError("the zstd-compressed file is not UTF-8 text; re-export it as UTF-8 (nsm reads Latin-1 "
                         "from plain and gzip files only)", file=path)
    return text.encode("utf-8"), len(lines) < 1000, compression


def _sniff_encoding(head: bytes, *, complete: bool) -> str:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if complete or exc.start < len(head) - 4:  # not just a character cut at the end of the sample
            return "cp1252" if _is_cp1252(head) else "latin-1"
    return "utf-8"


def _is_cp1252(data: bytes) -> bool:
    try:
        data.decode("cp1252")
    except UnicodeDecodeError:
        return False
    return True


def _sniff_separator(header: str) -> str:
    counts = {sep: header.count(sep) for sep in (",", ";", "\t", "|")}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] > 0 else ","


def find_column(
    table: Table, role: str, *, override: str | None, required: bool, synonyms: tuple[str, ...] | None = None
) -> str | None:
    """Map a role (e.g. 'account_id') to a column of `table`, by override or by synonym."""
    if override:
        if override in table.columns:
            return override
        raise SchemaError(
            f"column '{override}' (set for {role}) is not in the file;{_suggest(override, table)}",
            file=table.name,
            column=override,
        )
    by_norm = {normalise_name(c): c for c in table.columns}
    for candidate in synonyms or SYNONYMS[role]:
        if candidate in by_norm:
            return by_norm[candidate]
    if required:
        raise SchemaError(
            f"no {role} column; looked for {', '.join(SYNONYMS[role][:6])}, ….{_suggest(role, table)}"
            f" Set it with --column {role}=NAME or [columns] in nsm.toml.",
            file=table.name,
        )
    return None


def _suggest(name: str, table: Table) -> str:
    close = difflib.get_close_matches(name, table.columns, n=3, cutoff=0.4)
    listed = ", ".join(table.columns[:12])
    hint = f" closest: {', '.join(close)}." if close else ""
    return f"{hint} Columns present: {listed}."


def text(column: str) -> pl.Expr:
    """A column as stripped text with the usual null spellings turned into null."""
    value = pl.col(column).cast(pl.String).str.strip_chars()
    return pl.when(value.is_in(NULL_TOKENS)).then(None).otherwise(value)


def detect_date_formats(frame: pl.LazyFrame, column: str) -> tuple[str, ...]:
    """The fewest formats (from _DATE_FORMATS) that parse the first 10,000 non-null values of `column`
    (looked for in its first 100,000 rows).

    Greedy cover: take the format that parses most of the remaining sample, repeat. Values that no
    format parses are left for `validate` to count and report.
    """
    # slice first, so the scan stops early; then keep up to 10,000 non-null values
    sample = frame.head(100_000).select(text(column).alias("v")).drop_nulls().head(10_000).collect().to_series()
    if sample.dtype != pl.String:
        return ()
    chosen: list[str] = []
    remaining = sample
    while remaining.len():
        hits = {}
        for f in (f for f in _DATE_FORMATS if f not in chosen):
            hits[f] = _parse_one(remaining, f).is_not_null()
            if hits[f].all():  # parses every remaining value: no later format can do better
                break
        best = max(hits, key=lambda f: (int(hits[f].sum()), -_DATE_FORMATS.index(f)), default=None)
        if best is None or not hits[best].any():
            break
        chosen.append(best)
        remaining = remaining.filter(~hits[best])
    return tuple(chosen)


def _parse_one(target: pl.Expr | pl.Series, fmt: str) -> pl.Expr | pl.Series:
    """Parse with one format (an expression or a Series); zoned formats are converted to naive UTC.
    Values with a time of day are nearly all distinct, so polars' cache of parsed values would only
    cost (15% of an event log's scan); plain dates repeat and keep it."""
    if fmt in _UNIX:
        if isinstance(target, pl.Series):
            return pl.DataFrame({"v": target}).select(_parse_one(pl.col("v"), fmt)).to_series()
        number = target.cast(pl.Float64 if fmt == "unix:s" else pl.Int64, strict=False)
        lo, hi = (bound * 1_000_000 // _UNIX[fmt] for bound in _UNIX_RANGE)
        micros = (number * _UNIX[fmt]).round().cast(pl.Int64) if fmt == "unix:s" else number * _UNIX[fmt]
        return pl.when(number.is_between(lo, hi, closed="left")).then(micros).cast(pl.Datetime("us"))
    cache = "%H" not in fmt
    if "%z" in fmt:
        return target.str.to_datetime(fmt, strict=False, time_unit="us", time_zone="UTC",
                                      cache=cache).dt.replace_time_zone(None)
    return target.str.to_datetime(fmt, strict=False, time_unit="us", cache=cache)


def parse_datetime(column: str, formats: tuple[str, ...], dtype: pl.DataType, *, strip: bool = True) -> pl.Expr:
    """Parse ISO dates/datetimes to naive UTC `Datetime('us')`; failures become null. `strip=False`
    parses cells as they are (quicker; a cell with edge whitespace then fails to parse)."""
    if dtype == pl.Date or isinstance(dtype, pl.Datetime):
        expr = pl.col(column)
        if isinstance(dtype, pl.Datetime) and dtype.time_zone:
            expr = expr.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return expr.cast(pl.Datetime("us"))
    value = pl.col(column).cast(pl.String)
    parsed = [_parse_one(value.str.strip_chars() if strip else value, f) for f in formats]
    if not parsed:  # no format parses the sample: every value fails (and is counted as such)
        return pl.lit(None, dtype=pl.Datetime("us"))
    return pl.coalesce(parsed) if len(parsed) > 1 else parsed[0]


def parse_number(column: str, dtype: pl.DataType) -> pl.Expr:
    """Numbers with currency signs, spaces or thousands separators -> Float64; else null."""
    if dtype.is_numeric():
        return pl.col(column).cast(pl.Float64)
    cleaned = text(column).str.replace_all(r"[\s$€£¥,_']", "")
    cleaned = cleaned.str.replace(r"^\((.*)\)$", "-$1")  # accounting negatives: (12.50)
    return cleaned.cast(pl.Float64, strict=False)


def date_format_label(formats: tuple[str, ...]) -> str:
    names = {"unix:s": "Unix seconds", "unix:ms": "Unix milliseconds"}
    return ", ".join(names.get(f, f.replace("%.f", "[.fff]")) for f in formats) or "none"
