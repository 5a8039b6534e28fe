"""The denial probe in the real kernel: exact counts, records with path and pid, no loss."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _workload import NOBODY, denied_opens, scratch_cgroup, secret_file

from auditd.cgroups import CgroupResolver
from auditd.config import Config
from auditd.daemon import build_monitors, build_probe_set
from auditd.events import Denial, Source
from auditd.paths import KernelPaths
from auditd.telemetry import LabelCap
from probes import denials
from probes.runtime import DropKind, ProbeSet

pytestmark = pytest.mark.needs_bpf

N = 200


class Collected:
    def __init__(self) -> None:
        self.events: list[Denial] = []
        self.lock = threading.Lock()

    def deliver(self, batch: list[Any]) -> None:
        with self.lock:
            self.events.extend(batch)

    def failed(self, exc: BaseException) -> None:
        raise AssertionError(f"reader failed: {exc}")


def _load(*extra: str) -> ProbeSet:
    import structlog

    config = Config()
    monitors = build_monitors(config, CgroupResolver(None), LabelCap(10))
    probes = build_probe_set(config, monitors, KernelPaths(), structlog.get_logger())
    probes.cflags.extend(extra)
    probes.load()
    return probes


@pytest.fixture(scope="module")
def loaded() -> Iterator[ProbeSet]:
    probes = _load("-DAUDITD_LAYOUT_CHECK")
    try:
        yield probes
    finally:
        probes.close()


def test_record_and_key_layouts_match_the_c_structs(loaded: ProbeSet) -> None:
    for c_side, py_side in (
        (loaded.table("denial_record_layout").Leaf, denials.DenialRecord),
        (loaded.table("denial_counts").Key, denials.DenialKey),
    ):
        assert ctypes.sizeof(c_side) == ctypes.sizeof(py_side)
        c_fields = [(name, getattr(c_side, name).offset) for name, *_ in c_side._fields_]
        py_fields = [(name, getattr(py_side, name).offset) for name, *_ in py_side._fields_]
        # BCC may name padding differently; the named fields must agree in order and place.
        assert [f for f in c_fields if not f[0].startswith("_")] == [
            f for f in py_fields if not f[0].startswith("_")
        ]


def _exercise(probes: ProbeSet) -> None:
    collected = Collected()
    probes.start(collected.deliver, collected.failed)
    try:
        with scratch_cgroup() as cgroup, secret_file() as secret:
            cgroup_id = os.stat(cgroup).st_ino
            pid, refused = denied_opens(secret, N, cgroup)
            probes.stop()
    finally:
        probes.stop()
    assert refused == N

    counters = denials.DenialCounters(
        probes.table("denial_counts"), probes.table("denial_overflow")
    )
    ours = {k: n for k, n in counters.read().items() if k.cgroup_id == cgroup_id}
    assert {(k.syscall, k.errno, k.source): n for k, n in ours.items()} == {
        ("openat", 13, Source.SYSCALL): N
    }

    records = [e for e in collected.events if e.cgroup_id == cgroup_id]
    assert len(records) == N
    assert {(e.pid, e.tid, e.uid, e.gid, e.syscall, e.errno, e.target) for e in records} == {
        (pid, pid, NOBODY, NOBODY, "openat", 13, str(secret))
    }
    assert all(not e.target_truncated and e.comm.startswith("python") for e in records)
    assert all(
        n == 0 for (_, kind), n in probes.kernel_drops().items() if kind != DropKind.PENDING_FULL
    )


def test_refusals_counted_exactly_and_recorded_with_path(loaded: ProbeSet) -> None:
    """Reads the path from the syscall's registers at exit (the BTF path)."""
    assert "-DAUDITD_HAVE_TASK_PT_REGS=1" in loaded.cflags
    _exercise(loaded)


def test_without_btf_task_the_path_is_kept_from_entry() -> None:
    """The fallback for kernels without BTF: the path pointer is saved at sys_enter."""
    probes = _load("-UAUDITD_HAVE_TASK_PT_REGS", "-DAUDITD_HAVE_TASK_PT_REGS=0")
    try:
        _exercise(probes)
    finally:
        probes.close()
