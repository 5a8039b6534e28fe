"""Landlock denials end to end: one Denial per refusal, its cause and rights from audit."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _audit_workload import _LANDLOCK, landlock_abi
from _daemon import DaemonProcess, value
from _workload import scratch_cgroup

from auditd.kernel.cgroups import service_of

pytestmark = [pytest.mark.needs_bpf, pytest.mark.needs_root]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    if landlock_abi() < 4:
        pytest.skip("needs Landlock ABI >= 4 (TCP rights) and audit records (ABI 7 logs them)")
    config = tmp_path_factory.mktemp("lsm") / "config.yaml"
    config.write_text("metrics:\n  listen: '127.0.0.1:0'\n")
    d = DaemonProcess(config)
    try:
        d.ready()
        yield d
    finally:
        d.stop()


def _landlocked(cgroup: Path, kind: str, target: str) -> tuple[int, int]:
    """Run the Landlock-restricted child inside `cgroup`; returns (pid, errno it got)."""
    join = f"import os\nopen({str(cgroup / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", join + _LANDLOCK, kind, target, "1"], stdout=subprocess.PIPE
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    return proc.pid, int(out)


def _denials(d: DaemonProcess, service: str, want: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [e for e in d.lines if e.get("event") == "denial" and e.get("service") == service]
        if len(found) >= want:
            time.sleep(0.5)  # and nothing more comes: one event per refusal
            return [
                e for e in d.lines if e.get("event") == "denial" and e.get("service") == service
            ]
        time.sleep(0.1)
    return found


def test_landlock_read_is_one_denial_with_its_rights(daemon: DaemonProcess) -> None:
    with scratch_cgroup() as cgroup:
        service = service_of("/" + cgroup.name)
        pid, err = _landlocked(cgroup, "read", "/etc/hostname")
        assert err == 13
        (denial,) = _denials(daemon, service)
        total = value(daemon.scrape(), "bpf_auditd_lsm_denials_total", service=service,
                      lsm="landlock", access="fs.read_file")  # fmt: skip
        kernel = value(daemon.scrape(), "bpf_auditd_denials_total", service=service,
                       syscall="openat", errno="EACCES")  # fmt: skip
    assert (denial["pid"], denial["syscall"], denial["errno"]) == (pid, "openat", "EACCES")
    assert (denial["source"], denial["cause"]) == ("landlock", "landlock:fs.read_file")
    assert denial["target"] == "/etc/hostname"
    assert denial["detail"]["blockers"] == "fs.read_file"
    assert (total, kernel) == (1, 1)


def test_landlock_connect_names_address_and_port(daemon: DaemonProcess) -> None:
    with socket.socket() as server, scratch_cgroup() as cgroup:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        service = service_of("/" + cgroup.name)
        pid, err = _landlocked(cgroup, "connect", str(port))
        assert err == 13
        (denial,) = _denials(daemon, service)
    assert (denial["pid"], denial["syscall"], denial["errno"]) == (pid, "connect", "EACCES")
    assert (denial["source"], denial["cause"]) == ("landlock", "landlock:net.connect_tcp")
    assert denial["target"] == f"127.0.0.1:{port}"
    assert denial["detail"]["blockers"] == "net.connect_tcp"


# Joins the cgroup, optionally waits for a line on stdin, restricts itself with Landlock
# (fs.read_file handled, nothing allowed), opens /etc/hostname once and exits at once with the
# errno: gone before its audit record is read.
_DENIED_ONCE = r"""
import ctypes, os, sys
open(sys.argv[1], "w").write(str(os.getpid()))
if sys.argv[2] == "wait":
    sys.stdin.readline()
class Attr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
attr = Attr(fs=1 << 2)
fd = libc.syscall(ctypes.c_long(444), ctypes.byref(attr), ctypes.c_size_t(24), ctypes.c_uint32(0))
if fd < 0 or libc.prctl(38, 1, 0, 0, 0) != 0 or libc.syscall(
    ctypes.c_long(446), ctypes.c_int(fd), ctypes.c_uint32(0)
) != 0:
    os._exit(100)
try:
    os.close(os.open("/etc/hostname", os.O_RDONLY))
except OSError as exc:
    os._exit(exc.errno)
