"""Loader side of namespaces.bpf.c: its record, its counter map, its dedup window, PID 1's
namespaces, its hooks."""

from __future__ import annotations

import contextlib
import ctypes
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probes.counters import CounterMap
from probes.perf import tracepoint_dir

SOURCE = "namespaces.bpf.c"
NS_COUNT = 8  # enum auditd_ns_type in include/task.h

FLAG_FLAGS_UNREADABLE = 1
FLAG_CHILD = 2
FLAG_HOST_UNKNOWN = 4

FAULT_ENTRY = 0
FAULT_EXIT = 1

# Filesystem magic of the file behind a setns fd (include/uapi/linux/magic.h).
NSFS_MAGIC = 0x6E736673
PIDFS_MAGIC = 0x50494446

# Syscall tracepoints the probe's functions attach to by name (see the C's header comment).
SYSCALLS = ("setns", "unshare", "clone", "clone3")
RAW_TRACEPOINTS = (("ns_on_fork", "sched_process_fork"),)


def tracepoints(syscalls: Iterable[str] = SYSCALLS) -> tuple[tuple[str, str], ...]:
    """(function, tracepoint) pairs for both ends of each syscall."""
    return tuple(
        (f"ns_{end}_{name}", f"syscalls:sys_{end}_{name}")
        for name in syscalls
        for end in ("enter", "exit")
    )


