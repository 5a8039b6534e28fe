"""Rule conditions over event fields: compiled once from a policy's `match`/`unless` YAML, then
tested against an event's logged fields (`log_fields()` plus `kind`). Pure: no kernel, no clock.

Field tests compare values as they are logged. A list-valued field (e.g. namespace types) passes
a test when any element does, except `eq` with a list, which wants exactly that set. A field the
event lacks fails every test except `exists: false` and a `not` around one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import yaml

from auditd.config import ConfigError, scalar

Fields = Mapping[str, object]


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()

# `detail.capability` reaches into a mapping-valued field.
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")


def lookup(fields: Fields, name: str) -> object:
    """A field's value by (dotted) name; MISSING when the event lacks it."""
    if name in fields:
        return fields[name]
    value: object = fields
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


class Condition(Protocol):
    """A test of one event."""

    def matches(self, fields: Fields) -> bool: ...


class ValueTest(Protocol):
    """A test of one field's value (MISSING when the event lacks the field)."""

    def test(self, value: object) -> bool: ...


# -- conditions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllOf:
    items: tuple[Condition, ...]

    def matches(self, fields: Fields) -> bool:
        return all(c.matches(fields) for c in self.items)


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Condition, ...]

    def matches(self, fields: Fields) -> bool:
        return any(c.matches(fields) for c in self.items)


class _Never:
    """A lookup key that equals no indexed key (a missing field, a mapping)."""


_NEVER = _Never()
_LIST = object()  # a list-valued field: any element may match, so scan instead


def _index_key(value: object) -> object:
    """One value's key, such that two keys are equal exactly when `equal()` would say so for
    the text, boolean and null values the index holds."""
    if isinstance(value, bool):
        return ("bool", value)
    if value is None:
        return ("null",)
    if isinstance(value, str):
        return value
    if _is_number(value):
        return str(value)  # a number equals the same number written as text
    if isinstance(value, list | tuple | set | frozenset):
        return _LIST
    return _NEVER


def _equalities(c: Condition) -> dict[str, object] | None:
    """field → index key when `c` is only equality tests on text/boolean/null values."""
    parts = c.items if isinstance(c, AllOf) else (c,)
    out: dict[str, object] = {}
    for part in parts:
        if not (isinstance(part, Field) and isinstance(part.value, Equals)):
            return None
        expected = part.value.expected
        if not (isinstance(expected, str | bool) or expected is None) or part.name in out:
            return None
        out[part.name] = _index_key(expected)
    return out or None


class IndexedAny:
    """`any` over many conditions that are mostly plain equalities on the same fields, as in
    learned allowlists: one dict lookup per group of fields instead of a scan of thousands."""

    __slots__ = ("_groups", "_rest", "items")

    def __init__(self, items: tuple[Condition, ...]) -> None:
        self.items = items
        self._groups: dict[tuple[str, ...], tuple[set[tuple[object, ...]], list[Condition]]] = {}
        self._rest: list[Condition] = []
        for c in items:
            eq = _equalities(c)
            if eq is None:
                self._rest.append(c)
                continue
            names = tuple(sorted(eq))
            keys, originals = self._groups.setdefault(names, (set(), []))
            keys.add(tuple(eq[n] for n in names))
            originals.append(c)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IndexedAny) and other.items == self.items

    def __hash__(self) -> int:
        return hash(self.items)

    def __repr__(self) -> str:
        return f"IndexedAny({len(self.items)} items)"

    def matches(self, fields: Fields) -> bool:
        for names, (keys, originals) in self._groups.items():
            key = tuple(_index_key(lookup(fields, n)) for n in names)
            if _LIST in key:
                if any(c.matches(fields) for c in originals):
                    return True
            elif key in keys:
                return True
        return any(c.matches(fields) for c in self._rest)


def any_of(items: tuple[Condition, ...]) -> Condition:
    """The condition "any of `items`", indexed when there are enough to be worth it."""
    return IndexedAny(items) if len(items) >= 8 else AnyOf(items)


@dataclass(frozen=True, slots=True)
class Not:
    item: Condition

    def matches(self, fields: Fields) -> bool:
        return not self.item.matches(fields)


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    value: ValueTest

    def matches(self, fields: Fields) -> bool:
        return self.value.test(lookup(fields, self.name))


# -- value tests -----------------------------------------------------------------------------


def _elements(value: object) -> Sequence[object]:
    if value is MISSING:
        return ()
    if isinstance(value, list | tuple | set | frozenset):
        return list(value)
    return (value,)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def equal(value: object, expected: object) -> bool:
    """Equality as an operator means it: booleans are not numbers, and a number written in the
    policy equals the same number logged as text (YAML reads `comm: 123` as an integer)."""
    if type(value) is type(expected):  # the common case, first: this runs for every event
        return value == expected
    if isinstance(value, bool) or isinstance(expected, bool):
        return False
    if _is_number(value) and _is_number(expected):
        return value == expected
    if isinstance(value, str) and _is_number(expected):
        return value == str(expected)
    if _is_number(value) and isinstance(expected, str):
        return str(value) == expected
    return value == expected


