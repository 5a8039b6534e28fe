"""Prometheus exporter: /metrics over HTTP, built from the core's metric families at scrape time.

Kernel counters are read when Prometheus scrapes, not copied into Python metrics: one source of
truth, and no work between scrapes. An explicit registry keeps instances (and tests) isolated.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from types import TracebackType
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from auditd.telemetry import PREFIX, Family, counter

log = structlog.get_logger("bpf-auditd.prometheus")

SCRAPE_ERRORS = counter("scrape_errors", "Scrapes whose kernel state could not be read.")


class ExporterError(Exception):
    """The metrics endpoint cannot be served."""


def _to_prometheus(family: Family) -> Any:
    cls = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    out = cls(family.name, family.help, labels=list(family.labels))
    for labels, value in family.samples.items():
        out.add_metric(list(labels), value)
    return out


class CoreCollector(Collector):
    """Yields the core's families; `describe()` uses the declared ones, so registering the
    collector never reads a kernel map."""

    def __init__(
        self, families: Callable[[], Sequence[Family]], declared: Sequence[Family]
    ) -> None:
        self._families = families
        self._declared = list(declared)
        self._errors = 0
        self._lock = threading.Lock()

    def describe(self) -> Iterator[Any]:
        for family in [*self._declared, SCRAPE_ERRORS]:
            yield _to_prometheus(family.with_samples({}))

    def collect(self) -> Iterator[Any]:
        try:
            families = list(self._families())
        except Exception as exc:  # a failed map read must not take the other metrics down
            with self._lock:
                self._errors += 1
            log.error("scrape_failed", error=str(exc))
            families = []
        for family in families:
            yield _to_prometheus(family)
        yield _to_prometheus(SCRAPE_ERRORS.with_samples({(): self._errors}))


class _Static(Collector):
    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        yield from self._families


def build_registry(
    families: Callable[[], Sequence[Family]], declared: Sequence[Family]
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(CoreCollector(families, declared))
    info = InfoMetricFamily(f"{PREFIX}build", "Version of the running daemon and its kernel.")
    info.add_metric([], {"version": metadata.version("bpf-auditd"), "kernel": os.uname().release})
    registry.register(_Static([info]))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class MetricsServer:
    """`async with MetricsServer(host, port, families, declared) as server:` serves /metrics."""

    def __init__(
        self,
        host: str,
        port: int,
        families: Callable[[], Sequence[Family]],
        declared: Sequence[Family],
    ) -> None:
        self.host = host
        self.port = port
        self.registry = build_registry(families, declared)
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
