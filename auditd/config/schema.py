"""Daemon configuration: YAML in, validated typed values out.

Every error names the file, the line and the key, and says what would have been valid. Unknown
keys are errors: a misspelt key that is silently ignored is a setting the operator thinks is on.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from auditd.config.yamlfile import build, compose, read
from exporters.mqtt.config import MqttConfig

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "console"]

DEFAULT_METRICS_PORT = 19731


def _check(predicate: Callable[[Any], bool], expected: str) -> dict[str, Any]:
    """Field metadata: a value check and the words that say what is valid."""
    return {"check": predicate, "expected": expected}


def _power_of_two(low: int, high: int) -> Callable[[int], bool]:
    return lambda v: low <= v <= high and v & (v - 1) == 0


def _is_listen(value: str) -> bool:
    try:
        parse_listen(value)
    except ValueError:
        return False
    return True


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) → (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(value)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    elif host == "":
        host = "0.0.0.0"
    elif ":" in host:
        raise ValueError(value)
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "json"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = field(
        default=f"0.0.0.0:{DEFAULT_METRICS_PORT}",
        metadata=_check(_is_listen, "an address like '0.0.0.0:19731', '[::1]:19731' or ':19731'"),
    )
    # Distinct `service` label values before new ones fold into "other" (and are counted).
    max_services: int = field(
        default=256, metadata=_check(lambda v: 1 <= v <= 100_000, "1..100000")
    )
    # TLS and basic auth for /metrics: a file in the Prometheus exporters' --web.config.file
    # format; relative to this config file's directory. Unset: plain HTTP, no auth.
    web_config: str | None = field(
        default=None, metadata=_check(lambda v: v is None or v != "", "a file path, or null")
    )


@dataclass(frozen=True, slots=True)
class DenialProbeConfig:
    enabled: bool = True
    # Kernel map of exact counters keyed by (cgroup, syscall, errno, source).
    counter_entries: int = field(
        default=16384, metadata=_check(lambda v: 64 <= v <= 1 << 20, "64..1048576")
    )
    # Seconds during which a repeat of the same (process, syscall, errno, source, target) sends
    # no record of its own: it is counted exactly and reported as `repeats`.
    window: float = field(
        default=10.0, metadata=_check(lambda v: 0 <= v <= 3600, "0..3600 seconds")
    )
    # Dedup entries in the kernel (LRU): combinations beyond it are sent again sooner, not lost.
    recent_entries: int = field(
        default=16384, metadata=_check(lambda v: 64 <= v <= 1 << 20, "64..1048576")
    )
    # Read the kernel's audit records for Landlock and SELinux denials (their cause and rights).
    audit: bool = True
    # Switch audit on while running if it is off (Landlock logs only then); restored on exit.
    enable_audit: bool = True
    # Seconds a refusal waits for an LSM's audit record naming its cause.
    lsm_wait: float = field(default=0.1, metadata=_check(lambda v: 0 <= v <= 5, "0..5 seconds"))


@dataclass(frozen=True, slots=True)
class NamespaceProbeConfig:
    """Namespace changes (setns, unshare, clone, clone3)."""

    enabled: bool = True
    # Kernel map of exact counters keyed by (cgroup, op, types, errno, escaped types).
    counter_entries: int = field(
        default=4096, metadata=_check(lambda v: 64 <= v <= 1 << 20, "64..1048576")
    )
    # Kernel map of calls in progress, one entry per thread between syscall entry and exit.
    pending_entries: int = field(
        default=10240, metadata=_check(lambda v: 64 <= v <= 1 << 20, "64..1048576")
    )
    # Seconds during which a repeat of the same (program, op, types, result, escapes, setns
    # target) sends no record of its own: it is counted exactly and reported as `repeats`.
    window: float = field(
        default=10.0, metadata=_check(lambda v: 0 <= v <= 3600, "0..3600 seconds")
    )
    # Dedup entries in the kernel (LRU): combinations beyond it are sent again sooner, not lost.
    recent_entries: int = field(
        default=16384, metadata=_check(lambda v: 64 <= v <= 1 << 20, "64..1048576")
    )


@dataclass(frozen=True, slots=True)
class AllocationProbeConfig:
    """Kernel memory allocations (kmem tracepoints)."""

    enabled: bool = True
    # auto: raw tracepoints where BTF proves their arguments (cheaper), else classic ones.
    attach: Literal["auto", "classic"] = "auto"
    # Per-CPU table of exact totals, one slot per cgroup; cgroups beyond it are counted as
    # unattributed.
    slots: int = field(
        default=1024, metadata=_check(_power_of_two(16, 65536), "a power of two from 16 to 65536")
    )
    # Kernel map of sampled call sites (cgroup, process, call site, kind), drained every
    # housekeeping interval.
    site_entries: int = field(
        default=16384, metadata=_check(lambda v: 64 <= v <= 1 << 20, "64..1048576")
    )
    # 1 allocation in N is attributed to its call site (totals stay exact).
    site_sample: int = field(
        default=64, metadata=_check(_power_of_two(1, 65536), "a power of two from 1 to 65536")
    )
    # Track live objects for outstanding bytes: attaches the free tracepoints too, which about
    # doubles the probes' cost (see bench/allocations.py).
    track_outstanding: bool = False
    # Kernel map of tracked live objects (1 address in live_sample).
    live_entries: int = field(
        default=65536, metadata=_check(lambda v: 64 <= v <= 1 << 22, "64..4194304")
    )
    live_sample: int = field(
        default=16, metadata=_check(_power_of_two(1, 65536), "a power of two from 1 to 65536")
    )


@dataclass(frozen=True, slots=True)
class ProbesConfig:
    # Size of each ring buffer in pages; the kernel wants a power of two.
    ringbuf_pages: int = field(
        default=64,
        metadata=_check(
            lambda v: 1 <= v <= 4096 and v & (v - 1) == 0, "a power of two from 1 to 4096"
        ),
    )
    denials: DenialProbeConfig = field(default_factory=DenialProbeConfig)
    namespaces: NamespaceProbeConfig = field(default_factory=NamespaceProbeConfig)
    allocations: AllocationProbeConfig = field(default_factory=AllocationProbeConfig)


def _is_repository_url(value: str) -> bool:
    """An http(s) URL without credentials, query or fragment (credentials end up in logs)."""
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError when out of range)
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.username is None
        and not parts.query
        and not parts.fragment
    )


# A TUF target name: relative, `/`-separated, no empty, `.` or `..` segment.
_TARGET_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
TARGET_NAME_EXPECTED = "a relative target name like 'policies/web.yaml' (letters, digits, . _ - /)"


def is_target_name(value: str) -> bool:
    return len(value) <= 256 and _TARGET_NAME.fullmatch(value) is not None and ".." not in value


# A host name (RFC 1123 labels, or any name of letters, digits, `.`, `_` and `-`).
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,252}")


@dataclass(frozen=True, slots=True)
class TufConfig:
    """The policy from a TUF repository (The Update Framework): verified, then applied."""

    # The repository: `<url>/metadata/` and `<url>/targets/`, served by any static HTTP server.
    url: str = field(
        metadata=_check(
            _is_repository_url, "an http:// or https:// URL without credentials or query"
        )
    )
    # The pinned initial root metadata (`1.root.json` of the repository), relative to this
    # file's directory. The keys that sign policies are never in the daemon's config.
    root: str = field(metadata=_check(lambda v: v != "", "a file path"))
    # The policy's target name in the repository, e.g. `policies/web.yaml`.
    target: str = field(metadata=_check(is_target_name, TARGET_NAME_EXPECTED))
    # Seconds between refreshes (SIGHUP refreshes at once).
    interval: float = field(
        default=300.0, metadata=_check(lambda v: 0.5 <= v <= 86400, "0.5..86400 seconds")
    )
    # Seconds one download may take in all (a server that drips bytes is cut off).
    timeout: float = field(default=30.0, metadata=_check(lambda v: 1 <= v <= 600, "1..600 seconds"))


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Alert rules (YAML policy file)."""

    # null: the shipped default (auditd/policy/policies/default.yaml). Relative to this file's
    # directory.
    file: str | None = field(
        default=None, metadata=_check(lambda v: v is None or v != "", "a file path, or null")
    )
    # Per rule: threshold and dedup keys tracked at once; beyond it the stalest key is closed
    # (its pending summary alert sent), so memory stays bounded and no count is lost.
    max_keys: int = field(
        default=4096, metadata=_check(lambda v: 16 <= v <= 1_000_000, "16..1000000")
    )
    # null: the policy comes from `file` only. Set: from a TUF repository, `file` (or the
    # default) being the policy until the first verified one is applied.
    tuf: TufConfig | None = None


