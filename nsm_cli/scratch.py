"""Where the events inside the windows wait between the scan that takes them and the candidates.

They go to a file, because a file sink lets polars stream the scan. The file lives in memory (an
anonymous memory file, Linux) when even a generous estimate of its size fits well within the memory
the process has left: that spares the file system's write path, about 0.4 s of system CPU for the
7M windowed events of a 10M-event log. Otherwise, or where there is no such file, it lives in the
temporary folder (`TMPDIR`), where the kernel may write it out under memory pressure.

Either way the rows are read back memory-mapped, so the process's resident memory is the same.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nsm_cli.errors import WriteError

# In memory only when the estimate is at most this share of the memory left (it is an upper bound,
# several times the usual size, and the rows are read back into the process's own memory too).
MEMORY_SHARE = 0.5


@contextmanager
def scratch_file(name: str, estimate: int, *, headroom: int | None = None) -> Iterator[str]:
    """A path to write and then read inside the block; gone after it. `estimate`: about the most the
    file will take, in bytes; `headroom`: the memory left (default: read from the system)."""
    headroom = memory_headroom() if headroom is None else headroom
    fd = _memory_file(name) if estimate <= MEMORY_SHARE * (headroom or 0) else None
    if fd is not None:
        try:
            yield _by_path(fd)  # opened again by path: the same memory file
        finally:
            os.close(fd)  # a mapping read from it keeps its pages until it goes
        return
    try:
        with tempfile.TemporaryDirectory(prefix="nsm-") as folder:
            yield str(Path(folder) / name)
    except OSError as exc:
        if not WriteError.is_write_only_failure(exc):
            raise
        raise WriteError.of(f"nsm's scratch file in {tempfile.gettempdir()}", exc,
                            "it holds the events inside the windows during the run (up to about half the size "
                            "of a CSV event log, a few times that of a compressed one); free space there or set TMPDIR to a folder with room") from None


def _memory_file(name: str) -> int | None:
    """An anonymous memory file that can be opened by path, or None where there is none (not Linux, or a
    sandbox that forbids it or hides /proc)."""
    try:
        fd = os.memfd_create(f"nsm-{name}")
    except (AttributeError, OSError):
        return None
    if not os.path.exists(_by_path(fd)):
        os.close(fd)
        return None
    return fd


def _by_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def memory_headroom() -> int | None:
    """Bytes of memory available to this process: the system's MemAvailable, capped by the room left
    under a cgroup (v2) memory limit, as in a container. None when the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    room = _cgroup_room()
    return available if room is None else min(available, room)


def _cgroup_room() -> int | None:
    try:
        group = Path("/proc/self/cgroup").read_text(encoding="ascii").splitlines()[0]
        if not group.startswith("0::"):  # cgroup v1: no single limit to read
            return None
        folder = Path("/sys/fs/cgroup") / group[3:].lstrip("/")
        limit = (folder / "memory.max").read_text(encoding="ascii").strip()
        if limit == "max":
            return None
        return max(int(limit) - int((folder / "memory.current").read_text(encoding="ascii")), 0)
    except (OSError, ValueError, IndexError):
        return None
