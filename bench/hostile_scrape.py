"""Benchmark: /metrics scrape latency while an unprivileged user opens refused names chosen to be
worst cases for the policy's `regex` and `glob` rules (tests/_hostile.py: `(a+)+$` against
'a' * 28 + '!', 32-star globs against 200-character names, 4 KiB paths against `'**/' * 16 +
'x'`, and an ignore-list cgroup glob of 32 stars).

One invocation runs the real daemon, scrapes it back to back for `--idle` seconds (the
baseline), then runs the hostile workload (`--names`, 10,000 by default) and keeps scraping
until every refusal has been through the policy. Prints max, p99 and median scrape latency
for both phases and their ratio, and how many refusals reached the daemon.

Run as root: `.venv/bin/python bench/hostile_scrape.py [--names 10000] [--idle 5]`.
`--tree DIR` runs the daemon of another checkout (e.g. an older commit, extracted with
`git archive`), `--limit S` stops waiting after S seconds, `--no-ignore-glob` leaves the ignore
list out (the old matcher never gets through it at start-up), `--benign` runs harmless
patterns with the same matches (the baseline for the patterns' own cost).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from _hostile import WORKLOAD, Scraper, percentile, policy

from auditd.kernel.cgroups import cgroup2_path
from auditd.kernel.paths import KernelPaths


class Daemon:
    def __init__(self, tree: Path, config: Path, policy_file: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "auditd", "run", "--config", str(config), "--policy",
             str(policy_file)],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.denials = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                line = json.loads(raw)
                if line.get("event") == "denial":
                    self.denials += 1
                self.lines.put(line)

    def ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.get("event") == "ready":
                return str(line["metrics"])
        raise SystemExit(f"daemon not ready within {timeout:.0f} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def cgroup() -> Iterator[Path]:
    root = cgroup2_path(KernelPaths())
    if root is None:
        raise SystemExit("no cgroup v2 mount")
    path = root / f"bpf-auditd-hostile-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(pid)
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.05)


def accounted(url: str, timeout: float) -> tuple[float, float, float]:
    """(denial records read from the ring buffer, those dropped in the queue or ignored, those
    the ring buffer had no room for): once the daemon has logged received - dropped of them,
    the policy has seen every one that reached it."""
    with urllib.request.urlopen(url, timeout=max(timeout, 1.0)) as resp:
        text = resp.read().decode()
    got = gone = lost = 0.0
    for line in text.splitlines():
        if not line.startswith("bpf_auditd_events_") or 'probe="denials"' not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith("bpf_auditd_events_received_total"):
            got += value
        elif line.startswith("bpf_auditd_events_ignored_total") or (
            line.startswith("bpf_auditd_events_dropped_total") and 'stage="queue"' in line
        ):
            gone += value
        elif line.startswith("bpf_auditd_events_dropped_total"):
            lost += value
    return got, gone, lost


def summary(name: str, latencies: list[float]) -> dict[str, float]:
    row = {
        "scrapes": len(latencies),
        "max_ms": max(latencies) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "median_ms": statistics.median(latencies) * 1e3,
    }
    print(
        f"{name:8} {row['scrapes']:7.0f} scrapes  max {row['max_ms']:9.1f} ms  "
        f"p99 {row['p99_ms']:9.1f} ms  median {row['median_ms']:7.1f} ms"
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=10_000)
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of baseline scraping")
    ap.add_argument("--tree", type=Path, default=ROOT, help="checkout whose daemon runs")
    ap.add_argument("--limit", type=float, default=600.0, help="give up waiting after S s")
    ap.add_argument(
        "--pause",
        type=float,
        default=0.0005,
        help="seconds between opens (0: as fast as it can; the ring buffer then drops most)",
    )
    ap.add_argument("--no-ignore-glob", action="store_true")
    ap.add_argument(
        "--benign", action="store_true", help="harmless patterns, same matches: the baseline"
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    with tempfile.TemporaryDirectory(prefix="bpf-auditd-bench-") as tmp, cgroup() as cg:
        work = Path(tmp)
        work.chmod(0o755)
        (work / "locked").mkdir(mode=0o700)
        config = work / "config.yaml"
        config.write_text("metrics:\n  listen: '127.0.0.1:0'\n")
        policy_file = work / "policy.yaml"
        policy_file.write_text(policy(ignore_glob=not args.no_ignore_glob, benign=args.benign))
        daemon = Daemon(args.tree, config, policy_file)
        try:
            url = daemon.ready(timeout=min(args.limit, 120))
            with Scraper(url, pause=0.0, timeout=args.limit, wait=False) as idle:
                time.sleep(args.idle)
            started = time.monotonic()
            with Scraper(url, pause=0.0, timeout=args.limit, wait=False) as hostile:
                prologue = (
                    "import os\n"
                    f"open({str(cg / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
                    "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
                )
                out = subprocess.run(
                    [sys.executable, "-c", prologue + WORKLOAD, str(args.names), str(work),
                     str(args.pause)],
                    capture_output=True, text=True, timeout=args.limit, check=True,
                )  # fmt: skip
                workload_s = time.monotonic() - started
                # Until the daemon has logged every refusal that reached it (or the limit).
                lost = 0.0
                while (left := args.limit - (time.monotonic() - started)) > 0:
                    try:
                        got, gone, lost = accounted(url, left)
                    except OSError:  # no answer within the limit
                        break
                    if daemon.denials >= got - gone:
                        break
                    time.sleep(0.5)
            total_s = time.monotonic() - started
        finally:
            daemon.stop()
    print(
        f"{'benign' if args.benign else 'hostile'} patterns, tree {args.tree}: {args.names} names, "
        f"{int(out.stdout)} refused in {workload_s:.1f} s; {daemon.denials} refusals (of any "
        f"process on the host) through the policy; {total_s:.1f} s until all were; {lost:.0f} "
        "lost before user space (ring buffer, maps)"
    )
    base = summary("idle", idle.latencies)
    load = summary("hostile", hostile.latencies)
    print(
        f"ratio hostile/idle: max {load['max_ms'] / base['max_ms']:.1f}x, "
        f"p99 {load['p99_ms'] / base['p99_ms']:.1f}x; scrape failures: {len(hostile.failures)}"
    )


if __name__ == "__main__":
    main()
