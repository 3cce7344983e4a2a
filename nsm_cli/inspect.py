"""`nsm inspect`: profile the inputs and list every problem, without running the statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from nsm_cli.config import Settings
from nsm_cli.errors import InputError
from nsm_cli.outcomes import build_cohort
from nsm_cli.pipeline import data_shortfall, load_inputs
from nsm_cli.results import clean
from nsm_cli.validate import UsageCounts

TOP_EVENTS = 20


@dataclass(frozen=True, slots=True)
class InspectReport:
    """Profile of the inputs. `fatal` is set when the analysis cannot run (exit code 3)."""

    files: tuple[dict[str, Any], ...] = ()
    accounts: dict[str, Any] = field(default_factory=dict)
    events: dict[str, Any] = field(default_factory=dict)
    problems: tuple[dict[str, Any], ...] = ()
    fatal: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return clean({"schema_version": 1, "files": list(self.files), "accounts": self.accounts,
                      "events": self.events, "problems": list(self.problems), "fatal": self.fatal})


def inspect_inputs(settings: Settings) -> InspectReport:
    """Load and check every input; never raises InputError (it becomes `fatal`)."""
    try:
        inputs = load_inputs(settings, windows=(), profile=True)
    except InputError as exc:
        return InspectReport(fatal=str(exc))
    cohort = build_cohort(inputs.accounts, inputs.mrr, settings, inputs.as_of,
                          has_churn_column=inputs.has_churn_column, has_expansion_column=inputs.has_expansion_column)
    f = cohort.frame
    churned = int(f["churn_event"].sum()) if f.height else 0
    excluded = {**dict(inputs.problems.excluded), **dict(cohort.excluded)}
    accounts = {
        "in_file": inputs.accounts_in_file, "analysable": f.height, "excluded": dict(sorted(excluded.items())),
        "as_of": inputs.as_of.isoformat(), "segments": list(inputs.segments),
        "churned_after_landmark": churned, "churn_rate": churned / f.height if f.height else None,
        "expansion_known": int(f["exp_time"].is_not_null().sum()) if f.height else 0,
        "expanded_after_landmark": int(f["exp_event"].fill_null(False).sum()) if f.height else 0,
    }
    fatal = data_shortfall(f.height, churned, excluded)
    events = _event_profile(inputs.usage.counts, inputs.usage.event_names, inputs.accounts.height) \
        if inputs.usage and inputs.usage.kind == "events" else {}
    return InspectReport(tuple(fi.to_dict() for fi in inputs.problems.files), accounts, events,
                         tuple(w.to_dict() for w in inputs.problems.warnings), fatal)


def _event_profile(counts: UsageCounts, names: tuple[str, ...], n_accounts: int) -> dict[str, Any]:
    """The event types analysed (`names`), from what the validation scan counted: rows, accounts, times."""
    per_type = counts.per_event.filter(pl.col("event").is_in(names)).sort(["rows", "event"], descending=[True, False])
    top, rest = per_type.head(TOP_EVENTS), per_type.slice(TOP_EVENTS)
    rows = int(per_type["rows"].sum())
    with_events = UsageCounts.accounts_in(counts.blocks.filter(pl.col("event").is_in(names)), "__counted_bits")
    return {
        "rows": rows, "event_types": per_type.height,
        "first": per_type["first"].min().isoformat() if rows else None,
        "last": per_type["last"].max().isoformat() if rows else None,
        "top": top.select("event", "rows", "accounts").to_dicts(), "other_types": rest.height,
        "other_rows": int(rest["rows"].sum()), "accounts_without_events": n_accounts - with_events,
    }
