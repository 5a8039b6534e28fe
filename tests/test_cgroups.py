"""Cgroup id → path → service, on fixture trees (no root needed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from auditd.kernel.cgroups import CgroupResolver, cgroup2_path, service_of
from auditd.kernel.paths import KernelPaths


@pytest.mark.parametrize(
    ("path", "service"),
    [
        ("/", "host"),
        ("", "host"),
        ("/system.slice/sshd.service", "sshd.service"),
        ("/system.slice/foo.service/worker", "foo.service"),
        ("/system.slice/docker-" + "ab" * 32 + ".scope", "container:" + "ab" * 6),
        (
            "/kubepods/burstable/pod1/cri-containerd-" + "0f" * 32 + ".scope",
            "container:0f0f0f0f0f0f",
        ),
        ("/docker/" + "cd" * 32, "container:cdcdcdcdcdcd"),
        ("/sshd", "sshd"),
        ("/user.slice/user-0.slice/session-3.scope", "session-3.scope"),
    ],
)
def test_service_of(path: str, service: str) -> None:
    assert service_of(path) == service


def test_find_cgroup2_mount_in_hybrid_and_unified_layouts(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    mountinfo = proc / "self" / "mountinfo"
    mountinfo.write_text(
        "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "40 30 0:35 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "41 30 0:36 / /sys/fs/cgroup/uni\\040fied rw - cgroup2 cgroup2 rw\n"
    )
    assert cgroup2_path(KernelPaths(proc=proc)) == Path("/sys/fs/cgroup/uni fied")
    # Every octal escape of mountinfo, not only the space (the daemon and `doctor` share this).
    mountinfo.write_text("41 30 0:36 / /cg\\011tab\\134back rw - cgroup2 cgroup2 rw\n")
    assert cgroup2_path(KernelPaths(proc=proc)) == Path("/cg\ttab\\back")
    mountinfo.write_text("30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")
    assert cgroup2_path(KernelPaths(proc=proc)) is None
    assert cgroup2_path(KernelPaths(proc=tmp_path / "nowhere")) is None
    # A configured mount wins over mountinfo.
    assert cgroup2_path(KernelPaths(proc=proc, cgroup2=Path("/x"))) == Path("/x")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_resolver_finds_new_cgroups_and_remembers_removed_ones(tmp_path: Path) -> None:
    clock = Clock()
    resolver = CgroupResolver(tmp_path, clock=clock)
    resolver.rescan()
    assert resolver.path(os.stat(tmp_path).st_ino) == "/"

    svc = tmp_path / "system.slice" / "web.service"
    svc.mkdir(parents=True)
    ino = os.stat(svc).st_ino
    clock.now += 0.06  # a first miss rescans almost at once
    assert resolver.service(ino) == "web.service"
    assert resolver.alive(ino)

    shutil.rmtree(tmp_path / "system.slice")
    assert not resolver.alive(ino)
    assert resolver.cached(ino) == "/system.slice/web.service"  # still attributed


def test_resolver_rescans_slowly_for_ids_that_do_not_exist(tmp_path: Path) -> None:
    clock = Clock()
    resolver = CgroupResolver(tmp_path, clock=clock)
    assert resolver.path(999_999_999) is None
    scans = resolver.scans
    clock.now += 0.5
    assert resolver.path(999_999_999) is None
    assert resolver.scans == scans, "a known-missing id must not rescan before the interval"
    clock.now += 1.0
    resolver.path(999_999_999)
    assert resolver.scans == scans + 1


def test_resolver_without_cgroup2_says_unknown() -> None:
    resolver = CgroupResolver(None)
    assert resolver.service(1) == "unknown"
    assert not resolver.alive(1)


def test_removed_cgroups_are_kept_a_while_then_forgotten(tmp_path: Path) -> None:
    # Thousands of short-lived cgroups come and go: the resolver keeps the live ones and only the
    # most recently removed, so its memory is bounded whatever the churn.
    resolver = CgroupResolver(tmp_path, max_removed=16, max_missed=8)
    made = [tmp_path / f"churn-{n}.scope" for n in range(200)]
    for d in made:  # all at once: a file system may reuse a removed directory's inode
        d.mkdir()
    ids = [os.stat(d).st_ino for d in made]
    resolver.rescan()
    for n, d in enumerate(made):
        d.rmdir()
        if n % 20 == 19:
            resolver.rescan()
        resolver.path(10**12 + n)  # ids no walk will find
    assert resolver.sizes() == {"live": 1, "removed": 16, "missed": 8, "dead": 0}
    assert resolver.cached(ids[-1]) == "/churn-199.scope"  # the latest are still attributed
    assert resolver.cached(ids[0]) is None
    assert len(resolver.known()) == 17


def test_cgroups_gone_before_any_walk_are_known_dead_and_bounded(tmp_path: Path) -> None:
    resolver = CgroupResolver(tmp_path, max_removed=4)
    resolver.rescan()
    live = tmp_path / "web.service"
    live.mkdir()
    ids = [10**12 + n for n in range(10)]  # read from a kernel map; no walk will find them
    assert resolver.gone([*ids, os.stat(live).st_ino]) == set(ids)
    assert resolver.sizes()["dead"] == 4
    scans = resolver.scans
    assert resolver.path(ids[-1]) is None
    assert resolver.scans == scans  # known gone: no walk to look for it
