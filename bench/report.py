"""Every benchmark in one invocation, written as a Markdown report and a bar chart.

    sudo .venv/bin/python bench/report.py [--rounds 5] [--out docs] [--quick] [--skip ...]

1. What watching costs: a refused open() loop (uid 65534, EACCES), a getppid() loop (nothing
   hooks it), pipe churn (kernel allocations) and redis-benchmark SET/GET over loopback, each
   alone and under bpf-auditd (default configuration), empty programs where the daemon attaches
   its own, the cheapest counter of the same event (a bpftrace one-liner), Linux auditd with
   the equivalent rule, and BCC's own tool for the job where one runs here; interleaved
   rounds, medians and ranges.
2. Per program: ns per run from the kernel's accounting (BPF_ENABLE_STATS) during the loops,
   for the daemon's programs and for the empty ones.
3. Footprint and start-up: VmRSS 30 s after ready and after a 1,000,000-refusal flood; ready
   (wall, from exec) on a warm image cache and on a cold one (compiled).
4. The other benchmarks in bench/ (allocations, denials, namespaces, kernel_filter, advise,
   a short soak), their own output appended.

Writes <out>/bench.md and <out>/bench.png (matplotlib: `pip install -e '.[bench]'`), and prints
what it could not measure (Linux auditd cannot run while another process is the registered
audit daemon; BCC's opensnoop needs kprobes or fentry). The machine should be quiet: other
programs on the same tracepoints move "alone" too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import bpfstats
import harness
import render
from harness import Unavailable, Workload

# Settings --skip can leave out, by the word it takes.
SKIPPABLE = {"Linux auditd": "auditd", "BCC tool": "bcc", "floor (bpftrace)": "bpftrace"}
# Seconds to wait after a setting attached, and after it left before timing "alone" again. A
# start patches tracepoint sites and a stop frees perf events in kernel workers for seconds;
# their interrupts and callbacks land in whatever thread runs, the timed loop included.
SETTLE = {"in": 2.0, "out": 6.0}
REPORT_TARGETS = {
    "refused_open": "≤ 1.30x",
    "getppid": "≤ 1.05x",
    "pipe_churn": "≤ empty + 0.03",
    "redis": "≥ 0.97 of alone (≤ 1.031x)",
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def workloads(work: Path, quick: bool) -> list[Workload]:
    loops, churn = harness.build("loops.c", work), harness.build("pipe_churn.c", work)
    work.chmod(0o755)
    secret = work / "secret"
    secret.write_text("no\n")
    secret.chmod(0o600)
    n = 0.3 if quick else 1.0
    opens, calls, pipes, requests = (int(x * n) for x in (300_000, 2_000_000, 200_000, 100_000))
    loads = [
        Workload(
            "refused_open", "refused open()", harness.loop(loops, "open", str(secret), str(opens)),
            opens, floor=harness.REFUSAL_FLOOR, audit_rule=harness.REFUSAL_RULE,
            bcc_tool=("opensnoop-bpfcc", "-x", "PID"),
        ),
        Workload(
            "getppid", "getppid()", harness.loop(loops, "getppid", str(calls)), calls,
            floor=harness.REFUSAL_FLOOR, audit_rule=harness.REFUSAL_RULE,
        ),
        Workload(
            "pipe_churn", "pipe churn", harness.loop(churn, str(pipes)), pipes,
            floor=harness.ALLOC_FLOOR, bcc_tool=("memleak-bpfcc", "3", "Attaching to kernel"),
        ),
    ]  # fmt: skip
    if shutil.which("redis-server") and shutil.which("redis-benchmark"):
        loads.append(
            Workload(
                "redis",
                "redis SET/GET",
                harness.redis(16379, requests),
                2 * requests,
                unit="req/s",
                higher_is_better=True,
                floor=harness.REFUSAL_FLOOR,
                audit_rule=harness.REFUSAL_RULE,
            )
        )
    return loads


def settings(
    w: Workload,
    daemon: harness.Daemon,
    empty: Callable[[], contextlib.AbstractContextManager[object]],
) -> list[tuple[str, harness.Setting]]:
    def unavailable(why: str) -> harness.Setting:
        @contextlib.contextmanager
        def setting() -> object:
            raise Unavailable(why)
            yield

        return setting  # type: ignore[return-value]

    return [
        ("bpf-auditd", daemon),
        ("empty programs", empty),
        ("floor (bpftrace)", lambda: harness.bpftrace(w.floor)),
        ("Linux auditd", lambda: harness.linux_auditd(w.audit_rule)),
        (
            "BCC tool",
            (lambda: harness.bcc_tool(w.bcc_tool))
            if w.bcc_tool
            else unavailable("no BCC tool does this job"),
        ),
    ]


def matrix(
    r: render.Results,
    loads: list[Workload],
    daemon: harness.Daemon,
    empty: Callable[[], contextlib.AbstractContextManager[object]],
    rounds: int,
) -> None:
    for n in range(rounds):
        print(f"round {n + 1}/{rounds}", flush=True)
        for w in loads:
            context = harness.redis_server(16379) if w.name == "redis" else contextlib.nullcontext()
            with context:
                before = w.run()
                r.alone.setdefault(w.name, []).append(before)
                for name, setting in settings(w, daemon, empty):
                    if (w.name, name) in r.unavailable:
                        continue
                    try:
                        with setting():
                            time.sleep(SETTLE["in"])
                            value = w.run()
                    except Unavailable as exc:
                        r.unavailable[w.name, name] = str(exc)
                        print(f"  {w.name}: {name}: not measured: {exc}", flush=True)
                        continue
                    time.sleep(SETTLE["out"])
                    after = w.run()
                    r.alone[w.name].append(after)
                    ratio = w.cost(value, (before + after) / 2)
                    r.ratios.setdefault((w.name, name), []).append(ratio)
                    print(f"  {w.name:12} {name:18} {ratio:.3f}", flush=True)
                    before = after


def program_stats(
    r: render.Results,
    loads: list[Workload],
    daemon: harness.Daemon,
    empty: Callable[[], contextlib.AbstractContextManager[object]],
    reps: int,
) -> None:
    for setting, start in (("bpf-auditd", daemon), ("empty programs", empty)):
        for w in loads:
            if w.name == "redis":
                continue
            time.sleep(SETTLE["out"])
            with start() as held:
                time.sleep(SETTLE["in"])
                pid = (
                    held.proc.pid if isinstance(held, harness.Daemon) and held.proc else os.getpid()
                )
                ids = bpfstats.program_ids(pid)
                names = bpfstats.full_names(ids)
                per: dict[str, list[tuple[int, float]]] = {}
                ops = w.ops
                with bpfstats.stats_enabled():
                    for _ in range(reps):
                        before = bpfstats.sample(ids)
                        w.run()
                        for prog, cost in bpfstats.delta(
                            before, bpfstats.sample(ids), names
                        ).items():
                            per.setdefault(prog, []).append((cost.runs, cost.ns_per_run))
            for prog, values in sorted(per.items()):
                runs = statistics.median(v[0] for v in values) / ops
                if runs >= 0.05:
                    r.stats.append({"workload": w.label, "setting": setting, "program": prog,
                                    "runs_per_op": runs, "ns": [v[1] for v in values]})  # fmt: skip


def footprint(r: render.Results, work: Path, daemon: harness.Daemon, quick: bool) -> None:
    loops = work / "loops"
    warm, restart = [], []
    for _ in range(3 if quick else 5):
        # The kernel frees a stopped daemon's perf events in its own workers, ~5 s, holding
        # the lock every new tracepoint attachment takes: a start right after a stop waits.
        time.sleep(8)
        with daemon():
            warm.append(daemon.ready_s)
        with daemon():
            restart.append(daemon.ready_s)
    shutil.rmtree(work / "state" / "probe-cache", ignore_errors=True)
    time.sleep(8)
    with daemon() as d:
        cold = d.ready_s
        assert d.proc is not None
        time.sleep(30)
        at_30 = rss_mb(d.proc.pid)
        subprocess.run(
            [str(loops), "open", str(work / "secret"), "1000000"], check=True, capture_output=True
        )
        time.sleep(2)
        flooded = rss_mb(d.proc.pid)
    r.footprint += [
        ("VmRSS 30 s after ready", f"{at_30:.1f} MB", "≤ 60 MB"),
        ("VmRSS after 1,000,000 refusals", f"{flooded:.1f} MB", "≤ 60 MB"),
        (f"ready, wall from exec, image cached ({len(warm)} starts)",
         render.spread(warm) + " s", "≤ 2 s"),
        ("ready, right after the previous daemon stopped", render.spread(restart) + " s", ""),
        ("ready, no image cached (compiled in a child)", f"{cold:.2f} s", ""),
    ]  # fmt: skip


OTHERS = (
    ("bench/allocations.py", ["--rounds", "3", "--iterations", "50000", "--tool-rounds", "1"]),
    ("bench/denials.py", ["--rounds", "2", "--ops", "300000"]),
    ("bench/namespaces.py", ["--rounds", "2"]),
    ("bench/kernel_filter.py", ["--n", "100000", "--rounds", "2"]),
    ("bench/advise.py", ["--rounds", "2"]),
)


def others(r: render.Results, soak: str, skip: set[str]) -> None:
    runs = [*OTHERS, ("bench/soak.py", ["--duration", soak, "--out", "/tmp/bpf-auditd-soak"])]
    for script, args in runs:
        if Path(script).stem in skip:
            r.missing.append(f"{script}: skipped (--skip)")
            continue
        command = " ".join([script, *args])
        print(f"running {command}", flush=True)
        done = subprocess.run(
            [sys.executable, str(harness.ROOT / script), *args],
            capture_output=True, text=True, check=False, cwd=harness.ROOT,
        )  # fmt: skip
        text = done.stdout
        if script.endswith("soak.py") and done.returncode == 0:
            with contextlib.suppress(OSError):
                text += Path("/tmp/bpf-auditd-soak/soak.md").read_text()
        if done.returncode != 0:
            r.missing.append(f"{script}: exited {done.returncode}: {done.stderr.strip()[-200:]}")
        r.others.append((command, text or done.stderr))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stats-reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=harness.ROOT / "docs")
    parser.add_argument("--quick", action="store_true", help="smaller loops, fewer starts")
    parser.add_argument("--soak", default="3m", help="duration of bench/soak.py's run")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        help="sections, settings or scripts to leave out: matrix stats footprint auditd bcc "
        "bpftrace allocations denials namespaces kernel_filter advise soak",
    )
    parser.add_argument(
        "--settle",
        nargs=2,
        type=float,
        default=(SETTLE["in"], SETTLE["out"]),
        metavar=("IN", "OUT"),
        help="seconds to wait after a setting attached and after it left (default: 2 6)",
    )
    args = parser.parse_args()
    SETTLE["in"], SETTLE["out"] = args.settle
    if os.geteuid() != 0:
        sys.exit("bench/report.py: must run as root (loads eBPF programs, runs Linux auditd)")
    skip = set(args.skip)
    uname = platform.uname()
    r = render.Results(
        machine={
            "kernel": uname.release,
            "CPUs": str(os.cpu_count()),
            "load average at start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
        rounds=args.rounds,
        workloads={},
        targets=REPORT_TARGETS,
    )
    with tempfile.TemporaryDirectory(prefix="bpf-auditd-report-") as tmp:
        work = Path(tmp)
        loads = workloads(work, args.quick)
        r.workloads = {w.name: w.label for w in loads}
        r.units = {w.name: w.unit for w in loads}
        daemon = harness.Daemon(work)
        with daemon():  # compiles once: the image cache is warm for every later start
            pass
        import empty

        attachments = empty.daemon_attachments(work / "state")
        start_empty = lambda: empty.empty_programs(attachments, work)  # noqa: E731
        for setting, word in SKIPPABLE.items():
            if word in skip:
                for w in loads:
                    r.unavailable[w.name, setting] = f"skipped (--skip {word})"
        if "matrix" not in skip:
            matrix(r, loads, daemon, start_empty, args.rounds)
        if "stats" not in skip:
            program_stats(r, loads, daemon, start_empty, args.stats_reps)
        if "footprint" not in skip:
            footprint(r, work, daemon, args.quick)
    others(r, args.soak, skip)
    r.machine["load average at end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    png = render.chart(r, args.out / "bench.png")
    if png is None:
        r.missing.append("the chart: matplotlib is not installed (pip install -e '.[bench]')")
    (args.out / "bench.md").write_text(render.markdown(r, png))
    print(f"wrote {args.out / 'bench.md'}" + (f" and {args.out / png}" if png else ""))
    for (w, s), why in sorted(r.unavailable.items()):
        print(f"not measured: {s} on {w}: {why}")
    for line in r.missing:
        print(f"not measured: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
