"""Every kind of bad input gets a clear message and exit code 3, or a counted warning — never a traceback.

The corpus in tests/data/bad is made by tests/data/make_corpus.py from the small valid dataset in
tests/data/base.
"""

from __future__ import annotations

import gzip
import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nsm_cli.cli import app
from nsm_cli.load import detect_date_formats, parse_datetime, read_table

DATA = Path(__file__).parent / "data"
BASE, BAD = DATA / "base", DATA / "bad"
RUNNER = CliRunner()


def _run(*, accounts=None, usage=None, mrr=None, extra=(), command="rank", fmt="json"):
    args = [command, "--accounts", str(accounts or BASE / "accounts.csv"), "--usage", str(usage or BASE / "events.csv"),
            "--mrr", str(mrr or BASE / "mrr.csv"), "--format", fmt, *extra]
    if command == "rank":
        args.append("-q")
    return RUNNER.invoke(app, args)


FATAL = [
    # (case, kwargs, extra args, message fragments)
    ("missing file", {"accounts": BAD / "nope.csv"}, (), ["nope.csv", "not found"]),
    ("folder instead of file", {"usage": BAD}, (), ["folder"]),
    ("empty file", {"accounts": BAD / "empty.csv"}, (), ["empty.csv", "empty"]),
    ("header only", {"accounts": BAD / "header_only.csv"}, (), ["header_only.csv", "no data rows"]),
    ("missing column", {"accounts": BAD / "missing_signup_column.csv"}, (),
     ["missing_signup_column.csv", "no signup_date column", "closest: signup_dt", "--column signup_date=NAME"]),
    ("US dates", {"accounts": BAD / "us_dates_accounts.csv"}, (),
     ["us_dates_accounts.csv", "column 'signup_date'", "line 2", "not ISO dates", "/", "recognised in the file: none"]),
    ("as-of before data", {}, ("--as-of", "2001-01-01"), ["before every signup"]),
    ("all churned", {"accounts": BAD / "all_churned.csv"}, (), ["stayed", "at least 10"]),
    ("none churned", {"accounts": BAD / "none_churned.csv"}, (), ["churned", "at least 10"]),
    ("too few accounts", {"accounts": BAD / "too_few_accounts.csv"}, (), ["at least 30"]),
    ("corrupt parquet", {"usage": BAD / "corrupt.parquet"}, (), ["corrupt.parquet", "Parquet"]),
    ("cut-short gzip", {"usage": BAD / "truncated_events.csv.gz"}, (),
     ["truncated_events.csv.gz", "damaged or cut short"]),
    ("cut-short zstd", {"usage": BAD / "truncated_events.csv.zst"}, (),
     ["truncated_events.csv.zst", "damaged or cut short"]),
    ("bzip2", {"usage": BAD / "events.csv.bz2"}, (), ["events.csv.bz2", "bzip2-compressed", "gzip or zstd"]),
    ("xz", {"usage": BAD / "events.csv.xz"}, (), ["events.csv.xz", "xz-compressed", "gzip or zstd"]),
    ("Excel workbook", {"usage": BAD / "events.xlsx"}, (), ["events.xlsx", "zip archive", "export the CSV"]),
    ("Parquet named .csv", {"usage": BAD / "events_parquet.csv"}, (), ["events_parquet.csv", "Parquet file"]),
]


@pytest.mark.parametrize("case,kwargs,extra,fragments", FATAL, ids=[c[0] for c in FATAL])
@pytest.mark.parametrize("command", ["rank", "inspect"])
def test_fatal_input_problems_exit_three_with_a_clear_message(case, kwargs, extra, fragments, command):
    result = _run(**kwargs, extra=extra, command=command, fmt="table")
    assert result.exit_code == 3, (result.stdout, result.stderr)
    message = " ".join(result.stderr.split())
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "Traceback" not in result.stderr + result.stdout


