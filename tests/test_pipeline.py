"""End to end on synthetic data with a known answer, plus invariance properties."""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nsm_cli import Settings, analyze
from nsm_cli.render import render_json
from nsm_cli.sample import write_sample

from .conftest import SAMPLE


def _by_name(report):
    return {c.name: c for c in report.candidates}


@pytest.fixture(scope="module")
def reports(sample_dirs):
    return {
        key: analyze(Settings(accounts=str(d / "accounts.csv"), usage=str(d / "events.csv"), mrr=str(d / "mrr.csv")))
        for key, d in sample_dirs.items()
    }


KEYS = [(1, 2500), (2, 2500), (3, 5000)]


@pytest.mark.parametrize("key", KEYS)
def test_the_retention_driver_ranks_first_with_its_threshold(reports, key):
    report = reports[key]
    top = report.candidates[0]
    assert top.source == "report_shared"
    assert top.churn.hazard_ratio < 0.8 and top.churn.q_value < 1e-6
    count = _by_name(report)["report_shared.count"]
    assert count.rank <= 4
    assert 2 <= count.churn.threshold.value <= 4
    assert count.churn.threshold.holdout_confirmed
    assert count.churn.threshold.retention_above > count.churn.threshold.retention_below + 0.08


@pytest.mark.parametrize("key", KEYS)
def test_expansion_driver_vanity_and_confounded_metrics_are_recognised(reports, key):
    c = _by_name(reports[key])
    integ = c["integration_connected.count"]
    assert integ.expansion.hazard_ratio > 1.15 and integ.expansion.q_value < 0.05
    assert integ.expansion.concordance > 0.53
    assert integ.churn.q_value > 0.01  # no effect on churn
    vanity = c["page_viewed.count"]
    assert "not_significant" in vanity.flags and "vanity" in vanity.flags
    api = c["api_call.count"]
    assert api.churn.q_value < 0.05 and "confounded" in api.flags
    assert abs(np.log(api.churn.adjusted_hazard_ratio)) < abs(np.log(api.churn.hazard_ratio)) / 2
    top10 = [x.name for x in reports[key].candidates[:10]]
    assert not [n for n in top10 if n.startswith("cancel_page_viewed.")]
    assert "page_viewed.count" not in top10 and "page_viewed.active_days" not in top10


@pytest.mark.parametrize("key", KEYS)
def test_every_account_is_accounted_for(reports, key):
    d = reports[key].data
    assert d.accounts_analysed + sum(d.excluded.values()) == d.accounts_total
    assert set(d.excluded) <= {"churned_in_window", "too_young"}
    assert d.excluded["churned_in_window"] > 0


def test_snapshot_lifetime_total_is_flagged_as_tenure_leak():
    report = analyze(Settings(accounts=str(SAMPLE / "accounts.csv"), usage=str(SAMPLE / "account_snapshot.csv")))
    leak = _by_name(report)["lifetime_sessions.value"]
    assert "tracks_tenure" in leak.flags and leak.score == 0
    assert report.candidates[0].name != "lifetime_sessions.value"
    assert any(w["code"] == "snapshot_timing_unknown" for w in report.data.warnings)


def test_committed_sample_recovers_ground_truth_and_json_is_deterministic():
    s = Settings(accounts=str(SAMPLE / "accounts.csv"), usage=str(SAMPLE / "events.csv"), mrr=str(SAMPLE / "mrr.csv"))
    first, second = render_json(analyze(s)), render_json(analyze(s))
    assert first == second
    data = json.loads(first)
    assert data["schema_version"] == 1
    assert data["candidates"][0]["source"] == "report_shared"


# ---- invariance properties on a small dataset -------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    write_sample(folder, 600, seed=11, mean_events=30)
    return folder


def _essentials(report, *, with_thresholds: bool = True):
    out = []
    for c in report.candidates:
        d = c.to_dict()
        if not with_thresholds:
            for o in ("churn", "expansion"):
                if d[o]:
                    d[o].pop("threshold")
        out.append(d)
    return out


def _run(folder, events_path, accounts_path=None, as_of="2025-06-30"):
    return analyze(Settings(accounts=str(accounts_path or folder / "accounts.csv"), usage=str(events_path),
                            mrr=str(folder / "mrr.csv"), as_of=datetime.fromisoformat(as_of)))


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000))
def test_row_order_does_not_matter(small, tmp_path_factory, seed):
    base = _run(small, small / "events.csv")
    events = pl.read_csv(small / "events.csv")
    shuffled = tmp_path_factory.mktemp("shuf") / "events.csv"
    events.sample(fraction=1.0, shuffle=True, seed=seed).write_csv(shuffled)
    assert _essentials(_run(small, shuffled)) == _essentials(base)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.text(alphabet="abcXYZ_-", min_size=1, max_size=5))
