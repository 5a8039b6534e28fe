"""Alerts: what the policy raises and every alert exporter publishes.

The JSON document is versioned (`schema: 1`, described by `auditd/schemas/alert-v1.json`).
Each alert has an `id` unique across hosts and restarts, so a consumer receiving an alert
twice (at-least-once delivery) can drop the repeat.
"""

from __future__ import annotations

import enum
import itertools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


class Severity(enum.StrEnum):
    INFO = "info"
    NOTICE = "notice"
    WARNING = "warning"
    CRITICAL = "critical"


_boot_token = f"{os.getpid():x}-{time.time_ns():x}"
_sequence = itertools.count(1)


def new_alert_id(host: str) -> str:
    """`<host>-<pid>-<start time>-<n>`: unique without coordination, ordered within a run."""
    return f"{host}-{_boot_token}-{next(_sequence)}"


@dataclass(frozen=True, slots=True)
class Alert:
    rule: str
    severity: Severity
    service: str
    description: str
    event_kind: str  # the triggering event's kind ("denial", "namespace_change", ...)
    event: Mapping[str, Any]  # the triggering event's fields, as logged
    count: int  # events this alert stands for (repeats collapsed into one alert)
    first_seen_ns: int
    last_seen_ns: int
    host: str  # the daemon's host identity (config `host`)
    id: str = ""
    # True when this alert collects repeats folded by dedup/cooldown or a rate limit.
    summary: bool = False
    # The dedup key's fields and values this alert stands for (e.g. service, target).
    key: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", new_alert_id(self.host))

    def document(self) -> dict[str, Any]:
        """The versioned JSON document sent to every alert exporter."""
        return {
            "schema": SCHEMA_VERSION,
            "id": self.id,
            "rule": self.rule,
            "severity": self.severity.value,
            "host": self.host,
            "service": self.service,
            "description": self.description,
            "count": self.count,
            "first_seen_ns": self.first_seen_ns,
            "last_seen_ns": self.last_seen_ns,
            "event_kind": self.event_kind,
            "event": dict(self.event),
            "summary": self.summary,
            "key": dict(self.key),
        }
