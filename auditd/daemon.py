"""The daemon's lifecycle: start probes and exporters, run the core, reload, stop in order.

Stop order (a signal sets an asyncio.Event): stop kernel intake → drain the queue → flush
exporters → detach probes. A second SIGINT forces an immediate exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import structlog

from auditd import config as config_mod
from auditd import logs
from auditd.alerts import Alert, AlertSink, LogSink
from auditd.cgroups import UNKNOWN_SERVICE, CgroupResolver, find_cgroup2_mount, service_of
from auditd.config import Config, ConfigError
from auditd.denials import DenialMonitor
from auditd.events import Event
from auditd.monitor import KernelContext, Monitor
from auditd.paths import KernelPaths
from auditd.telemetry import Family, LabelCap, counter, gauge
from exporters.prometheus import MetricsServer
from probes.runtime import DropKind, ProbeSet

STOP_DEADLINE_S = 1.5

_DROP_STAGES = {
    DropKind.RINGBUF: "ringbuf",
    DropKind.COUNTER_FULL: "counter_map",
    DropKind.PENDING_FULL: "pending_map",
}


class DaemonError(Exception):
    """The daemon cannot start or run; the message is one line for the operator."""


def kernel_context(paths: KernelPaths, log: Any) -> KernelContext:
    """Struct offsets for this kernel (BTF, own headers, or none) and the clock offset."""
    from auditd import offsets
    from auditd.features import kernel_headers

    plan = offsets.resolve(paths.btf, headers_match=kernel_headers(paths).matches)
    if plan.reason:
        log.warning("struct_reads_degraded", source=plan.source, reason=plan.reason)
    return KernelContext(paths, plan, time.time_ns() - time.monotonic_ns())


def build_monitors(config: Config, resolver: CgroupResolver, services: LabelCap) -> list[Monitor]:
    monitors: list[Monitor] = []
    if config.probes.denials.enabled:
        monitors.append(DenialMonitor(config.probes.denials, resolver, services))
    return monitors


def build_probe_set(
    config: Config, monitors: list[Monitor], paths: KernelPaths, log: Any
) -> ProbeSet:
    kernel = kernel_context(paths, log)
    specs = [spec for monitor in monitors for spec in monitor.probe_specs(kernel)]
    base = [f"-DRINGBUF_PAGES={config.probes.ringbuf_pages}", *kernel.plan.cflags]
    return ProbeSet(specs, base)


RECEIVED = counter("events_received", "Records read from a probe's ring buffer.", "probe")
DROPPED = counter(
    "events_dropped",
    "Records lost, by probe and stage (ringbuf, counter_map, pending_map, queue, decode).",
    "probe",
    "stage",
)
PROBE_UP = gauge("probe_up", "1 when the probe is attached.", "probe")
LABEL_OVERFLOW = counter(
    "label_overflow",
    'Distinct label values folded into "other" because the label\'s cap was reached.',
    "label",
)
RELOADS = counter("config_reloads", "Configuration reloads (SIGHUP), by result.", "result")


class Daemon:
    def __init__(self, config: Config, config_path: Path | None, paths: KernelPaths) -> None:
        self.config = config
        self.config_path = config_path
        self.paths = paths
        self.log = structlog.get_logger("bpf-auditd")
        self._stop = asyncio.Event()
        self._failure: BaseException | None = None
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=config.queue_size)
        self._queue_dropped: Counter[str] = Counter()
        self._reloads: Counter[str] = Counter()
        self._last_drop_log = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        cgroup_root = paths.cgroup2 or find_cgroup2_mount(paths.proc)
        self.resolver = CgroupResolver(cgroup_root)
        self.services = LabelCap(config.metrics.max_services)
        self.monitors = build_monitors(config, self.resolver, self.services)
        self.probes: ProbeSet | None = None
        # Alerts: `evaluate` turns each enriched event into alerts (the policy engine plugs in
        # here); every alert goes to every sink, in order.
        self.evaluate: Callable[[Event], Iterable[Alert]] = lambda event: ()
        self.sinks: list[AlertSink] = [LogSink()]

    # -- telemetry (called from the HTTP server's thread at scrape time) ---------------------

    def declared(self) -> list[Family]:
        own = [RECEIVED, DROPPED, PROBE_UP, LABEL_OVERFLOW, RELOADS]
        return own + [f for monitor in self.monitors for f in monitor.declared()]

    def families(self) -> list[Family]:
        probes = self.probes
        families = [
            LABEL_OVERFLOW.with_samples({("service",): self.services.overflowed}),
            RELOADS.with_samples({(r,): self._reloads[r] for r in ("success", "failure")}),
        ]
        if probes is None:
            return (
                families
                + [RECEIVED, DROPPED, PROBE_UP]
                + [f for monitor in self.monitors for f in monitor.declared()]
            )
        dropped: dict[tuple[str, ...], float] = {}
        for (probe, kind), n in probes.kernel_drops().items():
            dropped[probe, _DROP_STAGES[kind]] = n
        for name, stats in probes.stats.items():
            dropped[name, "queue"] = self._queue_dropped[name]
            dropped[name, "decode"] = stats.undecodable
        families += [
            RECEIVED.with_samples({(name,): s.received for name, s in probes.stats.items()}),
            DROPPED.with_samples(dropped),
            PROBE_UP.with_samples({(spec.name,): 1 for spec in probes.specs}),
        ]
        for monitor in self.monitors:
            families += monitor.families()
        return families

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        with self._signals():
            probes = build_probe_set(self.config, self.monitors, self.paths, self.log)
            started = time.monotonic()
            await asyncio.to_thread(self.resolver.rescan)
            try:
                await asyncio.to_thread(probes.load)
                for monitor in self.monitors:
                    monitor.bind(probes)
                self.probes = probes
                # Leaving the stack runs in reverse: metrics server, then alert sinks (flush).
                async with contextlib.AsyncExitStack() as stack:
                    for sink in self.sinks:
                        await stack.enter_async_context(sink)
                    host, port = config_mod.parse_listen(self.config.metrics.listen)
                    server = await stack.enter_async_context(
                        MetricsServer(host, port, self.families, self.declared())
                    )
                    probes.start(self._deliver_threadsafe, self._reader_failed)
                    self.log.info(
                        "ready",
                        probes=[s.name for s in probes.specs],
                        metrics=f"http://{server.address}/metrics",
                        start_s=round(time.monotonic() - started, 3),
                        pid=os.getpid(),
                    )
                    await self._serve()
                    await self._shutdown(probes)
            finally:
                self.probes = None
                await asyncio.to_thread(probes.close)
                self.log.info("stopped")
        if self._failure is not None:
            raise DaemonError(f"probe reader failed: {self._failure}") from self._failure

    async def _serve(self) -> None:
        async with asyncio.TaskGroup() as tg:
            consumer = tg.create_task(self._consume())
            housekeeping = tg.create_task(self._housekeeping())
            await self._stop.wait()
            housekeeping.cancel()
            consumer.cancel()

    async def _shutdown(self, probes: ProbeSet) -> None:
        # Stop intake first, then drain what was read, so no event read is left unlogged.
        await asyncio.to_thread(probes.stop)
        await asyncio.sleep(0)  # let the final batch's call_soon_threadsafe land
        deadline = time.monotonic() + STOP_DEADLINE_S
        drained = 0
        while not self._queue.empty() and time.monotonic() < deadline:
            self._handle(self._queue.get_nowait())
            drained += 1
        self.log.info("intake_stopped", drained=drained, left=self._queue.qsize())

    def request_stop(self) -> None:
        self._stop.set()

    # -- intake ------------------------------------------------------------------------------

    def _deliver_threadsafe(self, batch: list[Event]) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed during interpreter shutdown
            self._loop.call_soon_threadsafe(self._enqueue, batch)

    def _enqueue(self, batch: list[Event]) -> None:
        dropped = 0
        for event in batch:
            try:
                self._queue.put_nowait(event)
            except asyncio.QueueFull:
                self._queue_dropped[event.probe] += 1
                dropped += 1
        if dropped and time.monotonic() - self._last_drop_log > 10:
            self._last_drop_log = time.monotonic()
            self.log.warning("queue_full", dropped=dropped, total=sum(self._queue_dropped.values()))

    def _reader_failed(self, exc: BaseException) -> None:
        assert self._loop is not None
        self._failure = exc
        self._loop.call_soon_threadsafe(self._stop.set)

    async def _consume(self) -> None:
        while True:
            event = await self._queue.get()
            if self.resolver.cached(event.cgroup_id) is None:
                await asyncio.to_thread(self.resolver.path, event.cgroup_id)
            self._handle(event)

    def _handle(self, event: Event) -> None:
        event = self._enrich(event)
        self.log.info(event.kind, **event.log_fields())
        for alert in self.evaluate(event):
            self.raise_alert(alert)

    def raise_alert(self, alert: Alert) -> None:
        for sink in self.sinks:
            sink.submit(alert)

    def _enrich(self, event: Event) -> Event:
        """The event with its cgroup path and service (from the cache: never blocks)."""
        path = self.resolver.cached(event.cgroup_id)
        service = UNKNOWN_SERVICE if path is None else service_of(path)
        return dataclasses.replace(event, cgroup=path, service=service)  # type: ignore[type-var]

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.config.housekeeping_interval)
            await asyncio.to_thread(self.resolver.rescan)
            for monitor in self.monitors:
                await asyncio.to_thread(monitor.housekeeping)

    # -- signals and reload ------------------------------------------------------------------

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        interrupts = 0

        def on_interrupt(signame: str) -> Callable[[], None]:
            def handler() -> None:
                nonlocal interrupts
                interrupts += 1
                if interrupts > 1 and signame == "SIGINT":
                    self.log.warning("forced_exit")
                    os._exit(130)
                self.log.info("stopping", signal=signame)
                self._stop.set()

            return handler

        loop.add_signal_handler(signal.SIGTERM, on_interrupt("SIGTERM"))
        loop.add_signal_handler(signal.SIGINT, on_interrupt("SIGINT"))
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def reload(self) -> None:
        """SIGHUP: re-read the config; a bad file keeps the running config and is counted."""
        if self.config_path is None:
            self.log.info("config_reload_skipped", reason="running on built-in defaults")
            return
        try:
            new = config_mod.load(self.config_path)
        except ConfigError as exc:
            self._reloads["failure"] += 1
            self.log.error("config_reload_failed", error=str(exc))
            return
        self._reloads["success"] += 1
        changed = [
            name
            for name in ("log", "metrics", "probes", "queue_size")
            if getattr(new, name) != getattr(self.config, name)
        ]
        restart = [name for name in changed if name != "log"]
        if new.log != self.config.log:
            logs.configure(new.log)
            self.log = structlog.get_logger("bpf-auditd")
        self.config = new
        self.log.info("config_reloaded", changed=changed, restart_required=restart)
