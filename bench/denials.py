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
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def build_loops(workdir: Path) -> Path:
    binary = workdir / "loops"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(HERE / "loops.c")], check=True)
    return binary


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


@contextlib.contextmanager
def bpf_auditd(workdir: Path) -> Iterator[None]:
    config = workdir / "config.yaml"
    config.write_text("metrics:\n  listen: '127.0.0.1:0'\nlog:\n  level: warning\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditd", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        # With log level warning the only way to know the probes are attached is the metrics
        # port answering; poll /proc for the listening socket instead of parsing logs.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("bpf-auditd exited during start-up")
            if _listening(proc.pid):
                break
            time.sleep(0.2)
        else:
            raise RuntimeError("bpf-auditd did not start")
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _listening(pid: int) -> bool:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                return True
    return False


@contextlib.contextmanager
def linux_auditd() -> Iterator[None]:
    """Linux auditd with the rule that watches what bpf-auditd's denial probe watches."""
    status = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=True).stdout
    was_enabled = next(
        line.split()[1] for line in status.splitlines() if line.startswith("enabled")
    )
    subprocess.run(["auditd"], check=True)  # daemonizes; registers itself as the audit daemon
    try:
        subprocess.run(["auditctl", "-e", "1"], check=True, capture_output=True)
        subprocess.run(
            ["auditctl", "-a", "always,exit", "-F", "arch=b64", "-S", "openat",
             "-F", "exit=-EACCES", "-k", "bpf-auditd-bench"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        time.sleep(0.5)
        yield
    finally:
        subprocess.run(["auditctl", "-D"], capture_output=True, check=False)
        pid_file = Path("/var/run/auditd.pid")
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            time.sleep(1)
        subprocess.run(["auditctl", "-e", was_enabled], capture_output=True, check=False)


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
        loops = build_loops(workdir)
        secret = secret_file(workdir)
        workloads = {
            "open_eacces": ["open", str(secret), str(args.ops)],
            "getppid": ["getppid", str(args.ops * 5)],
        }
        settings: list[tuple[str, contextlib.AbstractContextManager[None]]] = []
        for _ in range(args.rounds):
            settings = [("alone", contextlib.nullcontext()), ("bpf-auditd", bpf_auditd(workdir))]
            if use_auditd:
                settings.append(("linux-auditd", linux_auditd()))
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
