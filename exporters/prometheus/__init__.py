"""Prometheus exporter: /metrics over HTTP(S), built from the core's metric families at scrape time.

Kernel counters are read when Prometheus scrapes, not copied into Python metrics: one source of
truth, and no work between scrapes. An explicit registry keeps instances (and tests) isolated.
TLS and basic auth come as a `web.WebConfig`; the package directory also holds
the shipped alerting rules, their unit tests, a Grafana dashboard and a scrape config.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from types import TracebackType
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.registry import Collector

from exporters.families import PREFIX, Family, counter
from exporters.prometheus._http import BasicAuth, MetricsHTTPServer, make_app
from exporters.prometheus.web import WebConfig

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
    """`async with MetricsServer(host, port, families, declared, web) as server:` serves
    /metrics; with a web config, over TLS and/or behind basic auth."""

    def __init__(
        self,
        host: str,
        port: int,
        families: Callable[[], Sequence[Family]],
        declared: Sequence[Family],
        web: WebConfig | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.web = web
        self.registry = build_registry(families, declared)
        self._httpd: MetricsHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        assert self._httpd is not None, "the server is not running"
        host, port = self._httpd.server_address[:2]
        host = str(host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def tls(self) -> bool:
        return self.web is not None and self.web.context is not None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}/metrics"

    async def __aenter__(self) -> MetricsServer:
        try:
            self._httpd = await asyncio.to_thread(self._start)
        except OSError as exc:
            raise ExporterError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror}"
            ) from exc
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        users = bool(self.web and self.web.users)
        if users and not self.tls:
            log.warning("basic_auth_without_tls", reason="passwords cross the network in clear")
        return self

    def _start(self) -> MetricsHTTPServer:
        web = self.web
        auth = BasicAuth(web.users) if web is not None and web.users else None
        app = make_app(make_wsgi_app(self.registry), auth, web.headers if web else {})
        return MetricsHTTPServer(self.host, self.port, app, web.context if web else None)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._httpd is not None:
            await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        httpd = self._httpd
        assert httpd is not None
        # serve_forever() notices shutdown() only when its select() returns, up to 0.5 s later;
        # a connection to ourselves makes it return now (it then exits without accepting it).
        stopper = threading.Thread(target=httpd.shutdown, name="metrics-http-stop", daemon=True)
        stopper.start()
        host, port = httpd.server_address[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(str(host), str(host))
        while stopper.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection((host, int(port)), timeout=0.1).close()
            stopper.join(0.05)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)
