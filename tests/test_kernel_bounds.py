"""The compiled kernels' own tests once more with numba's bounds checks on, in a fresh process with its
own cache (cached code keeps the checks it was compiled with): an index out of range then raises an
IndexError where it would otherwise write over memory, as the counting sort once did on an empty
first chunk."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def test_kernel_tests_pass_with_bounds_checks(tmp_path):
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(TESTS / "test_stats.py"), str(TESTS / "test_candidates.py")],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "passed" in proc.stdout
