"""The alert stream's outbox: every alert not yet acknowledged by the broker, oldest first, each
written to the on-disk spool before it may be sent, removed from it when acknowledged.

All disk work runs in one task, in order, off the event loop. The outbox is bounded (messages
and bytes): beyond it the oldest alerts make room, and every one lost is counted by reason.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import structlog

from exporters.spool import Spool, SpoolError

log = structlog.get_logger("bpf-auditd.mqtt")

DROP_LOG_INTERVAL_S = 10.0
DROP_REASONS = ("spool_full", "spool_corrupt", "not_spooled")


class OutboxError(Exception):
    """The spool cannot be used."""


@dataclass(slots=True, eq=False)
class Message:
    seq: int
    topic: str
    payload: bytes
    on_disk: bool = False
    ready: bool = False  # spool write done (or failed): may be sent
    dropped: bool = False


class Outbox:
    def __init__(
        self,
        spool: Spool,
        *,
        max_messages: int,
        max_bytes: int,
        clock: Callable[[], float],
    ) -> None:
        self.spool = spool
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._clock = clock
        self._pending: OrderedDict[int, Message] = OrderedDict()
        self.bytes = 0
        self._next_seq = 1
        self._to_write: list[Message] = []
        self._to_remove: list[int] = []
        # Ready messages the current connection has not taken yet (None: no connection).
        self._unsent: deque[Message] | None = None
        self._disk_busy = False
        self._disk_stopping = False
        self._disk_task: asyncio.Task[None] | None = None
        self._disk_wakeup = asyncio.Event()
        # Set whenever something may be sent: a message became ready, or disk work finished.
        self.wakeup = asyncio.Event()
        # Telemetry, read from the metrics thread (ints only; dict keys fixed up front).
        self.spooled = 0
        self.spool_errors = 0
        self.acknowledged = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._unlogged_drops = dict.fromkeys(DROP_REASONS, 0)
        self._last_drop_log = self._last_spool_log = -DROP_LOG_INTERVAL_S

    def __len__(self) -> int:
        return len(self._pending)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, topic_of: Callable[[bytes], str | None]) -> None:
        """Load what a previous run left in the spool (in order), then start the disk task."""
        try:
            loaded = await asyncio.to_thread(self.spool.open)
        except SpoolError as exc:
            raise OutboxError(str(exc)) from exc
        corrupt = 0
        for seq, payload in loaded.records:
            topic = topic_of(payload)
            if topic is None:
                corrupt += 1
                self._to_remove.append(seq)
                continue
            self._pending[seq] = Message(seq, topic, payload, on_disk=True, ready=True)
            self.bytes += len(payload)
        if loaded.records:
            self._next_seq = loaded.records[-1][0] + 1
        self._count_drops("spool_corrupt", corrupt + loaded.unreadable)
        self._enforce_bounds()
        if self._pending:
            log.info(
                "mqtt_spool_loaded", alerts=len(self._pending), spool=str(self.spool.directory)
            )
        self._disk_task = asyncio.create_task(self._disk(), name="mqtt-spool")

    async def close(self) -> int:
        """Finish the disk work, count what never reached the disk; returns how many alerts
        stay spooled for the next run."""
        self._disk_stopping = True
        self._disk_wakeup.set()
        if self._disk_task is not None:
            await asyncio.gather(self._disk_task, return_exceptions=True)
        unspooled = sum(1 for m in self._pending.values() if not m.on_disk)
        self._count_drops("not_spooled", unspooled)
        self.log_drops(force=True)
        await asyncio.to_thread(self.spool.close)
        return len(self._pending) - unspooled

    @property
    def disk_task(self) -> asyncio.Task[None] | None:
        return self._disk_task

    # -- the publishing side -------------------------------------------------------------------

    def add(self, topic: str, payload: bytes) -> None:
        """Queue an alert for the spool, then the broker. Never blocks."""
        message = Message(self._next_seq, topic, payload)
        self._next_seq += 1
        self._pending[message.seq] = message
        self.bytes += len(payload)
        self._to_write.append(message)
        self._disk_wakeup.set()
        self._enforce_bounds()

    def start_sending(self) -> None:
        """A new connection: it starts over from the oldest unacknowledged alert, in order."""
        self._unsent = deque(m for m in self._pending.values() if m.ready)

    def stop_sending(self) -> None:
        self._unsent = None

    def has_unsent(self) -> bool:
        return bool(self._unsent)

    def take(self, limit: int) -> Iterator[Message]:
        """Up to `limit` ready messages the connection has not sent yet, oldest first."""
        while self._unsent and limit > 0:
            message = self._unsent.popleft()
            if message.dropped or message.seq not in self._pending:
                continue
            limit -= 1
            yield message

    def acknowledge(self, message: Message) -> None:
        if self._pending.pop(message.seq, None) is None:
            return  # dropped while in flight (spool full); already counted
        self.bytes -= len(message.payload)
        self.acknowledged += 1
        if message.on_disk:
            self._to_remove.append(message.seq)
            self._disk_wakeup.set()

    def idle(self) -> bool:
        """No spool write is pending: everything submitted is ready to send (or sent)."""
        return not self._disk_busy and not self._to_write

    # -- bounds and drops -------------------------------------------------------------------

    def _enforce_bounds(self) -> None:
        dropped = 0
        while self._pending and (
            len(self._pending) > self.max_messages or self.bytes > self.max_bytes
        ):
            seq, message = self._pending.popitem(last=False)
            self.bytes -= len(message.payload)
            message.dropped = True
            dropped += 1
            if message.on_disk:
                self._to_remove.append(seq)
        self._count_drops("spool_full", dropped)

    def _count_drops(self, reason: str, n: int) -> None:
        if n <= 0:
            return
        self.dropped[reason] += n
        self._unlogged_drops[reason] += n
        self.log_drops()

    def log_drops(self, *, force: bool = False) -> None:
        now = self._clock()
        if not any(self._unlogged_drops.values()):
            return
        if not force and now - self._last_drop_log < DROP_LOG_INTERVAL_S:
            return
        self._last_drop_log = now
        for reason, n in self._unlogged_drops.items():
            if n:
                log.warning(
                    "mqtt_alerts_dropped",
                    reason=reason,
                    dropped=n,
                    total=self.dropped[reason],
                    spool_max_messages=self.max_messages,
                    spool_max_bytes=self.max_bytes,
                )
        self._unlogged_drops = dict.fromkeys(DROP_REASONS, 0)

    # -- the disk task: every spool operation, in order -------------------------------------

    async def _disk(self) -> None:
        while True:
            await self._disk_wakeup.wait()
            self._disk_wakeup.clear()
            await self._disk_round()
            if self._disk_stopping and not self._to_write and not self._to_remove:
                return

    async def _disk_round(self) -> None:
        self._disk_busy = True
        try:
            batch = [m for m in self._to_write if not m.dropped]
            self._to_write = []
            if batch:
                failed = await asyncio.to_thread(
                    self.spool.write, [(m.seq, m.payload) for m in batch]
                )
                for message in batch:
                    if message.seq in failed:
                        self.spool_errors += 1
                        self._spool_failure("write", failed[message.seq])
                    else:
                        message.on_disk = True
                        self.spooled += 1
                    if message.dropped:
                        if message.on_disk:
                            self._to_remove.append(message.seq)
                    else:
                        message.ready = True
                        if self._unsent is not None:  # else the next connection picks it up
                            self._unsent.append(message)
            removals, self._to_remove = self._to_remove, []
            if removals:
                errors = await asyncio.to_thread(self.spool.remove, removals)
                if errors:
                    self.spool_errors += errors
                    self._spool_failure("remove", f"{errors} file(s) not removed")
        finally:
            self._disk_busy = False
            self.wakeup.set()

    def _spool_failure(self, operation: str, reason: str) -> None:
        now = self._clock()
        if now - self._last_spool_log >= DROP_LOG_INTERVAL_S:
            self._last_spool_log = now
            log.error(
                "mqtt_spool_failed",
                operation=operation,
                error=reason,
                spool=str(self.spool.directory),
                total=self.spool_errors,
            )
