"""analyze(): load -> validate -> outcomes -> candidates -> statistics -> ranking -> Report."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from nsm_cli import __version__, kernels, stats
from nsm_cli.candidates import (
    CandidateSet,
    WindowedEvents,
    build_event_candidates,
    build_periodic_candidates,
    coverage,
)
from nsm_cli.config import Settings
from nsm_cli.errors import InputError, InsufficientDataError
from nsm_cli.evidence import MetricMatrix, OutcomeData, gather_evidence, segment_design
from nsm_cli.load import PARQUET_SUFFIXES, Table, compression_of, read_table, reading
from nsm_cli.outcomes import Cohort, build_cohort
from nsm_cli.ranking import CandidateFacts, Split, find_threshold, holdout_split, outcome_stats, rank_candidates
from nsm_cli.results import DataSummary, Report
from nsm_cli.scratch import scratch_file
from nsm_cli.validate import Problems, Usage, clean_accounts, clean_mrr, clean_usage, latest_date, restrict_usage

ID = "account_id"
MIN_ACCOUNTS = 30
MIN_EVENTS = 10
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Inputs:
    """Clean, typed inputs and everything learnt while cleaning them."""

    accounts: pl.DataFrame
    usage: Usage | None
    mrr: pl.DataFrame | None
    as_of: datetime
    segments: tuple[str, ...]
    accounts_in_file: int
    has_churn_column: bool
    has_expansion_column: bool
    problems: Problems
    windowed: WindowedEvents | None  # an event log's rows inside the accounts' windows, taken with the checks


def load_inputs(settings: Settings, *, windows: tuple[Settings, ...] | None = None, profile: bool = False) -> Inputs:
    """Read and clean every input. An event log's rows inside the observation windows of `windows`
    (default: `settings` alone; none for `()`) are taken in the same scan, so that candidates for
    those windows need no second read; `profile` also counts accounts and times per event type there
    (for `nsm inspect`). Encoding errors deep inside a large file, and a damaged compressed file, become
    InputError."""
    try:
        with reading(settings.accounts, settings.usage, settings.mrr):  # a damaged compressed file, named
            return _load_inputs(settings, (settings,) if windows is None else windows, profile)
    except pl.exceptions.ComputeError as exc:
        if "utf-8" not in str(exc).lower() and "utf8" not in str(exc).lower():
            raise
        raise InputError("an input file is not valid UTF-8 past its first 64 KB (nsm detects Latin-1 only from "
                         "the start of a file); re-export it as UTF-8") from None


def _load_inputs(settings: Settings, windows: tuple[Settings, ...], profile: bool) -> Inputs:
    problems = Problems()
    accounts_table = read_table(settings.accounts, what="accounts")
    accounts, in_file, segments = clean_accounts(accounts_table, settings, problems)
    if accounts.height == 0:
        raise InsufficientDataError(f"no usable account rows (excluded: {dict(problems.excluded) or 'none'})",
                                    file=accounts_table.name)
    roles = next(f.columns for f in problems.files if f.role == "accounts")  # as clean_accounts mapped them
    has_churn, has_exp = "churn_date" in roles, "expansion_date" in roles
    usage_table = read_table(settings.usage, what="usage") if settings.usage else None
    usage, windowed = None, None
    if usage_table:
        usage, windowed = _scan_usage(usage_table, settings, problems, accounts, windows, profile)
    mrr = clean_mrr(read_table(settings.mrr, what="MRR"), settings, problems) if settings.mrr else None
    as_of = settings.as_of or latest_date(accounts, usage, mrr)
    if accounts.height and accounts["signup"].min() > as_of:
        raise InputError(f"--as-of {as_of:%Y-%m-%d} is before every signup (first signup "
                         f"{accounts['signup'].min():%Y-%m-%d}); nothing can be analysed", file=settings.accounts)
    if usage is not None and usage_table is not None:
        usage = restrict_usage(usage, accounts, as_of, settings, usage_table, problems)
    if mrr is not None:
        mrr = mrr.filter(pl.col(ID).is_in(accounts[ID].implode()) & (pl.col("ts") <= as_of))
    return Inputs(accounts.drop("__line", "__file", strict=False), usage, mrr, as_of, segments, in_file,
                  has_churn, has_exp, problems, windowed)


def _scan_usage(table: Table, settings: Settings, problems: Problems, accounts: pl.DataFrame,
                windows: tuple[Settings, ...], profile: bool) -> tuple[Usage, WindowedEvents | None]:
    """`clean_usage`, and for an event log the events inside the windows, taken in the same scan."""
    if not windows:  # `nsm inspect`: no candidates follow
        return clean_usage(table, settings, problems, accounts, profile=profile)[0], None
    # The windows' events are written to a scratch file in the same scan as the checks: a file sink lets
    # the scan stream, where a second in-memory result would make it hold rows back.
    with scratch_file("windows.arrow", _windowed_size_bound(table)) as path, ThreadPoolExecutor(max_workers=1) as warm:
        # numba's first call sets up its registries (~0.3 s of Python, whatever the kernel); on a thread it
        # uses the core time that polars' scan of the log leaves idle (and is joined when the scan is done).
        warm.submit(kernels.warm_up)

        def window_rows(known: pl.LazyFrame) -> list[pl.LazyFrame]:
            # uncompressed, so that it is read back memory-mapped (polars 1.x compressed by default)
            return [WindowedEvents.plan(known, windows).sink_ipc(path, compression="uncompressed", lazy=True)]

        usage, frames = clean_usage(table, settings, problems, accounts, also=window_rows, profile=profile)
        return usage, WindowedEvents.taken(pl.read_ipc(path), accounts, windows) if frames else None


def _windowed_size_bound(table: Table) -> int:
    """About the most the events inside the windows can take as Arrow (24-32 bytes an event): a CSV file's
    own size (its lines are longer), 20 times that for a gzip or zstd file (event logs compress 5-10
    times), and 40 bytes a row of a Parquet file (its row count is in its metadata)."""
    parquet = [path for path in table.paths if path.lower().endswith(PARQUET_SUFFIXES)]
    rows = int(pl.scan_parquet(parquet).select(pl.len()).collect().item()) if parquet else 0
    return 40 * rows + sum(os.path.getsize(path) * (20 if compression_of(path) else 1)
                           for path in table.paths if path not in parquet)


def _outcomes(cohort: Cohort, horizon: float) -> tuple[OutcomeData, OutcomeData | None]:
    f = cohort.frame
    t, e = f["churn_time"].to_numpy().astype(float), f["churn_event"].to_numpy().astype(bool)
    churn = OutcomeData("churn", np.arange(f.height), t, e, stats.retained_at(t, e, horizon),
                        f"retained at {horizon:g} days (Kaplan-Meier imputed)")
    if not cohort.has_expansion:
        return churn, None
    known = f["exp_time"].is_not_null().to_numpy()
    rows = np.flatnonzero(known)
    te = f["exp_time"].to_numpy()[rows].astype(float)
    ee = f["exp_event"].to_numpy()[rows].astype(bool)
    if cohort.has_expansion_amount:
        target, label = f["exp_amount"].fill_null(0.0).to_numpy()[rows], "expansion amount (MRR)"
    else:
        target, label = 1 - stats.retained_at(te, ee, horizon), f"expanded by {horizon:g} days"
    return churn, OutcomeData("expansion", rows, te, ee, target, label)


def data_shortfall(n_accounts: int, n_churned: int, excluded: dict[str, int]) -> str | None:
    """Why the statistics cannot run on this many accounts and churns, or None when they can."""
    if n_accounts < MIN_ACCOUNTS:
        return (f"only {n_accounts} account(s) can be analysed (excluded: {dict(excluded) or 'none'}); at least "
                f"{MIN_ACCOUNTS} are needed. Check --window, --as-of and the signup dates.")
    if n_churned < MIN_EVENTS or n_accounts - n_churned < MIN_EVENTS:
        what = "churned" if n_churned < MIN_EVENTS else "stayed"
        return (f"only {min(n_churned, n_accounts - n_churned)} of {n_accounts} analysed accounts {what}; survival "
                f"statistics need at least {MIN_EVENTS} churns and {MIN_EVENTS} retained accounts. Use a later "
                "--as-of or more data.")
    return None


def build_candidates(inputs: Inputs, cohort: Cohort, settings: Settings, *, only: str | None = None) -> CandidateSet:
    """Every candidate, or with `only` (a candidate name) at least that one: see `build_event_candidates`."""
    if inputs.usage is None:
        raise InputError("no usage data: pass --usage FILE (an event log, a periodic table or a per-account table)")
    if inputs.usage.kind == "events":
        return build_event_candidates(inputs.usage, cohort.frame, settings, inputs.windowed, only=only)
    return build_periodic_candidates(inputs.usage, cohort.frame, settings)


@dataclass(frozen=True, slots=True)
class Prepared:
    """Everything the statistics need for one window: cohort, outcomes and candidate metrics."""

    inputs: Inputs
    settings: Settings
    cohort: Cohort
    churn: OutcomeData
    expansion: OutcomeData | None
    candidates: CandidateSet

    def metric(self, name: str) -> np.ndarray:
        return self.candidates.metrics[name].to_numpy().astype(float)


def prepare(inputs: Inputs, settings: Settings, *, progress: Progress | None = None,
            only: str | None = None) -> Prepared:
    """Cohort, outcomes and candidates for `settings` (its window and landmark) over loaded inputs. With
    `only` (a candidate name), the candidates may be just that one's kin, or none when it is skipped."""
    say = progress or (lambda _msg: None)
    say("building outcomes")
    cohort = build_cohort(inputs.accounts, inputs.mrr, settings, inputs.as_of,
                          has_churn_column=inputs.has_churn_column, has_expansion_column=inputs.has_expansion_column)
    churn, expansion = _outcomes(cohort, settings.horizon_days)
    shortfall = data_shortfall(len(churn.time), int(churn.event.sum()), dict(cohort.excluded))
    if shortfall:
        raise InsufficientDataError(shortfall)
    say("building candidates")
    cands = build_candidates(inputs, cohort, settings, only=only)
    if not cands.candidates and only is None:
        raise InsufficientDataError("no usable candidate metric: every candidate is constant or nearly empty "
                                    f"({len(cands.skipped)} skipped)")
    # the windowed events are consumed: a caller that needs them for other windows keeps its `inputs`
    return Prepared(dataclasses.replace(inputs, windowed=None), settings, cohort, churn, expansion, cands)


