"""Policy on the real daemon and kernel: learn then replay, SIGHUP with a broken policy, and an
ignored service's flood kept out of user space. Each test isolates itself in its own cgroup and
looks only at its own service (other tests may run at the same time)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _daemon import DaemonProcess, value
from _workload import denied_opens, scratch_cgroup, secret_file

from auditd.kernel.cgroups import service_of
from auditd.policy.language import DEFAULT_POLICY, load
from auditd.signals.denials.monitor import DenialMonitor
from auditd.signals.monitor import Monitor

pytestmark = pytest.mark.needs_bpf

Line = dict[str, Any]


def _config(tmp_path: Path, extra: str = "") -> Path:
    f = tmp_path / "config.yaml"
    f.write_text(f"metrics:\n  listen: '127.0.0.1:0'\n{extra}")
    return f


def _wait_line(d: DaemonProcess, want: Callable[[Line], bool], timeout: float = 30) -> Line:
    """The first log line `want` accepts; fails (it does not time the daemon) after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(d.lines):
            if want(line):
                return line
        if d.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no such log line; daemon exit {d.proc.poll()}: {d.stderr}")


def _alerts(d: DaemonProcess, service: str) -> list[Line]:
    """The alert documents (as the log sink writes them) for one service."""
    return [e["alert"] for e in d.lines if _is_alert(e) and e["alert"]["service"] == service]


def _is_alert(line: Line, **want: Any) -> bool:
    doc = line.get("alert") if line.get("event") == "alert" else None
    return doc is not None and all(doc.get(k) == v for k, v in want.items())


def _denial_of(pid: int) -> Callable[[Line], bool]:
    return lambda e: e.get("event") == "denial" and e.get("pid") == pid


def _namespace_change_of(pid: int) -> Callable[[Line], bool]:
    return lambda e: e.get("event") == "namespace_change" and e.get("pid") == pid


@pytest.fixture
def workload() -> Iterator[tuple[Path, Path, str]]:
    """A scratch cgroup, a secret file nobody can open, and the cgroup's service name."""
    with scratch_cgroup("bpf-auditd-policy") as cgroup, secret_file() as secret:
        yield cgroup, secret, service_of("/" + cgroup.name)


# Paced pipe churn: its allocation rate is set by the pacing, not by how busy the CPUs are, so
# learning and replay see the same rates.
_CHURN = r"""
import os, sys, time
open(sys.argv[1], "w").write(str(os.getpid()))
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    for _ in range(100):
        r, w = os.pipe()
        os.close(r)
        os.close(w)
    time.sleep(0.05)
"""


def _workload(cgroup: Path, secret: Path) -> tuple[int, int]:
    """What the learned service does: reads a file it may not read, makes a net namespace,
    churns pipes for 3 s (three allocation windows at `housekeeping_interval: 1`)."""
    denied_pid, refused = denied_opens(secret, 3, cgroup)
    assert refused == 3
    unshare_pid = _run_in(cgroup, "unshare", "-n", "true")
    subprocess.run(
        [sys.executable, "-c", _CHURN, str(cgroup / "cgroup.procs"), "3"], check=True, timeout=60
    )
    return denied_pid, unshare_pid


def _allocation_windows(d: DaemonProcess, service: str, n: int) -> None:
    """Wait until `n` allocation windows of `service` were logged (and so evaluated)."""

    def enough(_: Line) -> bool:
        lines = [e for e in list(d.lines) if e.get("event") == "allocation_stats"]
        return sum(1 for e in lines if e.get("service") == service) >= n

    _wait_line(d, enough)


