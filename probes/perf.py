"""Attaching programs through BPF links, so that detaching is fast and nothing waits on exit.

Raw and BTF-typed tracepoints are links from the start (BPF_RAW_TRACEPOINT_OPEN). A classic
tracepoint is a perf event: the program is linked to it (BPF_LINK_CREATE) and the event's own
fd closed at once. Releasing a tracepoint's last perf event waits for RCU grace periods under
a kernel mutex (~30 ms each, one after the other: 5.4 s for the daemon's 163, measured), so the
event must not die with its link, nor with the process: `PerfHolder` keeps a reference to each
in a BPF perf-event array. Closing the links then only detaches the programs (in parallel:
0.13 s), and closing the array hands the events to the kernel's deferred file release, which
frees them in its own workers after the process has gone. No process of ours waits, and none
is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from probes import bpfsys
from probes.bpfsys import syscall

__all__ = [
    "PERF_TYPE_TRACEPOINT",
    "PerfEventAttr",
    "PerfHolder",
    "attach",
    "close_all",
    "has_tracepoint",
    "perf_event_open",
    "syscall",
    "tracepoint_id",
]

PERF_TYPE_TRACEPOINT = 2
_PERF_SAMPLE_RAW = 1 << 10
_PERF_FLAG_FD_CLOEXEC = 1 << 3


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to PERF_ATTR_SIZE_VER1 (72 bytes): enough for tracepoints and
    the kprobe PMU's config1/config2."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
    )


def perf_event_open(pmu_type: int, config: int, config1: int = 0) -> int:
    """A perf event of PMU `pmu_type` for every task, opened on CPU 0 with pid -1 (as BCC does:
    a BPF program attached to it runs on every CPU); returns its fd. OSError."""
    attr = PerfEventAttr(
        type=pmu_type,
        size=ctypes.sizeof(PerfEventAttr),
        config=config,
        sample_period=1,
        sample_type=_PERF_SAMPLE_RAW,
        wakeup_events=1,
        config1=config1,
    )
    return syscall(bpfsys.SYS_PERF_EVENT_OPEN, ctypes.byref(attr), -1, 0, -1, _PERF_FLAG_FD_CLOEXEC)


def tracepoint_dir(tracefs: Path, category: str, event: str) -> Path:
    """Where tracefs describes one tracepoint (its `id`, its `format`)."""
    return tracefs / "events" / category / event


def has_tracepoint(tracefs: Path, category: str, event: str) -> bool:
    return tracepoint_dir(tracefs, category, event).is_dir()


def tracepoint_id(tracefs: Path, category: str, event: str) -> int:
    """The tracepoint's id; OSError when it is not there, ValueError when unreadable."""
    return int((tracepoint_dir(tracefs, category, event) / "id").read_text())


class PerfHolder:
    """Perf events kept alive by perf-event-array maps (not by fds of ours): see the module's
    docstring. `close` lets go of every one without waiting for their release."""

    _SIZE = 512

    def __init__(self) -> None:
        self._maps: list[int] = []
        self._used = self._SIZE

    def hold(self, perf_fd: int) -> None:
        if self._used == self._SIZE:
            self._maps.append(
                bpfsys.map_create(bpfsys.MAP_PERF_EVENT_ARRAY, 4, 4, self._SIZE, name="perf_hold")
            )
            self._used = 0
        key = ctypes.create_string_buffer(self._used.to_bytes(4, "little"), 4)
        value = ctypes.create_string_buffer(perf_fd.to_bytes(4, "little"), 4)
        bpfsys.map_update(self._maps[-1], key, value)
        self._used += 1

    def close(self) -> None:
        for fd in self._maps:
            _close_quietly(fd)
        self._maps.clear()
        self._used = self._SIZE


def attach(tracefs: Path, category: str, event: str, prog_fd: int, holder: PerfHolder) -> int:
    """Link a tracepoint program to a classic tracepoint; returns the link fd. OSError."""
    perf_fd = perf_event_open(PERF_TYPE_TRACEPOINT, tracepoint_id(tracefs, category, event))
    try:
        link = bpfsys.link_perf_event(prog_fd, perf_fd)
        try:
            holder.hold(perf_fd)
        except OSError:
            os.close(link)
            raise
        return link
    finally:
        os.close(perf_fd)  # the link and the holder keep the event


def attach_raw(name: str, prog_fd: int) -> int:
    """Link a raw tracepoint program to raw tracepoint `name`. OSError."""
    return bpfsys.raw_tracepoint_open(prog_fd, name)


def attach_btf(prog_fd: int) -> int:
    """Link a tp_btf program to the tracepoint it was loaded for. OSError."""
    return bpfsys.raw_tracepoint_open(prog_fd, None)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def close_all(fds: Sequence[int]) -> None:
    """Close many links at once (~150 links: 5 s one by one, 0.2 s in parallel, measured with
    the CPUs busy)."""
    if fds:
        with ThreadPoolExecutor(max_workers=min(64, len(fds))) as pool:
            list(pool.map(_close_quietly, fds))
