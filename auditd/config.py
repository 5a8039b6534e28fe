"""Daemon configuration: YAML in, validated typed values out.

Every error names the file, the line and the key, and says what would have been valid. Unknown
keys are errors: a misspelt key that is silently ignored is a setting the operator thinks is on.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import types
import typing
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "console"]

DEFAULT_METRICS_PORT = 19731

_T = TypeVar("_T")


class ConfigError(Exception):
    """A configuration file that cannot be used, located to file, line and key."""

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


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


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Alert rules (YAML policy file)."""

    # null: the shipped default (auditd/policies/default.yaml). Relative to this file's directory.
    file: str | None = field(
        default=None, metadata=_check(lambda v: v is None or v != "", "a file path, or null")
    )
    # Per rule: threshold and dedup keys tracked at once; beyond it the stalest key is closed
    # (its pending summary alert sent), so memory stays bounded and no count is lost.
    max_keys: int = field(
        default=4096, metadata=_check(lambda v: 16 <= v <= 1_000_000, "16..1000000")
    )


def _is_mqtt_url(value: str | None) -> bool:
    if value is None:
        return True
    try:
        parse_mqtt_url(value)
    except ValueError:
        return False
    return True


def parse_mqtt_url(value: str) -> tuple[bool, str, int]:
    """`mqtt://host[:port]` or `mqtts://host[:port]` → (tls, host, port). No credentials, path
    or query: credentials in a URL end up in logs."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("mqtt", "mqtts") or parts.username is not None:
        raise ValueError(value)
    if parts.path not in ("", "/") or parts.query or parts.fragment or not parts.hostname:
        raise ValueError(value)
    tls = parts.scheme == "mqtts"
    port = parts.port  # raises ValueError when out of range
    return tls, parts.hostname, port or (8883 if tls else 1883)


def _is_topic_prefix(value: str) -> bool:
    # MQTT topic rules plus ours: no wildcards, no empty levels, not a `$SYS`-style topic.
    levels = value.split("/")
    return (
        0 < len(value.encode()) <= 512
        and "\0" not in value
        and not value.startswith("$")
        and all(level and "+" not in level and "#" not in level for level in levels)
    )


def _is_secret_ref(value: str | None) -> bool:
    if value is None:
        return True
    kind, sep, rest = value.partition(":")
    return bool(sep and rest) and kind in ("env", "file")


def _is_path_or_none(value: str | None) -> bool:
    return value is None or bool(value)


def _secret(predicate: Callable[[Any], bool], expected: str) -> dict[str, Any]:
    """Like `_check`, for keys where a mistake may hold a secret: errors do not repeat it."""
    return {**_check(predicate, expected), "secret": True}


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """Live alerts over MQTT: off while `url` is null. `{hostname}` in `client_id` and
    `topic_prefix` is replaced by this host's name (made topic-safe)."""

    url: str | None = field(
        default=None,
        metadata=_secret(
            _is_mqtt_url,
            "null or 'mqtt://host[:port]' or 'mqtts://host[:port]' (credentials go in "
            "mqtt.username and mqtt.password)",
        ),
    )
    client_id: str = field(
        default="bpf-auditd-{hostname}",
        metadata=_check(lambda v: 0 < len(v) <= 128 and "\0" not in v, "1..128 characters"),
    )
    topic_prefix: str = field(
        default="bpf-auditd/{hostname}",
        metadata=_check(
            _is_topic_prefix,
            "topic levels joined by '/', none empty, without '+', '#' or a leading '$'",
        ),
    )
    qos: int = field(default=1, metadata=_check(lambda v: v in (0, 1, 2), "0, 1 or 2"))
    # auto: MQTT v5, falling back to 3.1.1 when the broker refuses the protocol version.
    protocol: Literal["auto", "v5", "v311"] = "auto"
    username: str | None = None
    # Never the secret itself: where to read it.
    password: str | None = field(
        default=None, metadata=_secret(_is_secret_ref, "'env:VARIABLE' or 'file:/path/to/file'")
    )
    tls_ca: str | None = field(default=None, metadata=_check(_is_path_or_none, "a file path"))
    tls_cert: str | None = field(default=None, metadata=_check(_is_path_or_none, "a file path"))
    tls_key: str | None = field(default=None, metadata=_check(_is_path_or_none, "a file path"))
    keepalive: int = field(default=60, metadata=_check(lambda v: 5 <= v <= 3600, "5..3600"))
    reconnect_max_delay: float = field(
        default=30.0, metadata=_check(lambda v: 0.1 <= v <= 3600, "0.1..3600 seconds")
    )
    spool_max_messages: int = field(
        default=10000, metadata=_check(lambda v: 1 <= v <= 10_000_000, "1..10000000")
    )
    spool_max_bytes: int = field(
        default=16 << 20, metadata=_check(lambda v: 4096 <= v <= 1 << 40, "4096..2^40")
    )
    # fsync every spooled alert: survives power loss too, at the cost of a disk flush each.
    spool_fsync: bool = False


@dataclass(frozen=True, slots=True)
class Config:
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


