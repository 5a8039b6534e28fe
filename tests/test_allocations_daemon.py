"""The allocation monitor inside the real daemon: per-service metrics at /metrics, periodic
allocation_stats log lines for the policy, and map overflow in bpf_auditd_events_dropped_total."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from _alloc_workload import PipeWorkload
from _daemon import DaemonProcess, samples, value
from _workload import scratch_cgroup

pytestmark = [pytest.mark.needs_bpf, pytest.mark.needs_btf]

N = 3000


def _config(tmp_path: Path, allocations: str) -> Path:
    f = tmp_path / "config.yaml"
    f.write_text(
        "metrics:\n  listen: '127.0.0.1:0'\n"
        "housekeeping_interval: 0.5\n"
        "probes:\n  allocations:\n" + "".join(f"    {line}\n" for line in allocations.split(";"))
    )
    return f


def test_churn_shows_in_metrics_and_allocation_stats(tmp_path: Path) -> None:
    d = DaemonProcess(
        _config(tmp_path, "track_outstanding: true;live_sample: 4;live_entries: 524288")
    )
    try:
        d.ready()
        with scratch_cgroup() as cgroup:
            service = cgroup.name
            with PipeWorkload(cgroup) as workload:
                workload.churn(N)
                stats = None
                deadline = time.monotonic() + 30
                while stats is None and time.monotonic() < deadline:
                    stats = next(
                        (
                            e
                            for e in d.lines
                            if e.get("event") == "allocation_stats" and e.get("service") == service
                        ),
                        None,
                    )
                    time.sleep(0.2)
                assert stats is not None, "no allocation_stats line for the workload's service"
                assert stats["allocations_per_s"] > 0
                assert stats["window"] > 0
                assert isinstance(stats["outstanding_bytes"], int)
                assert stats["top_call_site"]  # a symbol, or an address where kallsyms hides them
                text = d.scrape()
        objects = sum(
            value(text, "bpf_auditd_kernel_allocations_total", service=service, kind=kind) or 0
            for kind in ("kmalloc", "slab")
        )
        assert objects >= N
        assert (
            value(text, "bpf_auditd_kernel_allocated_bytes_total", service=service, kind="slab")
            or 0
        ) > 0
        assert value(text, "bpf_auditd_kernel_outstanding_bytes", service=service) is not None
        assert value(text, "bpf_auditd_probe_up", probe="allocations") == 1
    finally:
        d.stop()


def test_overflowing_maps_are_counted_in_events_dropped(tmp_path: Path) -> None:
    d = DaemonProcess(
        _config(
            tmp_path,
            "slots: 16;site_entries: 64;site_sample: 1;track_outstanding: true;"
            "live_entries: 64;live_sample: 1",
        )
    )
    try:
        d.ready()
        # More live cgroups allocating than there are slots: by pigeonhole some find none.
        with contextlib.ExitStack() as stack:
            for _ in range(20):
                cgroup = stack.enter_context(scratch_cgroup())
                with PipeWorkload(cgroup) as workload:
                    workload.churn(20)
            text = d.scrape()
        dropped = {
            labels["stage"]: v
            for labels, v in samples(text, "bpf_auditd_events_dropped_total")
            if labels.get("probe") == "allocations"
        }
        assert dropped["site_map"] > 0
        assert dropped["live_map"] > 0
        assert dropped["counter_map"] > 0
        unattributed = samples(text, "bpf_auditd_kernel_allocations_unattributed_total")
        assert sum(v for _, v in unattributed) > 0
    finally:
        d.stop()
