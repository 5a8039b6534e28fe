"""MQTT peers that speak only 3.1.1 or not at all, for the `protocol: auto` tests: a real amqtt
broker (the `amqtt` package of the test extras, started on a free loopback port), and a
stand-in for a misbehaving peer that accepts, reads the CONNECT and drops the connection (no
real broker that does so was found: it is a stand-in)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from _broker import free_port

AMQTT = shutil.which("amqtt", path=str(Path(sys.executable).parent)) or shutil.which("amqtt")

_DROPPER = r"""
import socket, sys
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
reset = sys.argv[1] == "rst"
while True:
    conn, _ = server.accept()
    conn.recv(65536)  # the CONNECT
    if reset:  # RST instead of FIN
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    conn.close()
"""


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"not listening on {port} after {timeout:.0f} s")


class Amqtt:
    """`with Amqtt(directory) as broker:` an amqtt 0.12 broker, anonymous, TCP on loopback."""

    def __init__(self, directory: Path) -> None:
        if AMQTT is None:
            raise RuntimeError("amqtt is not installed (the test extras have it)")
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.config = directory / "amqtt.yaml"
        # With a `plugins:` section only these load: no $SYS publisher, no packet logger.
        self.config.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
        self.log = directory / "amqtt.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Amqtt:
        assert AMQTT is not None
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [AMQTT, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        _wait_port(self.port, self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGINT is ignored when started from a background job
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def dropper(how: str = "fin") -> Iterator[str]:
    """A TCP endpoint that reads the CONNECT then closes (`fin`) or resets (`rst`); yields its
    URL. In a process of its own, so its sockets are not counted in the test's fds."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _DROPPER, how], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
