"""Benchmark: what `bpf-auditd advise` costs while it runs, as ratios in one invocation.

Workloads (bench/advise_loops.c): a getppid() loop (only the syscall count), an open() loop
refused with EACCES as uid 65534 (a failed capability check, a refusal), and an mmap/munmap
loop as root (a successful no-audit CAP_SYS_ADMIN check each: the kernel stack is taken). Each
runs alone (nothing attached: the daemon's case, advise is never part of it), then with the
advise probes attached (all of them: capabilities, syscalls, files) in a cgroup advise leaves
alone ("other": the filter only) and in the advised cgroup ("advised"), in interleaved rounds
so drift on a noisy machine hits every setting alike. Reported: median ns/op (thread CPU
time and wall clock), the ratio to "alone", and for each advise program its ns per run from
the kernel's own accounting (BPF_ENABLE_STATS, held only while this runs).

Run as root: `.venv/bin/python bench/advise.py [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import structlog

from auditd.kernel.cgroups import cgroup2_path
from auditd.kernel.paths import KernelPaths
from auditd.signals.advice.observer import Observer

OPS = {"getppid": 1_000_000, "open": 200_000, "mmap": 100_000}
SETTINGS = ("alone", "other", "advised")
PROGRAMS = ("adv_enter", "adv_exit", "adv_cap")
_BPF_ENABLE_STATS = 32


def enable_stats() -> int:
    """A BPF_ENABLE_STATS fd: run time is counted while any such fd is open (refcounted, so
    kernel.bpf_stats_enabled, which others may use, is left alone)."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint8 * 128)()  # union bpf_attr: enable_stats.type = BPF_STATS_RUN_TIME
    fd = libc.syscall(321, _BPF_ENABLE_STATS, ctypes.byref(attr), 4)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS")
    return int(fd)


def program_stats() -> dict[str, tuple[int, int]]:
    """(run_cnt, run_time_ns) of the advise programs now loaded."""
    out = subprocess.run(
        ["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True
    )
    found: dict[str, tuple[int, int]] = {}
    for prog in json.loads(out.stdout):
        if prog.get("name") in PROGRAMS:
            cnt, ns = found.get(prog["name"], (0, 0))
            found[prog["name"]] = (cnt + prog.get("run_cnt", 0), ns + prog.get("run_time_ns", 0))
    return found


@contextlib.contextmanager
def cgroup(name: str) -> Iterator[Path]:
    root = cgroup2_path(KernelPaths())
    if root is None:
        sys.exit("bench: no cgroup v2 mount")
    path = root / name
    path.mkdir()
    try:
        yield path
    finally:
        path.rmdir()


@contextlib.contextmanager
def advising(pattern: str) -> Iterator[Observer]:
    observer = Observer(KernelPaths(), structlog.get_logger(), pattern=pattern)
    observer.start()
    try:
        observer.poll()
        yield observer
    finally:
        observer.finish()


def run(loops: Path, where: Path, workload: str, secret: Path) -> tuple[float, float]:
    args = (
        [workload, str(secret), str(OPS[workload])]
        if workload == "open"
        else [workload, str(OPS[workload])]
    )
    out = subprocess.run(
        ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(where), str(loops), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    cpu, wall = out.stdout.split()
    return float(cpu), float(wall)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    times: dict[str, dict[str, list[tuple[float, float]]]] = {
        w: {s: [] for s in SETTINGS} for w in OPS
    }
    # setting -> workload -> program -> [(runs, ns)] over the workload's own windows
    per_run: dict[str, dict[str, dict[str, list[tuple[int, int]]]]] = {
        s: {w: {p: [] for p in PROGRAMS} for w in OPS} for s in SETTINGS[1:]
    }
    name = f"bench-advise-{uuid.uuid4().hex[:6]}"
    with (
        tempfile.TemporaryDirectory() as tmp,
        cgroup(f"{name}-other") as other,
        cgroup(f"{name}-advised") as advised,
    ):
        work = Path(tmp)
        work.chmod(0o755)
        loops = work / "advise_loops"
        subprocess.run(["cc", "-O2", "-o", str(loops), str(HERE / "advise_loops.c")], check=True)
        secret = work / "secret"
        secret.write_text("no\n")
        secret.chmod(0o600)
        where = {"other": other, "advised": advised}
        # Timings without the kernel's run-time accounting (it costs two clock reads per run).
        for _ in range(args.rounds):
            for workload in OPS:
                times[workload]["alone"].append(run(loops, other, workload, secret))
            with advising(advised.name):
                for setting in SETTINGS[1:]:
                    for workload in OPS:
                        times[workload][setting].append(
                            run(loops, where[setting], workload, secret)
                        )
        # Then one pass with it, for each program's ns per run.
        stats_fd = enable_stats()
        try:
            with advising(advised.name):
                for setting in SETTINGS[1:]:
                    for workload in OPS:
                        before = program_stats()
                        run(loops, where[setting], workload, secret)
                        after = program_stats()
                        for prog in PROGRAMS:
                            cnt0, ns0 = before.get(prog, (0, 0))
                            cnt1, ns1 = after.get(prog, (0, 0))
                            per_run[setting][workload][prog].append((cnt1 - cnt0, ns1 - ns0))
        finally:
            os.close(stats_fd)
    report: dict[str, Any] = {}
    for workload, settings in times.items():
        alone_cpu = statistics.median(c for c, _ in settings["alone"])
        alone_wall = statistics.median(w for _, w in settings["alone"])
        entry: dict[str, Any] = {"alone_ns": {"cpu": round(alone_cpu), "wall": round(alone_wall)}}
        for setting in SETTINGS[1:]:
            cpu = statistics.median(c for c, _ in settings[setting])
            wall = statistics.median(w for _, w in settings[setting])
            entry[setting] = {
                "ns": {"cpu": round(cpu), "wall": round(wall)},
                "ratio": {"cpu": round(cpu / alone_cpu, 3), "wall": round(wall / alone_wall, 3)},
            }
        report[workload] = entry
    # Per program, over the workload's windows (other processes' syscalls included: the
    # programs run for every task while advising).
    for setting, workloads in per_run.items():
        for workload, progs in workloads.items():
            report[workload][setting]["bpf"] = {
                prog: {
                    "runs": sum(c for c, _ in runs),
                    "ns_per_run": round(
                        sum(ns for _, ns in runs) / max(1, sum(c for c, _ in runs))
                    ),
                }
                for prog, runs in progs.items()
            }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
