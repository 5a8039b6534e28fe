"""The policy's ignore list, as the kernel probes receive it (`KernelFilter`) and as user space
applies it to records that still arrive (new cgroups, probes without kernel filtering)."""

from __future__ import annotations

import errno as errno_mod
import functools
from collections.abc import Mapping
from dataclasses import dataclass

from auditd.cgroups import service_of
from auditd.events import Source
from auditd.matcher import Fields, glob_regex
from auditd.policy import Ignore


@dataclass(frozen=True, slots=True)
class KernelFilter:
    """What a probe should not send to user space, pushed by `Monitor.apply_filter` on load and
    on every change (policy reload, new cgroups of an ignored service).

    A record is dropped when ANY criterion matches. Exact kernel counters keep counting dropped
    events (bpf_auditd_denials_total stays exact); only the records are not sent.
    """

    cgroup_ids: frozenset[int] = frozenset()  # cgroups of ignored services and cgroup patterns
    syscalls: frozenset[str] = frozenset()  # names as in probes/syscalls.py
    errnos: frozenset[int] = frozenset()
    sources: frozenset[Source] = frozenset()  # sources switched off

    @property
    def empty(self) -> bool:
        return not (self.cgroup_ids or self.syscalls or self.errnos or self.sources)

    def drops(self, *, cgroup_id: int, syscall: str, errno: int, source: Source) -> bool:
        """The reference semantics a kernel implementation must match."""
        return (
            cgroup_id in self.cgroup_ids
            or syscall in self.syscalls
            or errno in self.errnos
            or source in self.sources
        )


_glob = functools.lru_cache(maxsize=256)(glob_regex)


def _errno_number(name: str) -> int:
    return next(n for n, text in errno_mod.errorcode.items() if text == name)


def ignored_cgroup(ignore: Ignore, path: str) -> bool:
    """Whether a cgroup (v2 path) belongs to an ignored service or matches an ignored pattern."""
    if service_of(path) in ignore.services:
        return True
    return any(_glob(p).fullmatch(path) for p in ignore.cgroups)


def kernel_filter(ignore: Ignore, cgroups: Mapping[int, str]) -> KernelFilter:
    """The filter for the cgroups known now (id → v2 path); recompute when new ones appear."""
    ids = (
        frozenset(i for i, path in cgroups.items() if ignored_cgroup(ignore, path))
        if ignore.services or ignore.cgroups
        else frozenset()
    )
    return KernelFilter(
        cgroup_ids=ids,
        syscalls=frozenset(ignore.syscalls),
        errnos=frozenset(_errno_number(e) for e in ignore.errnos),
        sources=frozenset(ignore.sources),
    )


def ignores(ignore: Ignore, fields: Fields) -> bool:
    """The same decision in user space, over an event's logged fields: applies to every event
    kind that has the field (service, cgroup, syscall, errno, source)."""
    if ignore.empty:
        return False
    if fields.get("service") in ignore.services:
        return True
    cgroup = fields.get("cgroup")
    if ignore.cgroups and isinstance(cgroup, str) and ignored_cgroup(ignore, cgroup):
        return True
    return (
        fields.get("syscall") in ignore.syscalls
        or fields.get("errno") in ignore.errnos
        or fields.get("source") in ignore.sources
    )
