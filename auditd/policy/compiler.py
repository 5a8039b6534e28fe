"""A policy's `match`/`unless` YAML compiled into conditions (`conditions`), every error located
to file, line and key."""

from __future__ import annotations

import yaml

from auditd.config.yamlfile import ConfigError, scalar
from auditd.model.units import SIZE_EXPECTED, parse_number
from auditd.policy.conditions import (
    COMPARE,
    FIELD_NAME,
    AllOf,
    AllValues,
    AnyValue,
    Compare,
    Condition,
    Equals,
    Exists,
    Field,
    Not,
    NotValue,
    OneOf,
    Pattern,
    SameSet,
    ValueTest,
    any_of,
)
from auditd.policy.patterns import PatternError, Prefix, Suffix, compile_glob, compile_regex

OPERATORS = (
    "eq",
    "ne",
    "in",
    "glob",
    "prefix",
    "suffix",
    "regex",
    "gt",
    "ge",
    "lt",
    "le",
    "exists",
    "not",
    "any",
    "all",
)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _items(node: yaml.MappingNode, file: str, key: str) -> list[tuple[str, yaml.Node, int]]:
    seen: set[str] = set()
    items = []
    for k, v in node.value:
        name = scalar(k) if isinstance(k, yaml.ScalarNode) else None
        line = _line(k)
        if not isinstance(name, str):
            raise ConfigError(file, line, key, f"expected text keys, got {name!r}")
        if name in seen:
            raise ConfigError(file, line, f"{key}.{name}", "given twice")
        seen.add(name)
        items.append((name, v, line))
    return items


def compile_condition(node: yaml.Node, file: str, key: str) -> Condition:
    """A `match` (or `unless` item): a mapping of field names to value tests, all of which must
    pass; `all`/`any` (lists of such mappings) and `not` (one mapping) nest."""
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(
            file,
            _line(node),
            key,
            f"expected a mapping of event fields to values (or all/any/not), got {_kind(node)}",
        )
    parts: list[Condition] = []
    for name, value, line in _items(node, file, key):
        here = f"{key}.{name}"
        if name in ("all", "any"):
            if not isinstance(value, yaml.SequenceNode) or not value.value:
                raise ConfigError(
                    file,
                    _line(value),
                    here,
                    f"expected a non-empty list of conditions, got {_kind(value)}",
                )
            items = tuple(
                compile_condition(n, file, f"{here}[{i}]") for i, n in enumerate(value.value)
            )
            parts.append(AllOf(items) if name == "all" else any_of(items))
        elif name == "not":
            parts.append(Not(compile_condition(value, file, here)))
        elif FIELD_NAME.match(name):
            parts.append(Field(name, compile_value(value, file, here)))
        else:
            raise ConfigError(
                file,
                line,
                here,
                "expected an event field name (letters, digits, _; a dot reaches into a "
                "mapping) or all/any/not",
            )
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def compile_value(node: yaml.Node, file: str, key: str) -> ValueTest:
    """A field's test: a value (equality), a list (any of), or a mapping of operators (all of)."""
    if isinstance(node, yaml.ScalarNode):
        return Equals(scalar(node))
    if isinstance(node, yaml.SequenceNode):
        return OneOf(_scalars(node, file, key))
    assert isinstance(node, yaml.MappingNode)
    tests: list[ValueTest] = []
    for op, value, line in _items(node, file, key):
        if op not in OPERATORS:
            raise ConfigError(
                file, line, f"{key}.{op}", f"unknown operator; valid: {', '.join(OPERATORS)}"
            )
        tests.append(_operator(op, value, file, f"{key}.{op}"))
    if not tests:
        raise ConfigError(file, _line(node), key, f"expected operators ({', '.join(OPERATORS)})")
    return tests[0] if len(tests) == 1 else AllValues(tuple(tests))


def _operator(op: str, node: yaml.Node, file: str, key: str) -> ValueTest:
    line = _line(node)
    if op == "not":
        return NotValue(compile_value(node, file, key))
    if op in ("any", "all"):
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise ConfigError(
                file, line, key, f"expected a non-empty list of value tests, got {_kind(node)}"
            )
        tests = tuple(compile_value(n, file, f"{key}[{i}]") for i, n in enumerate(node.value))
        return AnyValue(tests) if op == "any" else AllValues(tests)
    if op == "in":
        if not isinstance(node, yaml.SequenceNode):
            raise ConfigError(file, line, key, f"expected a list of values, got {_kind(node)}")
        return OneOf(_scalars(node, file, key))
    if op == "eq":
        if isinstance(node, yaml.SequenceNode):
            return SameSet(_scalars(node, file, key))
        return Equals(_scalar(node, file, key, "a value or a list"))
    value = _scalar(node, file, key, "a value")
    if op == "ne":
        return NotValue(Equals(value))
    if op == "exists":
        if not isinstance(value, bool):
            raise ConfigError(file, line, key, f"expected true or false, got {value!r}")
        return Exists(value)
    if op in COMPARE:
        try:
            return Compare(op, parse_number(value))
        except ValueError:
            raise ConfigError(file, line, key, f"expected {SIZE_EXPECTED}, got {value!r}") from None
    if not isinstance(value, str) or not value:
        raise ConfigError(file, line, key, f"expected non-empty text, got {value!r}")
    try:
        if op == "regex":
            return Pattern(op, value, compile_regex(value))
        if op == "glob":
            return Pattern(op, value, compile_glob(value))
    except PatternError as exc:
        raise ConfigError(file, line, key, f"bad {op} {value!r}: {exc}") from None
    return Pattern(op, value, Prefix(value) if op == "prefix" else Suffix(value))


def _scalar(node: yaml.Node, file: str, key: str, expected: str) -> object:
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(file, _line(node), key, f"expected {expected}, got {_kind(node)}")
    return scalar(node)


def _scalars(node: yaml.SequenceNode, file: str, key: str) -> tuple[object, ...]:
    if not node.value:
        raise ConfigError(file, _line(node), key, "expected at least one value, got an empty list")
    return tuple(_scalar(n, file, f"{key}[{i}]", "a value") for i, n in enumerate(node.value))


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list" if node.value else "an empty list"
    return repr(scalar(node))
