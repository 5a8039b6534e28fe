"""Run the real daemon as a subprocess and read its JSON log and its /metrics."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from _jsonlines import JsonLines

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class DaemonProcess:
    """`bpf-auditd run` in a subprocess; every stdout line parsed as JSON and kept."""

    def __init__(
        self,
        config: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        wrapper: tuple[str, ...] = (),
        command: str = "run",
    ) -> None:
        # `env` is added to this process's environment; `wrapper` goes before the interpreter
        # (e.g. setpriv with a capability set); `command` may be another that runs the probes
        # (`learn`).
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "auditd", command, "--config", str(config), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        log = JsonLines(self.proc.stdout)
        self.lines, self._new, self._reader = log.lines, log.new, log.thread
        self.metrics_url = ""
        self.stderr = ""

    def wait_for(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        for entry in self.lines:
            if entry.get("event") == event:
                return entry
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and self._new.empty():
                self.stop()
                raise AssertionError(
                    f"daemon exited {self.proc.returncode} before {event!r}: {self.stderr}"
                )
            try:
                entry = self._new.get(timeout=0.2)
            except queue.Empty:
                continue
            if entry.get("event") == event:
                return entry
        raise AssertionError(f"no {event!r} log line within {timeout}s")

    def ready(self) -> dict[str, Any]:
        entry = self.wait_for("ready")
        self.metrics_url = entry["metrics"]
        return entry

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
            assert resp.status == 200
            return resp.read().decode()

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(timeout=5)
            if self.proc.stderr is not None and not self.proc.stderr.closed:
                self.stderr += self.proc.stderr.read()
                self.proc.stderr.close()
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` in Prometheus text, as (labels, value)."""
    found = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m["name"] == name:
            found.append((dict(_LABEL.findall(m["labels"] or "")), float(m["value"])))
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    for got, v in samples(text, name):
        if all(got.get(k) == want for k, want in labels.items()):
            return v
    return None


def wait_for_value(
    d: DaemonProcess, name: str, want: float, timeout: float = 20.0, **labels: str
) -> float | None:
    """Scrape until metric `name` with `labels` equals `want` (or the time is up); the last
    value seen."""
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = value(d.scrape(), name, **labels)
        if got == want:
            break
        time.sleep(0.2)
    return got


def bpf_objects_of(pid: int) -> tuple[set[int], set[int]]:
    """The BPF program ids and map ids a process holds open (from /proc/<pid>/fdinfo)."""
    progs: set[int] = set()
    maps: set[int] = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, val = line.partition(":")
            if key == "prog_id":
                progs.add(int(val))
            elif key == "map_id":
                maps.add(int(val))
    return progs, maps


def bpf_maps() -> dict[int, str]:
    out = subprocess.run(
        ["bpftool", "-j", "map", "list"], capture_output=True, text=True, check=True
    )
    return {m["id"]: m.get("name", "") for m in json.loads(out.stdout or "[]")}


def bpf_programs() -> dict[int, str]:
    """Loaded BPF programs by id → name, from bpftool."""
    out = subprocess.run(
        ["bpftool", "-j", "prog", "list"], capture_output=True, text=True, check=True
    )
    return {p["id"]: p.get("name", "") for p in json.loads(out.stdout or "[]")}
