"""Input checks: turn loaded tables into clean typed frames, warnings and exclusion counts.

Every dropped row and every excluded account is counted by reason; nothing is dropped
silently. Problems that make the analysis impossible raise `InputError` (exit code 3).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl

from nsm_cli.config import Settings
from nsm_cli.errors import DataWarning, InputError, InsufficientDataError
from nsm_cli.load import (
    FILE,
    LINE,
    NULL_TOKENS,
    SEGMENT_NAMES,
    Table,
    date_format_label,
    detect_date_formats,
    find_column,
    normalise_name,
    parse_datetime,
    parse_number,
    text,
)

ID = "account_id"
_BIT = pl.lit(pl.Series([1 << i for i in range(64)], dtype=pl.UInt64))  # _BIT.gather(i): the word with bit i set


@dataclass(frozen=True, slots=True)
class Usage:
    """Usage data in one of three shapes, as a lazy frame: an event log is streamed from its file
    each time it is read and never held in memory whole; the other shapes are small and in memory.

    - `events`: account_id, ts, event, [user_id], [value]
    - `wide`: account_id, ts (the period date), one Float64 column per measure
    - `snapshot`: account_id, one Float64 column per measure (no time; taken as in-window)

    Cleaning also leaves `counts` (what `restrict_usage` reports) and `restrict_usage` the
    `event_names` analysed.
    """

    kind: str
    frame: pl.LazyFrame | pl.DataFrame
    measures: tuple[str, ...] = ()
    has_user: bool = False
    has_value: bool = False
    counts: UsageCounts | None = None
    event_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UsageCounts:
    """What `restrict_usage` reports, counted while cleaning (in the same scan, for an event log).

    Rows kept by cleaning: of accounts not in the accounts file (per id: rows, first line); of known
    accounts (rows, accounts with any); after --as-of and before signup (with first lines); per event
    type (known accounts, up to --as-of: rows, and for a profile accounts, first and last time); the
    latest time; and `blocks`, the table (from `volumes`) that `per_event` and `known_accounts` come
    from, for other subsets of event types."""

    unknown: pl.DataFrame  # account_id, rows, line
    known_rows: int
    known_accounts: int
    late: int
    late_line: int | None
    early: int
    early_line: int | None
    per_event: pl.DataFrame | None  # event (String), rows[, accounts, first, last: with `profile`]
    last: datetime | None
    blocks: pl.DataFrame  # the result of UsageCounts.volumes

    @staticmethod
    def joined(rows: pl.LazyFrame, accounts: pl.DataFrame) -> pl.LazyFrame:
        """Usage rows with `__row` (their account's row in `accounts`, null when it is not there) and the
        account's `signup`: what `totals` and `volumes` read, and what candidates take their windows from."""
        return rows.join(accounts.select(ID, "signup").with_row_index("__row").lazy(), on=ID, how="left")

    @staticmethod
    def totals(kept: pl.Expr, as_of: datetime | None, *, dated: bool = True) -> list[pl.Expr]:
        """Aggregations over `joined` rows (`kept`: which rows cleaning keeps) that `of` reads: rows of known
        accounts, those before signup and (with `as_of`) after it, with the first such line. Plain sums,
        so that they ride along in a streamed scan's one-row select instead of a consumer of their own."""
        known = (kept & pl.col("__row").is_not_null()).fill_null(False)
        aggs = [known.sum().alias("known_rows")]
        if dated:
            late = known & (pl.col("ts") > as_of) if as_of is not None else pl.lit(False)
            aggs.append((known & (pl.col("ts") < pl.col("signup")) & ~late).fill_null(False).sum().alias("early"))
            if as_of is not None:  # an export often runs past --as-of: count those rows and find the first here
                aggs += counted("late", late)
        return aggs

    @staticmethod
    def volumes(known: pl.LazyFrame, as_of: datetime | None, *, profile: bool = False) -> pl.LazyFrame:
        """Over the rows of known accounts (`joined` rows, kept, with an account), per event type (when
        there is one) and block of 64 accounts (`__word` = __row // 64): the rows up to `as_of` (the rows
        analysed, `rows`) and, as the bits of a 64-bit word, the accounts with any row (`__bits`). Its few
        groups give `of` the rows per event type and the accounts with usage; a distinct count of the
        accounts over every row instead made the streamed scan hold rows back (1.2 GB more for a 32M-row
        log), and cost more. `profile` (for `nsm inspect`) adds the accounts with rows analysed
        (`__counted_bits`) and the first and last time of those rows."""
        schema = known.collect_schema()
        counted = pl.col("ts") <= as_of if as_of is not None and "ts" in schema else pl.lit(True)
        keys = ["event", "__word"] if "event" in schema else ["__word"]
        bit = _BIT.gather(pl.col("__row") % 64)
        columns, aggs = [counted.alias("__counted"), bit.alias("__bit")], [pl.col("__counted").sum().alias("rows"),
                                                                             pl.col("__bit").bitwise_or().alias("__bits")]
        if profile:
            columns += [pl.when(counted).then(bit).otherwise(0).alias("__counted_bit"),
                        pl.when(counted).then(pl.col("ts")).alias("ts")]
            aggs += [pl.col("__counted_bit").bitwise_or().alias("__counted_bits"), pl.col("ts").min().alias("first"),
                     pl.col("ts").max().alias("last")]
        return known.select(*keys[:-1], (pl.col("__row") // 64).alias("__word"), *columns).group_by(keys).agg(aggs)

    @staticmethod
    def accounts_in(blocks: pl.DataFrame, bits: str) -> int:
        """How many accounts have a bit set in column `bits` of (some rows of) `blocks` (from `volumes`)."""
        union = blocks.group_by("__word").agg(pl.col(bits).bitwise_or())
        return int(union.select(pl.col(bits).bitwise_count_ones().sum()).item() or 0)

    @classmethod
    def of(cls, totals: dict, volumes: pl.DataFrame, kept_rows: int, last: datetime | None,
           kept: pl.LazyFrame, accounts: pl.DataFrame, as_of: datetime | None) -> UsageCounts:
        """From the results of `totals` (by name) and `volumes`, and the number and latest time of all
        kept rows. Which accounts are unknown, and the first line dated before its signup, are looked up
        again only when there is such a row (one more scan each)."""
        unknown = pl.DataFrame(schema={ID: pl.String, "rows": pl.UInt32, "line": pl.Int64})
        if kept_rows > totals["known_rows"]:
            unknown = (kept.join(accounts.select(ID).lazy(), on=ID, how="anti").group_by(ID)
                       .agg(pl.len().alias("rows"), pl.col(LINE).min().alias("line")).collect(engine="streaming"))
        per_event = None
        if "event" in volumes.columns:
            volumes = volumes.with_columns(pl.col("event").cast(pl.String))
            profile = [pl.col("__counted_bits").bitwise_count_ones().sum().alias("accounts"), pl.col("first").min(),
                       pl.col("last").max()] if "__counted_bits" in volumes.columns else []
            per_event = volumes.group_by("event").agg(pl.col("rows").sum(), *profile).filter(pl.col("rows") > 0)
        late, early = totals.get("late") or 0, totals.get("early") or 0
        known = kept.join(accounts.select(ID, "signup").lazy(), on=ID)
        not_late = pl.col("ts") <= as_of if as_of is not None else pl.lit(True)
        return cls(unknown.with_columns(pl.col(ID).cast(pl.String)), totals["known_rows"] or 0,
                   cls.accounts_in(volumes, "__bits"), late, totals.get("late_line"),
                   early, first_line(known, (pl.col("ts") < pl.col("signup")) & not_late)[1] if early else None,
                   per_event, last, volumes)


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What nsm understood of one input: its shape, size, column mapping and date range."""

    role: str  # accounts | usage | mrr
    path: str
    shape: str  # accounts | events | wide | snapshot | mrr
    rows: int
    columns: dict[str, str]  # role -> column in the file
    other_columns: tuple[str, ...]
    first_date: datetime | None
    last_date: datetime | None

    def to_dict(self) -> dict[str, object]:
        return {"role": self.role, "path": self.path, "shape": self.shape, "rows": self.rows,
                "columns": self.columns, "other_columns": list(self.other_columns),
                "first_date": self.first_date.isoformat() if self.first_date else None,
                "last_date": self.last_date.isoformat() if self.last_date else None}


@dataclass(slots=True)
class Problems:
    """Collects warnings, per-reason exclusion counts and file descriptions while cleaning."""

    warnings: list[DataWarning] = field(default_factory=list)
    excluded: Counter[str] = field(default_factory=Counter)
    files: list[FileInfo] = field(default_factory=list)

    def describe(self, role: str, table: Table, shape: str, rows: int, mapping: dict[str, str | None],
                 dates: tuple[datetime | None, datetime | None] = (None, None)) -> None:
        used = {c for c in mapping.values() if c}
        self.files.append(FileInfo(role, table.name, shape, rows, {k: v for k, v in mapping.items() if v},
                                   tuple(c for c in table.columns if c not in used and c != FILE), *dates))

    def warn(self, code: str, message: str, *, count: int = 0, file: str | None = None,
             column: str | None = None, example_row: int | None = None, advice: str = "") -> None:
        self.warnings.append(DataWarning(code, message, count, file, column, example_row, advice))


def first_line(frame: pl.DataFrame | pl.LazyFrame, mask: pl.Expr) -> tuple[int, int | None]:
    """How many rows match `mask`, and the line number of the first one (a lazy frame is streamed)."""
    hits = frame.lazy().select(mask.sum().alias("n"), pl.col(LINE).filter(mask).min().alias("line")).collect(
        engine="streaming").row(0)
    return int(hits[0] or 0), (int(hits[1]) if hits[1] is not None else None)


def counted(name: str, mask: pl.Expr) -> list[pl.Expr]:
    """Aggregations `name` (rows matching `mask`) and `name_line` (the first one's line), for a streamed
    check that cannot call `first_line` on rows it does not hold."""
    return [mask.fill_null(False).sum().alias(name), pl.col(LINE).filter(mask.fill_null(False)).min().alias(f"{name}_line")]


def date_range(frame: pl.DataFrame, column: str | None) -> tuple[datetime | None, datetime | None]:
    if column is None or column not in frame.columns:
        return None, None
    return frame[column].min(), frame[column].max()


def _bad_date(raw: str, parsed: str) -> pl.Expr:
    return text(raw).is_not_null() & pl.col(parsed).is_null()


def check_dates(frame: pl.DataFrame, table: Table, column: str, formats: tuple[str, ...], *, present: pl.Expr,
                bad: pl.Expr, problems: Problems) -> None:
    """Refuse a date column that mostly fails to parse; warn when zoned and naive values are mixed."""
    n_bad, line = first_line(frame, bad)
    date_verdict(frame.select(present.sum()).item(), n_bad, line, table, column, formats, problems)


def date_verdict(n_present: int, n_bad: int, line: int | None, table: Table, column: str, formats: tuple[str, ...],
                 problems: Problems) -> None:
    """check_dates' verdict from counts already taken."""
    if n_present and n_bad > 0.5 * n_present:
        example = _raw_value(table, column, line)
        raise InputError(
            f"{n_bad} of {n_present} values are not ISO dates (first: {example!r}); expected dates like "
            f"2025-01-31, datetimes like 2025-01-31T09:30:00Z or Unix times (seconds or milliseconds). Formats "
            f"recognised in the file: {date_format_label(formats)}",
            file=table.name, column=column, row=line)
    zoned = [f for f in formats if "%z" in f]
    if zoned and len(zoned) < len(formats):
        problems.warn("mixed_time_zones", f"column '{column}' mixes values with and without a time zone; zoned "
                      "values were converted to UTC and the others taken as UTC", file=table.name, column=column,
                      advice="export all times in UTC")


def _raw_value(table: Table, column: str, line: int | None) -> str:
    if line is None:
        return ""
    value = table.frame.filter(pl.col(LINE) == line).select(pl.col(column).cast(pl.String)).collect()
    return str(value.item()) if value.height else ""


def clean_accounts(table: Table, settings: Settings, problems: Problems) -> tuple[pl.DataFrame, int, tuple[str, ...]]:
    """Typed accounts (account_id, signup, churn, expansion, segments...), accounts in file, segments."""
    cols = settings.columns
    id_col = find_column(table, ID, override=cols.get(ID), required=True)
    signup_col = find_column(table, "signup_date", override=cols.get("signup_date"), required=True)
    churn_col = find_column(table, "churn_date", override=cols.get("churn_date"), required=False)
    exp_col = find_column(table, "expansion_date", override=cols.get("expansion_date"), required=False)
    segments = _segment_columns(table, settings, used={id_col, signup_col, churn_col, exp_col})
    schema = table.frame.collect_schema()
    dated = {"signup": signup_col, "churn": churn_col, "expansion": exp_col}
    exprs = [text(id_col).alias(ID), pl.col(LINE)]
    formats = {name: detect_date_formats(table.frame, col) for name, col in dated.items() if col is not None}
    for name, col in dated.items():
        if col is None:
            exprs.append(pl.lit(None, dtype=pl.Datetime("us")).alias(name))
            continue
        exprs += [parse_datetime(col, formats[name], schema[col]).alias(name), pl.col(col).alias(f"__raw_{name}")]
    exprs += [text(s).alias(f"segment:{s}") for s in segments]
    frame = table.frame.select(exprs).collect()
    for name, col in dated.items():
        if col is not None:
            check_dates(frame, table, col, formats[name],
                        present=text(f"__raw_{name}").is_not_null(), bad=_bad_date(f"__raw_{name}", name),
                        problems=problems)
    mapping = {ID: id_col, "signup_date": signup_col, "churn_date": churn_col, "expansion_date": exp_col}
    problems.describe("accounts", table, "accounts", frame.height, mapping, date_range(frame, "signup"))
    return _exclude_bad_accounts(frame, table, dated, problems), _accounts_in_file(frame), segments


def _segment_columns(table: Table, settings: Settings, *, used: set[str | None]) -> tuple[str, ...]:
    if settings.segments is not None:
        missing = [s for s in settings.segments if s not in table.columns]
        if missing:
            raise InputError(f"segment column(s) {missing} not found; columns: {list(table.columns)}", file=table.name)
        return settings.segments
    return tuple(c for c in table.columns if normalise_name(c) in SEGMENT_NAMES and c not in used)


def _accounts_in_file(frame: pl.DataFrame) -> int:
    return frame.select(pl.col(ID).drop_nulls().n_unique() + pl.col(ID).null_count()).item()


def _exclude_bad_accounts(frame: pl.DataFrame, table: Table, dated: dict[str, str | None], problems: Problems) -> pl.DataFrame:
    checks = [
        ("missing_account_id", pl.col(ID).is_null(), ID, "fill in the id or remove the row"),
    ]
    for name in ("signup", "churn", "expansion"):
        col = dated[name]
        if col is not None:
            checks.append((f"invalid_{name}_date", _bad_date(f"__raw_{name}", name), col,
                           "use ISO dates like 2025-01-31 or 2025-01-31T09:30:00Z"))
    checks.append(("missing_signup_date", pl.col("signup").is_null(), dated["signup"], "every account needs a signup date"))
    checks.append(("churn_before_signup", pl.col("churn") < pl.col("signup"), dated["churn"], "check the churn and signup dates"))
    keep = frame
    for reason, mask, column, advice in checks:
        mask = mask.fill_null(False)
        count, line = first_line(keep, mask)
        if count:
            bad = keep.filter(mask)
            n_accounts = _accounts_in_file(bad)
            problems.excluded[reason] += n_accounts
            problems.warn(reason, f"{n_accounts} account(s) excluded: {reason.replace('_', ' ')}",
                          count=n_accounts, file=table.name, column=column, example_row=line, advice=advice)
            keep = keep.filter(~mask)
    keep = _resolve_duplicates(keep, table, problems)
    return keep.drop([c for c in keep.columns if c.startswith("__raw_")])


def _resolve_duplicates(frame: pl.DataFrame, table: Table, problems: Problems) -> pl.DataFrame:
    """Identical duplicate rows collapse to one (warning); conflicting duplicates are excluded."""
    payload = [c for c in frame.columns if c not in (LINE, FILE) and not c.startswith("__raw_")]
    distinct = frame.unique(subset=payload, keep="first", maintain_order=True)
    identical = frame.height - distinct.height
    if identical:
        problems.warn("duplicate_rows", f"{identical} exact duplicate account row(s) collapsed",
                      count=identical, file=table.name, column=ID)
    conflict = pl.col(ID).is_duplicated()
    count, line = first_line(distinct, conflict)
    if not count:
        return distinct
    n_ids = distinct.filter(conflict).select(pl.col(ID).n_unique()).item()
    problems.excluded["duplicate_conflicting"] += n_ids
    problems.warn("duplicate_conflicting", f"{n_ids} account id(s) appear on several rows with different "
                  "dates or segments; excluded because nsm cannot tell which row is right",
                  count=n_ids, file=table.name, column=ID, example_row=line,
                  advice="keep one row per account")
    return distinct.filter(~conflict)


def _parsed_events(table: Table, roles: tuple, formats: tuple[str, ...], *, careful: bool) -> pl.LazyFrame:
    """The event log parsed, as a lazy (streamed) plan. `careful` strips every text cell and turns null
    spellings into null first; the fast plan reads cells as they are (several times quicker on 10M
    rows) and flags what it cannot vouch for, so that the caller can fall back to the careful plan
    whenever the two could differ."""
    id_col, ts_col, ev_col, user_col, value_col = roles
    schema = table.frame.collect_schema()
    def cell(column: str) -> pl.Expr:
        return text(column) if careful else pl.col(column).cast(pl.String)

    exprs = [cell(id_col).alias(ID), parse_datetime(ts_col, formats, schema[ts_col], strip=careful).alias("ts"),
             cell(ev_col).cast(pl.Categorical).alias("event"), pl.col(LINE), cell(ts_col).is_not_null().alias("__has_ts")]
    if user_col:  # only distinct users are ever counted: a 64-bit hash stands in for the text, 8 bytes a row
        user = cell(user_col)
        exprs.append(pl.when(user.is_not_null()).then(user.hash(seed=0)).alias("user_id"))
        if not careful:
            raw = pl.col(user_col).cast(pl.String)
            dirty = (raw.str.strip_chars() != raw) | raw.is_in(NULL_TOKENS)  # where `text` would change it
            exprs.append(dirty.fill_null(False).alias("__dirty_user"))
    if value_col:
        exprs += [parse_number(value_col, schema[value_col]).alias("value"),
                  text(value_col).is_not_null().alias("__has_value")]
    flags = [(pl.col("__has_ts") & pl.col("ts").is_null()).alias("__bad_ts")]
    if value_col:
        flags.append((pl.col("__has_value") & pl.col("value").is_null()).alias("__bad_value"))
    return table.frame.select(exprs).with_columns(flags)


# The rows an event log keeps, and why the others go (in this order: each row counts under the first
# reason that applies). The number picks the file column from (id, timestamp, event).
_EVENT_DROPS = (
    ("events_missing_account_id", pl.col(ID).is_null(), 0, "rows without an account id are ignored"),
    ("events_invalid_timestamp", pl.col("__bad_ts"), 1, None),
    ("events_missing_timestamp", pl.col("ts").is_null(), 1, "rows without a time are ignored"),
    ("events_missing_name", pl.col("event").is_null(), 2, "rows without an event name are ignored"),
)
_KEPT = pl.col(ID).is_not_null() & pl.col("ts").is_not_null() & pl.col("event").is_not_null()


def _event_checks(rows: pl.LazyFrame, has_user: bool, has_value: bool, also: list[pl.Expr]) -> pl.LazyFrame:
    """One row of counts (and first lines) for every check of the event log, and the aggregations `also`."""
    exprs = [pl.len().alias("rows"), (pl.col("ts").is_not_null() | pl.col("__bad_ts")).sum().alias("ts_present"),
             pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last"),
             _KEPT.sum().alias("kept"), pl.col("ts").filter(_KEPT).max().alias("kept_last"),
             *counted("bad_ts", pl.col("__bad_ts"))]
    earlier = pl.lit(False)
    for code, mask, _column, _advice in _EVENT_DROPS:
        exprs += counted(code, mask & ~earlier)
        earlier = earlier | mask
    if has_user and "__dirty_user" in rows.collect_schema():
        exprs.append(pl.col("__dirty_user").any().alias("dirty_user"))
    if has_value:
        exprs += counted("negative_value", pl.col("value") < 0) + counted("bad_value", pl.col("__bad_value") & _KEPT)
    return rows.select(*exprs, *also)


def _needs_cleaning(values: pl.Series) -> bool:
    """Whether any of these distinct text values has edge whitespace or is a null spelling."""
    return bool(pl.DataFrame({"v": values.cast(pl.String)}).select(text("v").ne_missing(pl.col("v")).any()).item())


ExtraPlans = Callable[[pl.LazyFrame], list[pl.LazyFrame]]


def clean_events(table: Table, settings: Settings, problems: Problems, accounts: pl.DataFrame, *,
                 also: ExtraPlans | None = None, profile: bool = False) -> tuple[Usage, list[pl.DataFrame]]:
    """Event log -> account_id, ts, event[, user_id][, value]; bad rows dropped and counted.

    One streaming scan takes every count the checks and `restrict_usage` need, and the results of
    `also`'s plans over the rows of known accounts (the pipeline: the events inside each account's
    window); the parsed log itself is never held in memory. A second, careful scan runs only when
    the fast one finds text it cannot vouch for."""
    cols = settings.columns
    id_col = find_column(table, ID, override=cols.get(ID), required=True)
    ts_col = find_column(table, "timestamp", override=cols.get("timestamp"), required=True)
    ev_col = find_column(table, "event", override=cols.get("event"), required=True)
    user_col = find_column(table, "user_id", override=cols.get("user_id"), required=False)
    value_col = find_column(table, "value", override=cols.get("value"), required=False)
    formats = detect_date_formats(table.frame, ts_col)
    roles = (id_col, ts_col, ev_col, user_col, value_col)
    columns = [ID, "ts", "event", LINE, *(["user_id"] if user_col else []), *(["value"] if value_col else [])]
    for careful in (False, True):
        rows = _parsed_events(table, roles, formats, careful=careful)
        kept = rows.filter(_KEPT).select(columns)
        joined = UsageCounts.joined(rows, accounts).cache()  # parsed and joined once for every plan
        known = joined.filter(_KEPT & pl.col("__row").is_not_null()).select(*columns, "__row", "signup")
        checks = _event_checks(joined, user_col is not None, value_col is not None,
                               UsageCounts.totals(_KEPT, settings.as_of))
        checks, volumes, *extra_frames = pl.collect_all(
            [checks, UsageCounts.volumes(known, settings.as_of, profile=profile), *(also(known) if also else [])],
            engine="streaming")
        found = checks.row(0, named=True)
        counts = UsageCounts.of(found, volumes, found["kept"], found["kept_last"], kept, accounts, settings.as_of)
        if careful or not (found["bad_ts"] or found.get("dirty_user") or _needs_cleaning(counts.per_event["event"])
                           or _needs_cleaning(counts.unknown[ID])):
            break
    date_verdict(found["ts_present"], found["bad_ts"], found["bad_ts_line"], table, ts_col, formats, problems)
    mapping = {ID: id_col, "timestamp": ts_col, "event": ev_col, "user_id": user_col, "value": value_col}
    problems.describe("usage", table, "events", found["rows"], mapping, (found["first"], found["last"]))
    if value_col and found["negative_value"]:
        problems.warn("events_negative_value", f"{found['negative_value']} negative value(s); kept as they are "
                      "(sum may shrink)", count=found["negative_value"], file=table.name, column=value_col,
                      example_row=found["negative_value_line"])
    for code, _mask, column, advice in _EVENT_DROPS:
        if found[code]:
            _warn_dropped(problems, code, found[code], found[f"{code}_line"], table, roles[column],
                          advice or f"formats seen: {date_format_label(formats)}; use one ISO format")
    if value_col and found["bad_value"]:
        problems.warn("events_invalid_value", f"{found['bad_value']} value(s) are not numbers; treated as missing",
                      count=found["bad_value"], file=table.name, column=value_col, example_row=found["bad_value_line"])
    usage = Usage("events", kept, has_user=user_col is not None, has_value=value_col is not None, counts=counts)
    return usage, extra_frames


def _drop_rows(frame: pl.DataFrame, table: Table, drops: list, problems: Problems) -> pl.DataFrame:
    for code, mask, column, advice in drops:
        mask = mask.fill_null(False)
        count, line = first_line(frame, mask)
        if count:
            _warn_dropped(problems, code, count, line, table, column, advice)
            frame = frame.filter(~mask)
    return frame


def _warn_dropped(problems: Problems, code: str, count: int, line: int | None, table: Table, column: str | None,
                  advice: str) -> None:
    problems.warn(code, f"{count} row(s) dropped: {code.replace('_', ' ')}", count=count, file=table.name,
                  column=column, example_row=line, advice=advice)


def clean_periodic(table: Table, settings: Settings, problems: Problems, accounts: pl.DataFrame, *,
                   date_col: str | None) -> Usage:
    """Wide periodic table (date + numeric measures) or per-account snapshot (no date)."""
    cols = settings.columns
    schema = table.frame.collect_schema()
    id_col = find_column(table, ID, override=cols.get(ID), required=True)
    exprs = [text(id_col).alias(ID), pl.col(LINE)]
    if date_col:
        formats = detect_date_formats(table.frame, date_col)
        exprs.append(parse_datetime(date_col, formats, schema[date_col]).alias("ts"))
    others = [c for c in table.columns if c not in (id_col, date_col, FILE)]
    frame = table.frame.select(exprs + [parse_number(c, schema[c]).alias(c) for c in others]
                               + [text(c).is_not_null().alias(f"__raw_{c}") for c in others]).collect()
    measures = []
    for c in others:
        raw = frame[f"__raw_{c}"].sum()
        bad = frame.select((pl.col(f"__raw_{c}") & pl.col(c).is_null()).sum()).item()
        if raw == 0 or bad > 0.5 * raw:
            problems.warn("column_not_numeric", f"column '{c}' is not numeric; not used as a measure",
                          file=table.name, column=c)
        else:
            measures.append(c)
            if bad:
                count, line = first_line(frame, pl.col(f"__raw_{c}") & pl.col(c).is_null())
                problems.warn("invalid_number", f"{count} value(s) are not numbers; treated as missing",
                              count=count, file=table.name, column=c, example_row=line)
    frame = frame.select([ID, LINE] + (["ts"] if date_col else []) + measures)
    problems.describe("usage", table, "wide" if date_col else "snapshot", frame.height,
                      {ID: id_col, "date": date_col, **{f"measure:{m}": m for m in measures}}, date_range(frame, "ts"))
    negative = [m for m in measures if frame.select((pl.col(m) < 0).any()).item()]
    for m in negative:
        count, line = first_line(frame, pl.col(m) < 0)
        problems.warn("negative_measure", f"{count} negative value(s) in '{m}'; kept as they are",
                      count=count, file=table.name, column=m, example_row=line)
    drops = [("rows_missing_account_id", pl.col(ID).is_null(), id_col, "rows without an account id are ignored")]
    if date_col:
        drops.append(("rows_invalid_date", pl.col("ts").is_null(), date_col, "use ISO dates like 2025-01-31"))
    frame = _drop_rows(frame, table, drops, problems)
    if not measures:
        raise InputError("no numeric measure columns found in the usage table", file=table.name)
    if not date_col:
        problems.warn("snapshot_timing_unknown", "the usage table has no date column: its values are taken as "
                      "measured in the observation window, which nsm cannot check; metrics that follow account "
                      "age are flagged tracks_tenure", file=table.name)
    kept = frame.lazy()
    joined = UsageCounts.joined(kept, accounts)
    totals = joined.select(UsageCounts.totals(pl.lit(True), settings.as_of, dated=date_col is not None))
    volumes = UsageCounts.volumes(joined.filter(pl.col("__row").is_not_null()), settings.as_of)
    counts = UsageCounts.of(totals.collect().row(0, named=True), volumes.collect(), frame.height,
                            frame["ts"].max() if date_col else None, kept, accounts, settings.as_of)
    return Usage("wide" if date_col else "snapshot", kept, measures=tuple(measures), counts=counts)


def clean_usage(table: Table, settings: Settings, problems: Problems, accounts: pl.DataFrame, *,
                also: ExtraPlans | None = None, profile: bool = False) -> tuple[Usage, list[pl.DataFrame]]:
    """Detect the usage shape from its columns and clean it (`accounts`: the clean accounts). For an
    event log, `also` gets the rows of known accounts and returns plans collected in the same scan
    (their results come back in order), and `profile` counts accounts and times per event type too
    (`UsageCounts.volumes`); the other shapes ignore both."""
    cols = settings.columns
    has_event = find_column(table, "event", override=cols.get("event"), required=False)
    ts = find_column(table, "timestamp", override=cols.get("timestamp"), required=False)
    if has_event and ts:
        return clean_events(table, settings, problems, accounts, also=also, profile=profile)
    date_col = find_column(table, "date", override=cols.get("date"), required=False) or ts
    return clean_periodic(table, settings, problems, accounts, date_col=date_col), []


def clean_mrr(table: Table, settings: Settings, problems: Problems) -> pl.DataFrame:
    """MRR history -> account_id, ts, mrr (negative or non-numeric values dropped and counted)."""
    cols = settings.columns
    schema = table.frame.collect_schema()
    id_col = find_column(table, ID, override=cols.get(ID), required=True)
    date_col = find_column(table, "date", override=cols.get("date"), required=True)
    mrr_col = find_column(table, "mrr", override=cols.get("mrr"), required=True)
    formats = detect_date_formats(table.frame, date_col)
    frame = table.frame.select(
        text(id_col).alias(ID), parse_datetime(date_col, formats, schema[date_col]).alias("ts"),
        parse_number(mrr_col, schema[mrr_col]).alias("mrr"), pl.col(LINE),
        text(date_col).is_not_null().alias("__has_date"),
    ).collect()
    check_dates(frame, table, date_col, formats, present=pl.col("__has_date"),
                bad=pl.col("__has_date") & pl.col("ts").is_null(), problems=problems)
    frame = frame.drop("__has_date")
    problems.describe("mrr", table, "mrr", frame.height, {ID: id_col, "date": date_col, "mrr": mrr_col},
                      date_range(frame, "ts"))
    drops = [
        ("mrr_missing_account_id", pl.col(ID).is_null(), id_col, "rows without an account id are ignored"),
        ("mrr_invalid_date", pl.col("ts").is_null(), date_col, f"formats seen: {date_format_label(formats)}"),
        ("mrr_invalid_amount", pl.col("mrr").is_null(), mrr_col, "MRR must be a number like 49.00"),
        ("mrr_negative", pl.col("mrr") < 0, mrr_col, "MRR cannot be negative; check refunds/credits"),
    ]
    return _drop_rows(frame, table, drops, problems).sort(ID, "ts")


def latest_date(accounts: pl.DataFrame, usage: Usage | None, mrr: pl.DataFrame | None) -> datetime:
    """The default `as_of`: the latest date seen in any input."""
    candidates = [accounts.select(pl.max_horizontal(pl.col("signup").max(), pl.col("churn").max(),
                                                    pl.col("expansion").max())).item()]
    if usage is not None and usage.counts is not None:
        candidates.append(usage.counts.last)
    if mrr is not None:
        candidates.append(mrr["ts"].max())
    values = [c for c in candidates if c is not None]
    if not values:
        raise InsufficientDataError("no valid dates in any input")
    return max(values)


def restrict_usage(usage: Usage, accounts: pl.DataFrame, as_of: datetime, settings: Settings,
                   table: Table, problems: Problems) -> Usage:
    """Drop (and count) usage rows for unknown accounts and after as_of, warn about rows before
    signup, cap event types. Every count was taken while cleaning (`usage.counts`, whose late rows
    are those after --as-of: without it, as_of is the latest date and nothing is late); the rows
    are only narrowed by lazy filters."""
    counts = usage.counts
    frame = usage.frame
    if counts.unknown.height:
        count = int(counts.unknown["rows"].sum())
        problems.warn("usage_unknown_accounts", f"{count} usage row(s) for {counts.unknown.height} account id(s) not "
                      "in the accounts file (or excluded from it) are ignored", count=count, file=table.name,
                      column=ID, example_row=int(counts.unknown["line"].min()),
                      advice="check that both exports use the same account id")
        frame = frame.filter(pl.col(ID).is_in(accounts[ID].implode()))
    if counts.late:
        problems.warn("usage_after_as_of", f"{counts.late} usage row(s) after as_of ({as_of:%Y-%m-%d}) are ignored",
                      count=counts.late, file=table.name, example_row=counts.late_line)
        frame = frame.filter(pl.col("ts") <= as_of)
    if counts.early:
        problems.warn("usage_before_signup", f"{counts.early} usage row(s) are dated before their account's "
                      "signup; they fall outside every window and are ignored", count=counts.early,
                      file=table.name, example_row=counts.early_line,
                      advice="check the signup dates or the event time zone")
    silent = accounts.height - counts.known_accounts
    if silent:
        problems.warn("accounts_without_usage", f"{silent} account(s) have no usage rows at all; they count as 0 "
                      "for every candidate (not dropped)", count=silent, file=table.name, column=ID)
    names: tuple[str, ...] = ()
    if usage.kind == "events":
        frame, names = _cap_events(frame, counts.per_event, settings.max_events, table, problems)
    return Usage(usage.kind, frame.drop(LINE), usage.measures, usage.has_user, usage.has_value, counts, names)


def _cap_events(frame: pl.LazyFrame, per_event: pl.DataFrame, max_events: int, table: Table,
                problems: Problems) -> tuple[pl.LazyFrame, tuple[str, ...]]:
    """Keep the `max_events` event types with the most rows (of known accounts, up to as_of); also
    returns the names kept, sorted."""
    volumes = per_event.rename({"rows": "len"}).sort(["len", "event"], descending=[True, False])
    if volumes.height <= max_events:
        return frame, tuple(sorted(volumes["event"]))
    kept = volumes.head(max_events)["event"]
    dropped = volumes.height - max_events
    problems.warn("events_capped", f"{volumes.height} distinct event types; kept the {max_events} with the most "
                  f"rows and ignored {dropped} rarer ones", count=dropped, file=table.name, column="event",
                  advice="raise --max-events to analyse more")
    return frame.filter(pl.col("event").cast(pl.String).is_in(kept.implode())), tuple(sorted(kept))
