"""The real daemon end to end: a denial in the kernel becomes a counter and a log line."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _daemon import DaemonProcess, bpf_maps, bpf_objects_of, bpf_programs, value, wait_for_value
from _workload import denied_opens, scratch_cgroup, secret_file

from auditd.kernel.cgroups import service_of

pytestmark = pytest.mark.needs_bpf

N = 137
OUR_PROGRAMS = ("denial_exit_hook", "denial_enter_hook")


def _config(tmp_path: Path, extra: str = "") -> Path:
    f = tmp_path / "config.yaml"
    f.write_text(f"metrics:\n  listen: '127.0.0.1:0'\n{extra}")
    return f


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(_config(tmp_path))
    try:
        d.ready()
        yield d
    finally:
        d.stop()


def _wait_for_count(d: DaemonProcess, service: str, want: int) -> float | None:
    return wait_for_value(
        d, "bpf_auditd_denials_total", want, service=service, syscall="openat", errno="EACCES"
    )


def test_denied_opens_reach_metrics_and_log(daemon: DaemonProcess) -> None:
    with scratch_cgroup() as cgroup, secret_file() as secret:
        service = service_of("/" + cgroup.name)
        assert value(daemon.scrape(), "bpf_auditd_denials_total", service=service) is None
        pid, refused = denied_opens(secret, N, cgroup)
        assert refused == N
        assert _wait_for_count(daemon, service, N) == N
        # Exactly N, not more: a later scrape still says N.
        time.sleep(0.5)
        assert _wait_for_count(daemon, service, N) == N

        deadline = time.monotonic() + 10
        ours: list[dict[str, object]] = []
        while time.monotonic() < deadline and not ours:
            ours = [e for e in daemon.lines if e.get("event") == "denial" and e.get("pid") == pid]
            time.sleep(0.1)
        # One record: the other N-1 are repeats inside the dedup window, counted exactly above.
        time.sleep(0.3)
        ours = [e for e in daemon.lines if e.get("event") == "denial" and e.get("pid") == pid]
        assert len(ours) == 1
        line = ours[0]
        assert line["target"] == str(secret)
        assert (line["syscall"], line["errno"], line["source"]) == ("openat", "EACCES", "syscall")
        assert (line["uid"], line["gid"], line["service"]) == (65534, 65534, service)
        assert line["cgroup"] == "/" + cgroup.name
        assert line["cgroup_id"] == os.stat(cgroup).st_ino


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_is_graceful_fast_and_detaches_everything(tmp_path: Path, sig: signal.Signals) -> None:
    d = DaemonProcess(_config(tmp_path))
    try:
        d.ready()
        ours, our_maps = bpf_objects_of(d.proc.pid)
        assert ours, "the daemon's programs should be loaded while it runs"
        assert set(bpf_programs()[i] for i in ours) >= {OUR_PROGRAMS[0]}
        started = time.monotonic()
        d.signal(sig)
        code = d.proc.wait(timeout=10)
        took = time.monotonic() - started
    finally:
        d.stop()
    assert code == 0
    assert took < 2.0, f"stop took {took:.2f}s"
    events = [e["event"] for e in d.lines]
    # In order (other lines, e.g. the audit source's, may come between them).
    order = [events.index(name) for name in ("stopping", "intake_stopped", "stopped")]
    assert order == sorted(order)
    assert events[-1] == "stopped"
    assert not ours & set(bpf_programs()), "programs still loaded after exit"
    assert not our_maps & set(bpf_maps()), "maps still loaded after exit"


def test_sighup_reloads_and_a_broken_file_keeps_the_running_config(tmp_path: Path) -> None:
    config = _config(tmp_path)
    d = DaemonProcess(config)
    try:
        d.ready()
        config.write_text("metrics:\n  listen: '127.0.0.1:0'\nlog:\n  level: debug\n")
        d.signal(signal.SIGHUP)
        assert d.wait_for("config_reloaded")["changed"] == ["log"]
        config.write_text("log:\n  levle: info\n")
        d.signal(signal.SIGHUP)
        failed = d.wait_for("config_reload_failed")
        assert failed["error"].startswith(f"{config}:2: log.levle: unknown key")
        text = d.scrape()
        assert value(text, "bpf_auditd_config_reloads_total", result="failure") == 1
        assert value(text, "bpf_auditd_config_reloads_total", result="success") == 1
        assert d.proc.poll() is None, "a broken config must not stop the daemon"
    finally:
        assert d.stop() == 0


def test_metrics_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(f"metrics:\n  listen: '127.0.0.1:{port}'\n")
        before = set(bpf_programs())
        d = DaemonProcess(config)
        code = d.proc.wait(timeout=60)
        d.stop()
    assert code == 1
    assert d.stderr.strip().splitlines() == [
        f"bpf-auditd: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ]
    leftover = {i for i, n in bpf_programs().items() if i not in before and n in OUR_PROGRAMS}
    assert not leftover


@pytest.mark.needs_prometheus
def test_live_scrape_passes_promtool(daemon: DaemonProcess) -> None:
    import subprocess

    text = daemon.scrape()
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).strip() == ""


def test_the_daemon_carries_no_compiler_and_its_image_is_cached(daemon: DaemonProcess) -> None:
    """BCC compiles in a child that is gone: the daemon maps neither libbcc nor LLVM, and the
    image it loaded is in its state directory's cache for the next start."""
    maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
    assert not [line for line in maps.splitlines() if "libbcc" in line or "LLVM" in line]
    assert "libbpf.so" in maps  # ring buffers are read through libbpf
    ready = daemon.wait_for("ready")
    assert ready["image"] in ("compiled", "cache")


def test_a_restart_on_the_same_kernel_and_config_compiles_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path, f"state_dir: {tmp_path / 'state'}\n")
    images = []
    for _ in range(2):
        d = DaemonProcess(config)
        try:
            images.append(d.ready()["image"])
        finally:
            assert d.stop() == 0
    assert images == ["compiled", "cache"]
    cache = tmp_path / "state" / "probe-cache"
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    assert len(list(cache.glob("*.image"))) == 1
