"""What `advise` saw, per service: the values an observation hands to the advice, and the
bookkeeping that builds them (merging cgroups of one service, first/last seen)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from auditd.signals.advice.capabilities import CapabilityCheck
from auditd.signals.advice.files import Access, Created, PortAccess

K = TypeVar("K")

# enum auditd_ns_type order (probes/include/task.h), as systemd's RestrictNamespaces= names them.
NAMESPACES = ("mnt", "pid", "net", "uts", "ipc", "user", "cgroup", "time")


@dataclass(slots=True)
class Evidence:
    """How often something was seen, and when (wall-clock ns)."""

    count: int
    first_ns: int
    last_ns: int
    why: set[str] = field(default_factory=set)
    uncertain: bool = True  # stays True only while every sighting was an uncertain one

    def add(self, count: int, first_ns: int, last_ns: int, why: str = "") -> None:
        self.count += count
        self.first_ns = min(self.first_ns, first_ns)
        self.last_ns = max(self.last_ns, last_ns)
        if why and len(self.why) < 4:
            self.why.add(why)


@dataclass(frozen=True, slots=True)
class SyscallUse:
    name: str
    calls: int
    refused: int  # returned EPERM or EACCES
    first_ns: int  # from the poll that first saw it: +- one poll interval
    last_ns: int


@dataclass
class ServiceObservation:
    service: str
    cgroups: set[str] = field(default_factory=set)
    capabilities: list[CapabilityCheck] = field(default_factory=list)
    syscalls: dict[str, SyscallUse] = field(default_factory=dict)
    namespaces_created: dict[str, int] = field(default_factory=dict)
    namespaces_joined: dict[str, int] = field(default_factory=dict)
    setns_any: int = 0  # setns(fd, 0): the namespace type is the fd's
    files: dict[tuple[str, str], Evidence] = field(default_factory=dict)
    created: set[str] = field(default_factory=set)
    ports: dict[tuple[int, str], Evidence] = field(default_factory=dict)
    unresolved: int = 0  # file accesses whose path could not be resolved
    ambient: set[str] = field(default_factory=set)  # ambient capabilities after its execs
    execs_root: int = 0  # execs that ended as uid 0 (0 with the uid unknown)
    execs_user: int = 0  # ... as another uid

    def add_accesses(self, found: Iterable[Access], count: int, first: int, last: int) -> None:
        for access in found:
            if isinstance(access, Created):
                self.created.add(access.path)
                continue
            if isinstance(access, PortAccess):
                evidence = _entry(self.ports, (access.port, access.right), first, last)
                uncertain = False
            else:
                evidence = _entry(self.files, (access.path, access.right), first, last)
                uncertain = access.uncertain
            evidence.add(count, first, last, access.why)
            evidence.uncertain = evidence.uncertain and uncertain

    def add_syscalls(self, uses: Iterable[SyscallUse]) -> None:
        for use in uses:
            seen = self.syscalls.get(use.name)
            if seen is None:
                self.syscalls[use.name] = use
                continue
            self.syscalls[use.name] = SyscallUse(
                use.name,
                seen.calls + use.calls,
                seen.refused + use.refused,
                min(seen.first_ns, use.first_ns),
                max(seen.last_ns, use.last_ns),
            )

    def add_namespaces(self, created: Iterable[int], joined: Iterable[int], any_: int) -> None:
        for table, counts in ((self.namespaces_created, created), (self.namespaces_joined, joined)):
            for name, n in zip(NAMESPACES, counts, strict=True):
                if n:
                    table[name] = table.get(name, 0) + n
        self.setns_any += any_


def _entry(table: dict[K, Evidence], key: K, first: int, last: int) -> Evidence:
    found = table.get(key)
    if found is None:
        found = table[key] = Evidence(0, first, last)
    return found


@dataclass(frozen=True, slots=True)
class Observation:
    started_ns: int  # wall clock
    ended_ns: int
    pattern: str | None  # the --service glob, None for every service
    services: tuple[ServiceObservation, ...]
    parts: tuple[str, ...]  # what was observed: capabilities, syscalls, files
    problems: tuple[str, ...]  # what may be missing from it, and why

    @property
    def seconds(self) -> float:
        return (self.ended_ns - self.started_ns) / 1e9