os._exit(0)
"""


_BUSY_PROLOGUE = (
    "import os\nopen({procs!r}, 'w').write(str(os.getpid()))\n"
    "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
)


def _denied_once(cgroup: Path) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", _DENIED_ONCE, str(cgroup / "cgroup.procs"), "now"]
    )
    assert proc.wait(timeout=60) == 13
    return proc.pid


def _denied_once_at(cgroup: Path, pid: int) -> int | None:
    """The same, in a process given `pid` (the kernel's next pid set through ns_last_pid: on a
    busy machine another fork may take it first, so a few tries); None if it never got it."""
    last_pid = Path("/proc/sys/kernel/ns_last_pid")
    for _ in range(50):
        last_pid.write_text(str(pid - 1))
        proc = subprocess.Popen(
            [sys.executable, "-c", _DENIED_ONCE, str(cgroup / "cgroup.procs"), "wait"],
            stdin=subprocess.PIPE,
        )
        assert proc.stdin is not None
        if proc.pid != pid:
            proc.kill()
            proc.wait()
            proc.stdin.close()
            continue
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 13
        return pid
    return None


def _ours(d: DaemonProcess, pids: set[int]) -> list[dict[str, Any]]:
    return [e for e in d.lines if e.get("event") == "denial" and e.get("pid") in pids]


def _wait_for_lsm_total(d: DaemonProcess, service: str, want: float) -> float | None:
    deadline = time.monotonic() + 20
    got = None
    while time.monotonic() < deadline:
        got = value(d.scrape(), "bpf_auditd_lsm_denials_total", service=service,
                    lsm="landlock", access="fs.read_file")  # fmt: skip
        if got == want:
            return got
        time.sleep(0.2)
    return got


# Keeps the daemon busy: refused opens of distinct paths (each one a record), as uid 65534, at
# a rate its reader keeps up with (argv[2] a second): no record is lost to a full ring buffer.
_BUSY = r"""
import os, sys, time
end, rate = time.monotonic() + float(sys.argv[1]), int(sys.argv[2])
i = 0
while time.monotonic() < end:
    tick = time.monotonic()
    for _ in range(rate // 100):
        i += 1
        try:
            os.open(f"/root/bpf-auditd-busy-{i}", os.O_RDONLY)
        except OSError:
            pass
    time.sleep(max(0.0, 0.01 - (time.monotonic() - tick)))
"""


def _ring_drops(d: DaemonProcess) -> float:
    return value(d.scrape(), "bpf_auditd_events_dropped_total", probe="denials",
                 stage="ringbuf") or 0.0  # fmt: skip


def test_short_lived_processes_are_counted_under_their_service(daemon: DaemonProcess) -> None:
    with scratch_cgroup() as cgroup, scratch_cgroup() as busy_cgroup:
        service = service_of("/" + cgroup.name)
        drops = _ring_drops(daemon)
        # Under load, as in the field: the daemon reads an audit record after its process is
        # gone, and /proc cannot say where it ran.
        busy = subprocess.Popen(
            [sys.executable, "-c", _BUSY_PROLOGUE.format(procs=str(busy_cgroup / "cgroup.procs"))
             + _BUSY, "60", "3000"]
        )  # fmt: skip
        try:
            pids = {_denied_once(cgroup) for _ in range(20)}
        finally:
            busy.kill()
            busy.wait()
        total = _wait_for_lsm_total(daemon, service, 20)
        deadline = time.monotonic() + 10
        while len(_ours(daemon, pids)) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # and nothing more comes
        kernel = value(daemon.scrape(), "bpf_auditd_denials_total", service=service,
                       source="syscall", syscall="openat", errno="EACCES")  # fmt: skip
        dropped = _ring_drops(daemon) - drops
    logged = _ours(daemon, pids)
    # The kernel counts each refusal once, as the tracepoint sees it (source syscall); the
    # LSM's records add the cause (README: metrics).
    assert kernel == 20
    assert {(e["service"], e["source"], e["cause"]) for e in logged} == {
        (service, "landlock", "landlock:fs.read_file")
    }
    if dropped:  # a busier machine than planned: a lost record cannot bring its cgroup
        pytest.skip(f"the load lost {dropped:.0f} ring-buffer records; attribution needs them")
    assert len(logged) == 20
    assert total == 20


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon with a 2 s dedup window and 0.5 s housekeeping: summaries come quickly."""
    if landlock_abi() < 7:
        pytest.skip("needs Landlock ABI 7 (audit logging of denials)")
    config = tmp_path_factory.mktemp("lsm-quick") / "config.yaml"
    config.write_text(
        "metrics:\n  listen: '127.0.0.1:0'\nhousekeeping_interval: 0.5\n"
        "probes:\n  denials:\n    window: 2\n"
    )
    d = DaemonProcess(config)
    try:
        d.ready()
        yield d
    finally:
        d.stop()


def test_a_pid_reused_within_the_window_is_another_process_with_its_own_cause(
    quick: DaemonProcess,
) -> None:
    with scratch_cgroup() as cgroup:
        service = service_of("/" + cgroup.name)
        first = _denied_once(cgroup)
        # The same pid, refused the same way, inside the kernel's 2 s dedup window: another
        # process all the same (the dedup key holds its start time), so a record of its own,
        # joined to its own Landlock audit record; no repeat, no summary.
        if _denied_once_at(cgroup, first) is None:
            pytest.skip(f"pid {first} could not be had again (a busy machine)")
        total = _wait_for_lsm_total(quick, service, 2)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(_ours(quick, {first})) < 2:
            time.sleep(0.1)
        time.sleep(2.5)  # a window and some housekeeping: no summary may come
    logged = _ours(quick, {first})
    assert total == 2
    assert [
        (e["source"], e["cause"], e["service"], e["repeats"], e["summary"]) for e in logged
    ] == [("landlock", "landlock:fs.read_file", service, 0, False)] * 2