WARNED = [
    # (case, kwargs, extra args, warning codes, excluded reasons)
    ("semicolons", {"accounts": BAD / "semicolon_accounts.csv"}, (), [], {}),
    ("tabs", {"usage": BAD / "tab_events.tsv"}, (), [], {}),
    ("BOM", {"accounts": BAD / "bom_accounts.csv"}, (), [], {}),
    ("Latin-1", {"accounts": BAD / "latin1_accounts.csv"}, (), [], {}),
    ("quoted newlines", {"accounts": BAD / "quoted_newlines_accounts.csv"}, (), [], {}),
    ("parquet events", {"usage": BAD / "events.parquet"}, (), [], {}),
    ("conflicting duplicates", {"accounts": BAD / "duplicate_conflicting.csv"}, (),
     ["duplicate_rows", "duplicate_conflicting"], {"duplicate_conflicting": 3}),
    ("blank ids", {"accounts": BAD / "blank_ids.csv"}, (), ["missing_account_id"], {"missing_account_id": 4}),
    ("unknown accounts", {"usage": BAD / "unknown_account_events.csv"}, (), ["usage_unknown_accounts"], {}),
    ("accounts without events", {"usage": BAD / "accounts_without_events.csv"}, (), ["accounts_without_usage"], {}),
    ("churn before signup", {"accounts": BAD / "churn_before_signup.csv"}, (), ["churn_before_signup"],
     {"churn_before_signup": 3}),
    ("events before signup and after as-of", {"usage": BAD / "events_outside_dates.csv"},
     ("--as-of", "2025-06-30"), ["usage_before_signup", "usage_after_as_of"], {}),
    ("mixed date formats", {"accounts": BAD / "mixed_dates_accounts.csv"}, (), ["invalid_signup_date"],
     {"invalid_signup_date": 1}),
    ("mixed time zones", {"usage": BAD / "mixed_zones_events.csv"}, (), ["mixed_time_zones"], {}),
    ("messy numbers", {"mrr": BAD / "messy_numbers_mrr.csv"}, (), ["mrr_invalid_amount", "mrr_negative"], {}),
    ("odd event names", {"usage": BAD / "odd_event_names.csv"}, (), ["name_collision"], {}),
    ("thousands of event types", {"usage": BAD / "many_event_types.csv"}, ("--max-events", "5"),
     ["events_capped"], {}),
]


@pytest.mark.parametrize("case,kwargs,extra,codes,excluded", WARNED, ids=[c[0] for c in WARNED])
def test_partial_problems_are_counted_warnings(case, kwargs, extra, codes, excluded):
    result = _run(**kwargs, extra=extra)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)["data"]
    got = {w["code"] for w in data["warnings"]}
    assert set(codes) <= got, got
    for reason, n in excluded.items():
        assert data["accounts_excluded"][reason] == n
    assert data["accounts_analysed"] + sum(data["accounts_excluded"].values()) == data["accounts_total"]
    for w in data["warnings"]:
        assert w["count"] >= 0 and w["message"]


@pytest.mark.parametrize(("plain", "packed"), [
    ({"usage": BASE / "events.csv"}, {"usage": BAD / "events.csv.gz"}),
    ({"usage": BASE / "events.csv"}, {"usage": BAD / "events.csv.zst"}),
    ({"accounts": BAD / "latin1_accounts.csv"}, {"accounts": BAD / "latin1_accounts.csv.gz"}),
    ({"usage": BASE / "events.csv"}, {"usage": BAD / "unix_seconds_events.csv"}),
    ({"usage": BASE / "events.csv"}, {"usage": BAD / "unix_millis_events.csv"}),
], ids=["gzip", "zstd", "Latin-1 gzip", "Unix seconds", "Unix milliseconds"])
def test_compressed_files_and_unix_times_give_the_analysis_of_the_plain_iso_ones(plain, packed):
    expected, got = (json.loads(_run(**kwargs).stdout) for kwargs in (plain, packed))
    assert got["candidates"] == expected["candidates"]
    assert got["data"] == expected["data"]
    if "accounts" in packed:  # decoded as Latin-1, as the plain file is
        assert "pro-é" in read_table(str(packed["accounts"]), what="accounts").frame.collect()["plan"].to_list()


