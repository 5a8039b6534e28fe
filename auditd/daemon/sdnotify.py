"""systemd's service notification protocol (sd_notify): READY, WATCHDOG and STOPPING datagrams
to ``$NOTIFY_SOCKET``. Without a socket (LinuxKit, a shell) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

log = structlog.get_logger("bpf-auditd.sdnotify")


@dataclass(frozen=True, slots=True)
class Notifier:
    """Where to notify (``address``: a path, or ``\\0name`` for the abstract namespace) and, when
    systemd watches this process, how often to say it is alive."""

    address: str | None = None
    watchdog_usec: int | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int) -> Notifier:
        """Read what systemd passes: NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (the watchdog
        is for `pid` only when WATCHDOG_PID is unset or names it, as sd_watchdog_enabled says)."""
        raw = environ.get("NOTIFY_SOCKET", "")
        address: str | None
        if raw.startswith("/"):
            address = raw
        elif raw.startswith("@") and len(raw) > 1:
            address = "\0" + raw[1:]  # Linux abstract socket: a leading NUL, not a file
        else:
            # Unset, or a form this daemon does not speak (e.g. systemd 254's vsock:CID:PORT).
            if raw:
                log.warning("notify_socket_unsupported", notify_socket=raw)
            address = None
        usec = _positive_int(environ.get("WATCHDOG_USEC"))
        for_pid = environ.get("WATCHDOG_PID")
        if for_pid is not None and _positive_int(for_pid) != pid:
            usec = None
        return cls(address, usec if address is not None else None)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1: half the interval systemd allows (its own advice)."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; False when it could not be sent.

        Never raises: a notification lost is systemd's to time out on (start timeout, watchdog),
        which is the right outcome, and must not stop the daemon itself.
        """
        if self.address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Non-blocking: a receiver that stopped reading must not stall the event loop.
                sock.setblocking(False)
                sock.sendto(message, self.address)
        except OSError as exc:
            log.warning(
                "notify_failed",
                message=assignments[0] if assignments else "",
                error=os.strerror(exc.errno) if exc.errno else str(exc),
            )
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    async def keep_alive(self) -> None:
        """Send WATCHDOG=1 every half watchdog interval until cancelled; returns at once when
        systemd is not watching. Run it on the event loop: a loop that hangs stops the pings."""
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)


def _positive_int(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    value = int(text)
    return value if value > 0 else None
