"""The systemd unit, run by a real systemd: a Debian bookworm container booted with systemd as
PID 1 under systemd-nspawn, the daemon installed with the README's command
(`scripts/install-systemd`), the unit driven with systemctl and proven from the host.

The root (tests/_roots.py) holds systemd and what `scripts/setup` installs, nothing more (no
procps, no dbus, no apt); it is cached on this machine and booted with `--volatile=overlay`, so
every run installs the current tree on a root as built.

What the container needs from the host, each an option of `boot()` below:
- A cgroup of its own to start from. With `--keep-unit` (the host's systemd is not asked for a
  scope) nspawn makes the container's cgroups under its current one; from the root cgroup they
  would be the host's top-level `payload/`, shared by concurrent runs.
- `--register=no`: no machined on the host (and no host systemd bus to reach it).
- `--capability=CAP_BPF,CAP_PERFMON,CAP_SYSLOG,CAP_AUDIT_READ`: nspawn's default bounding set
  lacks them (it has CAP_SYS_ADMIN and CAP_AUDIT_CONTROL), and a unit's
  CapabilityBoundingSet= can only narrow what its container has.
- `--system-call-filter=bpf perf_event_open`: nspawn's own seccomp filter answers both with
  EPERM otherwise ("could not open bpf map: ... Operation not permitted").
- `--bind-ro=/sys/kernel/tracing`: nspawn mounts no tracefs in the container's /sys, and BCC
  reads tracepoint ids and formats there. /sys/kernel/btf is in the container's own sysfs.
- The host's network (nspawn's default without --private-network): pip reaches PyPI during
  the install, and the host scrapes /metrics. The host's CA bundle, so that pip trusts what
  the host trusts (a TLS proxy's CA may be among them).
Not needed: the host's /lib/modules or /usr/src (the root has Debian's headers, which
`scripts/setup` links as on the host), bpffs, debugfs. nspawn keeps audit out of containers
(the audit netlink socket fails with EAFNOSUPPORT), so the daemon runs with Landlock/SELinux
causes off, and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _daemon import bpf_objects_of, bpf_programs, value
from _roots import systemd_root, warm
from _workload import cgroup2_root
from test_capabilities import unit_settings

from auditd.model.capabilities import NUMBERS

pytestmark = [
    pytest.mark.needs_root,
    pytest.mark.needs_bpf,
    pytest.mark.needs_containers("systemd"),  # the root it boots (tests/_roots.py)
    # A cold cache builds the root first (about a minute); the watchdog step takes ~50 s.
    pytest.mark.timeout(900),
]

ROOT = Path(__file__).resolve().parent.parent
UNIT = "bpf-auditd.service"
PROBE_UNIT = "bpf-auditd-sandbox-probe.service"
CONFIG = "/etc/bpf-auditd/config.yaml"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def project_tree(dest: Path) -> Path:
    """The checkout's files as `git clone` gives them (plus new files not yet committed):
    no .venv, .git or build output."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


