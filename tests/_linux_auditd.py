"""Linux auditd (Debian's `auditd`), started by a test as its service manager would (`auditd -n`),
never as the system's service: its config, log and plugin directory live in a temporary
directory, and leaving the context stops it and puts the audit enabled flag back."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

from auditd.audit.netlink import open_socket, read_status, set_status

# Every record written at once; no disk-space actions, no rotation, no plugins.
_CONFIG = """\
local_events = yes
write_logs = yes
log_file = {log}
log_format = RAW
flush = DATA
freq = 0
max_log_file = 64
num_logs = 1
max_log_file_action = IGNORE
space_left = 2
space_left_action = IGNORE
admin_space_left = 1
admin_space_left_action = IGNORE
disk_full_action = IGNORE
disk_error_action = IGNORE
name_format = NONE
q_depth = 2000
overflow_action = IGNORE
plugin_dir = {plugins}
end_of_event_timeout = 2
"""


def auditd_binary() -> str | None:
    return shutil.which("auditd", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def comm_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def wait_for_no_audit_daemon(timeout: float = 60.0) -> int:
    """0 once no audit daemon is registered, else the pid still registered after `timeout` (on a
    shared machine another session's daemon may hold the registration for a while)."""
    deadline = time.monotonic() + timeout
    while (pid := read_status().pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return pid


class LinuxAuditd:
    """``with LinuxAuditd(directory) as auditd:`` — auditd started, registered or not
    (`started`); on exit it is stopped and the enabled flag restored to `enabled_before`."""

    def __init__(
        self, directory: Path, *, enabled_before: int | None = None, ours: tuple[int, ...] = ()
    ) -> None:
        # `ours`: processes of the test (bpf-auditd) besides this one. A start refused because
        # a third party held the registration (a shared machine) is tried again a few times.
        self.ours = {os.getpid(), *ours}
        self.directory = directory
        self.log = directory / "audit.log"
        self.enabled_before = read_status().enabled if enabled_before is None else enabled_before
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.registered_after_start: int | None = None

    def __enter__(self) -> LinuxAuditd:
        binary = auditd_binary()
        if binary is None:
            raise RuntimeError("auditd is not installed (Debian package auditd)")
        plugins = self.directory / "plugins.d"
        plugins.mkdir(parents=True, exist_ok=True)
        config = self.directory / "auditd.conf"
        config.write_text(_CONFIG.format(log=self.log, plugins=plugins))
        config.chmod(0o600)  # auditd refuses a config others can write
        for _ in range(5):
            self._start(binary)
            holder = self.registered_after_start or 0
            if self.exit_code is None or holder in self.ours or holder == 0:
                break
            wait_for_no_audit_daemon(30)
        return self

    def _start(self, binary: str) -> None:
        self.exit_code = None
        self.proc = subprocess.Popen(
            [binary, "-n", "-c", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Registered within its start-up, or exited (1: "Unable to set audit pid").
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.exit_code = self.proc.returncode
                break
            if read_status().pid == self.proc.pid:
                break
            time.sleep(0.01)
        self.registered_after_start = read_status().pid

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def started(self) -> bool:
        """Running and registered as the audit daemon."""
        return self.running and read_status().pid == self.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, *needles: str, timeout: float = 20.0) -> list[str]:
        """Log lines containing every needle (after waiting for the first such line)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.text().splitlines() if all(n in line for n in needles)]
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        # auditd switches audit on when it starts and leaves it on when it stops: put back
        # what the test found (it adds no rules).
        status = read_status()
        if status.pid == self.pid:  # killed without unregistering: the kernel resets it later
            with open_socket() as sock:
                set_status(sock, pid=0)
        if self.enabled_before is not None and status.enabled != self.enabled_before:
            with open_socket() as sock:
                set_status(sock, enabled=self.enabled_before)


def user_message(text: str) -> None:
    """One AUDIT_USER record (type 1005) through auditctl, as any audit-aware program writes."""
    subprocess.run(["auditctl", "-m", text], check=True, capture_output=True, timeout=30)
