"""Benchmark (not a test): what a policy's `ignore` list saves on a denial flood.

One invocation, as root: the denied-open loop of bench/denied_open.c runs alone, then under
bpf-auditd with a policy that ignores one service, from that ignored service and from an audited
one, rounds interleaved (these 2 noisy cores make only ratios within one run meaningful); then
alone again. Reports ns/op, ratios, and how many records each flood sent to user space.

    .venv/bin/python bench/kernel_filter.py [--n 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the test suite's daemon and cgroup helpers

from _daemon import DaemonProcess, value
from _workload import scratch_cgroup, secret_file

from auditd.kernel.cgroups import service_of


def flood(binary: Path, cgroup: Path, secret: Path, n: int) -> float:
    out = subprocess.run(
        [str(binary), str(cgroup / "cgroup.procs"), str(secret), str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="refused opens per run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="bpf-auditd-bench-") as tmp,
        secret_file() as secret,
        scratch_cgroup("bench-ignored") as ignored,
        scratch_cgroup("bench-audited") as audited,
    ):
        work = Path(tmp)
        binary = work / "denied_open"
        subprocess.run(["cc", "-O2", "-o", str(binary), str(HERE / "denied_open.c")], check=True)
        ignored_service = service_of("/" + ignored.name)
        audited_service = service_of("/" + audited.name)
        policy = work / "policy.yaml"
        policy.write_text(f"ignore: {{services: [{json.dumps(ignored_service)}]}}\nrules: []\n")
        config = work / "config.yaml"
        config.write_text("metrics:\n  listen: '127.0.0.1:0'\n")

        alone = [flood(binary, audited, secret, args.n) for _ in range(args.rounds)]
        d = DaemonProcess(config, "--policy", str(policy))
        times: dict[str, list[float]] = {"ignored": [], "audited": []}
        try:
            d.ready()
            d.wait_for("kernel_filter_applied")
            for _ in range(args.rounds):
                times["ignored"].append(flood(binary, ignored, secret, args.n))
                times["audited"].append(flood(binary, audited, secret, args.n))
            want = args.n * args.rounds
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                text = d.scrape()
                counted = {
                    s: value(text, "bpf_auditd_denials_total", service=s, errno="EACCES")
                    for s in (ignored_service, audited_service)
                }
                if all(c is not None and c >= want for c in counted.values()):
                    break
                time.sleep(0.5)
            reached = value(text, "bpf_auditd_events_ignored_total", probe="denials") or 0
        finally:
            d.stop()
        audited_lines = sum(
            1 for e in d.lines if e.get("event") == "denial" and e.get("service") == audited_service
        )
        alone += [flood(binary, audited, secret, args.n) for _ in range(args.rounds)]

    base = statistics.median(alone)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"denied open(), {args.n} per run, {args.rounds} rounds, medians (ns/op):")
    print(f"  alone (before and after)        {base:8.1f}   {alone}")
    for k in ("ignored", "audited"):
        ratio = med[k] / base
        print(f"  under bpf-auditd, {k:8}      {med[k]:8.1f}   {times[k]}  ({ratio:.2f}x alone)")
    print(f"  ignored / audited               {med['ignored'] / med['audited']:.2f}x")
    print(f"  kernel counters: {counted}")
    print(
        f"  records that reached user space: ignored service {int(reached)} "
        f"(dropped there, counted in bpf_auditd_events_ignored_total), "
        f"audited service {audited_lines} log lines"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