class NamespaceRecord(ctypes.Structure):
    """Mirror of `struct ns_record`."""

    _fields_ = (
        ("ktime_ns", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("target_ino", ctypes.c_uint64),
        ("target_magic", ctypes.c_uint64),
        ("seen", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("op", ctypes.c_uint32),
        ("err", ctypes.c_uint32),
        ("child_pid", ctypes.c_uint32),
        ("types", ctypes.c_uint32),
        ("escaped", ctypes.c_uint32),
        ("rflags", ctypes.c_uint32),
        ("fd", ctypes.c_int32),
        ("from_host", ctypes.c_uint32),
        ("before", ctypes.c_uint32 * NS_COUNT),
        ("after", ctypes.c_uint32 * NS_COUNT),
        ("comm", ctypes.c_char * 16),
    )


class NamespaceKey(ctypes.Structure):
    """Mirror of `struct ns_key`."""

    _fields_ = (
        ("cgroup_id", ctypes.c_uint64),
        ("op", ctypes.c_uint32),
        ("types", ctypes.c_uint32),
        ("err", ctypes.c_uint32),
        ("escaped", ctypes.c_uint32),
    )


class NamespaceRecentKey(ctypes.Structure):
    """Mirror of `struct ns_recent_key` (one combination in the dedup window)."""

    _fields_ = (
        ("cgroup_id", ctypes.c_uint64),
        ("target_ino", ctypes.c_uint64),
        ("uid", ctypes.c_uint32),
        ("op", ctypes.c_uint32),
        ("types", ctypes.c_uint32),
        ("err", ctypes.c_uint32),
        ("escaped", ctypes.c_uint32),
        ("from_host", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
    )


class NamespaceRecent(ctypes.Structure):
    """Mirror of `struct ns_recent`."""

    _fields_ = (("last_sent_ns", ctypes.c_uint64), ("seen", ctypes.c_uint64))


@dataclass(frozen=True, slots=True)
class DedupKey:
    """A combination of the dedup window: program (cgroup, uid, comm), op, types, result,
    escaped types, types that left the host's namespaces, setns target."""

    cgroup_id: int
    target_ino: int
    uid: int
    op: int
    types: int
    err: int
    escaped: int
    from_host: int
    comm: bytes

    @classmethod
    def of(cls, r: NamespaceRecord) -> DedupKey:
        return cls(
            r.cgroup_id, r.target_ino, r.uid, r.op, r.types, r.err, r.escaped, r.from_host, r.comm
        )


def read_recent(table: Any) -> dict[DedupKey, tuple[int, int]]:
    """The dedup window entries: key → (calls seen, monotonic ns of the last record sent)."""
    return {
        DedupKey(
            k.cgroup_id, k.target_ino, k.uid, k.op, k.types, k.err, k.escaped, k.from_host, k.comm
        ): (v.seen, v.last_sent_ns)
        for k, v in table.items()
    }


class NamespaceHost(ctypes.Structure):
    """Mirror of `struct ns_host`."""

    _fields_ = (("known", ctypes.c_uint32), ("inum", ctypes.c_uint32 * NS_COUNT))


def parse(data: bytes) -> NamespaceRecord:
    """A record from ring-buffer bytes; ValueError when they are too short."""
    return NamespaceRecord.from_buffer_copy(data)


@dataclass(frozen=True, slots=True)
class CounterKey:
    """One entry of ns_counts."""

    cgroup_id: int
    op: int
    types: int
    errno: int
    escaped: int

    def raw(self) -> NamespaceKey:
        return NamespaceKey(self.cgroup_id, self.op, self.types, self.errno, self.escaped)


class NamespaceCounters(CounterMap):
    """The exact counters in the kernel (ns_counts, ns_overflow) and clone3 read faults."""

    def __init__(self, counts: Any, overflow: Any, faults: Any) -> None:
        super().__init__(counts, overflow)
        self._faults = faults

    def read(self) -> dict[CounterKey, int]:
        return self._read(lambda k: CounterKey(k.cgroup_id, k.op, k.types, k.err, k.escaped))

    def faults(self) -> dict[int, int]:
        return {i: sum(self._faults[ctypes.c_uint32(i)]) for i in (FAULT_ENTRY, FAULT_EXIT)}


class HostTable:
    """ns_host_table: PID 1's namespace inodes, filled by the probe or written from /proc."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def read(self) -> tuple[int, ...] | None:
        host = self._table[ctypes.c_uint32(0)]
        return tuple(host.inum) if host.known else None

    def write(self, inodes: Iterable[int]) -> None:
        values = list(inodes)
        self._table[ctypes.c_uint32(0)] = NamespaceHost(1, (ctypes.c_uint32 * NS_COUNT)(*values))


def prune_pending(table: Any, older_than_ns: int) -> int:
    """Delete per-thread entries whose call began before `older_than_ns` (CLOCK_MONOTONIC):
    left by threads that never returned to user space. Returns how many were deleted."""
    stale = [k for k, v in table.items() if v.start_ns < older_than_ns]
    for key in stale:
        with contextlib.suppress(KeyError):
            del table[key]
    return len(stale)


# -- tracepoint records ------------------------------------------------------------------------

_FIELD = re.compile(r"field:(?P<decl>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);")


def _fields(format_text: str) -> dict[str, tuple[int, int]]:
    found = {}
    for m in _FIELD.finditer(format_text):
        name = m["decl"].split()[-1].lstrip("*").split("[")[0]
        found[name] = (int(m["offset"]), int(m["size"]))
    return found


def check_tracepoint(tracefs: Path, tracepoint: str) -> str | None:
    """Why `struct ns_sys_enter_args` / `ns_sys_exit_args` do not describe this tracepoint's
    record (None when they do): the syscall number at 8, then 8-byte arguments or `ret` at 16."""
    category, _, event = tracepoint.partition(":")
    path = tracepoint_dir(tracefs, category, event) / "format"
    try:
        fields = _fields(path.read_text())
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    expected = {"__syscall_nr": (8, 4)}
    if event.startswith("sys_exit_"):
        expected["ret"] = (16, 8)
    else:
        names = [n for n in fields if not n.startswith("common_") and n != "__syscall_nr"]
        expected.update({name: (16 + 8 * i, 8) for i, name in enumerate(names)})
    wrong = [n for n, want in expected.items() if fields.get(n) != want]
    if wrong:
        return f"{tracepoint}: fields {', '.join(wrong)} are not where the probe reads them"
    return None
