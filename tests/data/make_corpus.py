"""Writes tests/data/base (a small valid dataset) and tests/data/bad (one file per bad-input case).

Run from the repository root: python tests/data/make_corpus.py. The output is committed; this script
documents how each file was made.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import subprocess
import zipfile
from pathlib import Path

import polars as pl

from nsm_cli.sample import write_sample

HERE = Path(__file__).resolve().parent
BASE, BAD = HERE / "base", HERE / "bad"


def main() -> None:
    write_sample(BASE, 120, seed=5, mean_events=12)
    (BASE / "account_snapshot.csv").unlink()
    BAD.mkdir(exist_ok=True)
    acc = pl.read_csv(BASE / "accounts.csv", infer_schema=False)
    ev = pl.read_csv(BASE / "events.csv", infer_schema=False)
    mrr = pl.read_csv(BASE / "mrr.csv", infer_schema=False)
    csv = acc.write_csv()
    (BAD / "empty.csv").write_text("")
    (BAD / "header_only.csv").write_text("account_id,signup_date,churn_date\n")
    acc.write_csv(BAD / "semicolon_accounts.csv", separator=";")
    ev.write_csv(BAD / "tab_events.tsv", separator="\t")
    (BAD / "bom_accounts.csv").write_bytes(b"\xef\xbb\xbf" + csv.encode())
    latin = acc.with_columns(pl.col("plan").str.replace("pro", "pro-é"))
    (BAD / "latin1_accounts.csv").write_bytes(latin.write_csv().encode("latin-1"))
    acc.with_columns(pl.col("plan") + pl.lit("\nline two")).write_csv(BAD / "quoted_newlines_accounts.csv")
    acc.rename({"signup_date": "signup_dt"}).write_csv(BAD / "missing_signup_column.csv")
    dup = acc.head(3).with_columns(pl.lit("2020-01-01").alias("signup_date"))
    pl.concat([acc, dup, acc.head(2)]).write_csv(BAD / "duplicate_conflicting.csv")
    acc.with_columns(pl.when(pl.int_range(pl.len()) < 4).then(pl.lit("  ")).otherwise(pl.col("account_id"))
                     .alias("account_id")).write_csv(BAD / "blank_ids.csv")
    pl.concat([ev, ev.head(5).with_columns(pl.lit("ghost_1").alias("account_id"))]).write_csv(
        BAD / "unknown_account_events.csv")
    ev.filter(~pl.col("account_id").is_in(acc["account_id"].head(10).implode())).write_csv(
        BAD / "accounts_without_events.csv")
    acc.with_columns(pl.when(pl.int_range(pl.len()) < 3).then(pl.lit("2019-01-01")).otherwise(pl.col("churn_date"))
                     .alias("churn_date")).write_csv(BAD / "churn_before_signup.csv")
    early = ev.head(4).with_columns(pl.lit("2015-01-01T00:00:00Z").alias("timestamp"))
    late = ev.head(3).with_columns(pl.lit("2030-01-01T00:00:00Z").alias("timestamp"))
    pl.concat([ev, early, late]).write_csv(BAD / "events_outside_dates.csv")
    us = acc.with_columns(pl.col("signup_date").str.strptime(pl.Date, "%Y-%m-%d").dt.strftime("%m/%d/%Y"))
    us.write_csv(BAD / "us_dates_accounts.csv")
    mixed = acc.with_columns(
        pl.when(pl.int_range(pl.len()) % 3 == 0).then(pl.col("signup_date") + "T08:00:00")
        .when(pl.int_range(pl.len()) == 1).then(pl.lit("yesterday")).otherwise(pl.col("signup_date"))
        .alias("signup_date"))
    mixed.write_csv(BAD / "mixed_dates_accounts.csv")
    zones = ev.with_columns(
        pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.col("timestamp").str.replace("Z", "+02:00"))
        .when(pl.int_range(pl.len()) % 3 == 0).then(pl.col("timestamp").str.replace("Z", ""))
        .otherwise(pl.col("timestamp")).alias("timestamp"))
    zones.write_csv(BAD / "mixed_zones_events.csv")
    money = mrr.with_columns(
        pl.when(pl.int_range(pl.len()) % 5 == 0).then(pl.lit("$1,234.50"))
        .when(pl.int_range(pl.len()) % 7 == 0).then(pl.lit("N/A"))
        .when(pl.int_range(pl.len()) % 11 == 0).then(pl.lit("-"))
        .when(pl.int_range(pl.len()) % 13 == 0).then(pl.lit("-50"))
        .otherwise(pl.col("mrr")).alias("mrr"))
    money.write_csv(BAD / "messy_numbers_mrr.csv")
    odd = {"login": "user.login", "report_shared": 'report "shared" 📊', "page_viewed": "<b>page</b> viewed",
           "api_call": "API Call", "project_created": "api call"}
    ev.with_columns(pl.col("event").replace(odd)).write_csv(BAD / "odd_event_names.csv")
    many = ev.with_columns((pl.col("event") + "_" + (pl.int_range(pl.len()) % 400).cast(pl.String)).alias("event"))
    many.write_csv(BAD / "many_event_types.csv")
    acc.with_columns(pl.lit("2024-06-01").alias("churn_date"), pl.lit("2023-01-01").alias("signup_date")).write_csv(
        BAD / "all_churned.csv")
    acc.with_columns(pl.lit(None, dtype=pl.String).alias("churn_date")).write_csv(BAD / "none_churned.csv")
    acc.head(12).write_csv(BAD / "too_few_accounts.csv")
    seconds = pl.col("timestamp").str.to_datetime("%Y-%m-%dT%H:%M:%SZ").dt.epoch("s")
    ev.with_columns(seconds.alias("timestamp")).write_csv(BAD / "unix_seconds_events.csv")
    ev.with_columns((seconds * 1000).alias("timestamp")).write_csv(BAD / "unix_millis_events.csv")
    (BAD / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    ev.write_parquet(BAD / "events.parquet")
    _compressed(ev.write_csv().encode(), latin.write_csv().encode("latin-1"))


def _compressed(events: bytes, latin_accounts: bytes) -> None:
    """Compressed logs nsm reads (gzip, zstd), the same cut short, and files of other kinds it refuses."""
    packed = gzip.compress(events, mtime=0)
    (BAD / "events.csv.gz").write_bytes(packed)
    (BAD / "truncated_events.csv.gz").write_bytes(packed[: len(packed) * 2 // 3])
    (BAD / "latin1_accounts.csv.gz").write_bytes(gzip.compress(latin_accounts, mtime=0))
    (BAD / "events.csv.bz2").write_bytes(bz2.compress(events))
    (BAD / "events.csv.xz").write_bytes(lzma.compress(events))
    with zipfile.ZipFile(BAD / "events.xlsx", "w") as archive:  # a workbook is a zip archive
        archive.writestr(zipfile.ZipInfo("events.csv", date_time=(2025, 1, 1, 0, 0, 0)), events,
                          compress_type=zipfile.ZIP_DEFLATED)
    (BAD / "events_parquet.csv").write_bytes((BAD / "events.parquet").read_bytes())
    if shutil.which("zstd") is None:  # Python's standard library cannot write zstd: keep the committed files
        print("zstd not found: events.csv.zst and truncated_events.csv.zst left as they are")
        return
    zst = subprocess.run(["zstd", "-19", "-c"], input=events, capture_output=True, check=True).stdout
    (BAD / "events.csv.zst").write_bytes(zst)
    (BAD / "truncated_events.csv.zst").write_bytes(zst[: len(zst) * 2 // 3])


if __name__ == "__main__":
    main()
