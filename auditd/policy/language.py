"""The policy language: a YAML file of alert rules and an ignore list, loaded into typed values.

Loading shares the config's YAML machinery (auditd/config/yamlfile.py): every error names the
file, the line and the key and says what was expected; unknown keys are errors. README "Policy"
is the reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from auditd.config import yamlfile
from auditd.config.yamlfile import ConfigError
from auditd.model.alert import Severity
from auditd.model.errnos import errno_name, errno_number
from auditd.model.event import Source
from auditd.model.units import DURATION_EXPECTED, parse_duration
from auditd.policy import fields
from auditd.policy.compiler import compile_condition
from auditd.policy.conditions import FIELD_NAME, Condition, Fields
from auditd.policy.patterns import PatternError, compile_glob

VERSION = 1
DEFAULT_POLICY = Path(__file__).resolve().parent / "policies" / "default.yaml"

RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


def _meta(expected: str, check: Any = None, parse: Any = None, build: Any = None) -> Any:
    meta: dict[str, Any] = {"expected": expected}
    for name, value in (("check", check), ("parse", parse), ("build", build)):
        if value is not None:
            meta[name] = value
    return meta


def _field_name(expected: str = "an event field name (letters, digits, _)") -> Any:
    return _meta(expected, check=lambda v: isinstance(v, str) and bool(FIELD_NAME.match(v)))


def _duration(lo: float, *, positive: bool) -> Any:
    bound = "more than 0" if positive else "0 or more"
    return _meta(
        f"{DURATION_EXPECTED}, {bound}, at most {int(lo)} s",
        check=lambda v: (v > 0 if positive else v >= 0) and v <= lo,
        parse=parse_duration,
    )


def _severity(value: object) -> Severity:
    if not isinstance(value, str):
        raise ValueError(value)
    return Severity(value)  # ValueError for any other text


_SEVERITY_EXPECTED = "one of " + ", ".join(s.value for s in Severity)


def _errno_name(value: object) -> str:
    """`EACCES` or 13 → `EACCES` (the name records and metrics use for that number)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        number: int | None = value
    elif isinstance(value, str):
        number = errno_number(value)
    else:
        number = None
    name = None if number is None else errno_name(number)
    if name is None or name == f"E{number}":  # no errno has this name or number
        raise ValueError(value)
    return name


_CGROUP_EXPECTED = "a cgroup v2 path or glob starting with '/'"


