"""Does memory follow the windowed events or the length of the log? `nsm rank` on a dataset's event
log, then on the same log with N-1 more years of history appended after the analysis date.

    python benchmarks/history.py                  # 100k accounts, the log and 3x the log
    python benchmarks/history.py --accounts 10000 --copies 5

The longer log repeats every event 1, 2, ... years later (the same accounts and event types);
`--as-of` is pinned to the original export date, so the extra rows are counted as "after as_of"
and the analysis, and its JSON, are the same. Prints wall time and peak RSS of each run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import polars as pl
from run import DATA, PY, dataset, measured

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def longer_log(folder: Path, copies: int) -> Path:
    out = DATA / f"{folder.name}_history{copies}"
    path = out / "events.csv"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        events = pl.scan_csv(folder / "events.csv", infer_schema=False)
        ts = pl.col("timestamp").str.to_datetime(FORMAT, time_unit="us")
        shifted = [events.with_columns((ts + pl.duration(days=365 * k)).dt.strftime(FORMAT).alias("timestamp"))
                   for k in range(1, copies)]
        pl.concat([events, *shifted]).sink_csv(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--copies", type=int, default=3, help="years of the log in the longer one")
    args = parser.parse_args()
    folder = dataset(args.accounts, parquet=False)
    inputs = ["--accounts", str(folder / "accounts.csv"), "--mrr", str(folder / "mrr.csv")]
    first = subprocess.run([PY, "-m", "nsm_cli", "rank", *inputs, "--usage", str(folder / "events.csv"),
                            "--format", "json", "--quiet"], capture_output=True, text=True, check=True)
    as_of = json.loads(first.stdout)["settings"]["as_of"]
    print("| event log | rows | nsm rank (s) | peak MB |\n|---|---:|---:|---:|")
    for label, path in (("as exported", folder / "events.csv"), (f"{args.copies}x longer", longer_log(folder, args.copies))):
        rows = pl.scan_csv(path).select(pl.len()).collect().item()
        wall, peak, _ = measured([PY, "-m", "nsm_cli", "rank", *inputs, "--usage", str(path), "--as-of", as_of,
                                  "--format", "json", "--quiet"])
        print(f"| {label} | {rows:,} | {wall:.1f} | {peak:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