def test_renaming_accounts_changes_no_statistic(small, tmp_path_factory, prefix):
    folder = tmp_path_factory.mktemp("renamed")
    rename = pl.col("account_id").str.replace("acct_", prefix + "#")
    for name in ("accounts", "events", "mrr"):
        pl.read_csv(small / f"{name}.csv").with_columns(rename).write_csv(folder / f"{name}.csv")
    renamed = analyze(Settings(accounts=str(folder / "accounts.csv"), usage=str(folder / "events.csv"),
                               mrr=str(folder / "mrr.csv"), as_of=datetime(2025, 6, 30)))
    base = _run(small, small / "events.csv")
    # the holdout split hashes the ids, so only thresholds may move
    assert _essentials(renamed, with_thresholds=False) == _essentials(base, with_thresholds=False)


def test_events_after_the_landmark_change_nothing(small, tmp_path):
    base = _run(small, small / "events.csv")
    accounts = pl.read_csv(small / "accounts.csv", try_parse_dates=True)
    extra = accounts.select(
        "account_id",
        pl.lit("u_extra").alias("user_id"),
        (pl.col("signup_date").cast(pl.Datetime) + pl.duration(days=30)).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        .alias("timestamp"),
        pl.lit("report_shared").alias("event"),
    ).filter(pl.col("timestamp") < "2025-06-30")
    events = pl.concat([pl.read_csv(small / "events.csv"), extra, extra.with_columns(pl.lit("cancel_page_viewed")
                                                                                      .alias("event"))])
    path = tmp_path / "events.csv"
    events.write_csv(path)
    assert _essentials(_run(small, path)) == _essentials(base)


# ---- other input shapes and modes, end to end ------------------------------------------------

def test_glob_of_event_files_equals_one_file(small, tmp_path):
    events = pl.read_csv(small / "events.csv")
    half = events.height // 2
    (tmp_path / "parts").mkdir()
    events.head(half).write_csv(tmp_path / "parts" / "a.csv")
    events.slice(half).write_csv(tmp_path / "parts" / "b.csv")
    split = _run(small, tmp_path / "parts" / "*.csv")
    assert _essentials(split) == _essentials(_run(small, small / "events.csv"))


def test_calendar_landmark_accounts_for_everyone(small):
    report = analyze(Settings(accounts=str(small / "accounts.csv"), usage=str(small / "events.csv"),
                              landmark=datetime(2024, 10, 1), as_of=datetime(2025, 6, 30)))
    d = report.data
    assert d.accounts_analysed + sum(d.excluded.values()) == d.accounts_total
    assert {"signed_up_after_landmark", "churned_before_landmark", "partial_window"} <= set(d.excluded)
    assert report.settings["landmark_mode"] == "calendar"


def test_wide_periodic_table_ranks_the_driver_first(small, tmp_path):
    events = pl.read_csv(small / "events.csv", try_parse_dates=True)
    weekly = (events.with_columns(pl.col("timestamp").dt.truncate("1w").dt.date().alias("date"))
              .group_by("account_id", "date").agg(
                  [(pl.col("event") == e).sum().alias(e) for e in ("report_shared", "page_viewed", "login")])
              .sort("account_id", "date"))
    weekly.write_csv(tmp_path / "weekly.csv")
    report = analyze(Settings(accounts=str(small / "accounts.csv"), usage=str(tmp_path / "weekly.csv"),
                              as_of=datetime(2025, 6, 30)))
    assert report.data.usage_kind == "wide"
    assert report.candidates[0].source == "report_shared"
    assert {c.aggregation for c in report.candidates} <= {"sum", "mean", "active_periods"}


def test_churn_derived_from_mrr_matches_the_churn_dates(small, tmp_path):
    pl.read_csv(small / "accounts.csv").drop("churn_date").write_csv(tmp_path / "accounts.csv")
    derived = _run(small, small / "events.csv", accounts_path=tmp_path / "accounts.csv")
    given = _run(small, small / "events.csv")
    assert derived.data.churn_events == given.data.churn_events
    assert derived.data.excluded == given.data.excluded
    assert _essentials(derived) == _essentials(given)


