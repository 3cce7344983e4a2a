"""`nsm rank`'s analysis with the time spent in each stage (the library's progress callback)."""

import sys
import time

# First: importing the command line configures the process as `nsm` does (its environment variables,
# set before numpy and polars load).
from nsm_cli.cli import keep_freed_memory  # isort: skip
from nsm_cli import Settings, analyze  # isort: skip

keep_freed_memory()  # as `nsm` does

args = dict(zip(sys.argv[1::2], sys.argv[2::2], strict=True))
marks: list[tuple[str, float]] = [("start", time.perf_counter())]
analyze(Settings(accounts=args["--accounts"], usage=args["--usage"], mrr=args.get("--mrr")),
        progress=lambda stage: marks.append((stage, time.perf_counter())))
names = {"loading inputs": "load+validate", "building outcomes": "outcomes", "building candidates": "candidates"}
parts = [f"{names.get(a, 'statistics+ranking')} {t2 - t1:.1f}s" for (a, t1), (_b, t2) in zip(marks[1:], marks[2:], strict=False)]
print(", ".join(parts))
