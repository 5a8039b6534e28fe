"""Benchmark: what the namespace probe costs process and thread creation, as ratios in one run.

Workloads (bench/ns_loops.c): fork()+exit+wait (clone without new namespaces: the probe's
filter, the child's exit and sched_process_fork each look for a pending entry), thread
create+join (clone3: the probe reads the flags from user memory), and unshare(CLONE_NEWUTS)
(a recorded change per call, each decoded and attributed in user space). Each runs alone and
with the namespace probe loaded (alone in its BCC object, its records consumed by a reader
thread as in the daemon), in interleaved rounds so drift on a noisy machine hits both alike.
Reported: median ns/op (thread CPU time and wall clock) and the ratio to "alone".

Run as root: `.venv/bin/python bench/namespaces.py [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import structlog

from auditd.config.schema import Config
from auditd.daemon.wiring import build_probe_set
from auditd.kernel.cgroups import CgroupResolver
from auditd.kernel.paths import KernelPaths
from auditd.model.labels import LabelCap
from auditd.signals.namespaces.monitor import NamespaceMonitor

WORKLOADS = {"fork": 3000, "thread": 20000, "unshare": 20000}


@contextlib.contextmanager
def namespace_probe() -> Iterator[dict[str, int]]:
    monitor = NamespaceMonitor(Config().probes.namespaces, CgroupResolver(None), LabelCap(256))
    probes = build_probe_set(Config(), [monitor], KernelPaths(), structlog.get_logger())
    seen = {"received": 0, "dropped": 0}

    def deliver(batch: list[Any]) -> None:
        seen["received"] += len(batch)

    def failed(exc: BaseException) -> None:
        raise RuntimeError(exc)

    probes.load()
    try:
        monitor.bind(probes)
        probes.start(deliver, failed)
        yield seen
        probes.stop()
        seen["dropped"] = sum(probes.kernel_drops().values())
    finally:
        probes.close()


def run(loops: Path, workload: str) -> tuple[float, float]:
    out = subprocess.run(
        [str(loops), workload, str(WORKLOADS[workload])], capture_output=True, text=True, check=True
    )
    cpu, wall = out.stdout.split()
    return float(cpu), float(wall)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    results: dict[str, dict[str, list[tuple[float, float]]]] = {
        w: {"alone": [], "probe": []} for w in WORKLOADS
    }
    with tempfile.TemporaryDirectory() as tmp:
        loops = Path(tmp) / "ns_loops"
        subprocess.run(
            ["cc", "-O2", "-pthread", "-o", str(loops), str(HERE / "ns_loops.c")], check=True
        )
        records = {"received": 0, "dropped": 0}
        for _ in range(args.rounds):
            for workload in WORKLOADS:
                results[workload]["alone"].append(run(loops, workload))
            with namespace_probe() as seen:
                for workload in WORKLOADS:
                    results[workload]["probe"].append(run(loops, workload))
            for key, n in seen.items():
                records[key] += n
    report = {}
    for workload, settings in results.items():
        alone_cpu = statistics.median(c for c, _ in settings["alone"])
        alone_wall = statistics.median(w for _, w in settings["alone"])
        probe_cpu = statistics.median(c for c, _ in settings["probe"])
        probe_wall = statistics.median(w for _, w in settings["probe"])
        report[workload] = {
            "alone_ns": {"cpu": round(alone_cpu), "wall": round(alone_wall)},
            "probe_ns": {"cpu": round(probe_cpu), "wall": round(probe_wall)},
            "ratio": {
                "cpu": round(probe_cpu / alone_cpu, 3),
                "wall": round(probe_wall / alone_wall, 3),
            },
        }
    # Every unshare is one record: received + dropped (ring buffer full, counted) = calls.
    report["records"] = {**records, "calls": args.rounds * WORKLOADS["unshare"]}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
