"""`bpf-auditd advise` for tests: workloads in their own cgroups, the real command around them,
then each workload again under the advice (setpriv for the bounding set, `confine` for the
Landlock ruleset and the seccomp profile)."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _jsonlines import JsonLines
from _workload import scratch_cgroup

HERE = Path(__file__).resolve().parent

# Exit codes of advise_workload.c, by step.
STEPS = {
    0: "ok",
    10: "open-config",
    11: "read-config",
    20: "open-log",
    30: "socket",
    31: "bind",
    32: "listen",
    40: "unshare",
    41: "sethostname",
    50: "mmap",
    60: "mkdir",
    61: "create",
    62: "rename",
    63: "symlink",
    64: "truncate",
    65: "unix-socket",
    66: "unlink",
    67: "rmdir",
}


def build_workload(directory: Path) -> Path:
    """advise_workload.c, static: nothing but its own binary to allow."""
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "workload"
    subprocess.run(
        ["cc", "-O2", "-static", "-o", str(binary), str(HERE / "advise_workload.c")],
        check=True,
        capture_output=True,
    )
    return binary


def free_low_port() -> int:
    """A loopback TCP port below 1024 nothing listens on (binding it needs the capability)."""
    for port in range(990, 900, -1):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below 1024")


def run_in(
    cgroup: Path, argv: Sequence[str], wrapper: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside `cgroup` (a shell joins it, then execs)."""
    script = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
    return subprocess.run(
        ["sh", "-c", script, str(cgroup), *wrapper, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Advise:
    """`bpf-auditd advise` as a subprocess; its JSON log lines (stderr) kept."""

    def __init__(self, *args: str) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "auditd", "advise", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        log = JsonLines(self.proc.stderr)
        self.lines, self._new, self._reader = log.lines, log.new, log.thread

    def wait_for(self, event: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                entry = self._new.get(timeout=left)
            except queue.Empty:
                break
            if entry.get("event") == event:
                return entry
        raise AssertionError(f"no {event!r} from advise; it said: {self.lines[-5:]}")

    def stop(self) -> int:
        """SIGTERM: advise writes what it saw so far and exits."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self._reader.join(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code


@dataclass
class Session:
    """One advise run over several workloads, each in its own cgroup."""

    root: Path
    binary: Path
    port: int
    output: Path
    cgroups: dict[str, Path] = field(default_factory=dict)
    results: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    exit_code: int = -1
    seconds: float = 0.0
    log: list[dict[str, Any]] = field(default_factory=list)

    def server_argv(self) -> list[str]:
        root = self.root
        return [
            str(self.binary), "server", str(root / "etc/server.conf"), str(root / "log"),
            str(self.port),
        ]  # fmt: skip

    def service(self, name: str) -> str:
        return self.cgroups[name].name

    def file(self, name: str, fmt: str) -> Path:
        from auditd.policy.advice.render import file_names

        return self.output / file_names(self.service(name))[fmt]

    def json(self, name: str, fmt: str) -> Any:
        return json.loads(self.file(name, fmt).read_text())


@contextlib.contextmanager
def cgroups(prefix: str, names: Sequence[str]) -> Iterator[dict[str, Path]]:
    with contextlib.ExitStack() as stack:
        yield {n: stack.enter_context(scratch_cgroup(f"{prefix}-{n}")) for n in names}


def confined(
    session: Session,
    argv: Sequence[str],
    *,
    bounding: Sequence[str],
    ruleset: Any,
    profile: Any,
    tmp: Path,
) -> tuple[str, str]:
    """Run `argv` under exactly the given advice: setpriv keeps `bounding` in the bounding set,
    confine applies the ruleset and profile. Returns (step reached, last stderr line)."""
    tmp.mkdir(parents=True, exist_ok=True)
    rules, filt = tmp / "landlock.json", tmp / "seccomp.json"
    rules.write_text(json.dumps(ruleset))
    filt.write_text(json.dumps(profile))
    keep = "".join(f",+{c.removeprefix('CAP_').lower()}" for c in bounding)
    result = subprocess.run(
        [
            "setpriv",
            f"--bounding-set=-all{keep}",
            "--",
            sys.executable,
            "-m",
            "auditd",
            "confine",
            "--ruleset",
            str(rules),
            "--seccomp",
            str(filt),
            "--",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    last = (result.stderr.strip().splitlines() or [""])[-1]
    if "confine:" in last and result.returncode == 1:  # the launcher's exec was refused
        return "exec", last
    return STEPS.get(result.returncode, f"exit {result.returncode}"), last
