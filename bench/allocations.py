"""Cost of the allocation probes on a pipe-churn loop (about nine kernel allocations per round),
as ratios against the loop alone in the same run.

Each round runs, per configuration: the loop alone, the loop with the configuration attached,
the loop alone again; the ratio is the middle run over the mean of the other two, so drift on a
shared machine cancels out. Times are the loop's own CPU time (user + system, which includes the
BPF programs run in its syscalls), not wall time, so waiting for a busy CPU does not count.

    sudo .venv/bin/python bench/allocations.py [--rounds 8] [--iterations 50000] [--json]

Configurations: `floor` (empty raw tracepoint programs on the three allocation tracepoints),
`cgroup id` (the helper and a per-CPU add: the least a per-cgroup count costs), `naive` (a
shared hash keyed by cgroup, atomic adds: what DESIGN.md measured at 1.15x),
bpf-auditd's probes as configured by default, with outstanding tracking, and on classic
tracepoints, and BCC's own `memleak` and `slabratetop` where they run (slabratetop does not
build on kernels >= 6.8, bcc#4941; the reason is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import structlog

from auditd.config.schema import AllocationProbeConfig
from auditd.kernel.cgroups import CgroupResolver, cgroup2_path
from auditd.kernel.context import kernel_context
from auditd.kernel.paths import KernelPaths
from auditd.model.labels import LabelCap
from auditd.signals.allocations.monitor import AllocationMonitor
from probes.runtime import ProbeSet

FLOOR = "".join(
    f"RAW_TRACEPOINT_PROBE({tp}) {{ return 0; }}\n"
    for tp in ("kmalloc", "kmem_cache_alloc", "mm_page_alloc")
)
# The least any per-cgroup count can cost: the cgroup id helper and a per-CPU add.
CGROUP_ID = "BPF_PERCPU_ARRAY(cgid_sum, u64, 1);\n" + "".join(
    f"RAW_TRACEPOINT_PROBE({tp}) {{ u32 k = 0; u64 *s = cgid_sum.lookup(&k); "
    "if (s) *s += bpf_get_current_cgroup_id(); return 0; }\n"
    for tp in ("kmalloc", "kmem_cache_alloc", "mm_page_alloc")
)
NAIVE = """
BPF_HASH(naive_bytes, u64, u64, 10240);
static __always_inline void naive_add(u64 bytes)
{
    u64 cgroup_id = bpf_get_current_cgroup_id(), zero = 0;
    u64 *total = naive_bytes.lookup_or_try_init(&cgroup_id, &zero);
    if (total)
        __sync_fetch_and_add(total, bytes);
}
TRACEPOINT_PROBE(kmem, kmalloc) { naive_add(args->bytes_alloc); return 0; }
TRACEPOINT_PROBE(kmem, kmem_cache_alloc) { naive_add(args->bytes_alloc); return 0; }
"""

Attach = Callable[[], contextlib.AbstractContextManager[None]]


def build_workload(directory: Path) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        sys.exit("bench: needs gcc (or cc) to build bench/pipe_churn.c")
    binary = directory / "pipe_churn"
    subprocess.run(
        [gcc, "-O2", "-o", str(binary), str(ROOT / "bench" / "pipe_churn.c")], check=True
    )
    return binary


def churn(binary: Path, iterations: int) -> float:
    """CPU nanoseconds per round of the loop."""
    out = subprocess.run(
        [str(binary), str(iterations)], capture_output=True, text=True, check=True
    ).stdout
    return float(out.split()[0])


@contextlib.contextmanager
def bcc_text(text: str) -> Iterator[None]:
    from bcc import BPF

    bpf = BPF(text=text.encode())
    try:
        yield
    finally:
        bpf.cleanup()


@contextlib.contextmanager
def auditd_probes(config: AllocationProbeConfig) -> Iterator[None]:
    paths = KernelPaths()
    resolver = CgroupResolver(cgroup2_path(paths))
    monitor = AllocationMonitor(config, resolver, LabelCap(1 << 20))
    kernel = kernel_context(paths, structlog.get_logger())
    probes = ProbeSet(monitor.probe_specs(kernel), ["-DRINGBUF_PAGES=64", *kernel.plan.cflags])
    probes.load()
    try:
        monitor.bind(probes)
        yield
    finally:
        probes.close()


@contextlib.contextmanager
def bcc_tool(argv: list[str], ready: str, timeout: float = 60) -> Iterator[None]:
    """A BCC tool in a subprocess, used once it prints `ready` (plus a moment to attach)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {''.join(seen)[-300:]}")
            if select.select([proc.stdout], [], [], 0.5)[0]:
                line = proc.stdout.readline()
                seen.append(line)
                if ready in line:
                    break
        else:
            raise RuntimeError(f"{argv[0]} did not attach within {timeout}s")
        time.sleep(1.0)
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def slabratetop_problem() -> str | None:
    """Why slabratetop cannot be measured here, or None if it runs."""
    tool = shutil.which("slabratetop-bpfcc") or shutil.which("slabratetop")
    if tool is None:
        return "not installed (Debian bpfcc-tools)"
    run = subprocess.run([tool, "1", "1"], check=False, capture_output=True, text=True, timeout=120)
    if run.returncode == 0 and "Failed" not in run.stderr:
        return None
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    return (errors or run.stderr.strip().splitlines() or ["failed"])[0][:200]


