"""Repeats of a refusal within its dedup window: the kernel counts them (`seen` per dedup key);
this turns that running count into `repeats` on records, and into summaries for floods that
stopped inside their window, so no repeat goes unreported."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping

from auditd.signals.denials.decode import Decoded
from auditd.signals.denials.event import Denial
from probes.denials import DedupKey


class RepeatAccountant:
    """Turns the kernel's running count per dedup key into `repeats` on records, and into
    summaries for floods that stopped inside their window (so no repeat goes unreported).
    Bounded: at most `limit` keys (and their last record), the least recently recorded
    forgotten first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._accounted: OrderedDict[DedupKey, int] = OrderedDict()
        self._last: dict[DedupKey, Denial] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._accounted)

    def on_record(self, decoded: Decoded) -> Denial:
        key = decoded.key
        with self._lock:
            before = self._accounted.get(key)
            repeats = decoded.seen - 1 - (before if before is not None else 0)
            self._accounted[key] = max(decoded.seen, before or 0)
            self._accounted.move_to_end(key)
            denial = dataclasses.replace(decoded.denial, repeats=max(repeats, 0))
            self._last[key] = denial
            while len(self._accounted) > self._limit:
                old, _ = self._accounted.popitem(last=False)
                self._last.pop(old, None)
        return denial

    def summaries(
        self, recent: Mapping[DedupKey, tuple[int, int]], now_mono_ns: int, window_ns: int
    ) -> list[Denial]:
        """Summaries for combinations idle for a window with repeats no record has reported."""
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
                out.append(
                    dataclasses.replace(
                        last,
                        repeats=seen - before,
                        summary=True,
                        time_ns=time.time_ns(),
                    )
                )
        return out
