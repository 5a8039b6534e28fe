"""A denial flood against the real daemon: exact counts, bounded records, bounded memory."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _daemon import DaemonProcess, wait_for_value
from _workload import scratch_cgroup, secret_file

from auditd.kernel.cgroups import service_of

pytestmark = pytest.mark.needs_bpf

TOTAL = 1_000_000
PROCESSES = 2
WINDOW = 10.0

# Each process refuses itself TOTAL/PROCESSES times, as fast as Python can (a few us each).
_FLOOD = r"""
import os, sys
procs, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
open(procs, "w").write(str(os.getpid()))
os.setgroups([]); os.setgid(65534); os.setuid(65534)
flags = os.O_RDONLY
refused = 0
for _ in range(n):
    try:
        os.open(path, flags)
    except PermissionError:
        refused += 1
print(refused)
"""


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_million_denials_are_counted_exactly_with_few_records(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"metrics:\n  listen: '127.0.0.1:0'\nprobes:\n  denials:\n    window: {WINDOW}\n"
    )
    d = DaemonProcess(config)
    records: list[dict[str, object]] = []
    duration = bound = 0.0
    try:
        d.ready()
        with scratch_cgroup() as cgroup, secret_file() as secret:
            service = service_of("/" + cgroup.name)
            started = time.monotonic()
            workers = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        _FLOOD,
                        str(cgroup / "cgroup.procs"),
                        str(secret),
                        str(TOTAL // PROCESSES),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(PROCESSES)
            ]
            peak_rss = 0
            while any(w.poll() is None for w in workers):
                peak_rss = max(peak_rss, _rss_kib(d.proc.pid))
                time.sleep(0.2)
            refused = sum(int(w.communicate()[0]) for w in workers)
            duration = time.monotonic() - started
            assert refused == TOTAL

            got = wait_for_value(
                d, "bpf_auditd_denials_total", TOTAL, timeout=30,
                service=service, syscall="openat", errno="EACCES",
            )  # fmt: skip
            assert got == TOTAL
            peak_rss = max(peak_rss, _rss_kib(d.proc.pid))

            records = [
                e for e in d.lines if e.get("event") == "denial" and e.get("service") == service
            ]
            # Bound: one record per process per dedup window the flood lasted (plus the first).
            bound = PROCESSES * (1 + math.ceil(duration / WINDOW))
            assert 1 <= len(records) <= bound, (len(records), bound)
            assert sum(1 + r["repeats"] for r in records) <= TOTAL
    finally:
        d.stop()
    print(
        f"flood: {TOTAL} denials in {duration:.1f}s, {len(records)} records (bound {bound}),"
        f" daemon peak RSS {peak_rss // 1024} MiB"
    )
    assert peak_rss < 200 * 1024, f"daemon RSS peaked at {peak_rss // 1024} MiB"
