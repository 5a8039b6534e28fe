"""The real daemon and namespace changes: log lines with service and owner, per-service metrics,
and a refused setns seen by both the namespace probe and the denial probe."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _daemon import DaemonProcess, value
from _namespaces import CLONE_NEWNET, HOLD, NOBODY, PYTHON, holding, refused_setns
from _workload import scratch_cgroup

from auditd.kernel.cgroups import service_of

pytestmark = [pytest.mark.needs_bpf, pytest.mark.needs_btf]


def _host_net_path() -> str:
    """PID 1's network namespace file when this process may open it, else its own (which
    test_namespaces_probe.py proves is the host's)."""
    try:
        os.stat("/proc/1/ns/net")
    except PermissionError:
        return f"/proc/{os.getpid()}/ns/net"
    return "/proc/1/ns/net"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    config = tmp_path_factory.mktemp("ns-daemon") / "config.yaml"
    config.write_text("metrics:\n  listen: '127.0.0.1:0'\n")
    d = DaemonProcess(config)
    try:
        d.ready()
        yield d
    finally:
        d.stop()


@contextlib.contextmanager
def _cgroup() -> Iterator[Path]:
    """A scratch cgroup the daemon will name. Its resolver rescans on a new cgroup id only when
    the last rescan is 50 ms old: a rescan just before the mkdir (another test's event) would
    leave this cgroup's first event "unknown", hence the pause."""
    with scratch_cgroup() as cgroup:
        time.sleep(0.1)
        yield cgroup


def _lines(d: DaemonProcess, pid: int, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [e for e in d.lines if e.get("event") == "namespace_change" and e["pid"] == pid]
        if len(found) >= n:
            break
        time.sleep(0.1)
    return found


def _metric(d: DaemonProcess, name: str, want: float, **labels: str) -> float | None:
    deadline = time.monotonic() + 20
    got = None
    while time.monotonic() < deadline:
        got = value(d.scrape(), name, **labels)
        if got == want:
            break
        time.sleep(0.2)
    return got


def test_an_escape_is_logged_with_owner_and_counted_for_its_service(
    daemon: DaemonProcess,
) -> None:
    with _cgroup() as cgroup:
        service = service_of("/" + cgroup.name)
        argv = ["unshare", "-n", "nsenter", f"--net={_host_net_path()}", PYTHON, "-c", HOLD]
        with holding(argv, cgroup) as (pid, _):
            lines = _lines(daemon, pid, 2)
        assert [line["op"] for line in lines] == ["unshare", "setns"], lines
        unshared, joined = lines
        assert (joined["service"], joined["cgroup"]) == (service, "/" + cgroup.name), joined
        assert (joined["escape"], joined["escaped_types"], joined["result"]) == (
            True,
            ["net"],
            "success",
        )
        assert joined["target"]["owner_pid"] == 1
        assert joined["target"]["owner_service"] == "host"
        assert joined["target"]["host"] is True
        assert joined["namespaces"]["net"]["before"] == unshared["namespaces"]["net"]["after"]
        assert not unshared["escape"]

        for op in ("unshare", "setns"):
            got = _metric(
                daemon,
                "bpf_auditd_namespace_changes_total",
                1,
                service=service,
                op=op,
                type="net",
                result="success",
            )
            assert got == 1, op
        assert (
            _metric(daemon, "bpf_auditd_namespace_escapes_total", 1, service=service, type="net")
            == 1
        )


def _refused(cgroup: Path) -> int:
    pid, err = refused_setns(_host_net_path(), CLONE_NEWNET, cgroup)
    assert err == 1  # EPERM
    return pid


def test_a_refused_setns_is_logged_and_counted_with_eperm(daemon: DaemonProcess) -> None:
    with _cgroup() as cgroup:
        service = service_of("/" + cgroup.name)
        pid = _refused(cgroup)
        (line,) = _lines(daemon, pid, 1)
        assert (line["op"], line["result"], line["uid"], line["service"]) == (
            "setns",
            "EPERM",
            NOBODY,
            service,
        )
        assert line["escape"] is False
        assert line["target"]["host"] is True
        got = _metric(
            daemon,
            "bpf_auditd_namespace_changes_total",
            1,
            service=service,
            op="setns",
            type="net",
            result="EPERM",
        )
        assert got == 1


def test_a_refused_setns_is_also_a_denial(daemon: DaemonProcess) -> None:
    with _cgroup() as cgroup:
        service = service_of("/" + cgroup.name)
        _refused(cgroup)
        got = _metric(
            daemon,
            "bpf_auditd_denials_total",
            1,
            service=service,
            syscall="setns",
            errno="EPERM",
        )
        assert got == 1
