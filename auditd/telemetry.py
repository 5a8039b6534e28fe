"""Metric families as plain values: what the core knows at one instant, for exporters to publish.

Monitors and the daemon describe their metrics as `Family` values; exporters translate them
(Prometheus text today) without knowing where they came from or reaching into kernel maps.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

OTHER = "other"
PREFIX = "bpf_auditd_"


@dataclass(frozen=True, slots=True)
class Family:
    """One metric: `name` carries the prefix and no `_total` suffix (exporters add it)."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    labels: tuple[str, ...] = ()
    samples: Mapping[tuple[str, ...], float] = field(default_factory=dict)

    def with_samples(self, samples: Mapping[tuple[str, ...], float]) -> Family:
        return replace(self, samples=samples)


def counter(name: str, help: str, *labels: str) -> Family:
    return Family(PREFIX + name, "counter", help, labels)


def gauge(name: str, help: str, *labels: str) -> Family:
    return Family(PREFIX + name, "gauge", help, labels)


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
