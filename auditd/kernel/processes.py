"""What /proc says about a process: its executable, and the cgroup v2 id it runs in."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from auditd.kernel.cgroups import CgroupResolver, process_cgroup


class ExeCache:
    """pid → executable path from /proc, kept briefly: records of one process come in bursts,
    and pids are reused, so entries expire after `ttl_ns`. Bounded: at `max_entries` it starts
    over (a miss only costs one readlink)."""

    def __init__(
        self,
        proc: Path,
        *,
        ttl_ns: int = 1_000_000_000,
        max_entries: int = 4096,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._proc = proc
        self._ttl = ttl_ns
        self.max_entries = max_entries
        self._clock = clock
        self._cache: dict[int, tuple[int, str | None]] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def cached(self, pid: int) -> tuple[bool, str | None]:
        """(True, the answer) when cached and fresh; (False, None) when a look-up is needed."""
        hit = self._cache.get(pid)
        if hit is not None and self._clock() - hit[0] < self._ttl:
            return True, hit[1]
        return False, None

    def lookup(self, pid: int) -> str | None:
        """Read /proc/PID/exe (blocks) and cache it; None when the process is gone or is a
        kernel thread."""
        try:
            exe: str | None = os.readlink(self._proc / str(pid) / "exe")
        except OSError:
            exe = None
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[pid] = (self._clock(), exe)
        return exe


def cgroup_id_of_pid(proc: Path, pid: int, resolver: CgroupResolver) -> int | None:
    """The cgroup v2 id a live process runs in (for audit records, which carry only the pid);
    None when it is gone. Blocks on /proc and a stat."""
    path = process_cgroup(proc, pid)
    return None if path is None else resolver.id_of(path)
