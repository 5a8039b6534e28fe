"""The policy's ignore list, as the kernel probes receive it (a `KernelFilter`) and as user space
applies it to records that still arrive (new cgroups, probes without kernel filtering)."""

from __future__ import annotations

import functools
from collections.abc import Mapping

from auditd.kernel.cgroups import service_of
from auditd.model.errnos import errno_number
from auditd.model.filter import KernelFilter
from auditd.policy.conditions import Fields
from auditd.policy.language import Ignore
from auditd.policy.patterns import compile_glob

# Linear-time matching (RE2): a cgroup name can be chosen by a user with a delegated subtree.
_glob = functools.lru_cache(maxsize=256)(compile_glob)


def ignored_cgroup(ignore: Ignore, path: str) -> bool:
    """Whether a cgroup (v2 path) belongs to an ignored service or matches an ignored pattern."""
    if service_of(path) in ignore.services:
        return True
    return any(_glob(p).matches(path) for p in ignore.cgroups)


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
        errnos=frozenset(n for e in ignore.errnos if (n := errno_number(e)) is not None),
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
