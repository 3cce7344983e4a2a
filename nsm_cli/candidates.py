"""Candidate metrics per account, measured only inside each account's observation window.

Every event (and `any`, all events together) gives `count`, `active_days`, `active_weeks`,
`days_to_first`, and when the columns exist `users`, `per_user` and `sum` (of `value`).
A wide periodic table gives `sum`, `mean`, `active_periods` per measure; a per-account
snapshot gives `value`. `[[candidate]]` entries of nsm.toml add event sets, filters and
ratios. Accounts without usage get 0 (and window + 1 for `days_to_first`), never dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from nsm_cli import kernels
from nsm_cli.config import AGGREGATIONS, CandidateSpec, Settings
from nsm_cli.errors import DataWarning, UsageError
from nsm_cli.load import LINE
from nsm_cli.outcomes import window_bounds
from nsm_cli.validate import Usage

ID = "account_id"
WIDE_AGGREGATIONS = ("sum", "mean", "active_periods")
MIN_ACCOUNTS_WITH = 10  # a candidate needs this many accounts doing it ...
MIN_SHARE_WITH = 0.01  # ... and this share of accounts


@dataclass(frozen=True, slots=True)
class Candidate:
    """One candidate metric: `name` = `<source slug>.<aggregation>`."""

    name: str
    source: str
    aggregation: str
    origin: str  # events | wide | snapshot | config | ratio


@dataclass(frozen=True, slots=True)
class CandidateSet:
    """`metrics`: account_id + one Float64 column per kept candidate, rows in cohort order."""

    metrics: pl.DataFrame
    candidates: tuple[Candidate, ...]
    skipped: tuple[tuple[str, str], ...]  # (name, reason)
    warnings: tuple[DataWarning, ...]


def slug(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "event"


def slugs_for(names: list[str]) -> tuple[dict[str, str], list[DataWarning]]:
    """Map source names to unique candidate-safe slugs; collisions get _2, _3 (sorted order)."""
    mapping: dict[str, str] = {}
    used: set[str] = {"any"}
    warnings = []
    for name in sorted(names):
        base = slug(name)
        out, i = base, 1
        while out in used:
            i += 1
            out = f"{base}_{i}"
        if out != base:
            warnings.append(DataWarning("name_collision", f"event '{name}' is named '{out}' in candidate names: "
                                        f"'{base}' was already taken by another event", column="event"))
        used.add(out)
        mapping[name] = out
    return mapping, warnings


def _fill_value(aggregation: str, window_days: float) -> float:
    return window_days + 1 if aggregation == "days_to_first" else 0.0


def in_window(rows: pl.LazyFrame) -> pl.LazyFrame:
    """Usage rows (with their account's `window_start` and `landmark`) inside [window_start,
    landmark); the bounds themselves dropped."""
    return (
        rows.filter((pl.col("ts") >= pl.col("window_start")) & (pl.col("ts") < pl.col("landmark")))
        .drop("window_start", "landmark", "signup", LINE, strict=False)
    )


def windowed_events(usage: Usage, cohort: pl.DataFrame) -> pl.LazyFrame:
    """Usage rows inside the windows of `cohort`'s accounts, `__row` = the account's row in `cohort`."""
    frame = usage.frame.lazy()
    bounds = cohort.select(pl.col(ID).cast(frame.collect_schema()[ID]), "window_start", "landmark").with_row_index("__row")
    return in_window(frame.join(bounds.lazy(), on=ID, how="inner"))


@dataclass(frozen=True, slots=True)
class WindowedEvents:
    """Events inside account windows, taken in the validation scan so the event log is read once:
    per account (`__row` indexes `bounds`), the events in the union of the windows of one or more
    settings. Any cohort whose windows lie inside those bounds is served from these rows."""

    rows: pl.DataFrame  # __row, event, ts[, user_id][, value]
    bounds: pl.DataFrame  # account_id, window_start, landmark

    @staticmethod
    def union(variants: tuple[Settings, ...]) -> dict[str, pl.Expr]:
        """Per account (with a `signup` column): the earliest window start and latest landmark of `variants`."""
        parts = [window_bounds(v) for v in variants]
        return {"window_start": pl.min_horizontal(*(p["window_start"] for p in parts)),
                "landmark": pl.max_horizontal(*(p["landmark"] for p in parts))}

    @staticmethod
    def plan(known: pl.LazyFrame, variants: tuple[Settings, ...]) -> pl.LazyFrame:
        """From the usage rows of known accounts, carrying `__row` and `signup` (as validation joins them)."""
        return in_window(known.with_columns(**WindowedEvents.union(variants))).drop(ID)  # only what candidates read

    @classmethod
    def taken(cls, rows: pl.DataFrame, accounts: pl.DataFrame, variants: tuple[Settings, ...]) -> WindowedEvents:
        """The result of `plan` over `accounts` (account_id, signup; `__row` = row here)."""
        return cls(rows, accounts.select(ID, **WindowedEvents.union(variants)))

    def of_cohort(self, cohort: pl.DataFrame, sources: list[str]) -> tuple[pl.DataFrame, np.ndarray | None] | None:
        """The events of `cohort`'s accounts inside its windows (at least those of the types in
        `sources`), and the map from their `__row` to rows of `cohort` (-1: an account not in it; None:
        `__row` is the cohort row already, as in a fresh scan); None when a cohort window reaches outside
        the rows taken. When the windows taken are the cohort's, these are the rows taken as they are (no
        copy); else the rows of `sources` windowed again, renumbered."""
        position = self.bounds.select(ID, taken_start="window_start", taken_end="landmark").with_row_index("__row")
        spans = cohort.select(ID, "window_start", "landmark").with_row_index("__c").join(position, on=ID, how="left")
        if spans.select((pl.col("__row").is_null() | (pl.col("window_start") < pl.col("taken_start"))
                         | (pl.col("landmark") > pl.col("taken_end"))).any()).item():
            return None
        cohort_row = np.full(self.bounds.height, -1, np.int64)  # the taken rows' accounts renumbered to cohort rows
        cohort_row[spans["__row"].to_numpy()] = spans["__c"].to_numpy()
        if spans.select((pl.col("window_start") == pl.col("taken_start")).all()
                        & (pl.col("landmark") == pl.col("taken_end")).all()).item():
            return self.rows, cohort_row  # the windows taken are the cohort's
        renumbered = pl.lit(pl.Series(cohort_row)).gather(pl.col("__row"))  # after the filter: only those rows
        rows = (self.rows.lazy().filter(pl.col("event").is_in(sources)).with_columns(renumbered.alias("__row"))
                .filter(pl.col("__row") >= 0))
        window = {c: pl.lit(cohort[c]).gather(pl.col("__row")) for c in ("window_start", "landmark")}
        rows = in_window(rows.with_columns(**window)).with_columns(pl.col("__row").cast(pl.UInt32)).collect()
        return rows, None


def _event_tables(usage: Usage, events: pl.DataFrame, cohort: pl.DataFrame, sources: list[str],
                  window_days: float, renumber: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every aggregation as one (accounts, 1 + sources) array: column 0 over all events together, then
    one column per source in `sources` order; rows in `cohort` order; the fill value where an account
    has no such event. An event counts when its type is in `sources` and its account (`renumber`
    [__row], default __row) is not negative.

    The rows are grouped by account (a counting sort, which leaves the other events out and takes each
    event's offset in days from its account's `window_start`), then one compiled pass over each
    account's rows (`kernels.event_tables`, the accounts split over the cores) takes every aggregation
    of every cell."""
    n_accounts = cohort.height
    window_start = cohort["window_start"].cast(pl.Datetime("us")).to_physical().to_numpy()
    event = events["event"].cast(pl.Categorical)  # codes are local to a column: read them with their names
    present = event.unique()
    source_of = np.full(int(present.to_physical().max() or 0) + 1, -1, dtype=np.int32)
    position = {name: i for i, name in enumerate(sources)}
    source_of[present.to_physical().to_numpy()] = [position.get(name, -1) for name in present.cast(pl.String)]
    user, user_ok, value = np.empty(0, np.uint64), np.empty(0, bool), np.empty(0)  # the columns absent
    if usage.has_user:
        hashed = events["user_id"]  # validate keeps a 64-bit hash of the text: only distinct users are counted
        hashed = hashed if hashed.dtype == pl.UInt64 else hashed.hash(seed=0).set(hashed.is_null(), None)
        user, user_ok = hashed.fill_null(0), hashed.is_not_null()
    if usage.has_value:
        value = events["value"].cast(pl.Float64).fill_null(0.0)
    ts = events["ts"].cast(pl.Datetime("us")).to_physical()
    chunks = _chunks([events["__row"], event.to_physical(), ts, user, user_ok, value])
    renumber = np.arange(n_accounts) if renumber is None else renumber
    starts, *grouped = kernels.group_by_account(chunks, renumber, source_of, window_start)
    offset = grouped[1]
    n_days = int(offset.max()) + 1 if len(offset) else 1
    shape = (n_accounts, 1 + max(len(sources), 1))
    count, days, weeks, users, total = (np.zeros(shape) for _ in range(5))
    first = np.full(shape, window_days + 1.0)  # the first day of an account without the event
    out = (count, days, weeks, first, users, total)  # each core fills its share of the accounts in place
    kernels.by_rows(lambda s, *o: kernels.event_tables(s, *grouped, n_days, *o), np.column_stack([starts[:-1], starts[1:]]),
                    *out)
    count, days, weeks, first, users, total = (t[:, :1 + len(sources)] for t in out)
    tables = {"count": count, "active_days": days, "active_weeks": weeks, "days_to_first": first}
    if usage.has_user:
        tables["users"] = users
        with np.errstate(divide="ignore", invalid="ignore"):
            tables["per_user"] = np.where(users > 0, count / users, 0.0)
    if usage.has_value:
        tables["sum"] = total
    return tables


