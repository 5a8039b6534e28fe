"""Bounded label values: a metric label that a process can influence never grows without limit."""

from __future__ import annotations

import threading
from collections import OrderedDict

OTHER = "other"
# Folded values remembered to count each one once; beyond, the least recently folded is forgotten
# (seen again, it counts again: the overflow count errs upwards, never hides a fold).
REMEMBERED_FOLDS = 4096


class LabelCap:
    """Bounds the distinct values of one label: the first `limit` values pass, later ones fold
    into "other", and each folded distinct value is counted once. Memory: at most `limit`
    admitted and `remember` folded values."""

    def __init__(self, limit: int, *, remember: int = REMEMBERED_FOLDS) -> None:
        self.limit = limit
        self.remember = remember
        self._admitted: set[str] = set()
        self._folded: OrderedDict[str, None] = OrderedDict()
        self._overflowed = 0
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
            if value in self._folded:
                self._folded.move_to_end(value)
            else:
                self._overflowed += 1
                self._folded[value] = None
                if len(self._folded) > self.remember:
                    self._folded.popitem(last=False)
            return OTHER

    @property
    def overflowed(self) -> int:
        """Distinct values folded so far (exact while at most `remember` were)."""
        return self._overflowed

    def sizes(self) -> dict[str, int]:
        return {"admitted": len(self._admitted), "folded": len(self._folded)}
