"""Run a command as this process's only child; print wall time, the child's peak RSS and its stdout tail."""

import json
import resource
import subprocess
import sys
import time

start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True, check=False)
wall = time.perf_counter() - start
if proc.returncode != 0:
    sys.stderr.write(proc.stderr[-3000:])
    raise SystemExit(proc.returncode)
peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"wall": wall, "peak_mb": peak_mb, "stdout_tail": proc.stdout[-4000:]}))
