"""The event fields a policy may name, per event kind, and the check that every field a rule names
exists: a misspelt field would make a rule that can never fire, silently.

The kinds come from the event classes themselves (`Event.FIELDS`). A rule for a kind this daemon
does not produce (a newer daemon's, or one a learner saw) stays matchable: its fields cannot be
checked, and the check says so in a note rather than refusing the policy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import yaml

from auditd.config.yamlfile import ConfigError, scalar
from auditd.model.event import Event
from auditd.signals.allocations.event import AllocationStats
from auditd.signals.denials.event import Denial
from auditd.signals.namespaces.event import NamespaceChange

EVENT_KINDS: tuple[type[Event], ...] = (Denial, NamespaceChange, AllocationStats)

_COMBINATORS = ("all", "any", "not")


def known_fields() -> Mapping[str, frozenset[str]]:
    """kind → the fields a policy may match for it (`kind` itself included)."""
    return {cls.kind: cls.FIELDS | {"kind"} for cls in EVENT_KINDS}


def check(policy: yaml.Node, file: str) -> list[str]:
    """Every field a rule names (in `match`, `unless`, `dedup`, `threshold.by` and
    `threshold.weight`) exists for the rule's kind (its `match: {kind: ...}`), or for some kind
    when the rule names none. Raises ConfigError at the first that does not; returns notes on
    rules whose kind this daemon does not know (`file:line: key: note`)."""
    notes: list[str] = []
    known = known_fields()
    every = frozenset().union(*known.values())
    for name, line, key in _name_list(_get(_get(policy, "defaults"), "dedup"), "defaults.dedup"):
        if name.split(".")[0] not in every:
            raise ConfigError(
                file,
                line,
                key,
                f"no event kind has a field {name!r}; fields: {', '.join(sorted(every))}",
            )
    rules = _get(policy, "rules")
    if not isinstance(rules, yaml.SequenceNode):
        return notes
    for i, rule in enumerate(rules.value):
        where = f"rules[{i}]"
        match = _get(rule, "match")
        kind_node = _get(match, "kind") if match is not None else None
        allowed, what = every, "of any event kind"
        if isinstance(kind_node, yaml.ScalarNode):
            kind = scalar(kind_node)
            if kind not in known:
                notes.append(
                    f"{file}:{_line(kind_node)}: {where}.match.kind: this daemon produces no "
                    f"event of kind {kind!r} (known kinds: {', '.join(sorted(known))}); the "
                    "rule's fields are not checked"
                )
                continue
            allowed, what = known[kind], f"of kind {kind}"
        for name, line, key in _named_fields(rule, where):
            if name.split(".")[0] not in allowed:
                raise ConfigError(
                    file,
                    line,
                    key,
                    f"no event field {name!r}: this rule could never match it; fields {what}: "
                    + ", ".join(sorted(allowed)),
                )
    return notes


def _named_fields(rule: yaml.Node, where: str) -> Iterator[tuple[str, int, str]]:
    match = _get(rule, "match")
    if match is not None:
        yield from _condition_fields(match, f"{where}.match")
    unless = _get(rule, "unless")
    if isinstance(unless, yaml.SequenceNode):
        for j, item in enumerate(unless.value):
            yield from _condition_fields(item, f"{where}.unless[{j}]")
    for key, node in (("dedup", _get(rule, "dedup")),):
        yield from _name_list(node, f"{where}.{key}")
    threshold = _get(rule, "threshold")
    if threshold is not None:
        yield from _name_list(_get(threshold, "by"), f"{where}.threshold.by")
        weight = _get(threshold, "weight")
        if isinstance(weight, yaml.ScalarNode) and isinstance(scalar(weight), str):
            yield scalar(weight), _line(weight), f"{where}.threshold.weight"


def _condition_fields(node: yaml.Node, key: str) -> Iterator[tuple[str, int, str]]:
    if not isinstance(node, yaml.MappingNode):
        return
    for name_node, value in node.value:
        name = scalar(name_node) if isinstance(name_node, yaml.ScalarNode) else None
        if not isinstance(name, str):
            continue
        here = f"{key}.{name}"
        if name in ("all", "any") and isinstance(value, yaml.SequenceNode):
            for i, item in enumerate(value.value):
                yield from _condition_fields(item, f"{here}[{i}]")
        elif name == "not":
            yield from _condition_fields(value, here)
        elif name not in _COMBINATORS:
            yield name, _line(name_node), here


def _name_list(node: yaml.Node | None, key: str) -> Iterator[tuple[str, int, str]]:
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            if isinstance(item, yaml.ScalarNode) and isinstance(scalar(item), str):
                yield scalar(item), _line(item), f"{key}[{i}]"


def _get(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            found: yaml.Node = v
            return found
    return None


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1
