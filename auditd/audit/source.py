"""The audit source: Landlock, seccomp and SELinux records read from the kernel's read-only
multicast group (AUDIT_NLGRP_READLOG), grouped into AuditEvents. It never registers as the audit
daemon, so Linux auditd (or any other) can always start, and no audited process ever waits on
bpf-auditd.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import re
import socket
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import structlog

from auditd.audit.assembler import Assembler, RawEvent
from auditd.audit.lease import EnableLease
from auditd.audit.netlink import (
    AUDIT_LOCKED,
    AUDIT_NLGRP_READLOG,
    HEADER,
    NETLINK_ADD_MEMBERSHIP,
    RECV_SIZE,
    SO_RCVBUFFORCE,
    SOL_NETLINK,
    netlink_drops,
    open_socket,
    read_status,
)
from auditd.audit.records import RELEVANT_TYPES, AuditEvent, RecordType
from auditd.model.errnos import errno_text
from auditd.model.text import kernel_text

_MAX_PER_WAKEUP: Final = 512  # then let the loop run; the reader fires again at once
_RCVBUF: Final = 8 << 20  # absorbs bursts; beyond it the kernel drops our copies (counted)
_DROP_LOG_INTERVAL: Final = 10.0
# Below this, netlink's own control messages (NLMSG_NOOP … NLMSG_OVERRUN); from it on, audit
# message types: on a socket that only listens to the group, every one of them is a record
# (AUDIT_USER 1005 and AUDIT_LOGIN 1006 included).
_NLMSG_MIN_TYPE: Final = 16
# Another process switched audit on while it was already on (Linux auditd does at every start):
# the flag is then also theirs, and the lease must not switch it off when we leave.
_ENABLED_BY_OTHER: Final = re.compile(r"\bop=set audit_enabled=1 old=1 .*\bres=1\b")
DEFAULT_STATE_DIR: Final = Path("/run/bpf-auditd")


class AuditError(Exception):
    """The audit netlink socket cannot be used as needed; the message is one line."""


@dataclass(frozen=True, slots=True)
class AuditStats:
    """Counts since the source started. Every lost record is in one of the *dropped/lost fields."""

    records: int  # records read from the socket
    events: int  # events handed to the consumer
    events_ignored: int  # events holding no relevant record (e.g. another tool's SYSCALL rules)
    events_dropped: int  # the consumer fell behind: its queue was full
    records_dropped: int  # the records inside those events
    socket_drops: int  # records the kernel could not queue on our socket (multicast overrun)
    malformed: int  # records without an audit(…) stamp, or cut off
    # The kernel's own lost counter, since start: its backlog or rate limit, and, on a system
    # booted with audit=1, records it held for an audit daemon while none was registered.
    kernel_lost: int


class AuditSource:
    """``async with AuditSource() as audit: async for event in audit: …``

    On entry: joins the read-only multicast group (needs CAP_AUDIT_READ) and, if asked and
    needed, enables audit (CAP_AUDIT_CONTROL); the last bpf-auditd to leave restores the flag
    (`EnableLease`), unless an audit daemon is registered then or another process asserted the
    flag meanwhile. It never sets the audit daemon pid: the kernel hands every record to the
    group before it tries the registered daemon, with or without one, so Linux auditd starts
    and stops as it pleases and both get every record. The kernel never waits for the group:
    if we fall behind, only our copies are lost, and counted (`socket_drops`). The price, while
    audit is on and no daemon is registered: the kernel also prints records to its log,
    rate-limited (printk_ratelimit: about 10 lines per 5 s). Records are read whenever the
    socket is readable, whether or not the consumer keeps up; a full queue drops events
    unparsed and counts them.
    """

    def __init__(
        self,
        *,
        enable_audit: bool = True,
        flush_after: float = 0.5,
        queue_size: int = 4096,
        relevant: Iterable[int] | None = RELEVANT_TYPES,
        state_dir: Path = DEFAULT_STATE_DIR,
        rcvbuf: int = _RCVBUF,
        log: Any = None,
    ) -> None:
        if queue_size < 1 or rcvbuf < 1:
            raise ValueError("queue_size and rcvbuf must be >= 1")
        self.rcvbuf = rcvbuf
        self.enable_audit = enable_audit
        self.queue_size = queue_size
        self.enabled_before: int | None = None
        self.enabled_by_us = False
        self.enabled_by_other = False  # another process asserted audit_enabled=1 while we ran
        self.restored: int | None = None  # the value the enabled flag was restored to, if any
        self._assembler = Assembler(flush_after, relevant)
        self._lease: EnableLease | None = EnableLease(state_dir) if enable_audit else None
        self._leased = False
        self._log = log if log is not None else structlog.get_logger("bpf-auditd")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._inode = 0
        self._reading = False
        self._timer: asyncio.TimerHandle | None = None
        self._buf = bytearray(RECV_SIZE)
        self._queue: deque[AuditEvent] = deque()  # at most queue_size events
        self._wakeup = asyncio.Event()
        self._closed = False
        self._started = False
        self._records = self._events = self._events_dropped = self._records_dropped = 0
        self._truncated = 0
        self._socket_drops = 0
        self._lost_at_start: int | None = None
        self._kernel_lost = 0
        self._last_drop_log: float | None = None

    # lifecycle

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _start(self) -> None:
        assert self._loop is not None
        try:
            status = read_status()
        except OSError as exc:
            raise AuditError(f"audit netlink: AUDIT_GET failed: {errno_text(exc.errno)}") from exc
        self.enabled_before = status.enabled
        self._lost_at_start = status.lost
        self._sock = open_socket()
        # A port id of our own: an unbound socket shares port 0 with the kernel, and multicast
        # skips the sender's port, so it would never see a record.
        self._sock.bind((0, 0))
        self._inode = os.fstat(self._sock.fileno()).st_ino
        try:
            self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, AUDIT_NLGRP_READLOG)
        except OSError as exc:
            raise AuditError(
                f"cannot join the audit multicast group (needs CAP_AUDIT_READ): {_why(exc)}"
            ) from exc
        self._sock.setblocking(False)
        try:  # beyond rmem_max needs CAP_NET_ADMIN; the smaller buffer still works
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
        self._reading = True
        self._started = True
        # Enabled only now that we listen: no record written from here on is missed.
        recovered = False
        if self._lease is not None and status.enabled != AUDIT_LOCKED:
            try:
                start = await asyncio.to_thread(self._lease.acquire)
            except OSError as exc:
                raise AuditError(f"cannot enable audit: {_why(exc)}") from exc
            self._leased = True
            self.enabled_by_us, recovered = start.enabled_by_us, start.recovered
        enabled = 1 if self.enabled_by_us else status.enabled
        self._log.info(
            "audit_source_started",
            audit_enabled_before=status.enabled,
            audit_enabled_by_us=self.enabled_by_us,
            audit_daemon_pid=status.pid or None,
            recovered_saved_state=recovered,
        )
        if enabled == 0:
            self._log.warning("audit_disabled", hint="Landlock and seccomp write no records")

    async def _stop(self) -> None:
        """Undo what `_start` did: restore the enabled flag (if we are the last holder and it is
        still ours), read what the kernel sent meanwhile, close."""
        if self._closed:
            return
        assert self._loop is not None
        if self._reading and self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self._read_safely()  # a CONFIG_CHANGE of another process may still be queued
        if self._leased and self._lease is not None:
            self._leased = False
            lease = self._lease
            try:
                self.restored = await asyncio.to_thread(lease.release, keep=self.enabled_by_other)
            except OSError as exc:
                self._log.error("audit_restore_failed", error=_why(exc))
        if self._sock is not None:
            self._read_safely()
            self._socket_drops = netlink_drops(self._inode) or self._socket_drops
            self._kernel_lost = self._read_kernel_lost()
        for event in self._assembler.flush():
            self._deliver(event)
        if self._sock is not None:
            self._sock.close()
        self._closed = True
        self._wakeup.set()
        if self._started:
            stats = self.stats()
            self._log.info(
                "audit_source_stopped",
                audit_enabled_restored_to=self.restored,
                audit_enabled_by_other=self.enabled_by_other,
                records=stats.records,
                events=stats.events,
                events_dropped=stats.events_dropped,
                socket_drops=stats.socket_drops,
                kernel_lost=stats.kernel_lost,
            )

    # reading

    def _on_readable(self) -> None:
        self._read_safely(_MAX_PER_WAKEUP)

    def _read_safely(self, limit: int | None = None) -> bool:
        """`_read_available` for callbacks and shutdown, which must not raise; False on error."""
        try:
            self._read_available(limit)
        except Exception as exc:
            self._log.exception("audit_read_failed", error=str(exc))
            return False
        return True

    def _read_available(self, limit: int | None = None) -> None:
        assert self._sock is not None
        assert self._loop is not None
        now = self._loop.time()
        for _ in itertools.repeat(None) if limit is None else range(limit):
            try:
                size = self._sock.recv_into(self._buf, 0, socket.MSG_DONTWAIT | socket.MSG_TRUNC)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # The kernel dropped records for us (multicast overrun); sk_drops has the count.
                self._socket_drops = netlink_drops(self._inode) or self._socket_drops
                continue
            self._take(self._buf, size, now)
        self._expire()

    def _take(self, data: bytes | bytearray, size: int, now: float) -> None:
        if size < HEADER.size:
            return
        kind = HEADER.unpack_from(data)[1]
        if kind < _NLMSG_MIN_TYPE or kind == RecordType.REPLACE:
            return  # netlink control messages; the kernel's ping to a registered daemon
        if size > len(data):
            self._records += 1
            self._truncated += 1  # cannot happen below MAX_AUDIT_MESSAGE_LENGTH; counted anyway
            return
        # One record per datagram; the datagram's size bounds the text (nlmsg_len is not
        # trustworthy: the kernel counts the header in multicast copies only).
        self._records += 1
        text = kernel_text(bytes(data[HEADER.size : size]).rstrip(b"\0"))
        if (
            kind == RecordType.CONFIG_CHANGE
            and self._leased
            and _ENABLED_BY_OTHER.search(text) is not None
        ):
            self.enabled_by_other = True
        for event in self._assembler.add(kind, text, now):
            self._deliver(event)

    def _expire(self) -> None:
        assert self._loop is not None
        for event in self._assembler.expire(self._loop.time()):
            self._deliver(event)
        deadline = self._assembler.next_deadline()
        if deadline is not None and self._timer is None and self._reading:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._expire()

    def _deliver(self, event: RawEvent) -> None:
        if len(self._queue) >= self.queue_size:
            # Dropped before parsing, the costly part: a flood costs little and is counted.
            self._events_dropped += 1
            self._records_dropped += len(event.records)
            now = self._loop.time() if self._loop is not None else 0.0
            if self._last_drop_log is None or now - self._last_drop_log >= _DROP_LOG_INTERVAL:
                self._last_drop_log = now
                self._log.warning("audit_events_dropped", total=self._events_dropped)
            return
        self._queue.append(event.parse())
        self._events += 1
        self._wakeup.set()

    # consuming

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> AuditEvent:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    def stats(self) -> AuditStats:
        """Current counts; reads /proc/net/netlink and AUDIT_GET, so any thread may call it."""
        if not self._closed and self._sock is not None:
            self._socket_drops = netlink_drops(self._inode) or self._socket_drops
            self._kernel_lost = self._read_kernel_lost()
        return AuditStats(
            records=self._records,
            events=self._events,
            events_ignored=self._assembler.ignored,
            events_dropped=self._events_dropped,
            records_dropped=self._records_dropped,
            socket_drops=self._socket_drops,
            malformed=self._assembler.malformed + self._truncated,
            kernel_lost=self._kernel_lost,
        )

    def _read_kernel_lost(self) -> int:
        if self._lost_at_start is None:
            return self._kernel_lost
        try:
            return read_status().lost - self._lost_at_start
        except OSError:
            return self._kernel_lost


def _why(exc: OSError) -> str:
    return errno_text(exc.errno) if exc.errno else str(exc)
