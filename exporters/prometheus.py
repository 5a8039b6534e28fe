"""Prometheus exporter: /metrics over HTTP, built from the daemon's telemetry at scrape time.

Kernel counters are read when Prometheus scrapes, not copied into Python metrics: one source of
truth, and no work between scrapes. An explicit registry keeps instances (and tests) isolated.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from auditd.telemetry import Telemetry

PREFIX = "bpf_auditd"
VERSION = "0.1.0"

log = structlog.get_logger("bpf-auditd.prometheus")


class ExporterError(Exception):
    """The metrics endpoint cannot be served."""


def _families() -> dict[str, Any]:
    """Every family the collector yields, empty: what `describe()` returns."""
    return {
        "denials": CounterMetricFamily(
            f"{PREFIX}_denials",
            "Refusals by the kernel (EACCES/EPERM and LSM denials), counted exactly in the kernel.",
            labels=["service", "source", "syscall", "errno"],
        ),
        "unattributed": CounterMetricFamily(
            f"{PREFIX}_denials_unattributed",
            "Refusals counted after the kernel counter map was full: in no labelled series.",
        ),
        "received": CounterMetricFamily(
            f"{PREFIX}_events_received",
            "Records read from a probe's ring buffer.",
            labels=["probe"],
        ),
        "dropped": CounterMetricFamily(
            f"{PREFIX}_events_dropped",
            "Records lost, by probe and stage (ringbuf, counter_map, pending_map, queue, decode).",
            labels=["probe", "stage"],
        ),
        "up": GaugeMetricFamily(
            f"{PREFIX}_probe_up", "1 when the probe is attached.", labels=["probe"]
        ),
        "overflow": CounterMetricFamily(
            f"{PREFIX}_label_overflow",
            'Distinct label values folded into "other" because the label\'s cap was reached.',
            labels=["label"],
        ),
        "reloads": CounterMetricFamily(
            f"{PREFIX}_config_reloads",
            "Configuration reloads (SIGHUP), by result.",
            labels=["result"],
        ),
        "scrape_errors": CounterMetricFamily(
            f"{PREFIX}_scrape_errors", "Scrapes whose telemetry could not be read."
        ),
    }


class DaemonCollector(Collector):
    def __init__(self, telemetry: Callable[[], Telemetry]) -> None:
        self._telemetry = telemetry
        self._errors = 0
        self._lock = threading.Lock()

    def describe(self) -> Iterator[Any]:
        yield from _families().values()

    def collect(self) -> Iterator[Any]:
        f = _families()
        try:
            t = self._telemetry()
        except Exception as exc:  # a failed map read must not take the other metrics down
            with self._lock:
                self._errors += 1
            log.error("scrape_failed", error=str(exc))
            t = Telemetry()
        for s, n in sorted(t.denials.items()):
            f["denials"].add_metric([s.service, s.source, s.syscall, s.errno], n)
        f["unattributed"].add_metric([], t.denials_unattributed)
        for probe, n in sorted(t.events_received.items()):
            f["received"].add_metric([probe], n)
        for (probe, stage), n in sorted(t.events_dropped.items()):
            f["dropped"].add_metric([probe, stage], n)
        for probe, up in sorted(t.probes_up.items()):
            f["up"].add_metric([probe], 1 if up else 0)
        for label, n in sorted(t.label_overflow.items()):
            f["overflow"].add_metric([label], n)
        for result in ("success", "failure"):
            f["reloads"].add_metric([result], t.config_reloads.get(result, 0))
        f["scrape_errors"].add_metric([], self._errors)
        yield from f.values()


def build_registry(telemetry: Callable[[], Telemetry]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(DaemonCollector(telemetry))
    info = InfoMetricFamily(f"{PREFIX}_build", "Build and kernel of the running daemon.")
    info.add_metric([], {"version": VERSION, "kernel": os.uname().release})
    registry.register(_Static([info]))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class _Static(Collector):
    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        yield from self._families


class MetricsServer:
    """`async with MetricsServer(host, port, telemetry) as server:` serves /metrics."""

    def __init__(self, host: str, port: int, telemetry: Callable[[], Telemetry]) -> None:
        self.host = host
        self.port = port
        self.registry = build_registry(telemetry)
        self._httpd: Any = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def __aenter__(self) -> MetricsServer:
        try:
            self._httpd, self._thread = await asyncio.to_thread(
                start_http_server, self.port, self.host, self.registry
            )
        except OSError as exc:
            raise ExporterError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror}"
            ) from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._httpd is not None:
            await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)
