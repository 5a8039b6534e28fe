"""Which parts a command runs, built from the config: monitors and their probes, the enrichment
and LSM-join stages, the policy's alert stage, the alert sinks and the metrics web config.

`run` and `learn` differ only here (learn evaluates events with its learner and sends alerts
nowhere but the log); the daemon is handed its parts and never rewired afterwards.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from auditd.config import webconfig
from auditd.config.schema import Config, TufConfig
from auditd.config.yamlfile import resolve_path
from auditd.daemon.enrich import Enricher
from auditd.daemon.sinks import LogSink
from auditd.kernel.btf import Btf
from auditd.kernel.cgroups import CgroupResolver, cgroup2_path
from auditd.kernel.context import kernel_context
from auditd.kernel.paths import KernelPaths
from auditd.kernel.processes import ExeCache, cgroup_id_of_pid
from auditd.model.alert import Alert
from auditd.model.event import Event
from auditd.model.labels import LabelCap
from auditd.policy.alerting import Alerting
from auditd.policy.language import Policy
from auditd.signals.allocations.monitor import AllocationMonitor
from auditd.signals.denials.lsm import LsmCorrelator
from auditd.signals.denials.monitor import DenialMonitor
from auditd.signals.monitor import Monitor
from auditd.signals.namespaces.identity import NamespaceIdentity
from auditd.signals.namespaces.monitor import NamespaceMonitor
from exporters.families import Family
from exporters.prometheus.web import WebConfig
from exporters.sink import AlertSink
from probes.cache import ImageCache, KeyInputs
from probes.compiler import bcc_version
from probes.runtime import Compiler, ProbeSet

if TYPE_CHECKING:
    from auditd.policy.fleet.updates import PolicyUpdates


# Under the state directory: compiled probe images, reused by a restart on an unchanged
# kernel and configuration (probes/cache.py).
PROBE_CACHE = "probe-cache"


class Telemetry(Protocol):
    """A part with metrics of its own (the MQTT sink: spool depth, connection, drops)."""

    def declared(self) -> list[Family]: ...
    def families(self) -> list[Family]: ...


class PolicyFeed(Telemetry, Protocol):
    """Policies delivered while running (`policy.fleet.updates.PolicyUpdates`)."""

    def run(
        self, apply: Callable[[Policy, str], None], raise_alert: Callable[[Alert], None]
    ) -> Coroutine[Any, Any, None]: ...
    def refresh(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Parts:
    """Everything the daemon runs, built before it starts (bad files fail here, before any
    probe is loaded)."""

    host: str
    resolver: CgroupResolver
    services: LabelCap
    monitors: list[Monitor]
    enricher: Enricher
    lsm: LsmCorrelator | None
    alerting: Alerting
    # Each enriched event becomes alerts here: the policy engine, or a learner.
    evaluate: Callable[[Event], Iterable[Alert]]
    sinks: list[AlertSink]
    web: WebConfig | None
    telemetry: list[Telemetry] = field(default_factory=list)
    policy_feed: PolicyFeed | None = None


def host_name(config: Config) -> str:
    """The host identity every part is given: the config's `host`, else the machine's name."""
    return config.host or socket.gethostname()


def build_monitors(
    config: Config,
    resolver: CgroupResolver,
    services: LabelCap,
    identity: NamespaceIdentity | None = None,
) -> list[Monitor]:
    monitors: list[Monitor] = []
    if config.probes.denials.enabled:
        monitors.append(DenialMonitor(config.probes.denials, resolver, services))
    if config.probes.namespaces.enabled:
        monitors.append(NamespaceMonitor(config.probes.namespaces, resolver, services, identity))
    if config.probes.allocations.enabled:
        monitors.append(AllocationMonitor(config.probes.allocations, resolver, services))
    return monitors


def build_probe_set(
    config: Config,
    monitors: list[Monitor],
    paths: KernelPaths,
    log: Any,
    *,
    daemon: bool = False,
) -> ProbeSet:
    """The monitors' probes. For the daemon (`daemon`), compiled in a child process (the
    daemon never carries the compiler) or taken from the image cache in the state directory."""
    kernel = kernel_context(paths, log)
    specs = [spec for monitor in monitors for spec in monitor.probe_specs(kernel)]
    Btf.forget()  # planned: the kernel's BTF (several MB) is not needed any more
    base = [f"-DRINGBUF_PAGES={config.probes.ringbuf_pages}", *kernel.plan.cflags]
    compiler = None
    if daemon:
        inputs = KeyInputs(bcc_version(), paths.btf, kernel.tracefs, paths.kernel_build)
        cache = ImageCache(Path(config.state_dir) / PROBE_CACHE)
        compiler = Compiler(in_child=True, cache=cache, key_inputs=inputs)
    return ProbeSet(specs, base, tracefs=kernel.tracefs, compiler=compiler)


def build(
    config: Config,
    config_path: Path | None,
    paths: KernelPaths,
    *,
    policy_file: Path | None = None,
    evaluate: Callable[[Event], Iterable[Alert]] | None = None,
    alert_sinks: bool = True,
) -> Parts:
    """The parts of `run` (or, with `evaluate` and no `alert_sinks`, of `learn`). Raises
    ConfigError (policy, web config) or SinkError (MQTT credentials, certificates)."""
    resolver = CgroupResolver(cgroup2_path(paths))
    services = LabelCap(config.metrics.max_services)
    # Read now, so a bad web-config file stops start-up before any probe is loaded.
    web = webconfig.from_config(config, config_path)
    identity = NamespaceIdentity(paths.proc)
    monitors = build_monitors(config, resolver, services, identity)
    lsm = None
    denials = config.probes.denials
    if denials.enabled and denials.audit:
        # Landlock/SELinux causes come from audit records, joined to refusals.
        lsm = LsmCorrelator(
            wait=denials.lsm_wait,
            window=denials.window,
            cgroup_of_pid=lambda pid: cgroup_id_of_pid(paths.proc, pid, resolver),
            service_of_cgroup=resolver.service,
            services=services,
        )
    host = host_name(config)
    alerting = Alerting(config.policy, config_path, policy_file, host=host)
    sinks: list[AlertSink] = [LogSink()]
    telemetry: list[Telemetry] = []
    if alert_sinks and config.mqtt.url is not None:
        # Imported only when configured: aiomqtt stays out of the default run.
        from exporters.mqtt import MqttSink

        mqtt = MqttSink(config.mqtt, Path(config.state_dir), hostname=host)
        sinks.append(mqtt)
        telemetry.append(mqtt)
    feed = None
    if alert_sinks and config.policy.tuf is not None:  # learning takes no policy updates
        feed = build_policy_feed(config.policy.tuf, config_path, Path(config.state_dir), host)
        feed.start_from_cache(alerting.apply)  # before any event: no summary is pending
        telemetry.append(feed)
    return Parts(
        host=host,
        resolver=resolver,
        services=services,
        monitors=monitors,
        enricher=Enricher(resolver, ExeCache(paths.proc), identity),
        lsm=lsm,
        alerting=alerting,
        evaluate=evaluate or alerting.evaluate,
        sinks=sinks,
        web=web,
        telemetry=telemetry,
        policy_feed=feed,
    )


def build_policy_feed(
    tuf: TufConfig, config_path: Path | None, state_dir: Path, host: str
) -> PolicyUpdates:
    """The TUF client of `policy.tuf`. Imported only when configured: python-tuf and its
    stdlib (ssl, http, email) cost ~5 MB of the daemon's memory (README, "Policies for a
    fleet"). Raises ConfigError when the pinned root is unusable."""
    from auditd.policy.fleet.client import TufPolicySource, read_pinned_root
    from auditd.policy.fleet.updates import PolicyUpdates

    pinned = read_pinned_root(resolve_path(tuf.root, config_path))
    source = TufPolicySource(tuf.url, pinned, tuf.target, state_dir, timeout=tuf.timeout)
    return PolicyUpdates(source, interval=tuf.interval, host=host)
