"""Metric families as plain values: what the core knows at one instant, for exporters to publish.

The daemon's monitors describe their metrics as `Family` values; exporters translate them
(Prometheus text today) without knowing where they came from or reaching into kernel maps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

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
