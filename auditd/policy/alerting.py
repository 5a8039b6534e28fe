"""The daemon's alert stage: the policy in force and its engine, SIGHUP reloads that keep the
previous policy when the new file is broken, policies applied from a TUF repository (the same
switch), and the ignore list with its kernel filter."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from auditd.config.schema import PolicyConfig
from auditd.config.yamlfile import ConfigError, resolve_path
from auditd.model.alert import Alert
from auditd.model.event import Event
from auditd.model.filter import KernelFilter
from auditd.policy import filters
from auditd.policy import language as policy_mod
from auditd.policy.engine import AlertCounters, PolicyEngine
from auditd.policy.language import DEFAULT_POLICY, Policy
from exporters.families import Family, counter

RELOAD_FAILURES = counter(
    "policy_reload_failures",
    "Policy reloads (SIGHUP) that failed; the previous policy stays in force.",
)
IGNORED = counter(
    "events_ignored",
    "Records that reached user space although the policy ignores them (kernel filter not yet "
    "updated for a new cgroup, or a probe without kernel filtering): neither logged nor "
    "evaluated.",
    "probe",
)


def policy_path(config: PolicyConfig, config_file: Path | None, override: Path | None) -> Path:
    """`run --policy` wins, then `policy.file` (relative to the config file), then the default."""
    if override is not None:
        return override
    if config.file is None:
        return DEFAULT_POLICY
    return resolve_path(config.file, config_file)


class Alerting:
    """Loads the policy at construction (ConfigError if unusable) and keeps it current."""

    def __init__(
        self,
        config: PolicyConfig,
        config_file: Path | None,
        override: Path | None = None,
        *,
        host: str,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._override = override
        self._max_keys = config.max_keys
        self._clock = clock
        self._host = host
        self.path = policy_path(config, config_file, override)
        self.policy = _load(self.path)
        structlog.get_logger("bpf-auditd").info(
            "policy_loaded", file=str(self.path), rules=len(self.policy.active_rules)
        )
        self.counters = AlertCounters()
        self.engine = self._engine(self.policy)
        self._lock = threading.Lock()
        self._reload_failures = 0
        self._ignored: Counter[str] = Counter()
        # Set while a policy from a TUF repository is in force: SIGHUP then leaves it alone.
        self.remote: str | None = None

    def _engine(self, policy: Policy) -> PolicyEngine:
        return PolicyEngine(
            policy,
            max_keys=self._max_keys,
            clock=self._clock,
            host=self._host,
            counters=self.counters,
        )

    # -- on the event loop -----------------------------------------------------------------

    def evaluate(self, event: Event) -> list[Alert]:
        return self.engine.evaluate(event)

    def ignores(self, event: Event) -> bool:
        """Whether the policy ignores this event (then it is counted, and not logged)."""
        ignore = self.policy.ignore
        if ignore.empty or not filters.ignores(ignore, event.log_fields()):
            return False
        with self._lock:
            self._ignored[event.probe] += 1
        return True

    def tick(self) -> list[Alert]:
        return self.engine.tick()

    def flush(self) -> list[Alert]:
        return self.engine.flush()

    def kernel_filter(self, cgroups: Mapping[int, str]) -> KernelFilter:
        return filters.kernel_filter(self.policy.ignore, cgroups)

    def reload(self, config: PolicyConfig, config_file: Path | None) -> list[Alert]:
        """Re-read the policy. A broken file keeps the policy in force, logs one error line and
        is counted. Returns the replaced engine's pending summaries, to send before anything
        else, so no folded count is lost in the switch."""
        log = structlog.get_logger("bpf-auditd")
        if self.remote is not None:
            log.info(
                "policy_reload_skipped", reason="policy from a TUF repository", origin=self.remote
            )
            return self._switch(self.policy, self.path, config.max_keys)
        path = policy_path(config, config_file, self._override)
        try:
            new = _load(path)
        except ConfigError as exc:
            with self._lock:
                self._reload_failures += 1
            log.error("policy_reload_failed", error=str(exc), kept=str(self.path))
            return []
        changed = new != self.policy or path != self.path or config.max_keys != self._max_keys
        flushed = self._switch(new, path, config.max_keys)
        log.info("policy_reloaded", file=str(path), rules=len(new.active_rules), changed=changed)
        return flushed

    def apply(self, policy: Policy, origin: str) -> list[Alert]:
        """Put a policy checked elsewhere in force (from a TUF repository, `origin` saying
        where); like `reload`, returns the replaced engine's pending summaries."""
        self.remote = origin
        flushed = self._switch(policy, self.path, self._max_keys)
        structlog.get_logger("bpf-auditd").info(
            "policy_applied", origin=origin, rules=len(policy.active_rules)
        )
        return flushed

    def builtin(self, alert: Alert) -> Alert:
        """An alert of the daemon's own (not of a rule), counted with the others."""
        self.counters.count(self.counters.raised, (alert.rule, alert.severity.value))
        return alert

    def _switch(self, policy: Policy, path: Path, max_keys: int) -> list[Alert]:
        """The one place the policy in force changes. An unchanged policy keeps its engine
        (cooldowns, windows); a new one gets a new engine, the old one's pending summaries
        returned to be sent first, so no folded count is lost in the switch."""
        if policy == self.policy and path == self.path and max_keys == self._max_keys:
            return []
        flushed = self.engine.flush()
        self.policy, self.path, self._max_keys = policy, path, max_keys
        self.engine = self._engine(policy)
        return flushed

    # -- metrics (scrape thread) -----------------------------------------------------------

    def declared(self) -> list[Family]:
        return [*self.counters.declared(), RELOAD_FAILURES, IGNORED]

    def families(self) -> list[Family]:
        with self._lock:
            failures = float(self._reload_failures)
            ignored: dict[tuple[str, ...], float] = {(p,): n for p, n in self._ignored.items()}
        return [
            *self.counters.families(),
            RELOAD_FAILURES.with_samples({(): failures}),
            IGNORED.with_samples(ignored),
        ]


def _load(path: Path) -> Policy:
    """The policy, with its notes (rules of kinds this daemon does not produce) logged."""
    policy, notes = policy_mod.load_checked(path)
    for note in notes:
        structlog.get_logger("bpf-auditd").warning("policy_note", note=note)
    return policy