def test_kernels_are_set_up_during_the_scan_only_when_candidates_follow(monkeypatch):
    """`load_inputs` starts numba's set-up beside the scan of the event log when it takes windows for
    candidates, and not for `nsm inspect` (no windows), which runs no kernel."""
    from nsm_cli import kernels
    from nsm_cli.pipeline import load_inputs

    calls = []
    monkeypatch.setattr(kernels, "warm_up", lambda: calls.append(1))
    s = Settings(accounts=str(SAMPLE / "accounts.csv"), usage=str(SAMPLE / "events.csv"))
    load_inputs(s, windows=())
    assert calls == []
    load_inputs(s)
    assert calls == [1]


# ---- the scratch file of the windowed events -------------------------------------------------

def test_the_windowed_events_give_the_same_report_in_memory_and_in_tmpdir(monkeypatch, tmp_path):
    """The scratch file in memory (the default when it fits) or in TMPDIR: byte-identical JSON."""
    from nsm_cli import scratch

    s = Settings(accounts=str(SAMPLE / "accounts.csv"), usage=str(SAMPLE / "events.csv"), mrr=str(SAMPLE / "mrr.csv"))
    paths = []
    real = scratch.scratch_file

    @contextmanager
    def recorded(name, estimate, **kwargs):
        with real(name, estimate, **kwargs) as path:
            paths.append(path)
            yield path

    monkeypatch.setattr("nsm_cli.pipeline.scratch_file", recorded)
    monkeypatch.setattr(scratch.tempfile, "tempdir", str(tmp_path))
    in_memory = render_json(analyze(s))
    monkeypatch.setattr(scratch, "memory_headroom", lambda: 0)
    on_disk = render_json(analyze(s))
    assert in_memory == on_disk
    assert paths[1].startswith(str(tmp_path)) and list(tmp_path.iterdir()) == []  # written there, then removed
    if hasattr(scratch.os, "memfd_create"):
        assert paths[0].startswith("/proc/self/fd/")


def test_scratch_file_is_in_memory_only_when_the_estimate_fits(tmp_path, monkeypatch):
    from nsm_cli import scratch

    monkeypatch.setattr(scratch.tempfile, "tempdir", str(tmp_path))
    with scratch.scratch_file("a.arrow", 1000, headroom=1999) as path:  # over half the room: TMPDIR
        assert path.startswith(str(tmp_path))
        pl.DataFrame({"x": [1, 2]}).write_ipc(path)
        assert pl.read_ipc(path)["x"].to_list() == [1, 2]
    assert list(tmp_path.iterdir()) == []
    if not hasattr(scratch.os, "memfd_create"):
        return
    with scratch.scratch_file("a.arrow", 1000, headroom=2000) as path:
        assert path.startswith("/proc/self/fd/")
        pl.DataFrame({"x": [1, 2]}).write_ipc(path)
        frame = pl.read_ipc(path)
    assert frame["x"].to_list() == [1, 2]  # the rows read back outlive the file
    assert list(tmp_path.iterdir()) == []


def test_memory_headroom_is_at_most_the_machine_memory():
    from nsm_cli import scratch

    room = scratch.memory_headroom()
    if room is None:
        pytest.skip("the system does not say how much memory is available")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal:"))
    assert 0 <= room <= total


def test_scratch_file_falls_back_to_tmpdir_where_memory_files_are_forbidden(tmp_path, monkeypatch):
    from nsm_cli import scratch

    def forbidden(name):
        raise PermissionError(1, "Operation not permitted")  # as a sandbox's seccomp filter answers

    monkeypatch.setattr(scratch.os, "memfd_create", forbidden, raising=False)
    monkeypatch.setattr(scratch.tempfile, "tempdir", str(tmp_path))
    with scratch.scratch_file("a.arrow", 10, headroom=1 << 40) as path:
        assert path.startswith(str(tmp_path))


def test_scratch_estimate_counts_a_compressed_log_at_twenty_times_its_size():
    from nsm_cli.load import read_table
    from nsm_cli.pipeline import _windowed_size_bound

    bad = Path(__file__).parent / "data" / "bad"
    for name, factor in (("events.csv.gz", 20), ("events.csv.zst", 20), ("tab_events.tsv", 1)):
        table = read_table(str(bad / name), what="usage")
        assert _windowed_size_bound(table) == factor * (bad / name).stat().st_size