def analyze(settings: Settings, *, progress: Progress | None = None) -> Report:
    """Rank every candidate metric. Raises InputError subclasses for unusable data."""
    say = progress or (lambda _msg: None)
    say("loading inputs")
    prepared = prepare(load_inputs(settings), settings, progress=say)
    say(f"fitting {len(prepared.candidates.candidates)} candidates")
    report = rank_prepared(prepared)
    say("done")
    return report


def rank_prepared(prepared: Prepared) -> Report:
    return _assess(prepared.inputs, prepared.cohort, prepared.candidates, prepared.churn, prepared.expansion,
                   prepared.settings)


def _assess(inputs: Inputs, cohort: Cohort, cands: CandidateSet, churn: OutcomeData,
            expansion: OutcomeData | None, settings: Settings) -> Report:
    names = [c.name for c in cands.candidates]
    matrix = np.asarray(cands.metrics.select(names).to_numpy(), dtype=float)  # Float64 columns: no copy
    horizon = settings.horizon_days
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # numpy kernels release the GIL
        pending_shared = pool.submit(MetricMatrix.of, matrix)  # compiled, while this thread sets up the rest
        segments = segment_design(cohort.frame, inputs.segments) if inputs.segments else None
        train = holdout_split(cohort.frame["account_id"], settings.seed)
        churn_split = Split.of(churn, train)
        exp_split = Split.of(expansion, train[expansion.rows]) if expansion else None
        shared = pending_shared.result()
        pending_churn = pool.submit(gather_evidence, churn, shared, segments, direction=1.0)
        pending_exp = pool.submit(gather_evidence, expansion, shared, segments, direction=-1.0) if expansion else None
        churn_thr = pool.map(lambda j: find_threshold(matrix[:, j], churn_split, horizon), range(len(names)))
        exp_thr = pool.map(lambda j: find_threshold(matrix[expansion.rows, j], exp_split, horizon),
                           range(len(names))) if exp_split is not None else [None] * len(names)
        tenure = stats.spearman_with(shared.ranks, cohort.frame["tenure_days"].to_numpy())
        signup_days = cohort.frame.select(pl.col("signup").dt.epoch("s")).to_series().to_numpy()
        trend = stats.spearman_with(shared.ranks, signup_days)
        cover = coverage(cands.metrics, cands.candidates, settings.window_days)
        ev_churn, ev_exp = pending_churn.result(), pending_exp.result() if pending_exp else None
        churn_thr, exp_thr = list(churn_thr), list(exp_thr)
    facts, churn_stats, exp_stats = [], [], []
    for j, c in enumerate(cands.candidates):
        facts.append(CandidateFacts(c.name, c.source, c.aggregation, c.origin, cover[c.name],
                                    float(np.nan_to_num(tenure[j])), float(np.nan_to_num(trend[j]))))
        churn_stats.append(outcome_stats(ev_churn, j, churn.spearman_target_name, churn_thr[j]))
        exp_stats.append(outcome_stats(ev_exp, j, expansion.spearman_target_name, exp_thr[j])
                         if expansion is not None and ev_exp is not None else None)
    similarity = stats.spearman_matrix(shared.ranks) if len(names) > 1 else np.ones((1, 1))
    results = rank_candidates(facts, churn_stats, exp_stats, np.nan_to_num(similarity), settings.weights)
    return Report(settings=_settings_dict(settings, inputs), data=_summary(inputs, cohort, cands, churn, expansion),
                  candidates=results, meta={"nsm_version": __version__})


