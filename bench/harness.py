"""The settings bench/report.py compares, as context managers, and the workloads it times.

Settings: nothing attached ("alone"); bpf-auditd as it ships (the daemon, default config);
empty programs attached exactly where the daemon attaches its own (the cost of the attach
points themselves); the cheapest counter of the same event (a bpftrace one-liner: the floor);
Linux auditd with the equivalent rule; BCC's own tool for the job where one runs here. A
setting that cannot run says why (`Unavailable`), and the report prints it.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

Setting = Callable[[], contextlib.AbstractContextManager[object]]


class Unavailable(Exception):
    """A setting that cannot run here; the message says why, in one line."""


def build(source: str, workdir: Path) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise SystemExit("bench: needs gcc (or cc) to build the loops")
    binary = workdir / Path(source).stem
    subprocess.run([cc, "-O2", "-o", str(binary), str(HERE / source)], check=True)
    return binary


# -- workloads -----------------------------------------------------------------------------


@dataclass
class Workload:
    """A loop timed in CPU ns per operation (or, for `higher_is_better`, a rate)."""

    name: str
    label: str
    run: Callable[[], float]
    ops: int  # operations per run
    unit: str = "CPU ns/op"
    higher_is_better: bool = False
    floor: str = ""  # the bpftrace one-liner counting the event this workload makes
    audit_rule: tuple[str, ...] = ()  # auditctl -a arguments (empty: Linux auditd has none)
    bcc_tool: tuple[str, ...] = ()  # (tool, args..., ready marker) for BCC's own tool
    notes: list[str] = field(default_factory=list)

    def cost(self, with_value: float, alone: float) -> float:
        """How many times dearer the operation is (1.0: free)."""
        return alone / with_value if self.higher_is_better else with_value / alone


def loop(binary: Path, *args: str) -> Callable[[], float]:
    def run() -> float:
        out = subprocess.run([str(binary), *args], capture_output=True, text=True, check=True)
        return float(out.stdout.split()[0])  # CPU time first

    return run


REFUSAL_FLOOR = "tracepoint:syscalls:sys_exit_openat /args->ret == -13/ { @[cgroup] = count(); }"
ALLOC_FLOOR = (
    "tracepoint:kmem:kmalloc,tracepoint:kmem:kmem_cache_alloc,tracepoint:kmem:mm_page_alloc"
    " { @[cgroup] = count(); }"
)
REFUSAL_RULE = ("-F", "arch=b64", "-S", "openat", "-F", "exit=-EACCES")


@contextlib.contextmanager
def redis_server(port: int) -> Iterator[None]:
    server = shutil.which("redis-server")
    if server is None or shutil.which("redis-benchmark") is None:
        raise Unavailable("redis-server and redis-benchmark are not installed (redis-tools)")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            ping = subprocess.run(
                ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, check=False
            )
            if ping.stdout.strip() == "PONG":
                break
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        proc.wait()


def redis(port: int, requests: int) -> Callable[[], float]:
    """Requests per second of SET and GET (their mean), 50 clients over loopback."""

    def run() -> float:
        out = subprocess.run(
            ["redis-benchmark", "-q", "--csv", "-p", str(port), "-n", str(requests), "-c", "50",
             "-t", "set,get"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        rates = [float(line.split(",")[1].strip('"')) for line in out.splitlines()[1:] if line]
        return sum(rates) / len(rates)

    return run


# -- settings --------------------------------------------------------------------------------


def _wait_for(proc: subprocess.Popen[str], marker: str, timeout: float, what: str) -> None:
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            seen += proc.stdout.readlines()  # what it said last, before it exited
            said = [line.strip() for line in seen if line.strip()]
            why = (said or ["(nothing)"])[-1]
            if any("BPF.TRACING" in line for line in said):
                # BCC says "Need super-user privileges" whenever the kernel refuses a program.
                why = f"its fentry program (BPF.TRACING) was refused by this kernel ({why})"
            raise Unavailable(f"{what} exited {proc.returncode}: {why}")
        if select.select([proc.stdout], [], [], 0.2)[0]:
            line = proc.stdout.readline()
            seen.append(line)
            if marker in line:
                return
    raise Unavailable(f"{what} did not get ready within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Daemon:
    """bpf-auditd from this checkout, default configuration (its own state directory: the probe
    image cache is warm after the first start)."""

    def __init__(self, workdir: Path) -> None:
        self.config = workdir / "config.yaml"
        self.config.write_text(
            f"metrics:\n  listen: '127.0.0.1:0'\nstate_dir: {workdir / 'state'}\n"
            "log:\n  level: info\n"
        )
        self.proc: subprocess.Popen[str] | None = None
        self.ready_s = 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[Daemon]:
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "auditd", "run", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        try:
            _wait_for(self.proc, '"event": "ready"', 120, "bpf-auditd")
            self.ready_s = time.monotonic() - started
            # Its log lines must not fill the pipe while a flood runs.
            stdout = self.proc.stdout
            assert stdout is not None
            drain = __import__("threading").Thread(target=stdout.read, daemon=True)
            drain.start()
            yield self
        finally:
            _stop(self.proc)


@contextlib.contextmanager
def bpftrace(program: str) -> Iterator[None]:
    tool = shutil.which("bpftrace")
    if tool is None:
        raise Unavailable("bpftrace is not installed")
    proc = subprocess.Popen(
        [tool, "-e", program], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for(proc, "Attaching", 60, "bpftrace")
        time.sleep(0.5)
        yield
    finally:
        _stop(proc, signal.SIGINT)


@contextlib.contextmanager
def bcc_tool(argv: tuple[str, ...]) -> Iterator[None]:
    """argv: the tool, its arguments, and last the line that says it is attached."""
    *command, ready = argv
    tool = shutil.which(command[0])
    if tool is None:
        raise Unavailable(f"{command[0]} is not installed (bpfcc-tools)")
    proc = subprocess.Popen(
        [tool, *command[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for(proc, ready, 120, command[0])
        time.sleep(1.0)
        yield
    finally:
        _stop(proc, signal.SIGINT)


def audit_daemon_pid() -> int:
    """The pid registered as the kernel's audit daemon (0: none)."""
    out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("pid "):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def linux_auditd(rule: tuple[str, ...]) -> Iterator[None]:
    """Linux auditd with one rule. Only one process can be the registered audit daemon: if
    another is, this setting cannot run, and says so."""
    if not rule:
        raise Unavailable("Linux auditd has no rule for this event")
    if shutil.which("auditd") is None or shutil.which("auditctl") is None:
        raise Unavailable("Linux auditd is not installed (Debian auditd)")
    holder = audit_daemon_pid()
    if holder and Path(f"/proc/{holder}").exists():
        comm = Path(f"/proc/{holder}/comm").read_text().strip()
        raise Unavailable(f"another process (pid {holder}, {comm}) is the registered audit daemon")
    status = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=True).stdout
    was_enabled = next(
        line.split()[1] for line in status.splitlines() if line.startswith("enabled")
    )
    subprocess.run(["auditd"], check=True)  # daemonizes and registers itself
    try:
        time.sleep(0.5)
        mine = Path("/var/run/auditd.pid")
        pid = int(mine.read_text().strip()) if mine.exists() else 0
        if audit_daemon_pid() != pid or not pid:
            raise Unavailable("auditd started but could not register as the audit daemon")
        subprocess.run(["auditctl", "-e", "1"], check=True, capture_output=True)
        subprocess.run(
            ["auditctl", "-a", "always,exit", *rule, "-k", "bpf-auditd-bench"],
            check=True,
            capture_output=True,
        )
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
