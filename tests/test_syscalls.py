"""The x86_64 syscall table (probes/syscalls.py) against the running kernel and libseccomp: the
advice's syscall names go into seccomp profiles and systemd units, so a wrong or missing entry
becomes a refused syscall."""

from __future__ import annotations

import platform
from typing import Any

import pytest

from auditd.kernel.paths import KernelPaths, find_tracefs
from probes.syscalls import NAMES, NUMBERS, TRACEPOINT_NAMES, name

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the x86_64 table")


def libseccomp() -> Any:
    try:
        import seccomp
    except ImportError:
        pytest.fail(
            "libseccomp's Python binding is missing: scripts/setup installs python3-seccomp"
        )
    return seccomp


def test_names_and_numbers_are_one_to_one() -> None:
    assert len(NUMBERS) == len(NAMES)
    assert all(NUMBERS[n] == nr for nr, n in NAMES.items())
    assert name(9999) == "syscall_9999"


@pytest.mark.needs_root
def test_every_syscall_the_kernel_traces_is_in_the_table() -> None:
    tracefs = find_tracefs(KernelPaths())
    assert tracefs is not None, "tracefs is not mounted"
    events = tracefs / "events" / "syscalls"
    traced = {p.name.removeprefix("sys_enter_") for p in events.glob("sys_enter_*")}
    assert len(traced) > 300  # the directory is really the syscall events

    missing = {t for t in traced if TRACEPOINT_NAMES.get(t, t) not in NUMBERS}

    assert missing == set()  # 6.18 added file_getattr/file_setattr; 6.11 uretprobe; 6.5 cachestat


def test_libseccomp_agrees_on_every_number_it_knows() -> None:
    seccomp = libseccomp()
    checked = 0
    for nr, table_name in NAMES.items():
        try:
            known = seccomp.resolve_syscall(seccomp.Arch.X86_64, nr)
        except ValueError:  # newer than this libseccomp
            continue
        assert known.decode() == table_name, nr
        checked += 1
    assert checked > 350
    assert NAMES[451] == "cachestat"
