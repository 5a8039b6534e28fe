"""Cardinality attack: 100,000 distinct process names (and paths) refused, from more cgroups than
the `service` cap allows. The scrape stays small, and the fold into "other" is counted."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _daemon import DaemonProcess, samples, value
from _workload import scratch_cgroup

pytestmark = pytest.mark.needs_bpf

NAMES = 100_000
CGROUPS = 40
MAX_SERVICES = 16
# The stated bound for this configuration (max_services 16). Series: about 25 from the process
# and Python collectors, a handful per probe, and at most (16 + 1 "other") services for each
# (source, syscall, errno) refused during the run; bytes: the text of those series.
MAX_SERIES = 400
MAX_BYTES = 64 * 1024

# Runs as the child: join the cgroup, drop to nobody, then for each i rename itself (comm) to a
# new name and open a new path under a directory it may not search: EACCES every time.
_RENAMED_DENIALS = r"""
import ctypes, os, sys
procs, locked, first, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(procs, "w") as f:
    f.write(str(os.getpid()))
os.setgroups([]); os.setgid(65534); os.setuid(65534)
prctl = ctypes.CDLL(None, use_errno=True).prctl
PR_SET_NAME = 15
refused = 0
for i in range(first, first + n):
    name = b"card%06d" % i
    if prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0) != 0:
        sys.exit("prctl failed")
    try:
        os.close(os.open(f"{locked}/target-{i}", os.O_RDONLY))
    except PermissionError:
        refused += 1
print(refused, flush=True)
"""


@contextlib.contextmanager
def _locked_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bpf-auditd-card-") as tmp:
        Path(tmp).chmod(0o755)
        locked = Path(tmp) / "locked"
        locked.mkdir(mode=0o700)
        yield locked


def _total(text: str) -> float:
    return sum(
        v
        for labels, v in samples(text, "bpf_auditd_denials_total")
        if (labels["syscall"], labels["errno"]) == ("openat", "EACCES")
    )


def test_many_names_and_cgroups_stay_bounded(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"metrics:\n  listen: '127.0.0.1:0'\n  max_services: {MAX_SERVICES}\n")
    daemon = DaemonProcess(config)
    try:
        daemon.ready()
        before = _total(daemon.scrape())
        with contextlib.ExitStack() as stack, _locked_dir() as locked:
            cgroups = [
                stack.enter_context(scratch_cgroup("bpf-auditd-card")) for _ in range(CGROUPS)
            ]
            per_cgroup = NAMES // CGROUPS
            refused = 0
            for k, cgroup in enumerate(cgroups):
                out = subprocess.run(
                    [sys.executable, "-c", _RENAMED_DENIALS, str(cgroup / "cgroup.procs"),
                     str(locked), str(k * per_cgroup), str(per_cgroup)],
                    capture_output=True, text=True, timeout=300, check=True,
                )  # fmt: skip
                refused += int(out.stdout)
            assert refused == NAMES

            # Kernel counters are exact and read at scrape time; wait only for the cgroups to be
            # resolved to services.
            deadline = time.monotonic() + 60
            text = daemon.scrape()
            while _total(text) - before < NAMES and time.monotonic() < deadline:
                time.sleep(0.5)
                text = daemon.scrape()
            assert _total(text) - before >= NAMES

            series = [line for line in text.splitlines() if line and not line.startswith("#")]
            size = len(text.encode())
            print(
                f"scrape after {NAMES} names in {CGROUPS} cgroups: {len(series)} series, {size} B"
            )
            assert len(series) <= MAX_SERIES
            assert size <= MAX_BYTES

            # The cap holds per metric: at most MAX_SERVICES services, plus "other".
            by_metric: dict[str, set[str]] = {}
            for line in series:
                name = line.split("{", 1)[0].split(" ", 1)[0]
                service = re.search(r'service="((?:[^"\\]|\\.)*)"', line)
                if service:
                    by_metric.setdefault(name, set()).add(service.group(1))
            for name, services in by_metric.items():
                assert len(services) <= MAX_SERVICES + 1, (name, services)
            denied = by_metric["bpf_auditd_denials_total"]
            assert "other" in denied
            # At most MAX_SERVICES of our cgroups got a service of their own; the rest folded.
            assert len({c.name for c in cgroups} & denied) <= MAX_SERVICES
            overflow = value(text, "bpf_auditd_label_overflow_total", label="service")
            assert overflow is not None
            assert overflow >= CGROUPS - MAX_SERVICES
            # No process name and no path became a label value.
            assert not re.search(r"card\d{6}", text)
            assert "target-" not in text
    finally:
        # Generous: the daemon may still be writing the log lines of 100,000 refusals.
        daemon.stop(timeout=60)