@dataclasses.dataclass
class Result:
    name: str
    ratios: list[float]
    note: str = ""

    def summary(self) -> dict[str, Any]:
        if not self.ratios:
            return {"name": self.name, "note": self.note}
        return {
            "name": self.name,
            "median": round(statistics.median(self.ratios), 3),
            "min": round(min(self.ratios), 3),
            "max": round(max(self.ratios), 3),
            "rounds": len(self.ratios),
            "note": self.note,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=50000)
    parser.add_argument("--tool-rounds", type=int, default=3, help="rounds for BCC's tools")
    parser.add_argument("--only", nargs="*", help="configurations to run (default: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: must run as root (loads eBPF programs)")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))

    configs: dict[str, tuple[Attach, int, str]] = {
        "floor (empty raw tracepoints)": (lambda: bcc_text(FLOOR), args.rounds, ""),
        "cgroup id (helper + per-CPU add)": (lambda: bcc_text(CGROUP_ID), args.rounds, ""),
        "naive (shared hash, atomics)": (lambda: bcc_text(NAIVE), args.rounds, ""),
        "bpf-auditd (default)": (
            lambda: auditd_probes(AllocationProbeConfig()),
            args.rounds,
            "exact totals per cgroup, sites 1/64, no outstanding",
        ),
        "bpf-auditd (sites ~off)": (
            lambda: auditd_probes(AllocationProbeConfig(site_sample=65536)),
            args.rounds,
            "site sampling at its rarest: what the 1/64 samples cost",
        ),
        "bpf-auditd (track_outstanding)": (
            lambda: auditd_probes(AllocationProbeConfig(track_outstanding=True)),
            args.rounds,
            "plus the free tracepoints, live objects 1/16",
        ),
        "bpf-auditd (classic tracepoints)": (
            lambda: auditd_probes(AllocationProbeConfig(attach="classic")),
            args.rounds,
            "what kernels without BTF get",
        ),
    }
    memleak = shutil.which("memleak-bpfcc") or shutil.which("memleak")
    results: list[Result] = []
    if memleak:
        configs["bcc memleak"] = (
            lambda: bcc_tool([memleak, "60"], "Attaching to kernel allocators"),
            args.tool_rounds,
            "kernel mode: every allocation with its stack",
        )
    else:
        results.append(Result("bcc memleak", [], "not installed (Debian bpfcc-tools)"))
    if args.only:
        configs = {k: v for k, v in configs.items() if any(o in k for o in args.only)}

    alone: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bpf-auditd-bench-") as tmp:
        binary = build_workload(Path(tmp))
        churn(binary, args.iterations)  # warm caches
        rounds = max(n for _, n, _ in configs.values()) if configs else 0
        ratios: dict[str, list[float]] = {name: [] for name in configs}
        for r in range(rounds):
            for name, (attach, n, _) in configs.items():
                if r >= n:
                    continue
                before = churn(binary, args.iterations)
                with attach():
                    during = churn(binary, args.iterations)
                after = churn(binary, args.iterations)
                alone += [before, after]
                ratios[name].append(during / ((before + after) / 2))
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
        results = [
            Result(name, ratios[name], note) for name, (_, _, note) in configs.items()
        ] + results
    if not args.only or "slabratetop" in args.only:
        problem = slabratetop_problem()
        note = f"does not run here: {problem}" if problem else "runs (not timed)"
        results.append(Result("bcc slabratetop", [], note))

    report = {
        "iterations": args.iterations,
        "alone_cpu_ns_per_round": round(statistics.median(alone), 1) if alone else None,
        "load_average": os.getloadavg(),
        "results": [r.summary() for r in results],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"pipe churn alone: {report['alone_cpu_ns_per_round']} ns CPU per round "
        f"({args.iterations} rounds per run); load average {report['load_average']}"
    )
    print(f"{'configuration':<36} {'ratio (median)':>14} {'min':>7} {'max':>7}  note")
    for r in results:
        s = r.summary()
        if "median" in s:
            print(f"{r.name:<36} {s['median']:>14.3f} {s['min']:>7.3f} {s['max']:>7.3f}  {r.note}")
        else:
            print(f"{r.name:<36} {'-':>14} {'-':>7} {'-':>7}  {r.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