def _settings_dict(settings: Settings, inputs: Inputs) -> dict:
    d = dataclasses.asdict(settings)
    d["as_of"] = inputs.as_of.isoformat()
    d["landmark"] = settings.landmark.isoformat() if settings.landmark else None
    d["landmark_mode"] = "calendar" if settings.landmark else "signup"
    d["segments"] = list(inputs.segments)
    d["candidates"] = [dataclasses.asdict(c) for c in settings.candidates]
    return d


def _summary(inputs: Inputs, cohort: Cohort, cands: CandidateSet, churn: OutcomeData,
             expansion: OutcomeData | None) -> DataSummary:
    excluded = dict(inputs.problems.excluded)
    for reason, n in cohort.excluded.items():
        excluded[reason] = excluded.get(reason, 0) + n
    warnings = [w.to_dict() for w in [*inputs.problems.warnings, *cands.warnings]]
    signups = cohort.frame["signup"]
    return DataSummary(
        accounts_total=inputs.accounts_in_file, accounts_analysed=cohort.frame.height, excluded=excluded,
        expansion_accounts=len(expansion.rows) if expansion else 0,
        expansion_excluded=dict(cohort.expansion_excluded),
        churn_events=int(churn.event.sum()), expansion_events=int(expansion.event.sum()) if expansion else 0,
        usage_kind=inputs.usage.kind if inputs.usage else "none", as_of=inputs.as_of.isoformat(),
        first_signup=signups.min().isoformat() if signups.len() else None,
        last_signup=signups.max().isoformat() if signups.len() else None,
        warnings=tuple(warnings), skipped_candidates=cands.skipped,
    )


__all__ = ["analyze", "load_inputs", "prepare", "rank_prepared", "Inputs", "Prepared"]