def test_unix_times_are_read_in_their_range_only():
    """Worked out by hand: 1700000000 s is 2023-11-14 22:13:20 UTC. Integers outside 2000-2100 (such as
    a date written 20250131) are not Unix times."""
    values = pl.Series(["1700000000", "1700000000.25", "946684799", "20250131", "x", "1700000000000"])
    assert detect_date_formats(pl.LazyFrame({"t": values[:2]}), "t") == ("unix:s",)
    assert detect_date_formats(pl.LazyFrame({"t": values[5:]}), "t") == ("unix:ms",)
    assert detect_date_formats(pl.LazyFrame({"t": values[2:5]}), "t") == ()
    parsed = pl.DataFrame({"t": values}).select(
        s=parse_datetime("t", ("unix:s",), pl.String), ms=parse_datetime("t", ("unix:ms",), pl.String))
    at = datetime(2023, 11, 14, 22, 13, 20)
    assert parsed["s"].to_list() == [at, at + timedelta(seconds=0.25), None, None, None, None]
    assert parsed["ms"].to_list() == [None, None, None, None, None, at]


def test_odd_event_names_are_escaped_in_markdown():
    result = _run(usage=BAD / "odd_event_names.csv", fmt="markdown")
    assert result.exit_code == 0
    assert "<b>" not in result.stdout
    names = json.loads(_run(usage=BAD / "odd_event_names.csv").stdout)["candidates"]
    assert all(c["name"].replace("_", "").replace(".", "").isalnum() for c in names)


def test_inspect_reports_shape_mapping_and_problems():
    result = _run(usage=BAD / "unknown_account_events.csv", command="inspect")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [f["shape"] for f in data["files"]] == ["accounts", "events", "mrr"]
    assert data["files"][1]["columns"]["timestamp"] == "timestamp"
    assert data["events"]["event_types"] == 7 and len(data["events"]["top"]) == 7
    problem = next(p for p in data["problems"] if p["code"] == "usage_unknown_accounts")
    lines = (BAD / "unknown_account_events.csv").read_text().splitlines()
    first_ghost = next(i for i, line in enumerate(lines, start=1) if line.startswith("ghost_1,"))
    assert problem["count"] == 5 and problem["example_row"] == first_ghost and problem["advice"]
    text = _run(usage=BAD / "unknown_account_events.csv", command="inspect", fmt="table").stdout
    assert "usage_unknown_accounts" in text and "events:" in text


def test_inputs_are_never_modified(tmp_path):
    before = {p: p.read_bytes() for p in BASE.iterdir()}
    mtimes = {p: os.stat(p).st_mtime_ns for p in BASE.iterdir()}
    assert _run(extra=("--output", str(tmp_path / "out.json"))).exit_code == 0
    assert {p: p.read_bytes() for p in BASE.iterdir()} == before
    assert {p: os.stat(p).st_mtime_ns for p in BASE.iterdir()} == mtimes


# ---- fuzzing: random CSVs never produce a traceback or exit code 4 ---------------------------