class Machine:
    """A booted container; commands run in it with nsenter (systemctl talks to PID 1 over its
    private socket: no D-Bus needed)."""

    def __init__(self, root: Path, tree: Path, log: Path) -> None:
        self.name = f"bpf-auditd-test-{uuid.uuid4().hex[:8]}"
        unified = cgroup2_root()
        self.cgroups = [unified / self.name]
        named = Path("/sys/fs/cgroup/systemd")  # the name=systemd hierarchy of a hybrid host
        if (named / "cgroup.procs").exists() and named != unified:
            self.cgroups.append(named / self.name)
        for cgroup in self.cgroups:
            cgroup.mkdir()

        self.log = log.open("w")
        self.started = time.monotonic()
        self.leader = 0
        # nspawn starts in the new cgroups: a shell moves itself there, then becomes nspawn.
        enter = 'for procs in $0; do echo $$ > "$procs"; done; exec "$@"'
        procs = " ".join(str(c / "cgroup.procs") for c in self.cgroups)
        self.proc = subprocess.Popen(
            [
                "sh", "-c", enter, procs,
                "systemd-nspawn", "--quiet", "--boot", "--directory", str(root),
                "--machine", self.name, "--register=no", "--keep-unit",
                "--console=read-only", "--volatile=overlay",
                "--capability=CAP_BPF,CAP_PERFMON,CAP_SYSLOG,CAP_AUDIT_READ",
                "--system-call-filter=bpf perf_event_open",
                "--bind-ro=/sys/kernel/tracing",
                "--bind-ro=/etc/ssl/certs/ca-certificates.crt",
                f"--bind-ro={tree}:/mnt/src",
            ],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_booted(self) -> None:
        state = ""
        while state not in ("running", "degraded"):
            if self.proc.poll() is not None or time.monotonic() - self.started > 120:
                raise AssertionError(f"the container did not boot ({state!r}): {self.tail()}")
            # PID 1 of the container is nspawn's child (once its set-up children are gone).
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            with contextlib.suppress(OSError):
                found = children.read_text().split()
                self.leader = int(found[0]) if len(found) == 1 else 0
            if self.leader:
                state = self.sh("systemctl is-system-running", check=False).stdout.strip()
            time.sleep(0.05)
        self.boot_s = time.monotonic() - self.started

    def tail(self) -> str:
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text().splitlines()[-20:])

    def sh(
        self, command: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a",
             "env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8", "sh", "-c", command],
            capture_output=True, text=True, check=False, timeout=timeout,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"{command!r} exited {result.returncode}: {result.stderr}")
        return result

    def path(self, inside: str) -> Path:
        """A file of the container, from the host."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def show(self, prop: str, unit: str = UNIT) -> str:
        return self.sh(f"systemctl show -p {prop} --value {unit}").stdout.strip()

    def active(self) -> str:
        return self.sh(f"systemctl is-active {UNIT}", check=False).stdout.strip()

    def main_pid(self) -> int:
        """The unit's main process, as a host pid (MainPID is the container's)."""
        inside = int(self.show("MainPID"))
        procs = self.cgroups[0] / "payload/system.slice" / UNIT / "cgroup.procs"
        for pid in procs.read_text().split():
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                if re.search(rf"^NSpid:\s.*\s{inside}$", status, re.MULTILINE):
                    return int(pid)
        raise AssertionError(f"MainPID {inside} is not among the unit's processes")

    def unit_pids(self) -> list[int]:
        procs = self.cgroups[0] / "payload/system.slice" / UNIT / "cgroup.procs"
        with contextlib.suppress(OSError):
            return [int(pid) for pid in procs.read_text().split()]
        return []

    def journal(self, unit: str = UNIT) -> list[str]:
        """What the unit's processes wrote to stdout, as the journal holds it."""
        journal = self.sh(f"journalctl -u {unit} _TRANSPORT=stdout -o cat --no-pager")
        return journal.stdout.splitlines()

    def poweroff(self) -> None:
        """An orderly shutdown (nspawn turns SIGTERM into one), then the cgroups removed."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        deadline = time.monotonic() + 60
        for top in self.cgroups:
            if not top.exists():
                continue
            for cgroup in [*sorted(top.rglob("*/"), key=lambda p: -len(p.parts)), top]:
                while cgroup.is_dir() and time.monotonic() < deadline:
                    with contextlib.suppress(OSError):
                        if not (cgroup / "cgroup.procs").read_text().strip():
                            cgroup.rmdir()
                    if cgroup.is_dir():
                        time.sleep(0.1)
        assert not any(c.exists() for c in self.cgroups), "the container's cgroups remain"


def _events(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, v in (line.split(":\t", 1) for line in lines if ":\t" in line)}


# Runs as a unit with the installed unit's sandbox (see _probe_unit): what it allows.
SANDBOX_PROBE = r"""
import ctypes, errno, json, os, socket
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
attempt("AF_PACKET", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close())
attempt("AF_INET", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
attempt("AF_NETLINK", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close())
attempt("write /usr", lambda: open("/usr/probe", "w").close())
attempt("write /etc", lambda: open("/etc/probe", "w").close())
def state():
    open("/var/lib/bpf-auditd/probe", "w").close()
    os.unlink("/var/lib/bpf-auditd/probe")
attempt("write state_dir", state)
libc = ctypes.CDLL(None, use_errno=True)
unshared = libc.unshare(0x20000) == 0
out["unshare(CLONE_NEWNS)"] = "ok" if unshared else errno.errorcode[ctypes.get_errno()]
import bcc
b = bcc.BPF(text="TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }")
os.getppid()
out["bcc"] = "attached"
b.cleanup()
for line in open("/proc/self/status").read().splitlines():
    if line.startswith("Seccomp_filters:"):
        out["Seccomp_filters"] = line.split(":")[1].strip()
print(json.dumps(out), flush=True)
"""


def _probe_unit(installed: str) -> str:
    """The installed unit with its sandbox untouched, running the probe once instead."""
    lines = []
    for line in installed.splitlines():
        key = line.partition("=")[0]
        if key in ("NotifyAccess", "WatchdogSec", "ExecReload", "Restart", "RestartSec",
                   "RestartPreventExitStatus"):  # fmt: skip
            continue
        if key == "Type":
            lines.append("Type=oneshot")
        elif key == "ExecStart":
            lines.append("ExecStart=/opt/bpf-auditd/bin/python /usr/local/lib/bpf-auditd-probe.py")
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module", autouse=True)
def _roots_side_by_side(request: pytest.FixtureRequest) -> None:
    warm(request.session.items)


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    work = tmp_path_factory.mktemp("systemd")
    tree = project_tree(work / "tree")
    with systemd_root() as root:
        booted = Machine(root, tree, work / "nspawn.log")
        try:
            booted.wait_booted()
            yield booted
        finally:
            booted.poweroff()


def test_unit_runs_under_systemd_in_a_container(machine: Machine) -> None:
    m = machine
    figures: dict[str, float] = {"boot_s": m.boot_s}
    bounding = unit_settings()["CapabilityBoundingSet"][0].split()
    mask = sum(1 << NUMBERS[name] for name in bounding)

    def sandboxed(pid: int) -> None:
        """The unit's sandbox, in force on the running daemon."""
        status = _status(pid)
        assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == mask
        assert int(status["CapAmb"], 16) == mask
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2"
        assert status["Seccomp_filters"] == probe["Seccomp_filters"], "not the unit's filters"
        # ProtectSystem=strict, seen from the daemon's own mount namespace.
        check = subprocess.run(
            ["nsenter", "-t", str(pid), "-m", "sh", "-c",
             "touch /usr/.probe; touch /etc/.probe; "
             "touch /var/lib/bpf-auditd/.probe && rm /var/lib/bpf-auditd/.probe && echo written"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert check.stderr.count("Read-only file system") == 2, check.stderr
        assert check.stdout.strip() == "written"

    # --- install, as the README says ---
    started = time.monotonic()
    install = m.sh("cp -a /mnt/src /root/bpf-auditd && cd /root/bpf-auditd && "
                   "scripts/install-systemd", check=False, timeout=600)  # fmt: skip
    figures["install_s"] = time.monotonic() - started
    assert install.returncode == 0, install.stderr
    assert "setup: installing" not in install.stderr, "the root should hold what setup installs"
    assert not m.path("/root/bpf-auditd/.venv").exists(), "install-systemd made a dev venv"
    config = m.path(CONFIG)
    port = _free_port()
    text = config.read_text()
    assert '"0.0.0.0:19731"' in text
    config.write_text(text.replace('"0.0.0.0:19731"', f'"127.0.0.1:{port}"'))
    url = f"http://127.0.0.1:{port}/metrics"

    # --- the installed unit's sandbox, probed by a unit with the same sandbox lines ---
    installed = m.path(f"/etc/systemd/system/{UNIT}").read_text()
    assert installed == (ROOT / "systemd" / UNIT).read_text()
    m.path("/usr/local/lib/bpf-auditd-probe.py").write_text(SANDBOX_PROBE)
    m.path(f"/run/systemd/system/{PROBE_UNIT}").write_text(_probe_unit(installed))
    m.sh(f"systemctl daemon-reload && systemctl start {PROBE_UNIT}", timeout=120)
    probe = json.loads(m.journal(PROBE_UNIT)[-1])
    assert probe["AF_PACKET"] == "EAFNOSUPPORT"  # RestrictAddressFamilies
    assert probe["AF_INET"] == probe["AF_NETLINK"] == "ok"
    assert probe["write /usr"] == probe["write /etc"] == "EROFS"  # ProtectSystem=strict
    assert probe["write state_dir"] == "ok"  # StateDirectory
    assert probe["unshare(CLONE_NEWNS)"] == "EPERM"  # RestrictNamespaces
    assert probe["bcc"] == "attached", "the sandbox must not break BCC"

    # --- start: returns once READY, its probes attached ---
    started = time.monotonic()
    m.sh(f"systemctl start {UNIT}", timeout=180)
    figures["start_s"] = time.monotonic() - started
    assert m.active() == "active"
    pid = m.main_pid()
    progs, _ = bpf_objects_of(pid)
    assert progs, "systemctl start returned before the probes were attached"
    assert value(_scrape(url), "bpf_auditd_probe_up", probe="denials") == 1
    sandboxed(pid)
    ready = _wait(lambda: [e for e in _events(m.journal()) if e["event"] == "ready"], 20, "ready")
    figures["ready_start_s"] = ready[-1]["start_s"]
    assert figures["start_s"] >= ready[-1]["start_s"]

    # --- reload: a broken config keeps the running one; a good one is applied ---
    good = config.read_text()
    config.write_text(good + "log:\n  level: debug\n")
    m.sh(f"systemctl reload {UNIT}")
    failed = _wait(
        lambda: [e for e in _events(m.journal()) if e["event"] == "config_reload_failed"],
        20, "config_reload_failed",
    )  # fmt: skip
    assert failed[-1]["error"] == f"{CONFIG}:{len(good.splitlines()) + 1}: log: given twice"
    assert value(_scrape(url), "bpf_auditd_config_reloads_total", result="failure") == 1
    assert m.active() == "active"
    assert m.main_pid() == pid
    config.write_text(good.replace("level: info", "level: debug", 1))
    m.sh(f"systemctl reload {UNIT}")
    reloaded = _wait(
        lambda: [e for e in _events(m.journal()) if e["event"] == "config_reloaded"],
        20, "config_reloaded",
    )  # fmt: skip
    assert reloaded[-1]["changed"] == ["log"]
    assert value(_scrape(url), "bpf_auditd_config_reloads_total", result="success") == 1
    sandboxed(pid)

    # --- the watchdog: a stopped daemon is restarted, with the unit as shipped ---
    old = int(m.show("MainPID"))
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()

    def restarted() -> bool:
        now = int(m.show("MainPID") or 0)
        return now not in (0, old) and m.active() == "active"

    _wait(restarted, 120, "restart by the watchdog")
    figures["watchdog_restart_s"] = time.monotonic() - started
    assert m.show("NRestarts") == "1"
    messages = m.sh(f"journalctl -u {UNIT} -o cat --no-pager").stdout
    assert "Watchdog timeout" in messages
    pid = m.main_pid()
    progs, _ = bpf_objects_of(pid)
    assert progs
    sandboxed(pid)

    # --- stop: none of its programs left ---
    for other in m.unit_pids():
        progs |= bpf_objects_of(other)[0]
    started = time.monotonic()
    stopper = subprocess.Popen(
        ["nsenter", "-t", str(m.leader), "-a", "env", "-i", f"PATH={PATH}",
         "systemctl", "stop", UNIT],
    )  # fmt: skip
    while Path(f"/proc/{pid}").exists() and time.monotonic() - started < 15:
        time.sleep(0.01)
    figures["main_exit_s"] = time.monotonic() - started
    left = progs & set(bpf_programs())
    assert stopper.wait(timeout=60) == 0
    figures["systemctl_stop_s"] = time.monotonic() - started
    assert not left, f"programs still loaded after the daemon exited: {sorted(left)}"
    assert figures["main_exit_s"] < 2.0, figures
    assert m.active() == "inactive"
    assert not progs & set(bpf_programs())

    # --- the journal holds the daemon's JSON lines, and only those ---
    events = _events(m.journal())
    assert [e["event"] for e in events].count("ready") == 2
    assert events[-1]["event"] == "stopped"
    print("systemd/nspawn: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
