"""sd_notify: the real daemon talks to a socket we listen on, as systemd's would (Type=notify)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _daemon import DaemonProcess, bpf_objects_of

from auditd.daemon.sdnotify import Notifier

RECEIVE_TIMEOUT_S = 120.0  # a bound for a hung daemon, not a timing assertion


class NotifySocket:
    """A datagram socket like systemd's: credentials passed, so the sender's pid is known."""

    def __init__(self, address: str) -> None:
        self.address = address  # as NOTIFY_SOCKET says it: a path, or @name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(RECEIVE_TIMEOUT_S)

    def receive(self, daemon: DaemonProcess | None = None) -> tuple[list[str], int]:
        """One datagram's KEY=value lines, and the sending process's pid. With `daemon`, a daemon
        that exits first fails the test with its stderr instead of a time-out."""
        deadline = time.monotonic() + RECEIVE_TIMEOUT_S
        while daemon is not None and not select.select([self.sock], [], [], 0.2)[0]:
            if daemon.proc.poll() is not None:
                daemon.stop()
                raise AssertionError(f"daemon exited {daemon.proc.returncode}: {daemon.stderr}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing on {self.address} in {RECEIVE_TIMEOUT_S} s")
        data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("=iII", payload[:12])
        return data.decode().splitlines(), pid

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def notify_socket(tmp_path: Path, kind: str) -> Iterator[NotifySocket]:
    address = str(tmp_path / "notify") if kind == "path" else f"@bpf-auditd-{uuid.uuid4().hex}"
    sock = NotifySocket(address)
    try:
        yield sock
    finally:
        sock.close()


# --- the protocol, without the daemon ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_notify_reaches_path_and_abstract_sockets(tmp_path: Path, kind: str) -> None:
    with notify_socket(tmp_path, kind) as listener:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": listener.address}, os.getpid())

        assert notifier.ready("attached denials")
        lines, pid = listener.receive()

    assert lines == ["READY=1", "STATUS=attached denials"]
    assert pid == os.getpid()


@pytest.mark.parametrize(
    ("environ", "address", "usec"),
    [
        ({}, None, None),
        ({"NOTIFY_SOCKET": "/run/systemd/notify"}, "/run/systemd/notify", None),
        ({"NOTIFY_SOCKET": "@notify"}, "\0notify", None),
        ({"NOTIFY_SOCKET": "vsock:2:1234"}, None, None),  # not spoken here: off, not wrong
        ({"NOTIFY_SOCKET": "@"}, None, None),
        ({"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "30000000"}, "/n", 30_000_000),
        ({"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, "/n", None),
        ({"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "77"}, "/n", 30e6),
        ({"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "soon"}, "/n", None),
        ({"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "0"}, "/n", None),
        ({"WATCHDOG_USEC": "30000000"}, None, None),  # nobody to ping
    ],
)
def test_environment_is_read_like_sd_notify(
    environ: dict[str, str], address: str | None, usec: float | None
) -> None:
    notifier = Notifier.from_environ(environ, pid=77)

    assert notifier.address == address
    assert notifier.watchdog_usec == usec
    assert notifier.watchdog_interval == (None if usec is None else usec / 2e6)


def test_a_lost_notification_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))

    assert not notifier.ready()
    assert not Notifier().stopping()  # no socket: nothing to do, nothing sent


def test_keep_alive_returns_at_once_without_a_watchdog() -> None:
    asyncio.run(asyncio.wait_for(Notifier("/n").keep_alive(), timeout=RECEIVE_TIMEOUT_S))


# --- the real daemon --------------------------------------------------------------------------


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text("metrics:\n  listen: '127.0.0.1:0'\n")
    return config


@pytest.mark.needs_bpf
@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_ready_after_attach_watchdog_while_set_stopping_on_sigterm(
    tmp_path: Path, kind: str
) -> None:
    with notify_socket(tmp_path, kind) as listener:
        # 0.4 s: pings every 0.2 s, so a few arrive quickly; systemd's own would be seconds.
        env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000"}
        d = DaemonProcess(_config(tmp_path), env=env)
        try:
            first, sender = listener.receive(d)
            # READY=1 comes once the probes are attached: the daemon holds its programs already,
            # and has logged `ready`.
            held_programs, _maps = bpf_objects_of(d.proc.pid)
            ready = d.wait_for("ready")
            pings = []
            while len(pings) < 3:
                lines, ping_sender = listener.receive(d)
                assert lines == ["WATCHDOG=1"], lines
                pings.append(ping_sender)
            d.signal(signal.SIGTERM)
            lines, stop_sender = listener.receive()
            while lines == ["WATCHDOG=1"]:  # a ping may be in flight as the signal lands
                lines, stop_sender = listener.receive()
            code = d.proc.wait(timeout=RECEIVE_TIMEOUT_S)
        finally:
            d.stop()

    assert first[0] == "READY=1"
    assert first[1] == f"STATUS=attached {', '.join(ready['probes'])}"
    assert held_programs, "READY=1 came before the probes were loaded"
    # NotifyAccess=main: every message must come from the daemon's own pid.
    assert {sender, stop_sender, *pings} == {d.proc.pid}
    assert lines == ["STOPPING=1"]
    assert code == 0


@pytest.mark.needs_bpf
def test_no_watchdog_pings_unless_systemd_asks(tmp_path: Path) -> None:
    with notify_socket(tmp_path, "path") as listener:
        d = DaemonProcess(_config(tmp_path), env={"NOTIFY_SOCKET": listener.address})
        try:
            first, _ = listener.receive(d)
            d.wait_for("ready")
            d.signal(signal.SIGTERM)
            code = d.proc.wait(timeout=RECEIVE_TIMEOUT_S)
        finally:
            d.stop()
        # Everything sent is queued on our socket by now: read it without waiting.
        listener.sock.setblocking(False)
        rest = []
        with contextlib.suppress(BlockingIOError):
            while True:
                rest.append(listener.receive()[0])

    assert code == 0
    assert first[0] == "READY=1"
    assert rest == [["STOPPING=1"]]