@dataclass(frozen=True, slots=True)
class Equals:
    expected: object

    def test(self, value: object) -> bool:
        if isinstance(value, list | tuple | set | frozenset):
            return any(equal(v, self.expected) for v in value)
        return value is not MISSING and equal(value, self.expected)


@dataclass(frozen=True, slots=True)
class SameSet:
    """`eq: [a, b]`: a list-valued field holding exactly these values, in any order."""

    expected: tuple[object, ...]

    def test(self, value: object) -> bool:
        if not isinstance(value, list | tuple | set | frozenset):
            return False
        got = list(value)
        return all(any(equal(g, e) for e in self.expected) for g in got) and all(
            any(equal(g, e) for g in got) for e in self.expected
        )


@dataclass(frozen=True, slots=True)
class OneOf:
    options: tuple[object, ...]

    def test(self, value: object) -> bool:
        return any(equal(v, o) for v in _elements(value) for o in self.options)


@dataclass(frozen=True, slots=True)
class Pattern:
    """glob, prefix, suffix and regex: a whole-value match on text fields."""

    op: str
    source: str
    regex: re.Pattern[str]

    def test(self, value: object) -> bool:
        return any(isinstance(v, str) and self.regex.fullmatch(v) for v in _elements(value))


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    operand: float

    def test(self, value: object) -> bool:
        compare = _COMPARE[self.op]
        return any(
            _is_number(v) and compare(float(v), self.operand)  # type: ignore[arg-type]
            for v in _elements(value)
        )


@dataclass(frozen=True, slots=True)
class Exists:
    present: bool

    def test(self, value: object) -> bool:
        return (value is not MISSING) == self.present


@dataclass(frozen=True, slots=True)
class NotValue:
    inner: ValueTest

    def test(self, value: object) -> bool:
        return not self.inner.test(value)


@dataclass(frozen=True, slots=True)
class AllValues:
    tests: tuple[ValueTest, ...]

    def test(self, value: object) -> bool:
        return all(t.test(value) for t in self.tests)


@dataclass(frozen=True, slots=True)
class AnyValue:
    tests: tuple[ValueTest, ...]

    def test(self, value: object) -> bool:
        return any(t.test(value) for t in self.tests)


# -- text forms: globs, sizes, durations -----------------------------------------------------


def glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` and `?` stay within one path segment, `**` crosses segments, `[abc]`/`[!abc]` are
    classes. ValueError says what is wrong (an unclosed `[`, a reversed range)."""
    if not pattern:
        raise ValueError("empty pattern")
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] in "!^":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            end = pattern.find("]", j)
            if end == -1:
                raise ValueError(f"unclosed '[' at position {i + 1}")
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append(f"[{body}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error as exc:
        raise ValueError(exc.msg) from exc


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(KiB|MiB|GiB|TiB|k|M|G|T)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
}
SIZE_EXPECTED = "a number, optionally with a unit (k, M, G, T, KiB, MiB, GiB, TiB)"


def parse_number(value: object) -> float:
    """A number, or text with a decimal or binary unit: `64MiB`, `1.5k`."""
    if _is_number(value):
        return float(value)  # type: ignore[arg-type]
    if isinstance(value, str) and (m := _SIZE.match(value)):
        return float(m[1]) * _SIZE_UNITS[m[2]]
    raise ValueError(value)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_EXPECTED = "a duration like 500ms, 10s, 5m, 1h, 1d (or seconds as a number)"


def parse_duration(value: object) -> float:
    """Seconds, from a number or text like `10s`, `5m`, `1h`."""
    if _is_number(value):
        return float(value)  # type: ignore[arg-type]
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m[1]) * _DURATION_UNITS[m[2]]
    raise ValueError(value)


# -- compiling YAML --------------------------------------------------------------------------

_COMBINATORS = ("all", "any", "not")
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
    if op in _COMPARE:
        try:
            return Compare(op, parse_number(value))
        except ValueError:
            raise ConfigError(file, line, key, f"expected {SIZE_EXPECTED}, got {value!r}") from None
    if not isinstance(value, str) or not value:
        raise ConfigError(file, line, key, f"expected non-empty text, got {value!r}")
    if op == "regex":
        try:
            return Pattern(op, value, re.compile(value))
        except re.error as exc:
            raise ConfigError(file, line, key, f"bad regex {value!r}: {exc.msg}") from None
    if op == "glob":
        try:
            return Pattern(op, value, glob_regex(value))
        except ValueError as exc:
            raise ConfigError(file, line, key, f"bad glob {value!r}: {exc}") from None
    escaped = re.escape(value)
    return Pattern(
        op, value, re.compile(escaped + ".*" if op == "prefix" else ".*" + escaped, re.DOTALL)
    )


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
