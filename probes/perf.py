"""Tracepoint attachment through BPF links, so detaching is fast.

BCC attaches a program to a tracepoint with PERF_EVENT_IOC_SET_BPF: the program then stays until
the perf event is closed, and each close waits for RCU grace periods under a kernel mutex
(~50-80 ms each measured here, serialized), so ~150 tracepoints take seconds to let go. A BPF
link (BPF_LINK_CREATE on the perf event) detaches the program at once when the link is closed;
links close in parallel; the perf events themselves (no program attached any more) are
released by a short-lived helper process, off the daemon's exit path.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

_SYS_BPF = 321
_SYS_PERF_EVENT_OPEN = 298
_BPF_LINK_CREATE = 28
_BPF_PERF_EVENT = 41
_PERF_TYPE_TRACEPOINT = 2
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


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("bpf_cookie", ctypes.c_uint64),
        ("_reserved", ctypes.c_uint64 * 4),
    )


@functools.cache
def _libcsyscall() -> Callable[..., int]:
    call = ctypes.CDLL(None, use_errno=True).syscall
    call.restype = ctypes.c_long
    return call


def syscall(number: int, *args: object) -> int:
    """syscall(2) with every integer widened to long, as the variadic ABI needs; OSError on
    failure."""
    wide = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = _libcsyscall()(ctypes.c_long(number), *wide)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def tracepoint_dir(tracefs: Path, category: str, event: str) -> Path:
    """Where tracefs describes one tracepoint (its `id`, its `format`)."""
    return tracefs / "events" / category / event


def has_tracepoint(tracefs: Path, category: str, event: str) -> bool:
    return tracepoint_dir(tracefs, category, event).is_dir()


def tracepoint_id(tracefs: Path, category: str, event: str) -> int:
    """The tracepoint's id; OSError when it is not there, ValueError when unreadable."""
    return int((tracepoint_dir(tracefs, category, event) / "id").read_text())


def attach(tracefs: Path, category: str, event: str, prog_fd: int) -> tuple[int, int]:
    """Open the tracepoint's perf event and link the program to it; returns (perf fd, link
    fd). Raises OSError."""
    attr = PerfEventAttr(
        type=_PERF_TYPE_TRACEPOINT,
        size=ctypes.sizeof(PerfEventAttr),
        config=tracepoint_id(tracefs, category, event),
        sample_period=1,
        sample_type=_PERF_SAMPLE_RAW,
        wakeup_events=1,
    )
    # pid -1, cpu 0: a tracepoint event fires for every task on every CPU (as BCC does).
    perf_fd = syscall(_SYS_PERF_EVENT_OPEN, ctypes.byref(attr), -1, 0, -1, _PERF_FLAG_FD_CLOEXEC)
    try:
        link = _LinkCreateAttr(prog_fd=prog_fd, target_fd=perf_fd, attach_type=_BPF_PERF_EVENT)
        link_fd = syscall(_SYS_BPF, _BPF_LINK_CREATE, ctypes.byref(link), ctypes.sizeof(link))
    except OSError:
        os.close(perf_fd)
        raise
    return perf_fd, link_fd


_CLOSER = "import os, sys\nfor fd in sys.argv[1:]:\n    os.close(int(fd))\n"


def release(perf_fds: Sequence[int]) -> None:
    """Close perf events whose programs are already detached, without waiting for them: a
    helper process inherits them and closes them, and ours are closed at once (the kernel
    releases an event only with its last reference)."""
    if not perf_fds:
        return
    with contextlib.suppress(OSError):  # closing them here instead is slower, not wrong
        closer = subprocess.Popen(
            [sys.executable, "-c", _CLOSER, *map(str, perf_fds)],
            pass_fds=tuple(perf_fds),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        # Reaped in the background; a daemon thread does not hold up the daemon's exit.
        threading.Thread(target=closer.wait, name="perf-closer", daemon=True).start()
    for fd in perf_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
