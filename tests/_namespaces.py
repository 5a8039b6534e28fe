"""Namespace workloads for tests: real unshare/nsenter/setpriv and small ctypes helpers.

Every helper process prints the host pid it wants inspected and then waits on stdin, so the
test can read /proc/<pid>/ns/* while the namespaces are alive; closing stdin ends it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from auditd.signals.namespaces.event import LINKS, NamespaceType

# Helpers run with the system interpreter: uid 65534 may not reach the venv's.
PYTHON = "/usr/bin/python3"
NOBODY = 65534
CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000

# Print the pid as the host sees it (/proc is still the host's mount), then wait.
HOLD = "import os, sys; print(os.readlink('/proc/self'), flush=True); sys.stdin.readline()"

# setns(fd, nstype) on an inherited descriptor after dropping to uid 65534: refused (EPERM).
REFUSED_SETNS = r"""
import ctypes, os, sys
fd, nstype = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([]); os.setgid(65534); os.setuid(65534)
libc = ctypes.CDLL(None, use_errno=True)
print(libc.setns(fd, nstype), ctypes.get_errno(), flush=True)
"""

# setns through a pidfd into the namespaces of the given types of process argv[1], then hold.
PIDFD_SETNS = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pidfd = libc.syscall(434, int(sys.argv[1]), 0)  # pidfd_open
assert pidfd >= 0, ctypes.get_errno()
assert libc.setns(pidfd, int(sys.argv[2])) == 0, ctypes.get_errno()
print(os.getpid(), flush=True)
sys.stdin.readline()
"""

# clone or clone3 with CLONE_NEWNET|CLONE_NEWUTS; the child waits on a pipe, the parent prints
# the child's pid and waits on stdin.
CLONE = r"""
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
flags = 0x40000000 | 0x04000000
SIGCHLD = 17
r, w = os.pipe()
if sys.argv[1] == "clone3":
    # struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls
    args = ctypes.create_string_buffer(struct.pack("8Q", flags, 0, 0, 0, SIGCHLD, 0, 0, 0), 64)
    pid = libc.syscall(435, args, 64)
else:
    pid = libc.syscall(56, ctypes.c_ulong(flags | SIGCHLD), 0, 0, 0, 0)
if pid == 0:
    os.close(w)
    os.read(r, 1)
    os._exit(0)
if pid < 0:
    print("error", ctypes.get_errno(), flush=True)
    sys.exit(1)
os.close(r)
print(pid, flush=True)
sys.stdin.readline()
os.close(w)
os.waitpid(pid, 0)
"""


def inode(pid: int, ns_type: NamespaceType) -> int:
    """What /proc/<pid>/ns says, in the probe's terms (the children's pid and time)."""
    return os.stat(f"/proc/{pid}/ns/{LINKS[ns_type][0]}").st_ino


def ns_path(pid: int, ns_type: NamespaceType) -> str:
    return f"/proc/{pid}/ns/{ns_type.value}"


@contextlib.contextmanager
def holding(argv: list[str], cgroup: Path | None = None) -> Iterator[tuple[int, int]]:
    """Run `argv`, whose last process prints a pid and waits on stdin; yields (the Popen pid,
    the printed pid). With `cgroup`, the process joins it before exec."""
    if cgroup is not None:
        argv = ["sh", "-c", f'echo $$ > {cgroup / "cgroup.procs"} && exec "$@"', "sh", *argv]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            line = proc.stdout.readline().strip()
            if not line.isdigit():
                raise AssertionError(f"{argv}: printed {line!r}, exit {proc.wait(timeout=10)}")
            yield proc.pid, int(line)
        finally:
            proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise


def refused_setns(target: str, nstype: int, cgroup: Path | None = None) -> tuple[int, int]:
    """Open `target` as root, then setns into it as uid 65534. Returns (pid, errno)."""
    fd = os.open(target, os.O_RDONLY)
    try:
        argv = [PYTHON, "-c", REFUSED_SETNS, str(fd), str(nstype)]
        if cgroup is not None:
            argv = ["sh", "-c", f'echo $$ > {cgroup / "cgroup.procs"} && exec "$@"', "sh", *argv]
        with subprocess.Popen(argv, pass_fds=(fd,), stdout=subprocess.PIPE, text=True) as proc:
            out, _ = proc.communicate(timeout=60)
    finally:
        os.close(fd)
    assert proc.returncode == 0, out
    ret, err = out.split()
    assert ret == "-1", out
    return proc.pid, int(err)


class Collected:
    """Events handed over by the reader thread, with a wait for the ones a test needs.

    `stage` stands for the daemon's enrichment of each event (e.g. a namespace identity's
    `attribute`, which resolves setns owners), applied here on the reader thread."""

    def __init__(self, stage: Callable[[Any], Any] | None = None) -> None:
        self.events: list[Any] = []
        self._cond = threading.Condition()
        self._stage = stage

    def deliver(self, batch: list[Any]) -> None:
        if self._stage is not None:
            batch = [self._stage(event) for event in batch]
        with self._cond:
            self.events.extend(batch)
            self._cond.notify_all()

    def failed(self, exc: BaseException) -> None:
        raise AssertionError(f"reader failed: {exc}")

    def wait(self, match: Callable[[Any], bool], n: int = 1, timeout: float = 15.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if match(e)]
                if len(found) >= n or time.monotonic() >= deadline:
                    return found
                self._cond.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