def resolve_path(value: str, config_file: Path | None) -> Path:
    """A file named in the config: relative names are relative to the config file's directory
    (the working directory when running on built-in defaults)."""
    path = Path(value)
    return path if path.is_absolute() or config_file is None else config_file.parent / path


def loads(text: str, name: str = "<config>") -> Config:
    node = compose(text, name)
    if node is None:  # empty file: every default
        return Config()
    return build(Config, node, name)


# The YAML machinery below is shared with the policy loader (auditd/policy.py): any YAML file
# of ours becomes typed frozen dataclasses, with errors located to file, line and key.


def read(path: Path) -> str:
    """A YAML file's text; raises ConfigError naming the file."""
    name = str(path)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(name, None, "", f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(name, None, "", "not UTF-8 text") from exc


def compose(text: str, name: str) -> yaml.Node | None:
    """The YAML node tree (marks kept for error lines); None for an empty document."""
    try:
        # libyaml's loader when present (10x faster on large learned policies), marks included.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
        try:
            node: yaml.Node | None = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(name, line, "", f"invalid YAML: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(name, None, "", f"invalid YAML: {exc}") from exc
    return node


def build(cls: type[_T], node: yaml.Node, file: str, prefix: str = "") -> _T:
    """A dataclass from a YAML mapping node. Field metadata may carry `check`/`expected`
    (validate), `parse` (text → value, ValueError if invalid) and `build` (node → value, for
    structures the generic walk does not know); for tuple fields they apply to each item."""
    built: _T = _build(cls, node, file, prefix)
    return built


def scalar(node: yaml.Node) -> Any:
    """The Python value of a scalar node, typed by YAML's rules (int, float, bool, null, str)."""
    # A bare constructor: no reader or scanner to set up for each value (learned policies
    # hold thousands of them).
    return yaml.constructor.SafeConstructor().construct_object(node)


def _build(cls: type[Any], node: yaml.Node, file: str, prefix: str) -> Any:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(
            file, line, prefix or "(top level)", "expected a mapping of keys to values"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        key_line = key_node.start_mark.line + 1
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            valid = ", ".join(sorted(fields))
            raise ConfigError(file, key_line, dotted, f"unknown key; valid keys here: {valid}")
        if key in values:
            raise ConfigError(file, key_line, dotted, "given twice")
        values[key] = _value(hints[key], fields[key], value_node, file, dotted)
    for name, fld in fields.items():
        no_default = fld.default is dataclasses.MISSING
        if name not in values and no_default and fld.default_factory is dataclasses.MISSING:
            raise ConfigError(file, line, f"{prefix}.{name}" if prefix else name, "missing")
    return cls(**values)


def _value(hint: Any, fld: dataclasses.Field[Any], node: yaml.Node, file: str, key: str) -> Any:
    line = node.start_mark.line + 1
    inner = _optional_of(hint)
    if inner is not None:
        if isinstance(node, yaml.ScalarNode) and scalar(node) is None:
            return None
        if not isinstance(node, yaml.ScalarNode) or "parse" in fld.metadata:
            hint = inner
    item = _tuple_item(hint)
    if item is not None:
        if not isinstance(node, yaml.SequenceNode):
            raise ConfigError(file, line, key, f"expected a list, got {_got(node)}")
        return tuple(_value(item, fld, n, file, f"{key}[{i}]") for i, n in enumerate(node.value))
    if (build_value := fld.metadata.get("build")) is not None:
        return build_value(node, file, key)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type[Any], hint), node, file, key)
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(file, line, key, f"expected {_describe(hint)}, got a {_node_kind(node)}")
    value = scalar(node)
    if (parse := fld.metadata.get("parse")) is not None:
        try:
            value = parse(value)
        except ValueError:
            raise ConfigError(
                file, line, key, f"expected {fld.metadata['expected']}, got {_got(node)}"
            ) from None
    else:
        value = _coerce(hint, value, file, line, key)
    check = fld.metadata.get("check")
    if check is not None and not check(value):
        # A misplaced secret (a password where a reference belongs) must not reach the logs.
        got = "a value not repeated here" if fld.metadata.get("secret") else repr(value)
        raise ConfigError(file, line, key, f"expected {fld.metadata['expected']}, got {got}")
    return value


def _coerce(hint: Any, value: Any, file: str, line: int, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(
                file, line, key, f"expected one of {', '.join(choices)}, got {value!r}"
            )
        return value
    if origin in (typing.Union, types.UnionType):  # Optional[...]
        if value is None and type(None) in typing.get_args(hint):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    # bool is an int in Python; YAML's `yes` must not pass for a number, nor 1 for a switch.
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    raise ConfigError(
        file, line, key, f"expected {_describe(hint)}, got {_yaml_type(value)} {value!r}"
    )


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(typing.get_args(hint))
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint)
    )


def _node_kind(node: yaml.Node) -> str:
    return "mapping" if isinstance(node, yaml.MappingNode) else "list"


def _got(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        value = scalar(node)
        return f"{_yaml_type(value)} {value!r}"
    return f"a {_node_kind(node)}"


def _optional_of(hint: Any) -> Any:
    """X for `X | None`, else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None


def _tuple_item(hint: Any) -> Any:
    """T for `tuple[T, ...]` (a YAML list), else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return None


def _yaml_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), type(value).__name__
    )
