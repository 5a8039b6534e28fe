"""What an alert exporter is: something the daemon submits alert documents to, in order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class SinkError(Exception):
    """An alert sink cannot start (unreadable credentials, unusable spool, ...): one line."""


class Publishable(Protocol):
    """An alert as exporters see it: its rule and severity (for routing) and its document."""

    @property
    def rule(self) -> str: ...
    @property
    def severity(self) -> str: ...
    def document(self) -> Mapping[str, Any]: ...


class AlertSink(Protocol):
    """An alert exporter. `submit` is called on the event loop, in the order alerts are raised;
    it must not block (hand slow work to the sink's own task) and must not lose the alert
    silently: a sink that cannot deliver counts the loss in a metric.

    Sinks are async context managers: the daemon enters them before the probes start and
    leaves them after intake has stopped and the queue is drained (flush on exit)."""

    name: str

    def submit(self, alert: Publishable) -> None: ...
    async def __aenter__(self) -> AlertSink: ...
    async def __aexit__(self, *exc: object) -> None: ...
