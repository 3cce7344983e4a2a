"""Candidate metrics on a tiny hand-worked event log."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from nsm_cli.candidates import build_event_candidates, build_periodic_candidates, slugs_for
from nsm_cli.config import CandidateSpec, Settings
from nsm_cli.errors import UsageError
from nsm_cli.validate import Usage

D = datetime


def _cohort(ids, days: int = 30):
    n = len(ids)
    return pl.DataFrame({
        "account_id": ids,
        "window_start": [D(2025, 1, 1)] * n,
        "landmark": [D(2025, 1, 1) + timedelta(days=days)] * n,
    })


EVENTS = pl.DataFrame({
    "account_id": ["a", "a", "a", "a", "a", "b", "b", "x"],
    "ts": [D(2025, 1, 1, 9), D(2025, 1, 1, 17), D(2025, 1, 9), D(2025, 1, 30, 23), D(2025, 1, 31),  # last: landmark
           D(2025, 1, 3), D(2024, 12, 31), D(2025, 1, 5)],
    "event": ["share", "share", "login", "share", "share", "login", "share", "share"],
    "user_id": ["u1", "u2", "u1", "u1", "u1", "u3", "u3", "u9"],
})


def _usage(events: pl.DataFrame, **flags) -> Usage:
    """An event log as validate leaves it, with the event types present."""
    return Usage("events", events, event_names=tuple(sorted(events["event"].unique())), **flags)


def _build(specs=(), min_rows=True):
    s = Settings(accounts="x", window_days=30, candidates=tuple(specs))
    cohort = _cohort(["a", "b", "c"])
    return build_event_candidates(_usage(EVENTS, has_user=True), cohort, s)


def test_event_aggregations_by_hand(monkeypatch):
    monkeypatch.setattr("nsm_cli.candidates.MIN_ACCOUNTS_WITH", 0)
    monkeypatch.setattr("nsm_cli.candidates.MIN_SHARE_WITH", 0)
    cs = _build()
    m = cs.metrics.sort("account_id")
    # a: shares on Jan 1 (x2, users u1 u2) and Jan 30 23:00; the Jan 31 share is at the landmark: excluded.
    # b: a share on Dec 31 is before the window. c: no events at all -> zeros, window + 1 for days_to_first.
    expected = pl.DataFrame({
        "account_id": ["a", "b", "c"],
        "share.count": [3.0, 0.0, 0.0],
        "share.active_days": [2.0, 0.0, 0.0],
        "share.active_weeks": [2.0, 0.0, 0.0],
        "share.users": [2.0, 0.0, 0.0],
        "share.per_user": [1.5, 0.0, 0.0],
        "share.days_to_first": [9 / 24, 31.0, 31.0],
        "login.count": [1.0, 1.0, 0.0],
        "any.count": [4.0, 1.0, 0.0],
        "any.days_to_first": [9 / 24, 2.0, 31.0],
    })
    assert_frame_equal(m.select(expected.columns), expected)


def test_constant_and_nearly_empty_candidates_are_skipped_with_reason():
    cs = _build()
    reasons = dict(cs.skipped)
    assert "share.count" in reasons and reasons["share.count"].startswith("nearly empty")
    assert not cs.candidates


def test_config_candidates_filters_and_ratios(monkeypatch):
    monkeypatch.setattr("nsm_cli.candidates.MIN_ACCOUNTS_WITH", 0)
    monkeypatch.setattr("nsm_cli.candidates.MIN_SHARE_WITH", 0)
    specs = [
        CandidateSpec("both.count", events=("share", "login")),
        CandidateSpec("u1_share.count", events=("share",), filter="user_id = 'u1'"),
        CandidateSpec("share_rate", ratio=("share.count", "any.count")),
    ]
    m = _build(specs).metrics.sort("account_id")
    assert m["both.count"].to_list() == [4.0, 1.0, 0.0]
    assert m["u1_share.count"].to_list() == [2.0, 0.0, 0.0]
    assert m["share_rate"].to_list() == pytest.approx([0.75, 0.0, 0.0])
    with pytest.raises(UsageError, match="unknown candidate"):
        _build([CandidateSpec("bad", ratio=("nope.count", "any.count"))])


def test_colliding_event_names_get_distinct_slugs():
    mapping, warnings = slugs_for(["Report Shared", "report-shared", "report_shared", "any"])
    assert len(set(mapping.values())) == 4
    assert mapping["any"] != "any"  # 'any' is reserved for all events together
    assert len(warnings) == 3


def test_wide_table_sum_mean_active_periods(monkeypatch):
    monkeypatch.setattr("nsm_cli.candidates.MIN_ACCOUNTS_WITH", 0)
    monkeypatch.setattr("nsm_cli.candidates.MIN_SHARE_WITH", 0)
    frame = pl.DataFrame({
        "account_id": ["a", "a", "a", "b"],
        "ts": [D(2025, 1, 1), D(2025, 1, 8), D(2025, 2, 1), D(2025, 1, 15)],  # Feb 1: after the landmark
        "messages": [3.0, 0.0, 100.0, 5.0],
    })
    s = Settings(accounts="x", window_days=30)
    cs = build_periodic_candidates(Usage("wide", frame, measures=("messages",)), _cohort(["a", "b", "c"]), s)
    m = cs.metrics.sort("account_id")
    assert m["messages.sum"].to_list() == [3.0, 5.0, 0.0]
    assert m["messages.mean"].to_list() == [1.5, 5.0, 0.0]
    assert m["messages.active_periods"].to_list() == [1.0, 1.0, 0.0]


def test_an_event_called_any_does_not_clash_with_all_events(monkeypatch):
    monkeypatch.setattr("nsm_cli.candidates.MIN_ACCOUNTS_WITH", 0)
    monkeypatch.setattr("nsm_cli.candidates.MIN_SHARE_WITH", 0)
    events = EVENTS.with_columns(pl.col("event").replace({"login": "any"}))
    s = Settings(accounts="x", window_days=30)
    cs = build_event_candidates(_usage(events, has_user=True), _cohort(["a", "b", "c"]), s)
    m = cs.metrics.sort("account_id")
    assert m["any.count"].to_list() == [4.0, 1.0, 0.0]  # every event
    assert m["any_2.count"].to_list() == [1.0, 1.0, 0.0]  # the event named "any"


@st.composite
def _event_logs(draw, days: int = 30):
    n = draw(st.integers(1, 60))
    rows = st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(-3 * 24, (days + 4) * 24),
                     st.sampled_from(["login", "share", "export"]), st.sampled_from(["u1", "u2", "u3", None]),
                     st.one_of(st.none(), st.floats(-5, 50, allow_nan=False)))
    data = draw(st.lists(rows, min_size=n, max_size=n))
    account, hours, event, user, value = map(list, zip(*data, strict=True))
    return pl.DataFrame({"account_id": account, "ts": [D(2025, 1, 1) + timedelta(hours=h) for h in hours],
                         "event": event, "user_id": user, "value": value},
                        schema_overrides={"value": pl.Float64, "user_id": pl.String})


def _reference(events: pl.DataFrame, cohort: pl.DataFrame, window: float) -> dict[str, dict[str, float]]:
    """The aggregations by a plain polars group-by, one (account, event) group at a time."""
    inside = events.join(cohort, on="account_id").filter(
        (pl.col("ts") >= pl.col("window_start")) & (pl.col("ts") < pl.col("landmark"))).with_columns(
        offset=(pl.col("ts") - pl.col("window_start")).dt.total_seconds() / 86_400)
    aggs = [pl.len().alias("count"), pl.col("offset").floor().n_unique().alias("active_days"),
            (pl.col("offset").floor() // 7).n_unique().alias("active_weeks"),
            pl.col("offset").min().alias("days_to_first"), pl.col("user_id").drop_nulls().n_unique().alias("users"),
            pl.col("value").sum().alias("sum")]
    out: dict[str, dict[str, float]] = {}
    for keys, prefix in ((["account_id", "event"], None), (["account_id"], "any")):
        for r in inside.group_by(keys).agg(aggs).iter_rows(named=True):
            for agg in ("count", "active_days", "active_weeks", "days_to_first", "users", "sum"):
                out.setdefault(r["account_id"], {})[f"{prefix or r['event']}.{agg}"] = float(r[agg])
            name = prefix or r["event"]
            out[r["account_id"]][f"{name}.per_user"] = r["count"] / r["users"] if r["users"] else 0.0
    return out


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([30, 150]).flatmap(lambda days: st.tuples(st.just(days), _event_logs(days))))
def test_event_aggregations_match_a_plain_group_by(case):
    """30 days, and 150 (days and weeks then take several 64-bit words per cell)."""
    days, events = case
    cohort = _cohort(["a", "b", "c", "e"], days)
    s = Settings(accounts="x", window_days=days)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("nsm_cli.candidates.MIN_ACCOUNTS_WITH", 0)
        mp.setattr("nsm_cli.candidates.MIN_SHARE_WITH", 0)
        metrics = build_event_candidates(_usage(events, has_user=True, has_value=True), cohort, s).metrics
    expected = _reference(events, cohort, float(days))
    for r in metrics.iter_rows(named=True):
        for name, value in r.items():
            if name == "account_id":
                continue
            fill = days + 1.0 if name.endswith("days_to_first") else 0.0
            want = expected.get(r["account_id"], {}).get(name, fill)
            assert value == pytest.approx(want, rel=1e-12, abs=1e-12), (r["account_id"], name)


def test_filter_that_fails_when_run_is_a_usage_error():
    """validate keeps user ids as 64-bit hashes, so a filter comparing them with text fails only when
    the query runs; that must still be a clear UsageError (exit 2), not an internal error."""
    hashed = EVENTS.with_columns(pl.col("user_id").hash(seed=0))
    s = Settings(accounts="x", window_days=30,
                 candidates=(CandidateSpec("u1_share.count", events=("share",), filter="user_id = 'u1'"),))
    with pytest.raises(UsageError, match="cannot use filter.*user ids are hashed"):
        build_event_candidates(_usage(hashed, has_user=True), _cohort(["a", "b", "c"]), s)


def test_config_candidate_of_absent_events_is_all_fill_values_and_names_must_be_new(monkeypatch):
    monkeypatch.setattr("nsm_cli.candidates.MIN_ACCOUNTS_WITH", 0)
    monkeypatch.setattr("nsm_cli.candidates.MIN_SHARE_WITH", 0)
    cs = _build([CandidateSpec("never.count", events=("nope",)), CandidateSpec("share_first", events=("share",),
                                                                                 aggregation="days_to_first")])
    assert "never.count" in dict(cs.skipped)  # constant 0: skipped with its reason
    assert cs.metrics.sort("account_id")["share_first"].to_list() == [9 / 24, 31.0, 31.0]
    with pytest.raises(UsageError, match="taken by a built-in"):
        _build([CandidateSpec("share.count", events=("share",))])


@pytest.mark.parametrize("seed,workers", [(0, 1), (1, 3)])
def test_grouped_event_tables_count_users_like_python_sets(monkeypatch, seed, workers):
    """The compiled per-account pass against Python sets, with accounts of many rows and few distinct
    users (so the user set's slots collide and probe), rows in no order, and an account with none; the
    rows grouped by one core or by three (each placing its share), renumbered from the accounts taken
    to the cohort's (some taken accounts are not in it) and with the events of one type left out."""
    import numpy as np

    from nsm_cli import kernels

    monkeypatch.setattr(kernels, "workers", lambda: workers)

    rng = np.random.default_rng(seed)
    n, n_accounts, n_src = 5000, 40, 3
    renumber = np.r_[rng.permutation(n_accounts - 1), -1, -1]  # taken account -> cohort row; the last has no rows
    taken = rng.integers(0, len(renumber), n)
    code = rng.integers(0, n_src + 1, n)  # code 2 is a type left out; the others are sources 0, 1, 2
    source_of = np.array([1, 0, -1, 2], np.int32)
    start = rng.integers(0, 10**12, n_accounts)  # each cohort account's window start, in microseconds
    offset = rng.uniform(0, 30, n)
    ts = (np.r_[start, 0, 0][renumber[taken]] + offset * 86_400_000_000).astype(np.int64)
    offset = (ts - np.r_[start, 0, 0][renumber[taken]]) * (1 / 86_400_000_000)  # as the kernel takes it from ts
    user = rng.integers(0, 2**63, 60, dtype=np.uint64)[rng.integers(0, 60, n)]
    user_ok = rng.random(n) > 0.1
    value = rng.normal(size=n)
    cuts = [0, 0, 7, 7, 2000, n]  # the rows in chunks, some empty (the first too), as polars may hold them
    chunks = [(taken[lo:hi], code[lo:hi], ts[lo:hi], user[lo:hi], user_ok[lo:hi], value[lo:hi])
              for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]
    starts, *columns = kernels.group_by_account(chunks, renumber, source_of, start)
    count, days, weeks, users, total = (np.zeros((n_accounts, 1 + n_src)) for _ in range(5))
    first = np.full((n_accounts, 1 + n_src), 31.0)
    kernels.event_tables(np.column_stack([starts[:-1], starts[1:]]), *columns, 30, count, days, weeks, first, users,
                         total)
    row, source = renumber[taken], source_of[code]
    kept = (row >= 0) & (source >= 0)
    assert starts[-1] == kept.sum()
    for a in range(n_accounts):
        for cell in range(1 + n_src):
            mine = kept & (row == a) & ((source == cell - 1) | (cell == 0))
            assert count[a, cell] == mine.sum()
            assert days[a, cell] == len(set(offset[mine].astype(int)))
            assert weeks[a, cell] == len(set(offset[mine].astype(int) // 7))
            assert first[a, cell] == (offset[mine].min() if mine.any() else 31.0)
            assert users[a, cell] == len(set(user[mine & user_ok].tolist()))
            assert total[a, cell] == pytest.approx(value[mine].sum(), rel=1e-12, abs=1e-12)
    grouped_offset = columns[1]
    in_order = np.argsort(np.where(kept, row, n_accounts), kind="stable")[:kept.sum()]
    assert (grouped_offset == offset[in_order]).all()  # each account's rows in their order


def test_only_one_event_types_candidates_equal_those_of_the_full_set(monkeypatch):
    """`only` (the deep dive's other windows) builds just that event type's candidates, with the values
    of the full build; a name that is not one event type's built-in candidate builds everything."""
    monkeypatch.setattr("nsm_cli.candidates.MIN_ACCOUNTS_WITH", 0)
    monkeypatch.setattr("nsm_cli.candidates.MIN_SHARE_WITH", 0)
    s = Settings(accounts="x", window_days=30, candidates=(CandidateSpec("share_first", events=("share",),
                                                                         aggregation="days_to_first"),))
    usage, cohort = _usage(EVENTS, has_user=True), _cohort(["a", "b", "c"])
    full = build_event_candidates(usage, cohort, s).metrics
    single = build_event_candidates(usage, cohort, s, only="share.users").metrics
    assert sorted(single.columns) == sorted(["account_id", *(c for c in full.columns if c.startswith("share."))])
    assert_frame_equal(single, full.select(single.columns))
    for name in ("any.count", "share_first", "share.nope"):
        assert build_event_candidates(usage, cohort, s, only=name).metrics.columns == full.columns


def test_chunks_follow_the_first_columns_chunks():
    """`_chunks` reads chunk by chunk as the first column is cut; a column cut otherwise is sliced at
    the same rows; an absent column's numpy stand-in is repeated."""
    import numpy as np

    from nsm_cli.candidates import _chunks

    def in_two(values: list[int]) -> pl.Series:
        return pl.concat([pl.Series(values[:2]), pl.Series(values[2:])], rechunk=False)

    absent = np.empty(0)
    alike = _chunks([in_two([1, 2, 3]), in_two([4, 5, 6]), absent])
    assert [[a.tolist() for a in c] for c in alike] == [[[1, 2], [4, 5], []], [[3], [6], []]]
    unlike = _chunks([in_two([1, 2, 3]), pl.Series([4, 5, 6]), absent])
    assert [[a.tolist() for a in c] for c in unlike] == [[[1, 2], [4, 5], []], [[3], [6], []]]
    whole = _chunks([pl.Series([1, 2, 3]), in_two([4, 5, 6]), absent])
    assert [[a.tolist() for a in c] for c in whole] == [[[1, 2, 3], [4, 5, 6], []]]
    empty = _chunks([pl.Series([], dtype=pl.Int64), pl.Series([], dtype=pl.Int64), absent])
    assert [[a.tolist() for a in c] for c in empty] == [[[], [], []]]
    assert all(c[2] is absent for c in alike + unlike)
