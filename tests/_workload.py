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

from auditd.kernel.cgroups import cgroup2_path
from auditd.kernel.paths import KernelPaths

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
    root = cgroup2_path(KernelPaths())
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


def run_as_nobody(code: str, cgroup: Path, *args: str, check: bool = True) -> tuple[int, str]:
    """Run Python `code` as uid/gid 65534 (no capabilities) inside `cgroup`; returns (pid,
    stdout). `code` sees its extra arguments as sys.argv[1:]."""
    prologue = (
        "import os, sys\n"
        f"open({str(cgroup / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", prologue + code, *args], stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(timeout=120)
    if check and proc.returncode != 0:
        raise RuntimeError(f"workload failed with {proc.returncode}: {out}")
    return proc.pid, out


# A classic-BPF seccomp filter: `action` for syscall `nr`, allow everything else. Runs in the
# child after PR_SET_NO_NEW_PRIVS, so no privilege is needed to install it.
SECCOMP = r"""
import ctypes, struct
def seccomp(nr, action):
    libc = ctypes.CDLL(None, use_errno=True)
    prog = [
        (0x20, 0, 0, 0),          # ld [0]: syscall number
        (0x15, 0, 1, nr),         # jeq nr
        (0x06, 0, 0, action),     # ret action
        (0x06, 0, 0, 0x7FFF0000), # ret ALLOW
    ]
    raw = b"".join(struct.pack("HBBI", *i) for i in prog)
    buf = ctypes.create_string_buffer(raw)
    fprog = struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(buf))
    fbuf = ctypes.create_string_buffer(fprog)
    ul = ctypes.c_ulong  # variadic: ctypes would pass plain ints as 32-bit
    assert libc.prctl(38, ul(1), ul(0), ul(0), ul(0)) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, ul(2), ctypes.c_void_p(ctypes.addressof(fbuf)), ul(0), ul(0)) == 0
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_KILL_PROCESS = 0x80000000
"""
