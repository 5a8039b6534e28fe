"""What the daemon knows about itself and the kernel at one instant, for exporters to publish.

Exporters receive a `Telemetry` value; they never reach into probes or kernel maps themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

OTHER = "other"


@dataclass(frozen=True, slots=True, order=True)
class DenialSeries:
    service: str
    source: str
    syscall: str
    errno: str


@dataclass(frozen=True, slots=True)
class Telemetry:
    denials: Mapping[DenialSeries, int] = field(default_factory=dict)
    # Refusals that did not fit the kernel's counter map: still counted, without labels.
    denials_unattributed: int = 0
    events_received: Mapping[str, int] = field(default_factory=dict)  # probe → records
    events_dropped: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (probe, stage)
    probes_up: Mapping[str, bool] = field(default_factory=dict)
    label_overflow: Mapping[str, int] = field(default_factory=dict)  # label → folded values
    config_reloads: Mapping[str, int] = field(default_factory=dict)  # result → count


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
