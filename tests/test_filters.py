"""The ignore list: the KernelFilter the probes receive, and the same decision in user space."""

from __future__ import annotations

import errno

from auditd.model.event import Source
from auditd.model.filter import KernelFilter
from auditd.policy import language as policy
from auditd.policy.filters import ignores, kernel_filter

CGROUPS = {
    1: "/",
    10: "/system.slice/noisy.service",
    11: "/system.slice/noisy.service/worker",  # a delegated sub-cgroup: still noisy.service
    12: "/system.slice/web.service",
    20: "/system.slice/docker-0123456789ab.scope",
    30: "/batch-7",
}


def ignore(text: str) -> policy.Ignore:
    return policy.loads(f"ignore: {text}\nrules: []\n", "p.yaml").ignore


def test_services_and_cgroup_patterns_become_cgroup_ids() -> None:
    f = kernel_filter(
        ignore("{services: [noisy.service], cgroups: ['/*.scope', '/batch-*']}"), CGROUPS
    )
    assert f.cgroup_ids == {10, 11, 30}  # '/*.scope' stays at the top level: 20 is deeper
    f = kernel_filter(ignore("{cgroups: ['/**.scope']}"), CGROUPS)
    assert f.cgroup_ids == {20}


def test_syscalls_errnos_and_sources() -> None:
    f = kernel_filter(
        ignore("{syscalls: [access], errnos: [EPERM, 13], sources: [landlock]}"), CGROUPS
    )
    assert f == KernelFilter(
        cgroup_ids=frozenset(),
        syscalls=frozenset({"access"}),
        errnos=frozenset({errno.EPERM, errno.EACCES}),
        sources=frozenset({Source.LANDLOCK}),
    )
    assert not f.empty


def test_nothing_ignored_is_an_empty_filter() -> None:
    assert kernel_filter(ignore("{}"), CGROUPS).empty
    assert kernel_filter(ignore("{}"), CGROUPS) == KernelFilter()


def test_drops_is_any_criterion() -> None:
    f = KernelFilter(
        cgroup_ids=frozenset({10}), syscalls=frozenset({"access"}), errnos=frozenset({1})
    )
    base = {"cgroup_id": 12, "syscall": "openat", "errno": 13, "source": Source.SYSCALL}
    assert not f.drops(**base)  # type: ignore[arg-type]
    assert f.drops(**{**base, "cgroup_id": 10})  # type: ignore[arg-type]
    assert f.drops(**{**base, "syscall": "access"})  # type: ignore[arg-type]
    assert f.drops(**{**base, "errno": 1})  # type: ignore[arg-type]


def test_user_space_applies_the_same_list_to_logged_fields() -> None:
    i = ignore(
        "{services: [noisy.service], cgroups: ['/batch-*'], errnos: [EPERM], sources: [seccomp]}"
    )
    event = {
        "service": "web.service",
        "cgroup": "/system.slice/web.service",
        "errno": "EACCES",
        "source": "syscall",
    }
    assert not ignores(i, event)
    assert ignores(i, {**event, "service": "noisy.service"})
    assert ignores(i, {**event, "cgroup": "/batch-3"})
    assert ignores(i, {**event, "errno": "EPERM"})
    assert ignores(i, {**event, "source": "seccomp"})
    assert not ignores(ignore("{}"), {**event, "service": "noisy.service"})
    # Kinds without those fields are only ignored by service or cgroup.
    assert not ignores(i, {"service": "web.service", "op": "unshare"})
