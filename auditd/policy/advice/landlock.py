"""Observed file accesses → a Landlock ruleset: one rule per path with the rights used, widened to
directories where many entries under one are used, within a size limit. Every widening is
written down in `notes`.

Steps, in order:
  0. A path the service created cannot carry a rule (Landlock opens each rule's path when the
     ruleset is applied, and it may not exist then): its rights go to its directory, deepest
     first.
  1. `widen_files` or more files used directly in one directory → one rule on the directory
     with the union of their rights (the only widening write-like rights get: one level).
  2. `widen_dirs` or more read-only rules (execute, read_file, read_dir) directly under one
     directory → one read-only rule on it; repeated up the tree.
  3. Over `max_rules`: the deepest read-only siblings merge into their directory, then (last
     resort) any siblings.
Never widened into `/`, `/etc`, `/usr`, `/tmp` and the others in NO_WIDEN: a rule there only
when the directory itself was used. Rules whose rights an ancestor rule already grants are
dropped; a rule on a file keeps only the rights a file can carry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from auditd.model.landlock import FILE_RIGHTS, READ_RIGHTS

NO_WIDEN = frozenset(
    {
        "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media",
        "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr",
        "/var", "/usr/bin", "/usr/lib", "/usr/lib64", "/usr/libexec", "/usr/local",
        "/usr/sbin", "/usr/share", "/var/cache", "/var/lib", "/var/log", "/var/spool",
        "/var/tmp", "/run/user", "/dev/shm",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Limits:
    widen_files: int = 3
    widen_dirs: int = 3
    max_rules: int = 64


@dataclass
class Rule:
    path: str
    rights: set[str] = field(default_factory=set)
    uncertain: set[str] = field(default_factory=set)  # rights needed only in some cases
    count: int = 0
    widened_from: list[str] = field(default_factory=list)

    @property
    def directory(self) -> bool:
        """A rule with a right only directories have is on a directory."""
        return bool(self.rights - FILE_RIGHTS) or bool(self.widened_from)

    def absorb(self, other: Rule) -> None:
        self.rights |= other.rights
        self.uncertain |= other.uncertain
        self.count += other.count
        self.widened_from += [other.path, *other.widened_from]


@dataclass(frozen=True, slots=True)
class Ruleset:
    rules: tuple[Rule, ...]
    ports: tuple[tuple[int, tuple[str, ...]], ...]  # (port, rights)
    notes: tuple[str, ...]


def _parent(path: str) -> str:
    return os.path.dirname(path) or "/"


def _depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")


def _beneath(ancestor: str, path: str) -> bool:
    return ancestor == "/" or path.startswith(ancestor.rstrip("/") + "/")


def _names(rules: Iterable[Rule]) -> str:
    names = sorted(os.path.basename(r.path) or r.path for r in rules)
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


class _Builder:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.rules: dict[str, Rule] = {}
        self.notes: list[str] = []

    def rule(self, path: str) -> Rule:
        return self.rules.setdefault(path, Rule(path))

    def merge(self, target: str, children: list[Rule], reason: str) -> None:
        into = self.rule(target)
        for child in children:
            if child.path != target:
                into.absorb(self.rules.pop(child.path))
        self.notes.append(f"widened to {target}: {reason} ({_names(children)})")

    def fold_created(self, created: set[str]) -> None:
        for path in sorted(created, key=_depth, reverse=True):  # deepest first: chains fold up
            rule = self.rules.pop(path, None)
            if rule is None:
                continue
            parent = self.rule(_parent(path))
            parent.rights |= rule.rights
            parent.uncertain |= rule.uncertain
            parent.count += rule.count
            parent.widened_from += rule.widened_from
            if rule.rights:
                self.notes.append(
                    f"{path} was created by the service: its rights "
                    f"({', '.join(sorted(rule.rights))}) are granted on {parent.path}"
                )

    def groups(self, keep: Callable[[Rule], bool]) -> dict[str, list[Rule]]:
        found: dict[str, list[Rule]] = {}
        for rule in self.rules.values():
            if rule.path != "/" and keep(rule):
                found.setdefault(_parent(rule.path), []).append(rule)
        return found

    def widen_files(self) -> None:
        files = self.groups(lambda r: not r.directory)
        for directory, members in sorted(files.items()):
            if len(members) >= self.limits.widen_files and directory not in NO_WIDEN:
                self.merge(directory, members, f"{len(members)} files used in it")

    def widen_read_only(self) -> None:
        while True:
            groups = self.groups(lambda r: r.rights <= READ_RIGHTS)
            ready = [
                (d, m)
                for d, m in groups.items()
                if len(m) >= self.limits.widen_dirs and d not in NO_WIDEN
            ]
            if not ready:
                return
            directory, members = max(ready, key=lambda dm: (_depth(dm[0]), dm[0]))
            self.merge(directory, members, f"{len(members)} read-only rules under it")

    def limit(self) -> None:
        for keep, label in (
            (lambda r: r.rights <= READ_RIGHTS, "read-only"),
            (lambda r: True, "any"),
        ):
            while len(self.rules) > self.limits.max_rules:
                groups = [
                    (d, m)
                    for d, m in self.groups(keep).items()
                    if len(m) >= 2 and d not in NO_WIDEN
                ]
                if not groups:
                    break
                directory, members = max(groups, key=lambda dm: (_depth(dm[0]), dm[0]))
                self.merge(directory, members, f"over {self.limits.max_rules} rules ({label})")
        if len(self.rules) > self.limits.max_rules:
            self.notes.append(
                f"{len(self.rules)} rules, over the limit of {self.limits.max_rules}: nothing left "
                "to widen outside the protected directories"
            )

    def drop_redundant(self) -> None:
        for rule in sorted(self.rules.values(), key=lambda r: _depth(r.path)):
            granted: set[str] = set()
            for other in self.rules.values():
                if (
                    other is not rule
                    and _beneath(other.path, rule.path)
                    and other.path != rule.path
                ):
                    granted |= other.rights
            if rule.rights <= granted:
                del self.rules[rule.path]
                self.notes.append(f"{rule.path}: already granted by a rule above it")


def build(
    accesses: dict[tuple[str, str], tuple[int, bool]],
    created: set[str],
    ports: Iterable[tuple[int, str]],
    limits: Limits | None = None,
) -> Ruleset:
    """`accesses`: (path, right) → (count, uncertain)."""
    b = _Builder(limits or Limits())
    for (path, right), (count, uncertain) in accesses.items():
        rule = b.rule(path)
        rule.rights.add(right)
        rule.count += count
        if uncertain:
            rule.uncertain.add(right)
    b.fold_created(created)
    b.widen_files()
    b.widen_read_only()
    b.limit()
    b.drop_redundant()
    by_port: dict[int, set[str]] = {}
    for port, right in ports:
        by_port.setdefault(port, set()).add(right)
    return Ruleset(
        rules=tuple(sorted(b.rules.values(), key=lambda r: r.path)),
        ports=tuple((p, tuple(sorted(r))) for p, r in sorted(by_port.items())),
        notes=tuple(b.notes),
    )
