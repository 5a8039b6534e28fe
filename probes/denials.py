"""Decoder for denials.bpf.c: its ring-buffer record and its exact counter map."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from auditd.events import Denial, Source
from probes import syscalls

SOURCE = "denials.bpf.c"
TARGET_LEN = 256
FLAG_TARGET_TRUNCATED = 1
FLAG_TARGET_UNREADABLE = 2

# Numbering of `source` in the kernel records (DENIAL_SOURCE_* in the C).
_SOURCES = {0: Source.SYSCALL}


class DenialRecord(ctypes.Structure):
    """Mirror of `struct denial_record`."""

    _fields_ = (
        ("ktime_ns", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("syscall", ctypes.c_uint32),
        ("err", ctypes.c_uint32),
        ("source", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
        ("target", ctypes.c_char * TARGET_LEN),
    )


class DenialKey(ctypes.Structure):
    """Mirror of `struct denial_key`."""

    _fields_ = (
        ("cgroup_id", ctypes.c_uint64),
        ("syscall", ctypes.c_uint32),
        ("err", ctypes.c_uint32),
        ("source", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    )


def text(raw: bytes) -> str:
    """Kernel bytes (comm, paths) as text that round-trips and cannot break a log line."""
    return raw.decode("utf-8", errors="backslashreplace")


def decoder(mono_to_wall_ns: int) -> Callable[[bytes], Denial]:
    """A decoder for records whose monotonic timestamps are shifted by `mono_to_wall_ns`."""

    def decode(data: bytes) -> Denial:
        r = DenialRecord.from_buffer_copy(data)
        # An unreadable user pointer leaves the target empty; the flag keeps "why" visible.
        target = "" if r.flags & FLAG_TARGET_UNREADABLE else text(r.target)
        return Denial(
            time_ns=r.ktime_ns + mono_to_wall_ns,
            pid=r.pid,
            tid=r.tid,
            uid=r.uid,
            gid=r.gid,
            comm=text(r.comm),
            cgroup_id=r.cgroup_id,
            source=_SOURCES.get(r.source, Source.SYSCALL),
            syscall=syscalls.name(r.syscall),
            errno=r.err,
            target=target,
            target_truncated=bool(r.flags & FLAG_TARGET_TRUNCATED),
        )

    return decode


@dataclass(frozen=True, slots=True)
class CounterKey:
    """One entry of denial_counts, with its raw numbers kept so it can be deleted."""

    cgroup_id: int
    syscall_nr: int
    errno: int
    source_nr: int

    @property
    def syscall(self) -> str:
        return syscalls.name(self.syscall_nr)

    @property
    def source(self) -> Source:
        return _SOURCES.get(self.source_nr, Source.SYSCALL)

    def raw(self) -> DenialKey:
        return DenialKey(self.cgroup_id, self.syscall_nr, self.errno, self.source_nr, 0)


class DenialCounters:
    """The exact counters in the kernel (denial_counts and denial_overflow)."""

    def __init__(self, counts: Any, overflow: Any) -> None:
        self._counts = counts
        self._overflow = overflow

    def read(self) -> dict[CounterKey, int]:
        return {
            CounterKey(k.cgroup_id, k.syscall, k.err, k.source): sum(per_cpu)
            for k, per_cpu in self._counts.items()
        }

    def delete(self, keys: Iterable[CounterKey]) -> None:
        for key in keys:
            with contextlib.suppress(KeyError):  # already gone: nothing to retire
                del self._counts[key.raw()]

    def unattributed(self) -> int:
        return sum(self._overflow[ctypes.c_uint32(0)])