@dataclass(frozen=True, slots=True)
class Config:
    # This host's name in alerts (`host`, ids), in MQTT (`{hostname}` in the client id and topic
    # prefix) and in learned policies; null: the machine's host name. Metrics carry none: the
    # scrape target's `instance` label names the host.
    host: str | None = field(
        default=None,
        metadata=_check(
            lambda v: v is None or _HOST_NAME.fullmatch(v) is not None,
            "null or a host name of letters, digits, '.', '_' and '-' (at most 253)",
        ),
    )
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    # Events waiting between the reader thread and the core; beyond it they are dropped and counted.
    queue_size: int = field(
        default=65536, metadata=_check(lambda v: 16 <= v <= 1 << 24, "16..16777216")
    )
    # Seconds between housekeeping passes (cgroup rescans, retiring counters of removed cgroups).
    housekeeping_interval: float = field(
        default=10.0, metadata=_check(lambda v: 0.1 <= v <= 3600, "0.1..3600 seconds")
    )
    # Where the daemon keeps what must survive a restart (the MQTT spool); systemd's
    # StateDirectory=bpf-auditd.
    state_dir: str = field(
        default="/var/lib/bpf-auditd",
        metadata=_check(lambda v: v.startswith("/"), "an absolute directory path"),
    )


def load(path: Path) -> Config:
    """Read and validate a config file; raises ConfigError."""
    return loads(read(path), str(path))


def loads(text: str, name: str = "<config>") -> Config:
    node = compose(text, name)
    if node is None:  # empty file: every default
        return Config()
    return build(Config, node, name)
