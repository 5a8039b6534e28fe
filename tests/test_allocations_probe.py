"""The allocation probe in the real kernel: exact counts per cgroup, real pipe call sites,
outstanding bytes that grow and shrink with live objects, and overflow that is counted."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from _alloc_workload import PipeWorkload
from _workload import cgroup2_root, scratch_cgroup

from auditd.config.schema import AllocationProbeConfig
from auditd.kernel.cgroups import CgroupResolver
from auditd.kernel.context import kernel_context
from auditd.kernel.paths import KernelPaths
from auditd.model.labels import LabelCap
from auditd.signals.allocations.monitor import AllocationMonitor
from auditd.signals.allocations.plan import attach_plan
from probes import allocations as probe
from probes.runtime import DropKind, ProbeSet

pytestmark = [pytest.mark.needs_bpf, pytest.mark.needs_btf]

N = 2000  # pipes churned
K = 1000  # pipes held open
# A pipe holds, besides its inode, dentry and two files, its pipe_inode_info and an array of 16
# struct pipe_buffer (16 x 40 bytes, from kmalloc-1k): at least 1 KiB that lives exactly as
# long as the pipe.
PIPE_OBJECT_BYTES = 1024


@contextlib.contextmanager
def attached(config: AllocationProbeConfig) -> Iterator[tuple[AllocationMonitor, ProbeSet]]:
    resolver = CgroupResolver(cgroup2_root())
    resolver.rescan()
    monitor = AllocationMonitor(config, resolver, LabelCap(1 << 20))
    kernel = kernel_context(KernelPaths(), structlog.get_logger())
    probes = ProbeSet(monitor.probe_specs(kernel), ["-DRINGBUF_PAGES=64", *kernel.plan.cflags])
    probes.load()
    try:
        monitor.bind(probes)
        yield monitor, probes
    finally:
        probes.close()


def tables(monitor: AllocationMonitor) -> probe.AllocationTables:
    assert monitor.ledger is not None
    assert isinstance(monitor.ledger.tables, probe.AllocationTables)
    return monitor.ledger.tables


def outstanding(monitor: AllocationMonitor, cgroup_id: int) -> int:
    live = tables(monitor).live()
    return sum(o.bytes for o in live if o.cgroup_id == cgroup_id) * monitor.config.live_sample


def wait_until(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll `check` (frees can lag: RCU-deferred frees land after a grace period)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def test_map_layouts_match_the_c_structs() -> None:
    with attached(AllocationProbeConfig(track_outstanding=True)) as (_, probes):
        for c_side, py_side in (
            (probes.table("alloc_slot_totals").sLeaf, probe.SlotTotals),
            (probes.table("alloc_sites").Key, probe.SiteKey),
            (probes.table("alloc_sites").sLeaf, probe.SiteValue),
            (probes.table("alloc_live").Leaf, probe.LiveValue),
        ):
            assert ctypes.sizeof(c_side) == ctypes.sizeof(py_side), py_side.__name__
            c_fields = [(n, getattr(c_side, n).offset) for n, *_ in c_side._fields_]
            py_fields = [(n, getattr(py_side, n).offset) for n, *_ in py_side._fields_]
            assert [f for f in c_fields if not f[0].startswith("_")] == py_fields


def test_btf_proves_the_raw_tracepoints_on_this_kernel() -> None:
    plan = attach_plan(Path("/sys/kernel/btf/vmlinux"))
    assert plan.raw, plan.reason
    assert "-DALLOC_RAW=1" in plan.cflags


@pytest.mark.parametrize("attach", ["auto", "classic"])
def test_pipe_churn_is_counted_and_attributed_to_pipe_code(attach: str) -> None:
    config = AllocationProbeConfig(
        attach=attach,  # type: ignore[arg-type]
        site_sample=4,
        track_outstanding=True,
        live_sample=4,
        live_entries=1 << 19,
    )
    with attached(config) as (monitor, probes), scratch_cgroup() as cgroup:
        cgroup_id = os.stat(cgroup).st_ino
        with PipeWorkload(cgroup) as workload:
            start = outstanding(monitor, cgroup_id)
            workload.churn(N)
        monitor._resolver.rescan()
        window = monitor.window()
        usage = window.deltas.get(cgroup_id, {})
        objects = sum(usage.get(k, probe.ZERO).count for k in ("kmalloc", "slab"))
        assert objects >= N, usage
        sites = {
            monitor.symbol(s.call_site)
            for s in window.sites
            if s.cgroup_id == cgroup_id and s.call_site
        }
        pipe_sites = {s for s in sites if re.search(r"pipe", s)}
        assert pipe_sites, f"no pipe-related call site among {sorted(sites)}"
        kallsyms = Path("/proc/kallsyms").read_text()
        for site in pipe_sites:
            assert re.search(rf" {re.escape(site.split('+')[0])}$", kallsyms, re.M), site
        allocated = sum(u.allocated for u in usage.values())
        margin = max(64 << 10, allocated // 50)
        assert wait_until(lambda: outstanding(monitor, cgroup_id) - start <= margin), (
            f"outstanding {outstanding(monitor, cgroup_id) - start} B after the churn of "
            f"{allocated} B; margin {margin} B"
        )
        assert probes.kernel_drops()["allocations", DropKind.LIVE_FULL] == 0


def test_pipes_held_open_are_outstanding_until_closed() -> None:
    config = AllocationProbeConfig(track_outstanding=True, live_sample=4, live_entries=1 << 19)
    with attached(config) as (monitor, probes), scratch_cgroup() as cgroup:
        cgroup_id = os.stat(cgroup).st_ino
        with PipeWorkload(cgroup) as workload:
            start = outstanding(monitor, cgroup_id)
            workload.hold(K)
            held = outstanding(monitor, cgroup_id) - start
            assert held >= K * PIPE_OBJECT_BYTES, f"{held} B outstanding for {K} open pipes"
            workload.close()
            assert wait_until(lambda: outstanding(monitor, cgroup_id) - start <= held // 10), (
                f"{outstanding(monitor, cgroup_id) - start} B still outstanding of {held} B"
            )
        assert probes.kernel_drops()["allocations", DropKind.LIVE_FULL] == 0


def test_tiny_maps_overflow_into_counted_drops() -> None:
    config = AllocationProbeConfig(
        slots=16,
        site_entries=64,
        site_sample=1,
        track_outstanding=True,
        live_entries=64,
        live_sample=1,
    )
    with attached(config) as (monitor, probes), contextlib.ExitStack() as stack:
        # More cgroups allocating than there are slots: by pigeonhole some find none.
        for _ in range(24):
            cgroup = stack.enter_context(scratch_cgroup())
            with PipeWorkload(cgroup) as workload:
                workload.churn(50)
        drops = probes.kernel_drops()
        assert drops["allocations", DropKind.COUNTER_FULL] > 0
        assert drops["allocations", DropKind.SITE_FULL] > 0
        assert drops["allocations", DropKind.LIVE_FULL] > 0
        families = {f.name: f for f in monitor.families()}
        unattributed = families["bpf_auditd_kernel_allocations_unattributed"].samples
        assert sum(unattributed.values()) > 0
        assert len(tables(monitor).owners()) == 16
