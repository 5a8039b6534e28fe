"""Repeats within a dedup window, for every family the kernel deduplicates (denials,
namespaces): the kernel counts them (`seen` per dedup key); this turns that running count into
`repeats` on records, and into summaries for floods that stopped inside their window, so no
repeat goes unreported."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar


class Repeatable(Protocol):
    """A dataclass event that can say how many repeats it stands for."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def repeats(self) -> int: ...
    @property
    def summary(self) -> bool: ...
    @property
    def time_ns(self) -> int: ...


K = TypeVar("K", bound=Hashable)
E = TypeVar("E", bound=Repeatable)


class RepeatAccountant(Generic[K, E]):
    """Per dedup key: the repeats already reported, and the last record (what a summary shows).
    Bounded: at most `limit` keys (and their last record), the least recently recorded
    forgotten first (a forgotten key's later repeats come with its next record, whose `seen`
    still counts them)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._accounted: OrderedDict[K, int] = OrderedDict()
        self._last: dict[K, E] = {}
        self._lock = threading.Lock()  # the reader thread records, housekeeping summarizes

    def __len__(self) -> int:
        return len(self._accounted)

    def account(self, key: K, seen: int, event: E) -> E:
        """`event`, the record of `key` whose running count is `seen` (itself included), with
        the repeats no earlier record or summary reported."""
        with self._lock:
            before = self._accounted.get(key)
            repeats = seen - 1 - (before if before is not None else 0)
            self._accounted[key] = max(seen, before or 0)
            self._accounted.move_to_end(key)
            event = dataclasses.replace(event, repeats=max(repeats, 0))
            self._last[key] = event
            while len(self._accounted) > self.limit:
                old, _ = self._accounted.popitem(last=False)
                self._last.pop(old, None)
        return event

    def summaries(
        self, recent: Mapping[K, tuple[int, int]], now_mono_ns: int, window_ns: int
    ) -> list[E]:
        """Summaries for combinations idle for a window with repeats no record has reported;
        `recent`: the kernel's (seen, last sent, monotonic ns) per key."""
        out = []
        with self._lock:
            for key, (seen, last_sent_ns) in recent.items():
                before = self._accounted.get(key)
                last = self._last.get(key)
                if before is None or last is None or seen <= before:
                    continue
                if now_mono_ns - last_sent_ns < window_ns:
                    continue  # still inside the window: the next record will carry them
                self._accounted[key] = seen
                summary = dataclasses.replace(
                    last, repeats=seen - before, summary=True, time_ns=time.time_ns()
                )
                out.append(summary)
        return out