def _cgroup_glob(node: yaml.Node, file: str, key: str) -> str:
    line = node.start_mark.line + 1
    value = yamlfile.scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, str) or not value.startswith("/"):
        got = repr(value) if isinstance(node, yaml.ScalarNode) else "a collection"
        raise ConfigError(file, line, key, f"expected {_CGROUP_EXPECTED}, got {got}")
    try:
        compile_glob(value)
    except PatternError as exc:
        raise ConfigError(file, line, key, f"bad glob {value!r}: {exc}") from None
    return value


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `alerts` alerts per `per` seconds for one rule and one service; the rest are
    folded into one summary alert sent when the period ends."""

    alerts: int = field(default=20, metadata=_meta("1..100000", check=lambda v: 1 <= v <= 100_000))
    per: float = field(default=60.0, metadata=_duration(86400, positive=True))


@dataclass(frozen=True, slots=True)
class Threshold:
    """Fire once `count` matching events (or the sum of the `weight` field) arrived within
    `window` seconds, counted separately per value of the `by` fields."""

    count: int = field(metadata=_meta("an integer from 1", check=lambda v: v >= 1))
    window: float = field(metadata=_duration(86400, positive=True))
    by: tuple[str, ...] = field(default=("service",), metadata=_field_name())
    weight: str | None = field(default=None, metadata=_field_name())


@dataclass(frozen=True, slots=True)
class Defaults:
    """What a rule that does not say otherwise gets."""

    severity: Severity = field(
        default=Severity.WARNING, metadata=_meta(_SEVERITY_EXPECTED, parse=_severity)
    )
    cooldown: float = field(default=60.0, metadata=_duration(86400, positive=False))
    dedup: tuple[str, ...] = field(default=("service",), metadata=_field_name())
    rate_limit: RateLimit = field(default_factory=RateLimit)


@dataclass(frozen=True, slots=True)
class Ignore:
    """Events not audited at all: filtered in the kernel where the probe can (the record is
    never sent; exact counters still count it), and in user space otherwise."""

    services: tuple[str, ...] = field(
        default=(), metadata=_meta("a service name", check=lambda v: isinstance(v, str) and v)
    )
    cgroups: tuple[str, ...] = field(
        default=(),
        metadata=_meta(_CGROUP_EXPECTED, build=_cgroup_glob),
    )
    syscalls: tuple[str, ...] = field(
        default=(), metadata=_meta("a syscall name", check=lambda v: isinstance(v, str) and v)
    )
    errnos: tuple[str, ...] = field(
        default=(), metadata=_meta("an errno name like EACCES, or its number", parse=_errno_name)
    )
    sources: tuple[Source, ...] = field(
        default=(),
        metadata=_meta("one of " + ", ".join(s.value for s in Source), parse=Source),
    )

    @property
    def empty(self) -> bool:
        return not (self.services or self.cgroups or self.syscalls or self.errnos or self.sources)


@dataclass(frozen=True, slots=True)
class Rule:
    """One alert: events passing `match` and no `unless` entry fire it."""

    name: str = field(
        metadata=_meta(
            "a name of 1-64 letters, digits and _.:- starting with a letter or digit",
            check=lambda v: isinstance(v, str) and bool(RULE_NAME.match(v)),
        )
    )
    match: Condition = field(metadata=_meta("conditions", build=compile_condition))
    description: str = ""
    severity: Severity | None = field(
        default=None, metadata=_meta(_SEVERITY_EXPECTED, parse=_severity)
    )
    unless: tuple[Condition, ...] = field(
        default=(), metadata=_meta("conditions", build=compile_condition)
    )
    threshold: Threshold | None = None
    dedup: tuple[str, ...] | None = field(default=None, metadata=_field_name())
    cooldown: float | None = field(default=None, metadata=_duration(86400, positive=False))
    rate_limit: RateLimit | None = None
    enabled: bool = True

    def matches(self, fields: Fields) -> bool:
        return self.match.matches(fields) and not any(u.matches(fields) for u in self.unless)


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]
    version: int = field(
        default=VERSION,
        metadata=_meta(f"{VERSION} (the only policy version)", check=lambda v: v == VERSION),
    )
    defaults: Defaults = field(default_factory=Defaults)
    ignore: Ignore = field(default_factory=Ignore)

    @property
    def active_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled)


def load(path: Path) -> Policy:
    """Read and validate a policy file; raises ConfigError (file:line: key: what was expected)."""
    return loads(yamlfile.read(path), str(path))


def loads(text: str, name: str = "<policy>") -> Policy:
    return checked(text, name)[0]


def load_checked(path: Path) -> tuple[Policy, list[str]]:
    """`load`, with notes on what could not be checked (rules of kinds unknown here)."""
    return checked(yamlfile.read(path), str(path))


def checked(text: str, name: str = "<policy>") -> tuple[Policy, list[str]]:
    node = yamlfile.compose(text, name)
    if node is None:
        # An empty file is more likely a truncated write than a wish for no alerts at all.
        raise ConfigError(name, None, "", "empty policy; expected a mapping with `rules:`")
    policy = yamlfile.build(Policy, node, name)
    _unique_names(policy, node, name)
    return policy, fields.check(node, name)


def _unique_names(policy: Policy, node: yaml.Node, file: str) -> None:
    assert isinstance(node, yaml.MappingNode)
    rules_node = next(v for k, v in node.value if yamlfile.scalar(k) == "rules")
    seen: set[str] = set()
    for i, (rule, rule_node) in enumerate(zip(policy.rules, rules_node.value, strict=True)):
        if rule.name in seen:
            line = next(
                k.start_mark.line + 1 for k, _ in rule_node.value if yamlfile.scalar(k) == "name"
            )
            raise ConfigError(file, line, f"rules[{i}].name", f"{rule.name!r} is given twice")
        seen.add(rule.name)