def _chunks(columns: list[pl.Series | np.ndarray]) -> list[tuple[np.ndarray, ...]]:
    """Per chunk of rows (as the first column is cut), the columns' values as numpy arrays; a numpy
    array (an absent column's empty stand-in) is repeated as it is. Polars keeps a frame read back from
    a file in chunks: taken chunk by chunk, no column is copied whole (numeric chunks without nulls are
    not copied at all); a column cut otherwise is converted whole and sliced at the same rows."""
    series = [c for c in columns if isinstance(c, pl.Series)]
    lengths = [len(x) for x in series[0].get_chunks()] or [0]
    bounds = np.cumsum([0, *lengths])

    def cut(column: pl.Series) -> list[np.ndarray]:
        if [len(x) for x in column.get_chunks()] == lengths:
            return [x.to_numpy() for x in column.get_chunks()]
        whole = column.to_numpy()
        return [whole[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    chunks = []
    for group in zip(*(cut(c) for c in series), strict=True):
        chunk = iter(group)
        chunks.append(tuple(next(chunk) if isinstance(c, pl.Series) else c for c in columns))
    return chunks


def build_event_candidates(usage: Usage, cohort: pl.DataFrame, settings: Settings,
                           windowed: WindowedEvents | None = None, *, only: str | None = None) -> CandidateSet:
    """Candidates of an event log for `cohort`'s accounts: from `windowed` when its rows cover the
    cohort's windows, else from a new (streaming) scan. The windowed events are aggregated several ways.
    `only`: a candidate name; when it is one event type's built-in candidate, only that event type's
    candidates are built (what a deep dive needs in its other windows), else all of them."""
    names = list(usage.event_names)
    mapping, warnings = slugs_for(names)
    single = [src for src in names for agg in AGGREGATIONS if only == f"{mapping[src]}.{agg}"]
    sources = single or names
    taken = windowed.of_cohort(cohort, sources) if windowed is not None else None
    if taken is None:
        rows = windowed_events(usage, cohort).drop(ID)
        taken = (rows.filter(pl.col("event").is_in(sources)) if single else rows).collect(engine="streaming"), None
    events, renumber = taken
    tables = _event_tables(usage, events, cohort, sources, settings.window_days, renumber)
    aggs = list(tables)
    slugs = [mapping[src] for src in sources]
    candidates = [Candidate(f"{slug}.{agg}", src, agg, "events") for src, slug in zip(sources, slugs, strict=True)
                  for agg in aggs]
    columns = {f"{slug}.{agg}": tables[agg][:, 1 + j] for agg in aggs for j, slug in enumerate(slugs)}
    if single:
        return _finish(pl.DataFrame({ID: cohort[ID], **columns}), candidates, warnings, settings.window_days)
    candidates = [Candidate(f"any.{agg}", "any", agg, "events") for agg in aggs] + candidates  # all events together
    columns = {**{f"any.{agg}": tables[agg][:, 0] for agg in aggs}, **columns}
    configured = [c for c in _config_candidates(settings.candidates) if c.origin == "config"]
    for spec in settings.candidates:
        if spec.name in columns:
            raise UsageError(f"candidate {spec.name}: the name is taken by a built-in candidate; choose another")
        if spec.ratio is None:
            columns[spec.name] = _config_metric(spec, usage, events, renumber, cohort, settings.window_days)
    table = pl.DataFrame({ID: cohort[ID], **columns})
    metrics, candidates = _add_ratios(table, [*candidates, *configured], settings.candidates)
    return _finish(metrics, candidates, warnings, settings.window_days)


def _config_candidates(specs: tuple[CandidateSpec, ...]) -> list[Candidate]:
    return [
        Candidate(spec.name, "+".join(spec.events) if not spec.ratio else "/".join(spec.ratio),
                  spec.aggregation if not spec.ratio else "ratio", "config" if not spec.ratio else "ratio")
        for spec in specs
    ]


def _config_metric(spec: CandidateSpec, usage: Usage, events: pl.DataFrame, renumber: np.ndarray | None,
                   cohort: pl.DataFrame, window_days: float) -> np.ndarray:
    """A `[[candidate]]` metric: its events (and filter) taken together, aggregated like any event
    (`renumber`: as for `_event_tables`)."""
    chosen = events.lazy().filter(pl.col("event").is_in(list(spec.events)))
    if spec.filter:
        try:
            chosen = chosen.filter(pl.sql_expr(spec.filter))
        except Exception as exc:  # noqa: BLE001 - polars' SQL parser raises several types
            raise UsageError(f"candidate {spec.name}: cannot use filter {spec.filter!r}: {exc}") from None
    try:
        rows = chosen.collect()
    except pl.exceptions.PolarsError as exc:  # the filter is only type-checked when it runs
        raise UsageError(f"candidate {spec.name}: cannot use filter {spec.filter!r}: "
                         f"{str(exc).splitlines()[0]}; filters can use event, value and ts "
                         "(user ids are hashed)") from None
    tables = _event_tables(usage, rows, cohort, sorted(set(spec.events)), window_days, renumber)
    if spec.aggregation not in tables:
        raise UsageError(f"candidate {spec.name}: aggregation {spec.aggregation!r} needs a column the usage "
                         "data does not have (users/per_user need user_id, sum needs value)")
    return tables[spec.aggregation][:, 0]  # column 0: the chosen events together


def _wide(long: pl.DataFrame, cohort: pl.DataFrame, candidates: list[Candidate], window_days: float) -> pl.DataFrame:
    """Pivot (account, name, value) to one column per candidate over every cohort account."""
    pivot = long.pivot(on="name", index=ID, values="value", aggregate_function="first") if long.height else (
        pl.DataFrame({ID: []}, schema={ID: pl.String}))
    return _fill(cohort, pivot, candidates, window_days)


def _fill(cohort: pl.DataFrame, table: pl.DataFrame, candidates: list[Candidate], window_days: float) -> pl.DataFrame:
    """Every cohort account, in cohort order, one Float64 column per candidate; no usage = the fill value."""
    base = cohort.select(ID).join(table, on=ID, how="left", maintain_order="left")
    fills = [
        (pl.col(c.name) if c.name in base.columns else pl.lit(None)).cast(pl.Float64)
        .fill_null(_fill_value(c.aggregation, window_days)).alias(c.name)
        for c in candidates
    ]
    return base.select(pl.col(ID), *fills)


def _add_ratios(metrics: pl.DataFrame, candidates: list[Candidate], specs: tuple[CandidateSpec, ...]):
    for spec in specs:
        if spec.ratio is None:
            continue
        num, den = spec.ratio
        missing = [n for n in (num, den) if n not in metrics.columns]
        if missing:
            raise UsageError(f"candidate {spec.name}: ratio refers to unknown candidate(s) {missing}")
        metrics = metrics.with_columns(
            pl.when(pl.col(den) != 0).then(pl.col(num) / pl.col(den)).otherwise(0.0).alias(spec.name))
        candidates = [*candidates, Candidate(spec.name, f"{num}/{den}", "ratio", "ratio")]
    return metrics, candidates


def build_periodic_candidates(usage: Usage, cohort: pl.DataFrame, settings: Settings) -> CandidateSet:
    """Wide periodic table: sum/mean/active_periods per measure; snapshot: the value itself."""
    mapping, warnings = slugs_for(list(usage.measures))
    if usage.kind == "snapshot":
        frame = usage.frame.lazy().group_by(ID).agg(pl.col(m).sum() for m in usage.measures).collect()
        candidates = [Candidate(f"{mapping[m]}.value", m, "value", "snapshot") for m in usage.measures]
        long = frame.unpivot(index=ID, on=list(usage.measures), variable_name="__m", value_name="__v").select(
            ID, name=pl.col("__m").replace_strict(mapping, return_dtype=pl.String) + ".value", value=pl.col("__v"))
    else:
        rows = windowed_events(usage, cohort).collect()  # periodic tables are small
        aggs = [e for m in usage.measures for e in (
            pl.col(m).sum().alias(f"{mapping[m]}.sum"), pl.col(m).mean().alias(f"{mapping[m]}.mean"),
            (pl.col(m) > 0).sum().cast(pl.Float64).alias(f"{mapping[m]}.active_periods"))]
        frame = rows.group_by(ID).agg(aggs)
        candidates = [Candidate(f"{mapping[m]}.{a}", m, a, "wide") for m in usage.measures for a in WIDE_AGGREGATIONS]
        long = frame.unpivot(index=ID, variable_name="name", value_name="__v").rename({"__v": "value"})
    metrics = _wide(long.select(ID, "name", pl.col("value").cast(pl.Float64)), cohort, candidates,
                    settings.window_days)
    metrics, candidates = _add_ratios(metrics, candidates, settings.candidates)
    return _finish(metrics, candidates, warnings, settings.window_days)


def _finish(metrics: pl.DataFrame, candidates: list[Candidate], warnings: list[DataWarning],
            window_days: float) -> CandidateSet:
    """Skip constant and nearly empty candidates, with the reason."""
    n = metrics.height
    kept, skipped = [], []
    stats = metrics.select(
        [pl.col(c.name).n_unique().alias(f"u:{c.name}") for c in candidates]
        + [_did(c, window_days).sum().alias(f"d:{c.name}") for c in candidates]
    ).row(0, named=True) if candidates else {}
    for c in candidates:
        with_it = stats[f"d:{c.name}"]
        if stats[f"u:{c.name}"] <= 1:
            skipped.append((c.name, "constant: every account has the same value"))
        elif with_it < MIN_ACCOUNTS_WITH or with_it < MIN_SHARE_WITH * n:
            skipped.append((c.name, f"nearly empty: only {with_it} of {n} accounts have it"))
        else:
            kept.append(c)
    return CandidateSet(metrics.select(ID, *[c.name for c in kept]), tuple(kept), tuple(skipped),
                        tuple(warnings))


def _did(c: Candidate, window_days: float) -> pl.Expr:
    """Whether an account has the behaviour at all (non-zero, or did it within the window)."""
    if c.aggregation == "days_to_first":
        return pl.col(c.name) <= window_days
    return pl.col(c.name) != 0


def coverage(metrics: pl.DataFrame, candidates: tuple[Candidate, ...], window_days: float) -> dict[str, float]:
    """Share of analysed accounts that have each candidate's behaviour."""
    if metrics.height == 0:
        return {c.name: 0.0 for c in candidates}
    row = metrics.select(_did(c, window_days).mean().alias(c.name) for c in candidates).row(0, named=True)
    return {k: float(v) for k, v in row.items()}
