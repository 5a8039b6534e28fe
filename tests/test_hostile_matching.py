"""An unprivileged user names files to be worst cases for the policy's patterns, on the real
daemon and kernel: /metrics keeps answering and the rules still fire. Before linear-time
matching, ONE refused open of 'a' * 28 + '!' against `(a+)+$` held a scrape for 8.6 s."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from _daemon import DaemonProcess, value
from _hostile import WORKLOAD, Scraper, policy
from _workload import NOBODY, scratch_cgroup

from auditd.kernel.cgroups import service_of

pytestmark = pytest.mark.needs_bpf

NAMES = 400
DOS_BOUND_S = 2.0  # loose on purpose: a DoS bound on a shared machine, not a benchmark


def _workdir(root: Path) -> Path:
    """A directory uid 65534 can enter but not write, with a root-only `locked/` in it."""
    root.chmod(0o755)
    (root / "locked").mkdir(mode=0o700)
    return root


def test_hostile_names_do_not_stall_scrapes(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("metrics:\n  listen: '127.0.0.1:0'\n")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy())
    with (
        tempfile.TemporaryDirectory(prefix="bpf-auditd-hostile-") as tmp,
        scratch_cgroup("bpf-auditd-hostile") as cgroup,
    ):
        workdir = _workdir(Path(tmp))
        d = DaemonProcess(config, "--policy", str(policy_file))
        try:
            d.ready()
            with Scraper(d.metrics_url, timeout=DOS_BOUND_S * 5) as scraper:
                proc = subprocess.run(
                    [sys.executable, "-c", _as_nobody(cgroup) + WORKLOAD, str(NAMES), str(workdir)],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=True,
                )
                assert int(proc.stdout) == NAMES, proc.stderr
                service = service_of("/" + cgroup.name)
                fired = _wait_for_alerts(d, service, timeout=30)
        finally:
            d.stop()
    assert fired == {"hostile-regex", "hostile-glob", "hostile-glob-segments"}, fired
    assert scraper.latencies, scraper.failures
    assert not scraper.failures, scraper.failures[:3]
    assert max(scraper.latencies) < DOS_BOUND_S, sorted(scraper.latencies)[-5:]


def _as_nobody(cgroup: Path) -> str:
    return (
        "import os\n"
        f"open({str(cgroup / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
        f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
    )


def _wait_for_alerts(d: DaemonProcess, service: str, timeout: float) -> set[str]:
    """The rules that alerted for `service` once every refusal reached the policy."""
    deadline = time.monotonic() + timeout
    fired: set[str] = set()
    while time.monotonic() < deadline:
        fired = {
            line["alert"]["rule"]
            for line in list(d.lines)
            if line.get("event") == "alert" and line["alert"]["service"] == service
        }
        if len(fired) == 3:
            break
        time.sleep(0.2)
    assert value(d.scrape(), "bpf_auditd_alerts_total", rule="hostile-regex") is not None
    return fired
