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
