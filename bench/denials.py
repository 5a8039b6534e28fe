"""Benchmark: what watching denials costs a workload, as ratios within one run.

Workloads (bench/loops.c): a loop of open() refused with EACCES as uid 65534, and a loop of
getppid() (a syscall nothing hooks). Each runs alone, under bpf-auditd (default configuration),
and under Linux auditd with the equivalent rule (`-S openat -F exit=-EACCES`), in interleaved
rounds so that drift on a noisy machine hits every setting alike. Reported: median ns/op per
setting and the ratio to "alone" of the same round.

Run as root: `.venv/bin/python bench/denials.py [--rounds 3] [--ops 1000000] [--no-auditd]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import harness


def secret_file(workdir: Path) -> Path:
    workdir.chmod(0o755)
    path = workdir / "secret"
    path.write_text("no\n")
    path.chmod(0o600)
    return path


def run_loop(loops: Path, args: list[str]) -> float:
    """Wall-clock ns per operation (the loop prints CPU time first, then wall time)."""
    out = subprocess.run([str(loops), *args], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--no-auditd", action="store_true", help="skip the Linux auditd setting")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/denials.py: needs root", file=sys.stderr)
        return 2
    use_auditd = not args.no_auditd and shutil.which("auditd") is not None

    results: dict[str, dict[str, list[float]]] = {"open_eacces": {}, "getppid": {}}
    with tempfile.TemporaryDirectory(prefix="bpf-auditd-bench-") as tmp:
        workdir = Path(tmp)
        secret = secret_file(workdir)
        loops = harness.build("loops.c", workdir)
        daemon = harness.Daemon(workdir)
        workloads = {
            "open_eacces": ["open", str(secret), str(args.ops)],
            "getppid": ["getppid", str(args.ops * 5)],
        }
        settings: list[tuple[str, contextlib.AbstractContextManager[object]]] = []
        for _ in range(args.rounds):
            settings = [("alone", contextlib.nullcontext()), ("bpf-auditd", daemon())]
            if use_auditd:
                settings.append(("linux-auditd", harness.linux_auditd(harness.REFUSAL_RULE)))
            for name, setting in settings:
                with setting:
                    for workload, argv in workloads.items():
                        ns = run_loop(loops, argv)
                        results[workload].setdefault(name, []).append(ns)

    report: dict[str, dict[str, dict[str, float]]] = {}
    for workload, by_setting in results.items():
        alone = by_setting["alone"]
        report[workload] = {}
        for name, values in by_setting.items():
            ratios = [v / a for v, a in zip(values, alone, strict=True)]
            report[workload][name] = {
                "ns_per_op": round(statistics.median(values), 1),
                "ratio": round(statistics.median(ratios), 3),
            }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for workload, by_setting in report.items():
            for name, row in by_setting.items():
                print(f"{workload:12} {name:13} {row['ns_per_op']:9.1f} ns/op  {row['ratio']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
