"""Which parts a command runs, built from the config: monitors and their probes, the enrichment
and LSM-join stages, the policy's alert stage, the alert sinks and the metrics web config.

`run` and `learn` differ only here (learn evaluates events with its learner and sends alerts
nowhere but the log); the daemon is handed its parts and never rewired afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from auditd.config import webconfig
from auditd.config.schema import Config
from auditd.daemon.enrich import Enricher
from auditd.daemon.sinks import LogSink
from auditd.kernel.cgroups import CgroupResolver, cgroup2_path
from auditd.kernel.context import kernel_context
from auditd.kernel.paths import KernelPaths
from auditd.kernel.processes import ExeCache, cgroup_id_of_pid
from auditd.model.alert import Alert
from auditd.model.event import Event
from auditd.model.labels import LabelCap
from auditd.policy.alerting import Alerting
from auditd.signals.allocations.monitor import AllocationMonitor
from auditd.signals.denials.lsm import LsmCorrelator
from auditd.signals.denials.monitor import DenialMonitor
from auditd.signals.monitor import Monitor
from auditd.signals.namespaces.identity import NamespaceIdentity
from auditd.signals.namespaces.monitor import NamespaceMonitor
from exporters.families import Family
from exporters.prometheus.web import WebConfig
from exporters.sink import AlertSink
from probes.runtime import ProbeSet


class Telemetry(Protocol):
    """A part with metrics of its own (the MQTT sink: spool depth, connection, drops)."""

    def declared(self) -> list[Family]: ...
    def families(self) -> list[Family]: ...


@dataclass
class Parts:
    """Everything the daemon runs, built before it starts (bad files fail here, before any
    probe is loaded)."""

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
    config: Config, monitors: list[Monitor], paths: KernelPaths, log: Any
) -> ProbeSet:
    kernel = kernel_context(paths, log)
    specs = [spec for monitor in monitors for spec in monitor.probe_specs(kernel)]
    base = [f"-DRINGBUF_PAGES={config.probes.ringbuf_pages}", *kernel.plan.cflags]
    return ProbeSet(specs, base, tracefs=kernel.tracefs)


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
    alerting = Alerting(config.policy, config_path, policy_file)
    sinks: list[AlertSink] = [LogSink()]
    telemetry: list[Telemetry] = []
    if alert_sinks and config.mqtt.url is not None:
        # Imported only when configured: aiomqtt stays out of the default run.
        from exporters.mqtt import MqttSink

        mqtt = MqttSink(config.mqtt, Path(config.state_dir))
        sinks.append(mqtt)
        telemetry.append(mqtt)
    return Parts(
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
    )