def _run_in(cgroup: Path, *argv: str) -> int:
    """Run `argv` as root inside `cgroup`, to completion; returns its pid."""
    proc = subprocess.Popen(
        ["sh", "-c", 'echo $$ > "$0" && echo $$ && exec "$@"', str(cgroup / "cgroup.procs"), *argv],
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, argv
    return int(out.split()[0])


@pytest.mark.parametrize("new_behaviour", ["denied-path", "setns"])
def test_learned_policy_replays_silently_and_flags_one_new_behaviour(
    tmp_path: Path, workload: tuple[Path, Path, str], new_behaviour: str
) -> None:
    cgroup, secret, service = workload
    other = secret.with_name("other-secret")  # same directory, same mode: only the path differs
    other.write_text("also not for nobody\n")
    other.chmod(0o600)
    config = _config(tmp_path, "housekeeping_interval: 1.0\n")  # an allocation window a second
    learned = tmp_path / "learned.yaml"

    # Learn: stopped by SIGTERM once the workload's events are logged (not after a guessed
    # duration); the policy is written on the way out.
    d = DaemonProcess(config, "--duration", "1h", "--output", str(learned), command="learn")
    try:
        d.ready()
        denied_pid, unshare_pid = _workload(cgroup, secret)
        _wait_line(d, _denial_of(denied_pid))
        _wait_line(d, _namespace_change_of(unshare_pid))
        _allocation_windows(d, service, 2)
        d.signal(signal.SIGTERM)
        assert d.proc.wait(timeout=30) == 0, d.stderr
    finally:
        d.stop()
    assert _wait_line(d, lambda e: e.get("event") == "learned")["output"] == str(learned)
    text = learned.read_text()
    assert f"{{service: {json.dumps(service)}, " in text
    assert json.dumps(str(secret)) in text
    assert str(other) not in text
    assert f"# service {json.dumps(service)}: largest seen allocations_per_s " in text

    # Replay under `run --policy`: the learned behaviour raises nothing; one new behaviour
    # raises exactly one alert naming it.
    d = DaemonProcess(config, "--policy", str(learned))
    try:
        d.ready()
        denied_pid, unshare_pid = _workload(cgroup, secret)
        _allocation_windows(d, service, 2)
        if new_behaviour == "denied-path":
            new_pid, refused = denied_opens(other, 1, cgroup)
            assert refused == 1
        else:  # join another process's net namespace: a setns the service never did
            holder = subprocess.Popen(["unshare", "-n", "sleep", "300"])
            try:
                ns = Path(f"/proc/{holder.pid}/ns/net")
                while ns.readlink() == Path("/proc/self/ns/net").readlink():
                    time.sleep(0.01)  # until unshare has made the namespace
                new_pid = _run_in(cgroup, "nsenter", f"--net={ns}", "true")
            finally:
                holder.kill()
                holder.wait()
        _wait_line(d, lambda e: _is_alert(e, service=service))
    finally:
        assert d.stop() == 0
    # Stopping drained every record read and flushed pending summaries: the log is complete.
    assert any(_denial_of(denied_pid)(e) for e in d.lines), "the replayed refusal was not seen"
    assert any(_namespace_change_of(unshare_pid)(e) for e in d.lines), "the unshare was not seen"
    [alert] = _alerts(d, service)
    assert (alert["severity"], alert["count"], alert["event"]["pid"]) == ("warning", 1, new_pid)
    if new_behaviour == "denied-path":
        assert alert["rule"] == "new-denial"
        assert alert["event"]["target"] == str(other)
    else:
        assert alert["rule"] == "new-namespace-change"
        assert (alert["event"]["op"], alert["event"]["types"]) == ("setns", ["net"])


def test_sighup_with_a_broken_policy_keeps_alerting_by_the_old_one(
    tmp_path: Path, workload: tuple[Path, Path, str]
) -> None:
    cgroup, secret, service = workload
    rules = (
        "rules:\n"
        "  - name: secret-read\n"
        "    severity: critical\n"
        f"    match: {{kind: denial, service: {json.dumps(service)}, "
        f"target: {json.dumps(str(secret))}}}\n"
        "    dedup: [service, pid]\n"
    )
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(rules)
    d = DaemonProcess(_config(tmp_path, "policy:\n  file: policy.yaml\n"))  # beside the config

    def alert_for(pid: int) -> Line:
        line = _wait_line(d, lambda e: _is_alert(e) and e["alert"]["event"].get("pid") == pid)
        return dict(line["alert"])

    try:
        d.ready()
        pid, _ = denied_opens(secret, 1, cgroup)
        assert alert_for(pid)["rule"] == "secret-read"

        policy_file.write_text(rules + "  - name: [broken\n")
        d.signal(signal.SIGHUP)
        failed = d.wait_for("policy_reload_failed")
        assert failed["error"].startswith(f"{policy_file}:"), failed
        assert "invalid YAML" in failed["error"]
        pid, _ = denied_opens(secret, 1, cgroup)
        kept = alert_for(pid)
        assert (kept["rule"], kept["severity"], kept["service"]) == (
            "secret-read",
            "critical",
            service,
        )
        text = d.scrape()
        assert value(text, "bpf_auditd_policy_reload_failures_total") == 1
        assert value(text, "bpf_auditd_alerts_total", rule="secret-read", severity="critical") == 2

        # A fixed file applies on the next SIGHUP.
        policy_file.write_text(rules.replace("secret-read", "secret-read-v2"))
        d.signal(signal.SIGHUP)
        assert d.wait_for("policy_reloaded")["changed"] is True
        pid, _ = denied_opens(secret, 1, cgroup)
        assert alert_for(pid)["rule"] == "secret-read-v2"
        assert value(d.scrape(), "bpf_auditd_policy_reload_failures_total") == 1
    finally:
        assert d.stop() == 0


FILTERS_IN_KERNEL = DenialMonitor.apply_filter is not Monitor.apply_filter


def test_an_ignored_services_flood_sends_no_records(
    tmp_path: Path, workload: tuple[Path, Path, str]
) -> None:
    cgroup, secret, service = workload
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        f"ignore: {{services: [{json.dumps(service)}]}}\n"
        f"rules:\n  - name: ours\n    match: {{service: {json.dumps(service)}}}\n"
    )
    # The cgroup exists before the daemon starts, so the filter names it from the first scan.
    d = DaemonProcess(_config(tmp_path), "--policy", str(policy_file))
    n = 20_000
    try:
        d.ready()
        applied = d.wait_for("kernel_filter_applied")
        assert applied["cgroups"] >= 1
        pid, refused = denied_opens(secret, n, cgroup)
        assert refused == n
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = d.scrape()
            counted = value(text, "bpf_auditd_denials_total", service=service, errno="EACCES")
            if counted == n:
                break
            time.sleep(0.2)
        # The exact kernel counters still count every refusal of the ignored service ...
        assert counted == n
        # ... and none of them is logged or alerted on.
        assert not any(_denial_of(pid)(e) for e in d.lines)
        assert _alerts(d, service) == []
        reached_user_space = value(text, "bpf_auditd_events_ignored_total", probe="denials") or 0
    finally:
        assert d.stop() == 0
    if not FILTERS_IN_KERNEL:
        # User space dropped (and counted) what the kernel sent; the kernel half is pending.
        assert reached_user_space > 0
        pytest.xfail("the denial probe does not implement Monitor.apply_filter yet (issue 3)")
    assert reached_user_space == 0, f"{reached_user_space} records crossed into user space"


def test_default_policy_is_in_force_without_a_policy_file(tmp_path: Path) -> None:
    d = DaemonProcess(_config(tmp_path))
    try:
        d.ready()
        text = d.scrape()
    finally:
        assert d.stop() == 0
    loaded = d.wait_for("policy_loaded")
    assert loaded["file"] == str(DEFAULT_POLICY)
    assert loaded["rules"] == len(load(DEFAULT_POLICY).active_rules)
    assert value(text, "bpf_auditd_policy_reload_failures_total") == 0
    assert "# TYPE bpf_auditd_alerts_total counter" in text
