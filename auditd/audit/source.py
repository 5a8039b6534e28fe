"""The audit source: Landlock, seccomp and SELinux records read as the audit daemon when none is
registered, else as copies from the read-only multicast group, grouped into AuditEvents.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import structlog

from auditd.audit.assembler import Assembler, RawEvent
from auditd.audit.lease import EnableLease
from auditd.audit.netlink import (
    AUDIT_LOCKED,
    AUDIT_NLGRP_READLOG,
    FIRST_RECORD_TYPE,
    HEADER,
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_DROP_MEMBERSHIP,
    RECV_SIZE,
    SO_RCVBUFFORCE,
    SOL_NETLINK,
    alive,
    netlink_drops,
    open_socket,
    read_status,
    set_status,
)
from auditd.audit.records import RELEVANT_TYPES, AuditEvent, RecordType
from auditd.model.errnos import errno_text
from auditd.model.text import kernel_text

_MAX_PER_WAKEUP: Final = 512  # then let the loop run; the reader fires again at once
_RCVBUF: Final = 8 << 20  # absorbs bursts: the kernel blocks (daemon) or drops (multicast)
_EXIT_DRAIN_ROUNDS: Final = 50  # x 10 ms: wait for the kernel's queue to reach us at exit
_DROP_LOG_INTERVAL: Final = 10.0
_WATCH_INTERVAL: Final = 5.0  # multicast mode: how often to look for a daemon that went away
DEFAULT_STATE_DIR: Final = Path("/run/bpf-auditd")


class AuditError(Exception):
    """The audit netlink socket cannot be used as needed; the message is one line."""


class AuditMode(StrEnum):
    DAEMON = "daemon"  # registered as the audit daemon: the kernel sends records to us
    MULTICAST = "multicast"  # another daemon is registered: we read copies (AUDIT_NLGRP_READLOG)


@dataclass(frozen=True, slots=True)
class AuditStats:
    """Counts since the source started. Every lost record is in one of the *dropped/lost fields."""

    records: int  # records read from the socket
    events: int  # events handed to the consumer
    events_ignored: int  # events holding no relevant record (e.g. another tool's SYSCALL rules)
    events_dropped: int  # the consumer fell behind: its queue was full
    records_dropped: int  # the records inside those events
    socket_drops: int  # records the kernel could not queue on our socket (netlink overrun)
    malformed: int  # records without an audit(…) stamp, or cut off
    kernel_lost: int  # the kernel's own lost counter, since start (its backlog or rate limit)


class AuditSource:
    """``async with AuditSource() as audit: async for event in audit: …``

    On entry: registers as the audit daemon when none is, so the kernel does not also print
    every record to its log; with a daemon present (e.g. Linux auditd) it reads the multicast
    group instead, and takes the daemon's place if it leaves. Then enables audit if asked and
    needed; the last bpf-auditd to leave restores the flag (`EnableLease`). Records are read
    whenever the socket is readable, whether or not the consumer keeps up (a registered daemon
    that stops reading makes audited processes wait for up to backlog_wait_time); a full queue
    drops events unparsed and counts them. `mode` says how records arrive now.
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
        self.mode: AuditMode | None = None
        self.enabled_before: int | None = None
        self.enabled_by_us = False
        self.restored: int | None = None  # the value the enabled flag was restored to, if any
        self._assembler = Assembler(flush_after, relevant)
        self._lease: EnableLease | None = EnableLease(state_dir) if enable_audit else None
        self._leased = False
        self._log = log if log is not None else structlog.get_logger("bpf-auditd")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._inode = 0
        self._ctl: socket.socket | None = None
        self._registered = False
        self._reading = False
        self._timer: asyncio.TimerHandle | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._last_multicast: bytes | None = None
        self._buf = bytearray(RECV_SIZE)
        self._queue: deque[AuditEvent] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False
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
        self._ctl = open_socket()
        try:
            status = read_status(self._ctl)
        except OSError as exc:
            raise AuditError(f"audit netlink: AUDIT_GET failed: {errno_text(exc.errno)}") from exc
        self.enabled_before = status.enabled
        self._lost_at_start = status.lost
        self._sock = open_socket()
        # A port id of our own now: an unbound socket shares port 0 with the kernel, and
        # multicast skips the sender's port, so it would never see a record.
        self._sock.bind((0, 0))
        self._inode = os.fstat(self._sock.fileno()).st_ino
        early = (
            self._become_daemon(status.pid) if status.pid == 0 or not alive(status.pid) else None
        )
        if early is None:
            self._join_multicast()
        self.mode = AuditMode.DAEMON if self._registered else AuditMode.MULTICAST
        self._sock.setblocking(False)
        try:  # beyond rmem_max needs CAP_NET_ADMIN; the smaller buffer still works
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        now = self._loop.time()
        for data in early or ():
            self._take(data, len(data), now)
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
        self._reading = True
        if not self._registered:
            self._watch = self._loop.call_later(_WATCH_INTERVAL, self._on_watch)
        # Enabled only now that a daemon is there to take the records: with none registered,
        # the kernel prints each one to its log.
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
            mode=self.mode.value,
            audit_enabled_before=status.enabled,
            audit_enabled_by_us=self.enabled_by_us,
            registered_pid=os.getpid() if self._registered else None,
            audit_daemon_pid=None if self._registered else status.pid or None,
            recovered_saved_state=recovered,
        )
        if enabled == 0:
            self._log.warning("audit_disabled", hint="Landlock and seccomp write no records")

    def _become_daemon(self, stale_pid: int) -> list[bytes] | None:
        """Register this process as the audit daemon; None when another got there first."""
        assert self._sock is not None
        try:
            early = set_status(self._sock, pid=os.getpid())
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return None
            raise AuditError(f"cannot register as the audit daemon: {_why(exc)}") from exc
        self._registered = True
        if stale_pid:
            self._log.info("audit_daemon_replaced", stale_pid=stale_pid)
        return early

    def _join_multicast(self) -> None:
        assert self._sock is not None
        try:
            self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, AUDIT_NLGRP_READLOG)
        except OSError as exc:
            raise AuditError(
                f"cannot join the audit multicast group (needs CAP_AUDIT_READ): {_why(exc)}"
            ) from exc

    def _on_watch(self) -> None:
        self._watch = None
        self._take_over()
        if not self._registered and self._reading and self._loop is not None:
            self._watch = self._loop.call_later(_WATCH_INTERVAL, self._on_watch)

    def _take_over(self) -> None:
        """Multicast mode, and the audit daemon went away: become it, or the kernel prints every
        record to its log from now on. Records read meanwhile are processed in order; the ones
        sent both ways while membership is dropped are deduplicated in `_take`."""
        if self._registered or not self._reading or self._sock is None or self._ctl is None:
            return
        try:
            pid = read_status(self._ctl).pid
        except OSError:
            return
        if pid and alive(pid):
            return
        if not self._read_safely():
            return
        self._sock.settimeout(1.0)
        try:
            early = self._become_daemon(pid)
            if early is not None:
                self._sock.setsockopt(SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, AUDIT_NLGRP_READLOG)
        except (AuditError, OSError) as exc:
            self._log.warning("audit_take_over_failed", error=str(exc))
            return
        finally:
            self._sock.setblocking(False)
        if early is None:
            return  # another reader got there first
        self.mode = AuditMode.DAEMON
        self._log.info("audit_source_took_over", mode=self.mode.value, previous_pid=pid or None)
        assert self._loop is not None
        now = self._loop.time()
        for data in early:
            self._take(data, len(data), now)

    async def _stop(self) -> None:
        """Undo what `_start` did, in the order that keeps records out of the kernel log: restore
        the enabled flag while still registered (its change record comes to us), let the kernel's
        queue drain to us, then unregister."""
        if self._closed:
            return
        assert self._loop is not None
        if self._reading and self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False
        for handle in (self._timer, self._watch):
            if handle is not None:
                handle.cancel()
        self._timer = self._watch = None
        if self._leased and self._lease is not None:
            self._leased = False
            try:
                self.restored = await asyncio.to_thread(self._lease.release)
            except OSError as exc:
                self._log.error("audit_restore_failed", error=_why(exc))
        unregistered = False
        if self._registered:
            await self._drain_kernel_queue()
            try:
                assert self._ctl is not None
                set_status(self._ctl, pid=0)
                unregistered = True
            except OSError as exc:
                self._log.error("audit_unregister_failed", error=_why(exc))
            self._registered = False
        if self._sock is not None:
            self._read_safely()
            self._socket_drops = netlink_drops(self._inode) or self._socket_drops
            self._kernel_lost = self._read_kernel_lost()
        for event in self._assembler.flush():
            self._deliver(event)
        for sock in (self._sock, self._ctl):
            if sock is not None:
                sock.close()
        self._closed = True
        self._wakeup.set()
        if self.mode is not None:
            stats = self.stats()
            self._log.info(
                "audit_source_stopped",
                mode=self.mode.value,
                audit_enabled_restored_to=self.restored,
                unregistered=unregistered,
                records=stats.records,
                events=stats.events,
                events_dropped=stats.events_dropped,
                socket_drops=stats.socket_drops,
                kernel_lost=stats.kernel_lost,
            )

    async def _drain_kernel_queue(self) -> None:
        # Records still queued in the kernel when we unregister are printed to its log instead.
        assert self._ctl is not None
        for _ in range(_EXIT_DRAIN_ROUNDS):
            if not self._read_safely():
                return
            try:
                if read_status(self._ctl).backlog == 0:
                    break
            except OSError:
                break
            await asyncio.sleep(0.01)
        self._read_safely()

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
        length, kind = HEADER.unpack_from(data)[:2]
        if kind < FIRST_RECORD_TYPE or kind == RecordType.REPLACE:
            return  # acks, and the kernel's "are you alive" ping to the registered daemon
        if size > len(data):
            self._records += 1
            self._truncated += 1  # cannot happen below MAX_AUDIT_MESSAGE_LENGTH; counted anyway
            return
        # One record per datagram. Its nlmsg_len counts the header in multicast copies and not
        # in the daemon's (a kernel quirk), so the datagram's size bounds the text, and the
        # length tells the two apart: while taking over, the kernel sends each record as a
        # multicast copy, then to the daemon, back to back; the second is a duplicate.
        payload = bytes(data[HEADER.size : size])
        multicast = length == size
        if not multicast and payload == self._last_multicast:
            self._last_multicast = None
            return
        self._last_multicast = payload if multicast else None
        self._records += 1
        text = kernel_text(payload.rstrip(b"\0"))
        if kind == RecordType.CONFIG_CHANGE and not self._registered and "audit_pid=0 " in text:
            self._loop_call_soon(self._take_over)  # the daemon unregistered: take its place
        for event in self._assembler.add(kind, text, now):
            self._deliver(event)

    def _loop_call_soon(self, callback: Callable[[], None]) -> None:
        if self._loop is not None and self._reading:
            self._loop.call_soon(callback)

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
