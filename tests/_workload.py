"""Real kernel workloads for tests: throwaway cgroups, unprivileged processes that get refused."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from auditd.cgroups import find_cgroup2_mount

NOBODY = 65534

# Runs as the child: join the cgroup, drop to nobody, then try to open the file N times.
_DENIED_OPENS = r"""
import os, sys
procs, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(procs, "w") as f:
    f.write(str(os.getpid()))
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
refused = 0
for _ in range(n):
    try:
        os.close(os.open(path, os.O_RDONLY))
    except PermissionError:
        refused += 1
print(refused, flush=True)
"""


def cgroup2_root() -> Path:
    root = find_cgroup2_mount(Path("/proc"))
    if root is None:
        raise RuntimeError("no cgroup v2 mount")
    return root


@contextlib.contextmanager
def scratch_cgroup(prefix: str = "bpf-auditd-test") -> Iterator[Path]:
    """A new cgroup v2 directory, removed afterwards (its processes moved out first)."""
    path = cgroup2_root() / f"{prefix}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        root_procs = cgroup2_root() / "cgroup.procs"
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                root_procs.write_text(pid)
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.05)


@contextlib.contextmanager
def secret_file() -> Iterator[Path]:
    """A root-owned mode-0600 file that uid 65534 cannot open, in a directory it can search
    (so the refusal is the file's mode, not the path)."""
    with tempfile.TemporaryDirectory(prefix="bpf-auditd-test-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o755)
        path = directory / "secret"
        path.write_text("not for nobody\n")
        path.chmod(0o600)
        os.chown(path, 0, 0)
        yield path


def denied_opens(path: Path, n: int, cgroup: Path) -> tuple[int, int]:
    """Open `path` n times as uid 65534 from inside `cgroup`; returns (pid, refusals)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _DENIED_OPENS, str(cgroup / "cgroup.procs"), str(path), str(n)],
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"workload failed with {proc.returncode}")
    return proc.pid, int(out.strip())
