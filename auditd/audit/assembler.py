"""Audit records grouped into one event per serial (`Assembler`); pure: no sockets, no clock
(the caller passes `now`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from auditd.audit.records import (
    RELEVANT_TYPES,
    AuditEvent,
    RecordType,
    Stamp,
    parse_record,
    split_header,
)


@dataclass(frozen=True, slots=True)
class RawEvent:
    """An event's records as text, before parsing (which is the costly part: a consumer that
    falls behind can drop these unparsed)."""

    stamp: Stamp
    records: tuple[tuple[int, str], ...]  # (type, body after the stamp)
    complete: bool

    def parse(self) -> AuditEvent:
        records = tuple(parse_record(t, body) for t, body in self.records)
        return AuditEvent(self.stamp.time_ns, self.stamp.serial, records, self.complete)


@dataclass(slots=True)
class _Pending:
    stamp: Stamp
    deadline: float
    records: list[tuple[int, str]]


class Assembler:
    """Groups records by stamp into events: an event ends with its EOE record, or `flush_after`
    seconds after its first record (records written outside a syscall get no EOE).

    Only events holding one of `relevant` types are returned (unparsed); the others are
    counted in `ignored`. At most `max_pending` events wait; beyond that the oldest is
    flushed early (incomplete, not lost).
    """

    def __init__(
        self,
        flush_after: float,
        relevant: Iterable[int] | None = RELEVANT_TYPES,
        max_pending: int = 4096,
    ) -> None:
        if flush_after <= 0 or max_pending < 1:
            raise ValueError("flush_after must be > 0 and max_pending >= 1")
        self.flush_after = flush_after
        self.relevant = None if relevant is None else frozenset(relevant)
        self.max_pending = max_pending
        self._pending: dict[Stamp, _Pending] = {}  # insertion order = deadline order
        self.malformed = 0  # records without a stamp
        self.ignored = 0  # events holding no relevant record

    def add(self, record_type: int, text: str, now: float) -> list[RawEvent]:
        """Take one record's text; returns the events it completes (or pushes out)."""
        split = split_header(text)
        if split is None:
            self.malformed += 1
            return []
        stamp, body = split
        pending = self._pending.get(stamp)
        if record_type == RecordType.EOE:
            if pending is None:
                return []  # its records were already flushed by the timeout
            del self._pending[stamp]
            return self._finish(pending, complete=True)
        if pending is None:
            done: list[RawEvent] = []
            while len(self._pending) >= self.max_pending:
                done += self._finish(self._pending.pop(next(iter(self._pending))), complete=False)
            pending = self._pending[stamp] = _Pending(stamp, now + self.flush_after, [])
            pending.records.append((record_type, body))
            return done
        pending.records.append((record_type, body))
        return []

    def next_deadline(self) -> float | None:
        return next(iter(self._pending.values())).deadline if self._pending else None

    def expire(self, now: float) -> list[RawEvent]:
        """Events whose time is up."""
        done: list[RawEvent] = []
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.deadline > now:
                break
            del self._pending[oldest.stamp]
            done += self._finish(oldest, complete=False)
        return done

    def flush(self) -> list[RawEvent]:
        """Everything still waiting (at shutdown)."""
        done: list[RawEvent] = []
        for pending in self._pending.values():
            done += self._finish(pending, complete=False)
        self._pending.clear()
        return done

    def _finish(self, pending: _Pending, *, complete: bool) -> list[RawEvent]:
        if self.relevant is not None and not any(t in self.relevant for t, _ in pending.records):
            self.ignored += 1
            return []
        return [RawEvent(pending.stamp, tuple(pending.records), complete)]
