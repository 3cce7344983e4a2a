"""Benchmark `nsm rank` against the floor (a bare polars read) and the peer (pandas + lifelines).

    python benchmarks/run.py                      # 10k and 100k accounts (~100 events each)
    python benchmarks/run.py --sizes 1000000 --parquet --skip-peer --repeat 1

For each size it writes a dataset with `nsm sample` (cached under benchmarks/data/), then measures,
each in its own process so peak memory is that process's alone:
  - `nsm rank --format json` end to end: wall time and peak RSS (median of `--repeat` runs);
  - the same analysis with per-stage timings (load, outcomes, candidates, statistics);
  - polars `scan_csv(events).collect()` (or `scan_parquet`): the floor any tool must pay (median);
  - the peer an analyst would write with pandas + lifelines (`peer.py`), on the same candidates
    (at large sizes on a subset of candidates, extrapolated per candidate; marked as such).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
PY = sys.executable


def measured(cmd: list[str]) -> tuple[float, float, str]:
    """Run `cmd` under measure.py (a fresh process whose only child is `cmd`): wall s, peak MB, stdout."""
    proc = subprocess.run([PY, str(HERE / "measure.py"), *cmd], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["wall"], result["peak_mb"], result["stdout_tail"]


def median_of(runs: int, cmd: list[str]) -> tuple[float, float, str]:
    """`measured` `runs` times (this machine is shared and noisy): the median wall time, the highest peak."""
    results = sorted((measured(cmd) for _ in range(max(1, runs))), key=lambda r: r[0])
    return results[len(results) // 2][0], max(r[1] for r in results), results[0][2]


def dataset(n: int, parquet: bool) -> Path:
    folder = DATA / f"{n}{'_pq' if parquet else ''}"
    if not (folder / "ground_truth.json").exists():
        args = ["-m", "nsm_cli", "sample", "--output-dir", str(folder), "--accounts", str(n), "--seed", "1"]
        subprocess.run([PY, *args, *(["--parquet"] if parquet else [])], check=True, stdout=subprocess.DEVNULL)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--parquet", action="store_true", help="event log as Parquet")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="runs of nsm rank and of the floor (median kept)")
    parser.add_argument("--peer-candidates", type=int, default=8,
                        help="at sizes above 10k, run the peer on this many candidates and extrapolate")
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        folder = dataset(n, args.parquet)
        events = folder / ("events.parquet" if args.parquet else "events.csv")
        inputs = ["--accounts", str(folder / "accounts.csv"), "--usage", str(events), "--mrr", str(folder / "mrr.csv")]
        wall, peak, _ = median_of(args.repeat, [PY, "-m", "nsm_cli", "rank", *inputs, "--format", "json", "--quiet"])
        _, _, stages = measured([PY, str(HERE / "stages.py"), *inputs])
        floor_wall, floor_peak, floor_out = median_of(args.repeat, [PY, str(HERE / "floor.py"), str(events)])
        n_rows = int(floor_out.split()[0])
        peer = None
        if not args.skip_peer:
            limit = [] if n <= 10_000 else ["--limit", str(args.peer_candidates)]
            peer_wall, peer_peak, peer_out = measured([PY, str(HERE / "peer.py"), str(folder), *limit])
            peer = (peer_wall, peer_peak, json.loads(peer_out.strip().splitlines()[-1]))
        rows.append((n, n_rows, wall, peak, stages, floor_wall, floor_peak, peer))
        print_row(rows[-1])
    print_table(rows)


def print_row(row) -> None:
    n, n_rows, wall, peak, stages, floor_wall, floor_peak, peer = row
    print(f"\n{n} accounts, {n_rows} events: nsm {wall:.1f}s / {peak:.0f} MB; floor {floor_wall:.1f}s; "
          f"stages: {stages.strip()}")
    if peer:
        p = peer[2]
        print(f"peer: {peer[0]:.1f}s measured for {p['fitted']} of {p['candidates']} candidates; "
              f"estimated full run {p['estimated_total_s']:.1f}s")


def print_table(rows) -> None:
    print("\n| accounts | events | nsm rank (s) | peak MB | bare polars read (s) | nsm / read | "
          "pandas+lifelines peer (s) | peer / nsm |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, n_rows, wall, peak, _stages, floor_wall, _fp, peer in rows:
        peer_s = f"{peer[2]['estimated_total_s']:.0f}{'' if peer[2]['fitted'] == peer[2]['candidates'] else ' (est.)'}" \
            if peer else "-"
        ratio = f"{peer[2]['estimated_total_s'] / wall:.1f}x" if peer else "-"
        print(f"| {n:,} | {n_rows:,} | {wall:.1f} | {peak:.0f} | {floor_wall:.2f} | {wall / floor_wall:.1f}x | "
              f"{peer_s} | {ratio} |")


if __name__ == "__main__":
    main()
