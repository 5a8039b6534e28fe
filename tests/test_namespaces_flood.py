"""Namespace floods cost a bounded number of records: repeats are summarized in the kernel (per
program, op, types, result, escapes, setns target), counts stay exact, nothing is dropped.

Each test runs its flood in a scratch cgroup of its own under the real daemon, with a short dedup
window so that the summaries of the flood come within the test."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _daemon import DaemonProcess, samples, value
from _workload import scratch_cgroup

from auditd.kernel.cgroups import service_of

pytestmark = [pytest.mark.needs_bpf, pytest.mark.needs_btf]

WINDOW = 2.0

# argv: cgroup.procs, processes, calls each. Forks the processes into the cgroup; each calls
# unshare(CLONE_NEWUTS) `calls` times (every call a new UTS namespace).
_FLOOD = r"""
import ctypes, os, sys
procs, processes, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
open(procs, "w").write(str(os.getpid()))
libc = ctypes.CDLL(None, use_errno=True)
children = []
for _ in range(processes):
    pid = os.fork()
    if pid == 0:
        failed = sum(1 for _ in range(calls) if libc.unshare(0x04000000) != 0)
        os._exit(1 if failed else 0)
    children.append(pid)
sys.exit(max(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children))
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    config = tmp_path_factory.mktemp("ns-flood") / "config.yaml"
    config.write_text(
        "metrics:\n  listen: '127.0.0.1:0'\nhousekeeping_interval: 0.5\n"
        f"probes:\n  namespaces:\n    window: {WINDOW}\n"
        "  allocations:\n    enabled: false\n"
    )
    d = DaemonProcess(config)
    try:
        d.ready()
        yield d
    finally:
        d.stop()


def _drops(d: DaemonProcess) -> dict[str, float]:
    text = d.scrape()
    return {
        labels["stage"]: v
        for labels, v in samples(text, "bpf_auditd_events_dropped_total")
        if labels.get("probe") == "namespaces"
    }


def _received(d: DaemonProcess) -> float:
    return value(d.scrape(), "bpf_auditd_events_received_total", probe="namespaces") or 0.0


def _changes(d: DaemonProcess, service: str) -> list[dict[str, Any]]:
    return [
        e for e in d.lines if e.get("event") == "namespace_change" and e.get("service") == service
    ]


def _kernel_totals(d: DaemonProcess, service: str) -> Counter[tuple[str, str, str]]:
    """namespace_changes_total of the service, per (op, type, result)."""
    out: Counter[tuple[str, str, str]] = Counter()
    for labels, v in samples(d.scrape(), "bpf_auditd_namespace_changes_total"):
        if labels.get("service") == service:
            out[labels["op"], labels["type"], labels["result"]] += int(v)
    return out


def _logged_totals(events: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    """The calls the log lines stand for (`count`), per (op, type, result), as the metric counts
    them: once for each type of a call."""
    out: Counter[tuple[str, str, str]] = Counter()
    for e in events:
        for t in e["types"]:
            out[e["op"], t, e["result"]] += e["count"]
    return out


def _settled(d: DaemonProcess, service: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The service's log lines once they account for every call the kernel counted (the last
    summaries come a window after the flood, at a housekeeping pass)."""
    deadline = time.monotonic() + timeout
    while True:
        events = _changes(d, service)
        kernel = _kernel_totals(d, service)
        if (kernel and _logged_totals(events) == kernel) or time.monotonic() >= deadline:
            return events
        time.sleep(0.25)


def test_a_flood_from_a_few_processes_costs_a_few_records(daemon: DaemonProcess) -> None:
    processes, calls = 4, 5000
    with scratch_cgroup() as cgroup:
        time.sleep(0.1)
        service = service_of("/" + cgroup.name)
        drops, received = _drops(daemon), _received(daemon)
        flood = subprocess.run(
            [sys.executable, "-c", _FLOOD, str(cgroup / "cgroup.procs"), str(processes),
             str(calls)], check=False, timeout=300,
        )  # fmt: skip
        assert flood.returncode == 0
        events = _settled(daemon, service)
        kernel = _kernel_totals(daemon, service)
        records = _received(daemon) - received
        after = _drops(daemon)
    print(f"\n{processes * calls} calls: {len(events)} log lines, {records:.0f} records")
    assert kernel == {("unshare", "uts", "success"): processes * calls}  # exact
    assert _logged_totals(events) == kernel  # every call in a record's count or a summary's
    # One program: its first call leaves the host's UTS namespace, the rest move between new
    # ones: two combinations, one record each per window, plus their summaries.
    sent = [e for e in events if not e["summary"]]
    assert 2 <= len(sent) <= 2 * (1 + 60 / WINDOW)
    assert records < 200  # the whole machine's, in these seconds
    assert {k: after[k] - drops.get(k, 0) for k in after} == dict.fromkeys(after, 0)


@pytest.mark.skipif(shutil.which("stress-ng") is None, reason="needs stress-ng installed")
def test_stress_ngs_unshare_stressor_is_summarized_without_drops(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """What the issue measured: thousands of short-lived children, one call of each type each.
    Before dedup, ~45,000 records per 20 s were lost in the ring buffer and as many in the
    queue."""
    with scratch_cgroup() as cgroup:
        time.sleep(0.1)
        service = service_of("/" + cgroup.name)
        drops, received = _drops(daemon), _received(daemon)
        join = f"echo $$ > {cgroup / 'cgroup.procs'} && cd {tmp_path} && exec stress-ng "
        stress = subprocess.run(
            ["sh", "-c", join + "--unshare 2 -t 10s --metrics-brief"],
            check=False, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert stress.returncode == 0, stress.stderr
        events = _settled(daemon, service, timeout=60)
        kernel = _kernel_totals(daemon, service)
        records = _received(daemon) - received
        after = _drops(daemon)
    calls = sum(kernel.values())
    print(f"\nstress-ng: {calls} changes, {len(events)} log lines, {records:.0f} records")
    assert calls > 1000, kernel  # a flood indeed
    assert _logged_totals(events) == kernel
    assert {k: after[k] - drops.get(k, 0) for k in after} == dict.fromkeys(after, 0)
    assert records < calls / 20, (records, calls)
