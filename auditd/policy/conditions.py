"""Rule conditions over event fields (compiled from a policy's `match`/`unless` YAML by
`compiler`), tested against an event's logged fields (`log_fields()` plus `kind`). Pure: no
kernel, no clock.

Field tests compare values as they are logged. A list-valued field (e.g. namespace types) passes
a test when any element does, except `eq` with a list, which wants exactly that set. A field the
event lacks fails every test except `exists: false` and a `not` around one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from auditd.model.units import is_number
from auditd.policy.patterns import TextMatcher

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
    if is_number(value):
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


def equal(value: object, expected: object) -> bool:
    """Equality as an operator means it: booleans are not numbers, and a number written in the
    policy equals the same number logged as text (YAML reads `comm: 123` as an integer)."""
    if type(value) is type(expected):  # the common case, first: this runs for every event
        return value == expected
    if isinstance(value, bool) or isinstance(expected, bool):
        return False
    if is_number(value) and is_number(expected):
        return value == expected
    if isinstance(value, str) and is_number(expected):
        return value == str(expected)
    if is_number(value) and isinstance(expected, str):
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
    """glob, prefix, suffix and regex: a whole-value match on text fields, in time linear in
    the text (`patterns`). Two patterns are equal when their operator and source are."""

    op: str
    source: str
    matcher: TextMatcher = field(compare=False, repr=False)

    def test(self, value: object) -> bool:
        return any(isinstance(v, str) and self.matcher.matches(v) for v in _elements(value))


COMPARE: dict[str, Callable[[float, float], bool]] = {
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
        compare = COMPARE[self.op]
        return any(
            is_number(v) and compare(float(v), self.operand)  # type: ignore[arg-type]
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
