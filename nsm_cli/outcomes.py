"""Landmark design and outcome clocks.

Metrics are measured over `[window_start, landmark)`; outcomes are timed from `landmark`.
Per-signup mode: window_start = signup, landmark = signup + window. Calendar mode
(`--landmark DATE`): landmark = DATE for everyone, window_start = DATE - window.
Times are in days (float). Anything still open at `as_of` is censored there; a churn dated
exactly on `as_of` is a churn.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from nsm_cli.config import Settings

ID = "account_id"
DAY_US = 86_400_000_000


@dataclass(frozen=True, slots=True)
class Cohort:
    """Accounts analysed, with their windows and outcomes.

    `frame` columns: account_id, signup, window_start, landmark, churn_time, churn_event,
    exp_time (null when expansion is unknown for the account), exp_event, exp_amount
    (null without MRR), tenure_days (signup to churn or as_of), segment:* columns.
    """

    frame: pl.DataFrame
    excluded: Counter[str]
    expansion_excluded: Counter[str]
    has_expansion: bool
    has_expansion_amount: bool


def days_between(later: pl.Expr, earlier: pl.Expr) -> pl.Expr:
    return (later - earlier).dt.total_microseconds().cast(pl.Float64) / DAY_US


def derive_from_mrr(accounts: pl.DataFrame, mrr: pl.DataFrame, settings: Settings, *,
                    need_churn: bool, need_expansion: bool) -> pl.DataFrame:
    """Fill churn (MRR drops to 0 and stays) and expansion (MRR >= (1+min) x MRR at landmark).

    Also adds `exp_amount`: the highest MRR after the landmark minus MRR at the landmark (>= 0).
    One lazy plan, collected once: polars runs its independent group-bys side by side.
    """
    windows, mrr = accounts.lazy().select(ID, "landmark"), mrr.lazy()
    out = accounts.lazy()
    if need_churn:  # the MRR's last value is 0, from the first 0 after the last paid month on
        last = mrr.group_by(ID).agg(pl.col("mrr").last().alias("last_mrr"))
        nonzero_end = mrr.filter(pl.col("mrr") > 0).group_by(ID).agg(pl.col("ts").max().alias("last_paid"))
        zero_start = (
            mrr.join(nonzero_end, on=ID, how="left")
            .filter((pl.col("mrr") == 0) & (pl.col("last_paid").is_null() | (pl.col("ts") > pl.col("last_paid"))))
            .group_by(ID).agg(pl.col("ts").min().alias("mrr_churn"))
        )
        out = out.join(last, on=ID, how="left").join(zero_start, on=ID, how="left").with_columns(
            churn=pl.when(pl.col("last_mrr") == 0).then(pl.col("mrr_churn"))).drop("last_mrr", "mrr_churn")
    baseline = (
        mrr.join(windows, on=ID).filter(pl.col("ts") <= pl.col("landmark"))
        .group_by(ID).agg(pl.col("mrr").last().alias("base_mrr"))
    )
    after = (
        mrr.join(windows, on=ID).join(baseline, on=ID).filter(pl.col("ts") > pl.col("landmark"))
        .group_by(ID).agg(
            pl.col("ts").filter((pl.col("mrr") >= pl.col("base_mrr") * (1 + settings.expansion_min))
                                & (pl.col("base_mrr") > 0)).min().alias("mrr_expansion"),
            (pl.col("mrr").max() - pl.col("base_mrr").first()).clip(lower_bound=0).alias("exp_amount"),
        )
    )
    out = out.join(baseline, on=ID, how="left").join(after, on=ID, how="left")
    if need_expansion:
        out = out.with_columns(
            expansion=pl.col("mrr_expansion"),
            __exp_known=pl.col("base_mrr").is_not_null(),
        )
    out = out.with_columns(exp_amount=pl.when(pl.col("base_mrr").is_not_null()).then(
        pl.col("exp_amount").fill_null(0.0)))
    return out.drop("base_mrr", "mrr_expansion").collect()


def window_bounds(settings: Settings) -> dict[str, pl.Expr]:
    """`window_start` and `landmark` of an account (with a `signup` column) under `settings`."""
    window = timedelta(days=settings.window_days)
    if settings.landmark is not None:
        return {"window_start": pl.lit(settings.landmark - window, dtype=pl.Datetime("us")),
                "landmark": pl.lit(settings.landmark, dtype=pl.Datetime("us"))}
    return {"window_start": pl.col("signup"), "landmark": pl.col("signup") + window}


def build_cohort(accounts: pl.DataFrame, mrr: pl.DataFrame | None, settings: Settings, as_of: datetime, *,
                 has_churn_column: bool, has_expansion_column: bool) -> Cohort:
    """Landmarks, exclusions by reason, and churn/expansion times from the landmark."""
    frame = accounts.with_columns(**window_bounds(settings))
    has_expansion = has_expansion_column or mrr is not None
    frame = frame.with_columns(__exp_known=pl.lit(has_expansion_column))
    if mrr is not None:
        frame = derive_from_mrr(frame, mrr, settings, need_churn=not has_churn_column,
                                need_expansion=not has_expansion_column)
    else:
        frame = frame.with_columns(exp_amount=pl.lit(None, dtype=pl.Float64))
    frame, excluded = _exclude(frame, settings, as_of)
    frame, expansion_excluded = _outcome_times(frame, as_of)
    return Cohort(frame, excluded, expansion_excluded, has_expansion,
                  has_expansion_amount=mrr is not None)


def _exclude(frame: pl.DataFrame, settings: Settings, as_of: datetime) -> tuple[pl.DataFrame, Counter[str]]:
    rules: list[tuple[str, pl.Expr]] = []
    if settings.landmark is not None:
        rules += [
            ("signed_up_after_landmark", pl.col("signup") >= pl.col("landmark")),
            ("churned_before_landmark", pl.col("churn") < pl.col("landmark")),
            ("partial_window", pl.col("signup") > pl.col("window_start")),
        ]
    else:
        rules.append(("churned_in_window", pl.col("churn") < pl.col("landmark")))
    rules.append(("too_young", pl.col("landmark") > pl.lit(as_of, dtype=pl.Datetime("us"))))
    excluded: Counter[str] = Counter()
    for reason, mask in rules:
        hit = frame.select(mask.fill_null(False).sum()).item()
        if hit:
            excluded[reason] += hit
            frame = frame.filter(~mask.fill_null(False))
    return frame, excluded


def _outcome_times(frame: pl.DataFrame, as_of: datetime) -> tuple[pl.DataFrame, Counter[str]]:
    end = pl.lit(as_of, dtype=pl.Datetime("us"))
    churned = pl.col("churn").is_not_null() & (pl.col("churn") <= end)
    churn_end = pl.when(churned).then(pl.col("churn")).otherwise(end)
    expanded_in_window = pl.col("expansion").is_not_null() & (pl.col("expansion") < pl.col("landmark"))
    exp_known = pl.col("__exp_known") & ~expanded_in_window
    expanded = (pl.col("expansion").is_not_null() & (pl.col("expansion") <= end)
                & (pl.col("expansion") <= churn_end))
    exp_end = pl.when(expanded).then(pl.col("expansion")).otherwise(churn_end)
    frame = frame.with_columns(
        churn_time=days_between(churn_end, pl.col("landmark")),
        churn_event=churned,
        exp_time=pl.when(exp_known).then(days_between(exp_end, pl.col("landmark"))),
        exp_event=pl.when(exp_known).then(expanded),
        tenure_days=days_between(churn_end, pl.col("signup")),
        __expanded_in_window=expanded_in_window & pl.col("__exp_known"),
        __exp_unknown=~pl.col("__exp_known"),
    )
    expansion_excluded: Counter[str] = Counter()
    n_window = int(frame["__expanded_in_window"].sum())
    if n_window:
        expansion_excluded["expanded_in_window"] = n_window
    n_unknown = int(frame["__exp_unknown"].sum())
    if n_unknown and frame["__exp_known"].any():
        expansion_excluded["no_mrr_at_landmark"] = n_unknown
    keep = [c for c in frame.columns if not c.startswith("__")]
    return frame.select(keep).sort(ID), expansion_excluded
