"""Bounded label values: a metric label that a process can influence never grows without limit."""

from __future__ import annotations

import threading

OTHER = "other"


class LabelCap:
    """Bounds the distinct values of one label: the first `limit` values pass, later ones fold
    into "other", and each folded distinct value is counted once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._admitted: set[str] = set()
        self._folded: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._admitted:
            return value
        with self._lock:
            if value in self._admitted:
                return value
            if len(self._admitted) < self.limit:
                self._admitted.add(value)
                return value
            self._folded.add(value)
            return OTHER

    @property
    def overflowed(self) -> int:
        return len(self._folded)
