"""Daemon configuration: YAML in, validated typed values out.

Every error names the file, the line and the key, and says what would have been valid. Unknown
keys are errors: a misspelt key that is silently ignored is a setting the operator thinks is on.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "console"]

DEFAULT_METRICS_PORT = 19731


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


@dataclass(frozen=True, slots=True)
class DenialProbeConfig:
    enabled: bool = True
    # Kernel map of exact counters keyed by (cgroup, syscall, errno, source).
    counter_entries: int = field(
        default=16384, metadata=_check(lambda v: 64 <= v <= 1 << 20, "64..1048576")
    )


@dataclass(frozen=True, slots=True)
class NamespaceProbeConfig:
    """Namespace changes (setns, unshare, clone, clone3)."""


@dataclass(frozen=True, slots=True)
class AllocationProbeConfig:
    """Kernel memory allocations (kmem tracepoints)."""


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


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """Live alerts over MQTT."""


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


def load(path: Path) -> Config:
    """Read and validate a config file; raises ConfigError."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(name, None, "", f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(name, None, "", "not UTF-8 text") from exc
    return loads(text, name)


def loads(text: str, name: str = "<config>") -> Config:
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(name, line, "", f"invalid YAML: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(name, None, "", f"invalid YAML: {exc}") from exc
    if node is None:  # empty file: every default
        return Config()
    built: Config = _build(Config, node, name, "")
    return built


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
    return cls(**values)


def _value(hint: Any, fld: dataclasses.Field[Any], node: yaml.Node, file: str, key: str) -> Any:
    line = node.start_mark.line + 1
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type[Any], hint), node, file, key)
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(file, line, key, f"expected {_describe(hint)}, got a {_node_kind(node)}")
    loader = yaml.SafeLoader("")
    try:
        value = loader.construct_object(node)
    finally:
        loader.dispose()
    value = _coerce(hint, value, file, line, key)
    check = fld.metadata.get("check")
    if check is not None and not check(value):
        raise ConfigError(file, line, key, f"expected {fld.metadata['expected']}, got {value!r}")
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


def _yaml_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), type(value).__name__
    )
