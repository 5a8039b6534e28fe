"""The daemon's lifecycle: start probes and exporters, run the core, reload, stop in order.

Stop order (a signal sets an asyncio.Event): stop kernel intake → drain the queue → flush
exporters → detach probes. A second SIGINT forces an immediate exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

from auditd.audit.source import AuditError, AuditSource
from auditd.config import schema as config_mod
from auditd.config.schema import Config
from auditd.config.yamlfile import ConfigError
from auditd.daemon import logs
from auditd.daemon.sdnotify import Notifier
from auditd.daemon.wiring import Parts, build_probe_set
from auditd.kernel import privileges
from auditd.kernel.paths import KernelPaths
from auditd.model.alert import Alert
from auditd.model.event import Event
from auditd.model.filter import KernelFilter
from auditd.policy.language import Policy
from auditd.signals.denials.event import Denial
from auditd.signals.denials.monitor import DenialMonitor
from exporters.families import Family, counter, gauge
from exporters.prometheus import MetricsServer
from probes.runtime import DropKind, ProbeSet

STOP_DEADLINE_S = 1.5

_DROP_STAGES = {
    DropKind.RINGBUF: "ringbuf",
    DropKind.COUNTER_FULL: "counter_map",
    DropKind.PENDING_FULL: "pending_map",
    DropKind.SITE_FULL: "site_map",
    DropKind.LIVE_FULL: "live_map",
}


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the kernel (glibc keeps it otherwise): the
    daemon's resident size is what its peaks left behind."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


class DaemonError(Exception):
    """The daemon cannot start or run; the message is one line for the operator."""


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
    """Runs the parts it is given (auditd/daemon/wiring.py) from start to an orderly stop."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        paths: KernelPaths,
        parts: Parts,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.paths = paths
        # systemd's READY/WATCHDOG/STOPPING (does nothing without $NOTIFY_SOCKET).
        self.notifier = notifier or Notifier()
        self.log = structlog.get_logger("bpf-auditd")
        self._stop = asyncio.Event()
        self._failure: BaseException | None = None
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=config.queue_size)
        self._queue_dropped: Counter[str] = Counter()
        self._reloads: Counter[str] = Counter()
        self._last_drop_log = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.resolver = parts.resolver
        self.services = parts.services
        self.web = parts.web
        self.monitors = parts.monitors
        self.enricher = parts.enricher
        self.probes: ProbeSet | None = None
        self.lsm = parts.lsm
        self._audit: AuditSource | None = None
        self.alerting = parts.alerting
        self.evaluate = parts.evaluate
        self._kernel_filter: KernelFilter | None = None
        self._filter_pushed = float("-inf")
        self.sinks = parts.sinks
        self.telemetry = parts.telemetry
        self.policy_feed = parts.policy_feed

    # -- telemetry (called from the HTTP server's thread at scrape time) ---------------------

    def declared(self) -> list[Family]:
        own = [RECEIVED, DROPPED, PROBE_UP, LABEL_OVERFLOW, RELOADS, *self.alerting.declared()]
        return (
            own
            + [f for monitor in self.monitors for f in monitor.declared()]
            + [f for part in self.telemetry for f in part.declared()]
        )

    def families(self) -> list[Family]:
        probes = self.probes
        families = [
            RELOADS.with_samples({(r,): self._reloads[r] for r in ("success", "failure")}),
        ]
        families += self.alerting.families()
        for part in self.telemetry:
            families += part.families()
        if probes is None:
            return (
                families
                + [RECEIVED, DROPPED, PROBE_UP, self._label_overflow()]
                + [f for monitor in self.monitors for f in monitor.declared()]
            )
        dropped: dict[tuple[str, ...], float] = {}
        for (probe, kind), n in probes.kernel_drops().items():
            dropped[probe, _DROP_STAGES[kind]] = n
        for name, stats in probes.stats.items():
            dropped[name, "queue"] = self._queue_dropped[name]
            dropped[name, "decode"] = stats.undecodable
        if self._audit is not None:
            audit = self._audit.stats()
            dropped["audit", "queue"] = audit.events_dropped
            dropped["audit", "socket"] = audit.socket_drops
            dropped["audit", "kernel"] = audit.kernel_lost
            dropped["audit", "malformed"] = audit.malformed
        families += [
            RECEIVED.with_samples({(name,): s.received for name, s in probes.stats.items()}),
            DROPPED.with_samples(dropped),
            PROBE_UP.with_samples({(spec.name,): 1 for spec in probes.specs}),
        ]
        for monitor in self.monitors:
            families += monitor.families()
        if self.lsm is not None:
            families += self.lsm.families()
        # Read last: reading the monitors' families is what folds new label values into
        # "other", so this scrape's overflow count includes this scrape's folds.
        return [*families, self._label_overflow()]

    # -- audit records (Landlock, SELinux) ----------------------------------------------------

    async def _start_audit(self, stack: contextlib.AsyncExitStack) -> None:
        """Read audit records if configured; without them (no CAP_AUDIT_*, audit compiled out)
        Landlock and SELinux causes are off and that is said once — the daemon still runs."""
        if self.lsm is None:
            return
        source = AuditSource(enable_audit=self.config.probes.denials.enable_audit)
        try:
            self._audit = await stack.enter_async_context(source)
        except (AuditError, OSError) as exc:
            self.log.warning("lsm_causes_off", reason=str(exc))
            self._audit = None

    async def _audit_events(self) -> None:
        if self._audit is None or self.lsm is None:
            return
        async for event in self._audit:
            for denial in self.lsm.on_audit(event):
                await self._process(denial)

    async def _lsm_expiry(self) -> None:
        while self.lsm is not None and self._audit is not None:
            await asyncio.sleep(0.05)
            for denial in self.lsm.expire():
                await self._process(denial)

    def _label_overflow(self) -> Family:
        return LABEL_OVERFLOW.with_samples({("service",): self.services.overflowed})

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        # Checked first: without them BCC fails later with "Need super-user privileges".
        lacking = privileges.missing(privileges.required(self.config), self.paths)
        if lacking:
            raise DaemonError(privileges.describe(lacking))
        self._loop = asyncio.get_running_loop()
        with self._signals():
            probes = build_probe_set(self.config, self.monitors, self.paths, self.log, daemon=True)
            if any(isinstance(m, DenialMonitor) and m.exe_in_kernel for m in self.monitors):
                self.enricher.exe = None  # the records carry it: no /proc look-ups
            started = time.monotonic()
            await asyncio.to_thread(self.resolver.rescan)
            try:
                await asyncio.to_thread(probes.load)
                for monitor in self.monitors:
                    monitor.bind(probes)
                self.probes = probes
                self._apply_filter()
                # Leaving the stack runs in reverse: metrics server, then alert sinks (flush).
                async with contextlib.AsyncExitStack() as stack:
                    for sink in self.sinks:
                        await stack.enter_async_context(sink)
                    await self._start_audit(stack)
                    host, port = config_mod.parse_listen(self.config.metrics.listen)
                    server = await stack.enter_async_context(
                        MetricsServer(host, port, self.families, self.declared(), self.web)
                    )
                    probes.start(self._deliver_threadsafe, self._reader_failed)
                    built = probes.report
                    if built.cache_note:
                        self.log.warning("probe_cache", note=built.cache_note)
                    self.log.info(
                        "ready",
                        probes=[s.name for s in probes.specs],
                        metrics=server.url,
                        start_s=round(time.monotonic() - started, 3),
                        image=built.image,
                        compile_s=round(built.compile_s, 3),
                        load_s=round(built.load_s, 3),
                        pid=os.getpid(),
                    )
                    self.notifier.ready(f"attached {', '.join(s.name for s in probes.specs)}")
                    release_memory()  # start-up's garbage: BTF, the image, plans
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
            # systemd's watchdog runs from READY=1 on; pinging from the loop proves it turns.
            watchdog = tg.create_task(self.notifier.keep_alive())
            alert_ticks = tg.create_task(self._alert_ticks())
            lsm = [tg.create_task(self._audit_events()), tg.create_task(self._lsm_expiry())]
            feed = self.policy_feed
            if feed is not None:
                lsm.append(tg.create_task(feed.run(self._apply_policy, self._raise_builtin)))
            await self._stop.wait()
            if feed is not None:
                feed.stop()  # a download in progress ends at its next read
            for task in lsm:
                task.cancel()
            alert_ticks.cancel()
            watchdog.cancel()
            housekeeping.cancel()
            consumer.cancel()

    async def _shutdown(self, probes: ProbeSet) -> None:
        # Stop intake first, then drain what was read, so no event read is left unlogged.
        await asyncio.to_thread(probes.stop)
        await asyncio.sleep(0)  # let the final batch's call_soon_threadsafe land
        deadline = time.monotonic() + STOP_DEADLINE_S
        drained = 0
        while not self._queue.empty() and time.monotonic() < deadline:
            await self._handle(self._queue.get_nowait())
            drained += 1
        if self.lsm is not None:
            for denial in self.lsm.expire(everything=True):
                await self._process(denial)
        self.log.info("intake_stopped", drained=drained, left=self._queue.qsize())
        for alert in self.alerting.flush():  # folded repeats still pending: send their counts
            self.raise_alert(alert)

    def request_stop(self) -> None:
        self._stop.set()

    # -- intake ------------------------------------------------------------------------------

    def _deliver_threadsafe(self, batch: list[object]) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed during interpreter shutdown
            self._loop.call_soon_threadsafe(self._enqueue, batch)

    def _enqueue(self, batch: list[object]) -> None:
        dropped = 0
        for event in batch:
            assert isinstance(event, Event)  # what every monitor's decoder returns
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
        handled = 0
        while True:
            event = await self._queue.get()
            await self._handle(event)
            handled += 1
            # get() does not yield while events wait: under a flood the other tasks (systemd's
            # watchdog among them: measured 10 s without a ping) would starve without this.
            if handled % 256 == 0:
                await asyncio.sleep(0)

    async def _handle(self, event: Event) -> None:
        """The LSM join: a refusal may wait for the audit record that names its cause."""
        if self.lsm is not None and self._audit is not None and isinstance(event, Denial):
            held = self.lsm.hold(event)
            if held is None:
                return  # waits for an LSM record naming its cause; `_lsm_expiry` releases it
            event = held
        await self._process(event)

    async def _process(self, event: Event) -> None:
        """Enrich, then drop what the policy ignores, log, and evaluate."""
        event = await self.enricher.enrich(event)
        if self.alerting.ignores(event):  # counted; likely a new cgroup of an ignored service
            if time.monotonic() - self._filter_pushed >= 1.0:
                self._apply_filter()
            return
        self.log.info(event.kind, **event.log_fields())
        for alert in self.evaluate(event):
            self.raise_alert(alert)

    def raise_alert(self, alert: Alert) -> None:
        for sink in self.sinks:
            sink.submit(alert)

    def _raise_builtin(self, alert: Alert) -> None:
        self.raise_alert(self.alerting.builtin(alert))

    def _apply_policy(self, policy: Policy, origin: str) -> None:
        """A policy from the TUF repository, checked: put in force as a reload does."""
        for alert in self.alerting.apply(policy, origin):
            self.raise_alert(alert)
        self._apply_filter()

    async def _alert_ticks(self) -> None:
        """Summaries of folded repeats go out when their cooldown ends, events or not."""
        while True:
            await asyncio.sleep(1.0)
            for alert in self.alerting.tick():
                self.raise_alert(alert)

    def _apply_filter(self) -> None:
        """Push the policy's ignore list to the probes when it (or the cgroups it names)
        changed. Map updates only: cheap enough for the loop."""
        self._filter_pushed = time.monotonic()
        new = self.alerting.kernel_filter(self.resolver.known())
        if new == self._kernel_filter or (self._kernel_filter is None and new.empty):
            return  # probes start unfiltered
        for monitor in self.monitors:
            try:
                monitor.apply_filter(new)
            except Exception as exc:  # user space still drops and counts what slips through
                self.log.error("kernel_filter_failed", monitor=monitor.name, error=str(exc))
        self._kernel_filter = new
        self.log.info(
            "kernel_filter_applied",
            cgroups=len(new.cgroup_ids),
            syscalls=sorted(new.syscalls),
            errnos=sorted(new.errnos),
            sources=sorted(new.sources),
        )

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.config.housekeeping_interval)
            await asyncio.to_thread(self.resolver.rescan)
            self._apply_filter()
            for monitor in self.monitors:
                for event in await asyncio.to_thread(monitor.housekeeping) or ():
                    await self._handle(event)
            release_memory()  # what the pass read from the kernel is garbage now

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
                self.notifier.stopping()
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
        """SIGHUP: re-read the config, then the policy it names; each keeps the running one
        when its file is broken."""
        self._reload_config()
        for alert in self.alerting.reload(self.config.policy, self.config_path):
            self.raise_alert(alert)
        self._apply_filter()
        if self.policy_feed is not None:
            self.policy_feed.refresh()

    def _reload_config(self) -> None:
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
            for name in ("host", "log", "metrics", "probes", "queue_size", "mqtt", "state_dir")
            if getattr(new, name) != getattr(self.config, name)
        ]
        if new.policy.tuf != self.config.policy.tuf:
            changed.append("policy.tuf")
        restart = [name for name in changed if name != "log"]
        if new.log != self.config.log:
            logs.configure(new.log)
            self.log = structlog.get_logger("bpf-auditd")
        self.config = new
        self.log.info("config_reloaded", changed=changed, restart_required=restart)
