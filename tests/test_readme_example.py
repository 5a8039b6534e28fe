"""The README's first example, followed as a newcomer would: `scripts/run` with the example policy,
the README's own shell lines in another shell, metrics on the documented port, the documented
denial line, and an alert.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from _daemon import DaemonProcess
from _jsonlines import JsonLines

pytestmark = pytest.mark.needs_bpf

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


class ScriptDaemon(DaemonProcess):
    """`scripts/run ARGS` exactly as the README says (setup, then `exec bpf-auditd run`)."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [str(ROOT / "scripts" / "run"), *argv],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        log = JsonLines(self.proc.stdout)
        self.lines, self._new, self._reader = log.lines, log.new, log.thread
        self.metrics_url = ""
        self.stderr = ""


def _try_it() -> list[str]:
    """The shell lines of the README's "Try it" block, comments dropped."""
    block = re.search(r"Try it:.*?```sh\n(.*?)```", README, re.DOTALL)
    assert block is not None, "README has no 'Try it' block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def _documented_url() -> str:
    found = re.search(r"`scripts/run` serves metrics on `(http://[^`]+)`", README)
    assert found is not None
    return found.group(1)


def _documented_denial() -> dict[str, Any]:
    """The README's example log line, without the fields it leaves as `…`."""
    found = re.search(r"the daemon logs\n`(\{.*?\})`", README, re.DOTALL)
    assert found is not None
    fields = re.findall(r'"(\w+)": ("[^"]*"|\d+)', found.group(1))
    return {key: json.loads(value) for key, value in fields}


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_readme_example_gives_metrics_a_denial_line_and_an_alert() -> None:
    url = _documented_url()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    if not _port_free(port):
        pytest.fail(f"port {port} (the README's) is taken: stop whatever listens there")
    policy = re.search(r"scripts/run --policy ([^\s`]+)", README)
    assert policy is not None, "README does not say how to run with the example policy"
    secret = Path("/tmp/secret")
    existed = secret.exists()

    d = ScriptDaemon("--policy", policy.group(1))
    try:
        ready = d.ready()
        results = [
            subprocess.run(["bash", "-c", line], capture_output=True, text=True, check=False)
            for line in _try_it()
        ]
        denial = alert = None
        deadline = time.monotonic() + 30
        while (denial is None or alert is None) and time.monotonic() < deadline:
            for entry in list(d.lines):
                if entry.get("event") == "denial" and entry.get("target") == str(secret):
                    denial = denial or entry
                if entry.get("event") == "alert":
                    alert = alert or entry
            time.sleep(0.1)
    finally:
        code = d.stop()
        if not existed:
            with contextlib.suppress(FileNotFoundError):
                secret.unlink()

    assert ready["metrics"] == url
    touch, cat, curl = results
    assert touch.returncode == 0, touch.stderr
    assert cat.returncode != 0
    assert "Permission denied" in cat.stderr
    assert curl.returncode == 0, curl.stderr
    assert re.search(r'bpf_auditd_denials_total\{[^}]*errno="EACCES"', curl.stdout), curl.stdout
    assert denial is not None, "no denial line for the README's example"
    for key, value in _documented_denial().items():
        assert denial[key] == value, key
    assert alert is not None, "no alert for the README's example"
    assert json.dumps(alert).count("secret-read-refused") >= 1
    assert code == 0
