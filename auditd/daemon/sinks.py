"""The alert sink that is always on: alerts as JSON log lines."""

from __future__ import annotations

import structlog

from exporters.sink import Publishable


class LogSink:
    """Alerts as JSON log lines, `{"event": "alert", "alert": <the document>}`."""

    name = "log"

    def submit(self, alert: Publishable) -> None:
        # Looked up per alert (alerts are rare) so a log-level reload applies here too. The
        # document is nested whole: its own `event` key would collide with the log's.
        structlog.get_logger("bpf-auditd").warning("alert", alert=dict(alert.document()))

    async def __aenter__(self) -> LogSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None
