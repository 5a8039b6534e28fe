"""The MQTT sink alone in a child process, fed alerts over stdin: a process the tests can
SIGKILL at a chosen moment (`raise N RULE` submits N alerts; end of input stops it cleanly).

Run as `python tests/_sink_process.py CONFIG.yaml`; logs JSON lines on stdout like the daemon.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _jsonlines import JsonLines

ROOT = Path(__file__).resolve().parent.parent


class SinkProcess:
    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        log = JsonLines(self.proc.stdout)
        self.lines, self._new, self._reader = log.lines, log.new, log.thread

    def wait_for(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        for entry in list(self.lines):
            if entry.get("event") == event:
                return entry
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                entry = self._new.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if entry.get("event") == event:
                return entry
        stderr = (
            self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        )
        raise AssertionError(f"no {event!r} within {timeout}s; {self.lines[-5:]} {stderr}")

    def raise_alerts(self, n: int, rule: str = "test-rule") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"raise {n} {rule}\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._close()

    def stop(self, timeout: float = 20) -> int:
        """Close stdin (a clean stop); kill if it does not end."""
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._close()

    def _close(self) -> None:
        self._reader.join(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()

    def __enter__(self) -> SinkProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()
        else:
            self._close()


async def _main(config_path: Path) -> None:
    import structlog

    from auditd.config import schema as config_mod
    from auditd.daemon import logs
    from auditd.model.alert import Alert, Severity
    from exporters.mqtt import MqttSink

    config = config_mod.load(config_path)
    logs.configure(config.log)
    log = structlog.get_logger("sink-process")
    numbers = itertools.count()
    async with MqttSink(config.mqtt, Path(config.state_dir), hostname="sink-process") as sink:
        log.info("ready")
        while line := await asyncio.to_thread(sys.stdin.readline):
            _, n, rule = line.split(maxsplit=2)
            for _ in range(int(n)):
                i = next(numbers)
                sink.submit(
                    Alert(
                        rule=rule.strip(),
                        severity=Severity.WARNING,
                        service="test.service",
                        description="raised by the test",
                        event_kind="denial",
                        event={"n": i, "comm": "a/+/#"},
                        count=1,
                        first_seen_ns=time.time_ns(),
                        last_seen_ns=time.time_ns(),
                        host="sink-process",
                    )
                )
            log.info("raised", n=int(n))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    asyncio.run(_main(Path(sys.argv[1])))
