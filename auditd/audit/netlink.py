"""The audit netlink protocol: sockets, AUDIT_GET/AUDIT_SET requests, and what the kernel says of
our socket (drops). Blocking calls on small sockets; no records are parsed here."""

from __future__ import annotations

import itertools
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from auditd.model.errnos import errno_text

# include/uapi/linux/netlink.h and audit.h.
NETLINK_AUDIT: Final = 9
AUDIT_NLGRP_READLOG: Final = 1
SO_RCVBUFFORCE: Final = 33  # asm-generic/socket.h; the socket module lacks it
SOL_NETLINK: Final = 270
NETLINK_ADD_MEMBERSHIP: Final = 1
_NLMSG_ERROR: Final = 2
_NLM_F_REQUEST: Final = 1
_NLM_F_ACK: Final = 4
_AUDIT_GET: Final = 1000
_AUDIT_SET: Final = 1001
_AUDIT_STATUS_ENABLED: Final = 0x1
_AUDIT_STATUS_PID: Final = 0x4
AUDIT_LOCKED: Final = 2
HEADER: Final = struct.Struct("=IHHII")  # struct nlmsghdr
_STATUS: Final = struct.Struct("=11I")  # struct audit_status, up to backlog_wait_time_actual
RECV_SIZE: Final = 16384  # a record is at most MAX_AUDIT_MESSAGE_LENGTH (8970) bytes

_SEQ = itertools.count(1)


@dataclass(frozen=True, slots=True)
class AuditStatus:
    """AUDIT_GET: the kernel's audit state."""

    enabled: int  # 0 off, 1 on, 2 on and locked until reboot
    failure: int
    pid: int  # the registered audit daemon, 0 for none
    rate_limit: int
    backlog_limit: int
    lost: int  # records the kernel dropped since boot (backlog full, rate limit, no memory)
    backlog: int  # records queued in the kernel, not yet sent
    backlog_wait_time: int


def open_socket(timeout: float = 1.0) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_AUDIT)
    sock.settimeout(timeout)
    return sock


def _transact(
    sock: socket.socket, msg_type: int, payload: bytes = b"", reply_type: int | None = None
) -> tuple[bytes | None, list[bytes]]:
    """Send one request; wait for its ack and, if asked, its reply (which the kernel sends from
    another thread, so possibly after the ack). Returns the reply and any other datagrams."""
    seq = next(_SEQ)
    flags = _NLM_F_REQUEST | _NLM_F_ACK
    sock.send(HEADER.pack(HEADER.size + len(payload), msg_type, flags, seq, 0) + payload)
    acked, reply, others = False, None, []
    while not acked or (reply_type is not None and reply is None):
        data = sock.recv(RECV_SIZE)
        if len(data) < HEADER.size:
            continue
        length, kind, _flags, got_seq, _port = HEADER.unpack_from(data)
        if got_seq != seq or kind not in (_NLMSG_ERROR, reply_type):
            others.append(data)
        elif kind == _NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, HEADER.size)
            if err:
                raise OSError(-err, os.strerror(-err))
            acked = True
        else:
            reply = data[HEADER.size : length]
    return reply, others


def read_status(sock: socket.socket | None = None, timeout: float = 1.0) -> AuditStatus:
    """AUDIT_GET on *sock* (or a socket of its own). OSError when the kernel refuses."""
    used = open_socket(timeout) if sock is None else sock
    try:
        reply, _ = _transact(used, _AUDIT_GET, reply_type=_AUDIT_GET)
    finally:
        if used is not sock:
            used.close()
    # Older kernels send a shorter struct: the missing tail reads as zeros.
    values = _STATUS.unpack((reply or b"")[: _STATUS.size].ljust(_STATUS.size, b"\0"))
    _mask, enabled, failure, pid, rate, backlog_limit, lost, backlog, _ver, wait, _ = values
    return AuditStatus(enabled, failure, pid, rate, backlog_limit, lost, backlog, wait)


def set_status(
    sock: socket.socket, *, enabled: int | None = None, pid: int | None = None
) -> list[bytes]:
    """AUDIT_SET of the enabled flag and/or the audit daemon pid (bpf-auditd never sets the pid;
    tests register stand-in daemons with it); returns datagrams read meanwhile (records, when
    *sock* is a registered daemon's own socket)."""
    mask = (_AUDIT_STATUS_ENABLED if enabled is not None else 0) | (
        _AUDIT_STATUS_PID if pid is not None else 0
    )
    payload = _STATUS.pack(mask, enabled or 0, 0, pid or 0, 0, 0, 0, 0, 0, 0, 0)
    _, others = _transact(sock, _AUDIT_SET, payload)
    return others


def set_enabled(value: int) -> None:
    with open_socket() as sock:
        set_status(sock, enabled=value)


def current_enabled() -> int:
    return read_status().enabled


def registered_daemon() -> int:
    """The pid of the registered audit daemon (e.g. Linux auditd), 0 for none."""
    return read_status().pid


def netlink_drops(inode: int, proc: Path = Path("/proc")) -> int | None:
    """Datagrams the kernel could not queue on our netlink socket (sk_drops), from
    /proc/net/netlink; None when the socket is not listed."""
    try:
        lines = (proc / "net" / "netlink").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        columns = line.split()
        # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        if len(columns) >= 10 and columns[9] == str(inode):
            return int(columns[8])
    return None


@dataclass(frozen=True, slots=True)
class AuditNetlink:
    """What the audit netlink socket answers: AUDIT_GET status and the read-only log group."""

    enabled: int | None  # 0 off, 1 on, 2 locked; None when AUDIT_GET got no answer
    daemon_pid: int | None  # the registered audit daemon, 0 for none
    status_detail: str
    readlog: bool  # binding AUDIT_NLGRP_READLOG worked (needs CAP_AUDIT_READ)
    readlog_detail: str


def audit_netlink(timeout: float = 1.0) -> AuditNetlink:
    enabled: int | None = None
    pid: int | None = None
    try:
        status = read_status(timeout=timeout)
        enabled, pid = status.enabled, status.pid
        state = {0: "disabled", 1: "enabled", 2: "enabled and locked"}.get(enabled, "unknown")
        daemon = f"audit daemon pid {pid}" if pid else "no audit daemon registered"
        status_detail = f"audit {state} (enabled={enabled}), {daemon}"
    except TimeoutError:
        status_detail = f"AUDIT_GET: no answer within {timeout:g} s"
    except OSError as exc:
        status_detail = f"AUDIT_GET failed: {errno_text(exc.errno)}"
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT) as sock:
            sock.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
        readlog, readlog_detail = True, "joined multicast group AUDIT_NLGRP_READLOG"
    except OSError as exc:
        readlog, readlog_detail = False, f"AUDIT_NLGRP_READLOG bind: {errno_text(exc.errno)}"
    return AuditNetlink(enabled, pid, status_detail, readlog, readlog_detail)
