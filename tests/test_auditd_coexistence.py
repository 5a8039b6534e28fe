"""Linux auditd beside bpf-auditd: auditd started after bpf-auditd registers on its first try and
keeps running, both get every record, and bpf-auditd never switches audit off under it.

Each test starts a real auditd (`auditd -n` with a private config, log and plugin directory:
never the system's service) and leaves the audit state as it found it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import _audit_workload as work
import pytest
from _daemon import DaemonProcess
from _linux_auditd import LinuxAuditd, comm_of, user_message, wait_for_no_audit_daemon
from _workload import scratch_cgroup

from auditd.audit.netlink import open_socket, read_status, set_status
from auditd.audit.records import AuditEvent, LandlockAccess
from auditd.audit.source import AuditSource
from auditd.kernel.cgroups import service_of

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_auditd]


def _lease_holders() -> set[int]:
    """Other processes holding the audit-enable lease now (a daemon or test of another run)."""
    from test_audit import _other_lease_holders

    return _other_lease_holders()


@contextlib.contextmanager
def _audit_state_restored() -> Iterator[int]:
    """Yields the enabled flag found; puts it back afterwards unless another bpf-auditd holds
    the lease then (it needs audit on, and restores the flag itself when it leaves)."""
    before = read_status()
    if before.pid:
        pid = wait_for_no_audit_daemon()
        if pid:
            pytest.skip(
                f"another audit daemon is registered (pid {pid}, {comm_of(pid)}): Linux auditd "
                "cannot start beside it on this shared machine"
            )
    try:
        yield before.enabled
    finally:
        now = read_status()
        if now.enabled not in (before.enabled, 2) and not _lease_holders():
            with open_socket() as sock:
                set_status(sock, enabled=before.enabled)


def _started(auditd: LinuxAuditd, *ours: int) -> None:
    """auditd registered on its first start. Fails when bpf-auditd (this process, or a daemon in
    `ours`) holds the registration; skips when a third party took it in the moment between our
    check and auditd's start (a shared machine)."""
    if auditd.started:
        return
    holder = auditd.registered_after_start or 0
    assert holder not in {os.getpid(), *ours}, (
        f"bpf-auditd (pid {holder}) holds the audit daemon registration: auditd exited "
        f"{auditd.exit_code}"
    )
    assert holder != 0, f"auditd exited {auditd.exit_code} with no daemon registered"
    pytest.skip(f"another audit daemon registered first (pid {holder}, {comm_of(holder)})")


async def _events_until(audit: AuditSource, *wanted: str, timeout: float = 30) -> list[AuditEvent]:
    """Events read until each `wanted` text has been in one of them."""
    seen: list[AuditEvent] = []
    missing = set(wanted)
    async with asyncio.timeout(timeout):
        async for event in audit:
            seen.append(event)
            text = " ".join(f"{k}={v}" for r in event.records for k, v in r.fields)
            missing = {w for w in missing if w not in text}
            if not missing:
                return seen
    raise AssertionError(f"never seen: {missing}")


def test_auditd_started_after_us_registers_and_both_get_every_record(tmp_path: Path) -> None:
    if work.landlock_abi() < 7:
        pytest.skip(f"needs Landlock ABI 7 (audit logging); this kernel has {work.landlock_abi()}")
    tag = f"bpf-auditd-coexist-{uuid.uuid4().hex[:8]}"

    async def run() -> tuple[AuditSource, LinuxAuditd, list[AuditEvent], work.Outcome, int, int]:
        async with AuditSource(relevant=None) as audit:
            with LinuxAuditd(tmp_path, enabled_before=enabled_before) as auditd:
                _started(auditd)
                await asyncio.sleep(2)  # and it keeps running, still registered
                assert auditd.started, f"auditd exited {auditd.exit_code} or lost its place"
                user_message(tag)
                outcome = await asyncio.to_thread(work.landlock_read, b"/etc/hostname")
                events = await _events_until(audit, tag, f"pid={outcome.pid}")
                registered = read_status().pid
                auditd.stop()
                # auditd gone: we keep reading, and never take its place.
                user_message(tag + "-after")
                events += await _events_until(audit, tag + "-after")
                after = read_status().pid
            return audit, auditd, events, outcome, registered, after

    with _audit_state_restored() as enabled_before:
        audit, auditd, events, outcome, registered, after = asyncio.run(run())
        log = auditd.text()
    assert registered == auditd.pid
    # Not us after auditd left (on a shared machine another program may register then).
    assert after != os.getpid()
    landlock = [e for e in events if e.first(LandlockAccess) is not None and e.pid == outcome.pid]
    assert landlock, "bpf-auditd got no Landlock record"
    assert f":{landlock[0].serial}): domain=" in log, "auditd logged no Landlock record"
    assert tag in log, "auditd logged no USER record"
    assert audit.stats().socket_drops == 0


def test_the_daemon_and_auditd_side_by_side(tmp_path: Path) -> None:
    """The daemon runs first (audit off: it switches it on), auditd starts on its first try,
    a Landlock refusal reaches both, and the daemon stopping leaves audit on under auditd."""
    if work.landlock_abi() < 7:
        pytest.skip(f"needs Landlock ABI 7 (audit logging); this kernel has {work.landlock_abi()}")
    config = tmp_path / "config.yaml"
    config.write_text("metrics:\n  listen: '127.0.0.1:0'\n")
    with _audit_state_restored() as enabled_before:
        d = DaemonProcess(config)
        try:
            d.ready()
            d.wait_for("audit_source_started")
            with LinuxAuditd(
                tmp_path / "auditd", enabled_before=enabled_before, ours=(d.proc.pid,)
            ) as auditd:
                _started(auditd, d.proc.pid)
                time.sleep(2)
                assert auditd.started, f"auditd exited {auditd.exit_code} or lost its place"
                with scratch_cgroup() as cgroup:
                    service = service_of("/" + cgroup.name)
                    pid, err = _landlocked(cgroup)
                    assert err == 13
                    denial = _wait_denial(d, pid)
                lines = auditd.wait_for("syscall=257", f" pid={pid} ")
                code = d.stop()
                # The daemon left; auditd still needs audit on.
                after_daemon = read_status()
                assert auditd.started
        finally:
            d.stop()
    assert denial["source"] == "landlock"
    assert denial["service"] == service
    assert lines, "auditd logged no record of the refusal"
    assert code == 0
    assert after_daemon.enabled == 1, "the daemon switched audit off under a running auditd"


def _landlocked(cgroup: Path) -> tuple[int, int]:
    join = f"import os\nopen({str(cgroup / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", join + work._LANDLOCK, "read", "/etc/hostname", "1"],
        stdout=subprocess.PIPE,
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    return proc.pid, int(out)


def _wait_denial(d: DaemonProcess, pid: int) -> dict[str, object]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for e in d.lines:
            if e.get("event") == "denial" and e.get("pid") == pid:
                return e
        time.sleep(0.1)
    raise AssertionError(f"the daemon logged no denial of pid {pid}")
