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

import polars as pl

from nsm_cli.config import CandidateSpec, Settings
from nsm_cli.errors import DataWarning, UsageError
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


def _event_aggs(usage: Usage, window_days: float) -> list[pl.Expr]:
    """Aggregations over windowed events (which carry `__offset`, days since the window start)."""
    day = pl.col("__offset").floor().cast(pl.Int32)
    aggs = [
        pl.len().cast(pl.Float64).alias("count"),
        day.n_unique().cast(pl.Float64).alias("active_days"),
        (day // 7).n_unique().cast(pl.Float64).alias("active_weeks"),
        pl.col("__offset").min().alias("days_to_first"),
    ]
    if usage.has_user:
        aggs.append(pl.col("user_id").drop_nulls().n_unique().cast(pl.Float64).alias("users"))
    if usage.has_value:
        aggs.append(pl.col("value").sum().alias("sum"))
    return aggs


def _fill_value(aggregation: str, window_days: float) -> float:
    return window_days + 1 if aggregation == "days_to_first" else 0.0


def windowed_events(usage: Usage, cohort: pl.DataFrame) -> pl.LazyFrame:
    """Usage rows inside each account's window [window_start, landmark), with `__offset` in days."""
    bounds = cohort.select(pl.col(ID).cast(usage.frame.schema[ID]), "window_start", "landmark").lazy()
    return (
        usage.frame.lazy().join(bounds, on=ID, how="inner")
        .filter((pl.col("ts") >= pl.col("window_start")) & (pl.col("ts") < pl.col("landmark")))
        .with_columns(__offset=(pl.col("ts") - pl.col("window_start")).dt.total_microseconds() / 86_400_000_000)
    )


def _event_tables(usage: Usage, events: pl.LazyFrame, window_days: float,
                  mapping: dict[str, str]) -> tuple[pl.DataFrame, list[str]]:
    """One row per account with usage: `<event slug>.<aggregation>` and `any.<aggregation>` columns.

    Aggregated per (account, event) and per account, then pivoted on the event (a small frame: one
    row per account and event), never through a long (account x candidate) table."""
    aggs = _event_aggs(usage, window_days)
    names = [a.meta.output_name() for a in aggs]
    per_user = [pl.when(pl.col("users") > 0).then(pl.col("count") / pl.col("users")).alias("per_user")]
    as_text = [pl.col(ID).cast(pl.String), pl.col("event").cast(pl.String)]
    per_event = events.group_by(ID, "event").agg(aggs).with_columns(as_text)
    overall = events.group_by(ID).agg(aggs).with_columns(as_text[0])
    if usage.has_user:
        per_event, overall = per_event.with_columns(per_user), overall.with_columns(per_user)
        names.append("per_user")
    per_event, overall = pl.collect_all([per_event, overall])
    wide = per_event.pivot(on="event", index=ID, values=names, aggregate_function="first")
    present = per_event["event"].unique().to_list()
    wide = wide.rename({(f"{v}_{e}" if len(names) > 1 else e): f"{mapping[e]}.{v}" for v in names for e in present})
    overall = overall.rename({v: f"any.{v}" for v in names})
    return overall.join(wide, on=ID, how="full", coalesce=True), names


def build_event_candidates(usage: Usage, cohort: pl.DataFrame, settings: Settings) -> CandidateSet:
    events = windowed_events(usage, cohort).collect().lazy()  # materialised once, aggregated several ways
    sources = sorted(set(usage.frame["event"].cast(pl.String).unique().to_list()))
    mapping, warnings = slugs_for(sources)
    table, names = _event_tables(usage, events, settings.window_days, mapping)
    candidates = [Candidate(f"any.{agg}", "any", agg, "events") for agg in names]  # all events together
    candidates += [Candidate(f"{mapping[src]}.{agg}", src, agg, "events") for src in sources for agg in names]
    candidates += [c for c in _config_candidates(settings.candidates) if c.origin == "config"]
    for spec in settings.candidates:
        if spec.ratio is None:
            table = table.join(_config_metric(spec, usage, events, settings), on=ID, how="full", coalesce=True)
    metrics = _fill(cohort, table, candidates, settings.window_days)
    metrics, candidates = _add_ratios(metrics, candidates, settings.candidates)
    return _finish(metrics, candidates, warnings, settings.window_days)


def _config_candidates(specs: tuple[CandidateSpec, ...]) -> list[Candidate]:
    return [
        Candidate(spec.name, "+".join(spec.events) if not spec.ratio else "/".join(spec.ratio),
                  spec.aggregation if not spec.ratio else "ratio", "config" if not spec.ratio else "ratio")
        for spec in specs
    ]


def _config_metric(spec: CandidateSpec, usage: Usage, events: pl.LazyFrame, settings: Settings) -> pl.DataFrame:
    chosen = events.filter(pl.col("event").cast(pl.String).is_in(list(spec.events)))
    if spec.filter:
        try:
            chosen = chosen.filter(pl.sql_expr(spec.filter))
        except Exception as exc:  # noqa: BLE001 - polars' SQL parser raises several types
            raise UsageError(f"candidate {spec.name}: cannot use filter {spec.filter!r}: {exc}") from None
    aggs = {a.meta.output_name(): a for a in _event_aggs(usage, settings.window_days)}
    if spec.aggregation == "per_user" and usage.has_user:
        expr = pl.len() / pl.col("user_id").drop_nulls().n_unique()
    elif spec.aggregation in aggs:
        expr = aggs[spec.aggregation]
    else:
        raise UsageError(f"candidate {spec.name}: aggregation {spec.aggregation!r} needs a column the usage "
                         "data does not have (users/per_user need user_id, sum needs value)")
    return chosen.group_by(ID).agg(expr.cast(pl.Float64).alias(spec.name)).with_columns(
        pl.col(ID).cast(pl.String)).collect()


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
        frame = usage.frame.group_by(ID).agg(pl.col(m).sum() for m in usage.measures)
        candidates = [Candidate(f"{mapping[m]}.value", m, "value", "snapshot") for m in usage.measures]
        long = frame.unpivot(index=ID, on=list(usage.measures), variable_name="__m", value_name="__v").select(
            ID, name=pl.col("__m").replace_strict(mapping, return_dtype=pl.String) + ".value", value=pl.col("__v"))
    else:
        rows = windowed_events(usage, cohort).collect()
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