cell = st.one_of(
    st.just(""), st.sampled_from(["N/A", "-", "null", "2025-01-01", "2025-13-45", "01/02/2025", "1,234", "$5",
                                   "=cmd()", "😀", "a;b", '"q"', "2024-05-01T10:00:00+05:00"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8),
    st.integers(-5, 10**6).map(str),
)
header = st.lists(st.sampled_from(["account_id", "signup_date", "churn_date", "timestamp", "event", "user_id",
                                   "value", "date", "mrr", "plan", "x", "Customer ID", "created_at"]),
                  min_size=1, max_size=6, unique=True)


@st.composite
def csv_file(draw):
    cols = draw(header)
    rows = draw(st.lists(st.lists(cell, min_size=len(cols), max_size=len(cols)), max_size=40))
    sep = draw(st.sampled_from([",", ";", "\t"]))
    lines = [sep.join(cols)] + [sep.join('"' + c.replace('"', '""') + '"' for c in r) for r in rows]
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1"]))
    return ("\n".join(lines) + "\n").encode(encoding, errors="replace")


# NSM_FUZZ_EXAMPLES=3000 for a long fuzzing run; the default keeps the suite fast.
@settings(max_examples=int(os.environ.get("NSM_FUZZ_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(accounts=csv_file(), usage=csv_file(), which=st.sampled_from(["accounts", "usage", "both"]))
def test_fuzzed_inputs_never_crash(tmp_path_factory, accounts, usage, which):
    folder = tmp_path_factory.mktemp("fuzz")
    a, u = folder / "a.csv", folder / "u.csv"
    a.write_bytes(accounts if which != "usage" else (BASE / "accounts.csv").read_bytes())
    u.write_bytes(usage if which != "accounts" else (BASE / "events.csv").read_bytes())
    for command in ("rank", "inspect"):
        result = RUNNER.invoke(app, [command, "--accounts", str(a), "--usage", str(u)])
        assert result.exit_code in (0, 1, 3), (command, result.exit_code, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout


@settings(max_examples=int(os.environ.get("NSM_FUZZ_EXAMPLES", "30")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=csv_file(), which=st.sampled_from(["accounts", "usage"]), command=st.sampled_from(["rank", "inspect"]))
def test_a_gzipped_file_reads_as_the_plain_one(tmp_path_factory, content, which, command):
    """Whatever a CSV holds (any encoding, separator, damage), its gzip gives the same exit code,
    output and messages."""
    folder = tmp_path_factory.mktemp("gzip")
    plain, packed = folder / "x.csv", folder / "z.csv"  # names of one length: messages compare as text
    plain.write_bytes(content)
    packed.write_bytes(gzip.compress(content, mtime=0))
    runs = []
    for path in (plain, packed):
        files = {"accounts": BASE / "accounts.csv", "usage": BASE / "events.csv", which: path}
        result = RUNNER.invoke(app, [command, "--accounts", str(files["accounts"]), "--usage", str(files["usage"])])
        runs.append((result.exit_code, result.stdout.replace(str(path), "FILE"), result.stderr.replace(str(path), "FILE")))
    assert runs[0] == runs[1]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sets(st.integers(0, 10**6), min_size=1, max_size=40), st.sampled_from(["pad", "null"]))
def test_dirty_event_cells_give_the_same_analysis_as_clean_ones(tmp_path_factory, rows, how):
    """The event log is read by a fast pass that takes cells as they are; any cell with edge
    whitespace or a null spelling must send it to the careful pass, with the same result as a
    file that had been cleaned by hand."""
    import polars as pl

    from nsm_cli import Settings, analyze

    folder = tmp_path_factory.mktemp("dirty")
    base = pl.read_csv(BASE / "events.csv", infer_schema=False)
    picked = pl.Series(sorted(r % base.height for r in rows))
    columns = [c for c in ("account_id", "timestamp", "event", "user_id") if c in base.columns]
    column = columns[len(rows) % len(columns)]
    hit = pl.int_range(pl.len()).is_in(picked.implode())
    dirty_value = pl.lit(" ") + pl.col(column) + pl.lit("\t") if how == "pad" else pl.lit("NA")
    clean_value = pl.col(column) if how == "pad" else pl.lit(None, dtype=pl.String)
    base.with_columns(pl.when(hit).then(dirty_value).otherwise(pl.col(column)).alias(column)).write_csv(
        folder / "dirty.csv")
    base.with_columns(pl.when(hit).then(clean_value).otherwise(pl.col(column)).alias(column)).write_csv(
        folder / "clean.csv")
    reports = [analyze(Settings(accounts=str(BASE / "accounts.csv"), usage=str(folder / name),
                                mrr=str(BASE / "mrr.csv"))).to_dict() for name in ("dirty.csv", "clean.csv")]
    for report in reports:
        report["settings"].pop("usage")
        for w in report["data"]["warnings"]:
            w.pop("file", None)
    assert reports[0] == reports[1]


# ---- the streamed checks count what a plain read of the file counts ------------------------------

def _dirty_log(tmp_path: Path) -> Path:
    """The base log with rows of unknown accounts, rows dated before signup and after --as-of (an event
    type of its own), padded ids (the careful pass), bad timestamps and a rare event type, each every
    few rows."""
    events = pl.read_csv(BASE / "events.csv", infer_schema=False)
    i = pl.int_range(pl.len())
    events = events.with_columns(
        account_id=pl.when(i % 23 == 0).then(pl.lit("acct_unknown_") + (i % 5).cast(pl.String))
        .when(i % 29 == 0).then(pl.lit(" ") + pl.col("account_id")).otherwise(pl.col("account_id")),
        timestamp=pl.when(i % 37 == 0).then(pl.lit("2099-01-01")).when(i % 31 == 0).then(pl.lit("2001-01-01T00:00:00Z"))
        .when(i % 41 == 0).then(pl.lit("soon")).otherwise(pl.col("timestamp")),
        event=pl.when(i % 37 == 0).then(pl.lit("future_thing")).when(i % 43 == 0).then(pl.lit("rare_thing"))
        .otherwise(pl.col("event")),
    )
    path = tmp_path / "events.csv"
    events.write_csv(path)
    return path


def test_streamed_usage_counts_equal_a_plain_read(tmp_path):
    from datetime import datetime

    from nsm_cli import Settings
    from nsm_cli.pipeline import load_inputs

    path = _dirty_log(tmp_path)
    as_of = datetime(2025, 6, 1)
    s = Settings(accounts=str(BASE / "accounts.csv"), usage=str(path), as_of=as_of, max_events=3)
    inputs = load_inputs(s)
    assert isinstance(inputs.usage.frame, pl.LazyFrame)  # the log stays in its file
    got = {w.code: (w.count, w.example_row) for w in inputs.problems.warnings}

    raw = pl.read_csv(path, infer_schema=False).with_row_index("line", offset=2)
    text = pl.col("timestamp").str.strip_chars()
    ts = pl.coalesce(text.str.to_datetime("%Y-%m-%dT%H:%M:%SZ", strict=False, time_unit="us"),
                     text.str.to_datetime("%Y-%m-%d", strict=False, time_unit="us"))
    rows = raw.with_columns(pl.col("account_id").str.strip_chars(), ts=ts).filter(pl.col("ts").is_not_null())
    known = rows.join(inputs.accounts.select("account_id", "signup"), on="account_id", how="inner")
    unknown = rows.join(inputs.accounts.select("account_id"), on="account_id", how="anti")
    late = known.filter(pl.col("ts") > as_of)
    early = known.filter((pl.col("ts") <= as_of) & (pl.col("ts") < pl.col("signup")))
    volumes = known.filter(pl.col("ts") <= as_of)["event"].value_counts()
    bad_ts = raw.filter(pl.col("timestamp") == "soon")

    assert got["usage_unknown_accounts"] == (unknown.height, unknown["line"].min())
    assert got["usage_after_as_of"] == (late.height, late["line"].min())
    assert got["usage_before_signup"] == (early.height, early["line"].min())
    assert got["events_invalid_timestamp"] == (bad_ts.height, bad_ts["line"].min())
    assert got["events_capped"][0] == volumes.height - 3
    assert set(inputs.usage.event_names) == set(volumes.sort(["count", "event"], descending=[True, False])
                                                ["event"].head(3))
    silent = inputs.accounts.height - known["account_id"].n_unique()
    assert got.get("accounts_without_usage", (0, None))[0] == silent


def test_inspect_event_profile_equals_a_plain_read(tmp_path):
    """`nsm inspect` profiles the event types from the validation scan's counts: the same figures as
    a group-by of the raw log's analysed rows (known accounts, up to --as-of, the kept event types)."""
    from datetime import datetime

    from nsm_cli import Settings
    from nsm_cli.inspect import inspect_inputs

    path = _dirty_log(tmp_path)
    as_of = datetime(2025, 6, 1)
    report = inspect_inputs(Settings(accounts=str(BASE / "accounts.csv"), usage=str(path), as_of=as_of, max_events=3))
    accounts = pl.read_csv(BASE / "accounts.csv", infer_schema=False).select(pl.col("account_id").str.strip_chars())
    text = pl.col("timestamp").str.strip_chars()
    ts = pl.coalesce(text.str.to_datetime("%Y-%m-%dT%H:%M:%SZ", strict=False, time_unit="us"),
                     text.str.to_datetime("%Y-%m-%d", strict=False, time_unit="us"))
    rows = (pl.read_csv(path, infer_schema=False).with_columns(pl.col("account_id").str.strip_chars(), ts=ts)
            .join(accounts, on="account_id").filter(pl.col("ts") <= as_of))
    per_type = rows.group_by("event").agg(pl.len().alias("rows"), pl.col("account_id").n_unique().alias("accounts"))
    kept = per_type.sort(["rows", "event"], descending=[True, False]).head(3)
    rows = rows.filter(pl.col("event").is_in(kept["event"].implode()))
    profile = report.events
    assert profile["top"] == kept.to_dicts()
    assert (profile["rows"], profile["event_types"]) == (rows.height, 3)
    assert (profile["first"], profile["last"]) == (rows["ts"].min().isoformat(), rows["ts"].max().isoformat())
    # every account of the base file loads (none is excluded), so the accounts in the file are those analysed
    assert profile["accounts_without_events"] == report.accounts["in_file"] - rows["account_id"].n_unique()


def test_events_taken_in_the_validation_scan_give_the_candidates_of_a_fresh_scan(tmp_path):
    from polars.testing import assert_frame_equal

    from nsm_cli import Settings
    from nsm_cli.candidates import build_event_candidates
    from nsm_cli.outcomes import build_cohort
    from nsm_cli.pipeline import load_inputs

    s = Settings(accounts=str(BASE / "accounts.csv"), usage=str(_dirty_log(tmp_path)), max_events=3)
    inputs = load_inputs(s)
    cohort = build_cohort(inputs.accounts, None, s, inputs.as_of, has_churn_column=True, has_expansion_column=False)
    assert inputs.windowed.of_cohort(cohort.frame, list(inputs.usage.event_names)) is not None
    taken = build_event_candidates(inputs.usage, cohort.frame, s, inputs.windowed)
    fresh = build_event_candidates(inputs.usage, cohort.frame, s)
    assert_frame_equal(taken.metrics, fresh.metrics)
    assert taken.candidates == fresh.candidates


def test_windowed_events_serve_only_cohorts_whose_windows_they_cover(tmp_path):
    """A cohort whose windows reach outside the rows taken in the scan (the leading check's earlier
    windows) is read afresh; loaded with those windows too, the scan's rows serve it, with the same result."""
    from dataclasses import replace
    from datetime import datetime, timedelta

    from polars.testing import assert_frame_equal

    from nsm_cli import Settings
    from nsm_cli.candidates import build_event_candidates
    from nsm_cli.outcomes import build_cohort
    from nsm_cli.pipeline import load_inputs

    landmark = datetime(2024, 9, 1)
    s = Settings(accounts=str(BASE / "accounts.csv"), usage=str(_dirty_log(tmp_path)), landmark=landmark)
    earlier = replace(s, landmark=landmark - timedelta(days=30))
    inputs = load_inputs(s)
    cohort = build_cohort(inputs.accounts, None, s, inputs.as_of, has_churn_column=True, has_expansion_column=False)
    names = list(inputs.usage.event_names)
    shifted = cohort.frame.with_columns(window_start=pl.col("window_start") - pl.duration(days=30),
                                        landmark=pl.col("landmark") - pl.duration(days=30))
    assert inputs.windowed.of_cohort(cohort.frame, names) is not None
    assert inputs.windowed.of_cohort(shifted, names) is None
    fresh = build_event_candidates(inputs.usage, shifted, s)
    assert_frame_equal(build_event_candidates(inputs.usage, shifted, s, inputs.windowed).metrics, fresh.metrics)
    both = load_inputs(s, windows=(s, earlier))
    assert both.windowed.of_cohort(shifted, names) is not None
    assert_frame_equal(build_event_candidates(both.usage, shifted, s, both.windowed).metrics, fresh.metrics)
    assert fresh.metrics.drop("account_id").sum_horizontal().sum() > 0  # the shifted windows hold events
