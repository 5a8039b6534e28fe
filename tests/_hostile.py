"""A policy whose patterns are worst cases for a backtracking matcher, the names an unprivileged
user would choose against it, and a scraper that times /metrics meanwhile. Shared by the DoS
test (tests/test_hostile_matching.py) and its benchmark (bench/hostile_scrape.py)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

REGEX = "(a+)+$"
GLOB = "*" * 32 + "x"
GLOB_SEGMENTS = "**/" * 16 + "x"
# The ignore list's cgroup globs are matched against every event's cgroup too.
IGNORE_CGROUP = "/" + "*" * 32 + "x"


def policy(*, ignore_glob: bool = True, benign: bool = False) -> str:
    """The hostile policy; `benign` swaps in harmless patterns with the same matches, for a
    baseline that costs the same per event but cannot backtrack."""
    patterns = ("a+", "*x", "**/x", "/nothing-*") if benign else (
        REGEX, GLOB, GLOB_SEGMENTS, IGNORE_CGROUP
    )  # fmt: skip
    regex, glob, segments, cgroup = (json.dumps(p) for p in patterns)
    return (
        "rules:\n"
        f"  - name: hostile-regex\n    match: {{kind: denial, target: {{regex: {regex}}}}}\n"
        f"  - name: hostile-glob\n    match: {{kind: denial, target: {{glob: {glob}}}}}\n"
        "  - name: hostile-glob-segments\n"
        f"    match: {{kind: denial, target: {{glob: {segments}}}}}\n"
        + (f"ignore:\n  cgroups: [{cgroup}]\n" if ignore_glob else "")
    )


# Runs as uid 65534 in a directory it cannot write, beside a root-only directory `locked`:
# creating a name there, or opening anything under `locked/`, is refused with EACCES. Every
# name is distinct (the kernel folds repeats of one name). Prints how many were refused.
WORKLOAD = r"""
import os, sys, time
n = int(sys.argv[1])
os.chdir(sys.argv[2])
pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0  # seconds between opens
refused = 0
for i in range(n):
    if pause:
        time.sleep(pause)
    shape = i % 4
    if shape == 0:    # '(a+)+$': every split of the a's tried before the '!' fails it
        name = "a" * 28 + "!" + str(i)
    elif shape == 1:  # 32 stars then 'x': exponential in the segment's length
        name = "b" * 200 + str(i)
    elif shape == 2:  # a 4 KiB path of short segments against '**/' * 16 + 'x' (the kernel
        # keeps its first 255 bytes, so what makes it distinct comes first)
        name = "locked/" + str(i) + "/" + "/".join(["aaaaaaa"] * 510)
    elif i % 12 == 3:  # names that match, so the rules demonstrably ran: (a+)+$ ...
        name = "a" * 28 + "a" * (i % 50)
    elif i % 12 == 7:  # ... '*' * 32 + 'x' ...
        name = "b" * 20 + str(i) + "x"
    else:              # ... and '**/' * 16 + 'x'
        name = "locked/" + str(i) + "/" + "/".join(["aaaaaaa"] * 20) + "/x"
    try:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o600))
    except PermissionError:
        refused += 1
print(refused, flush=True)
"""


class Scraper:
    """Scrapes `url` back to back in a thread and keeps each scrape's latency (seconds)."""

    def __init__(
        self, url: str, pause: float = 0.02, timeout: float = 30.0, *, wait: bool = True
    ) -> None:
        # `wait=False`: on exit, a scrape still under way is counted at its time so far (a
        # lower bound), not waited for: a stalled daemon would hold the caller up to `timeout`.
        self.url = url
        self.wait = wait
        self.pause = pause
        self.timeout = timeout
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._started: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.wait:
            self._thread.join(self.timeout + 5)
        elif self._thread.is_alive() and (started := self._started) is not None:
            self.latencies.append(time.monotonic() - started)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self._started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=self.timeout) as resp:
                    resp.read()
            except OSError as exc:
                self.failures.append(str(exc))
            if self._stop.is_set() and not self.wait:
                return  # counted by __exit__
            self.latencies.append(time.monotonic() - started)
            self._started = None
            self._stop.wait(self.pause)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
