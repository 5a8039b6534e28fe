"""The audit enabled flag, shared between bpf-auditd processes: the last one out restores it,
unless the flag has become someone else's (a registered audit daemon, or another process that
switched it on too)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from auditd.audit.netlink import current_enabled, registered_daemon, set_enabled


@dataclass(frozen=True, slots=True)
class LeaseStart:
    prior: int  # the value to restore when the last holder leaves
    enabled_by_us: bool
    recovered: bool  # a holder died without restoring; its saved value is used


class EnableLease:
    """Audit stays enabled while any bpf-auditd holds a lease; the last one out restores the value
    the first one in found, so two readers (a daemon and a test, two daemons) never switch audit
    off under each other.

    ``audit.lock`` (exclusive) serialises arrivals and departures and holds the value to restore;
    ``audit.users`` is share-locked by every holder, so an exclusive try-lock on it tells whether
    anyone else is left. flock(2) locks die with their process: a crashed holder leaves no user
    behind, and its saved value is what the next first arrival restores in the end.

    Audit that was off is never switched off again under an audit daemon: not while one is
    registered (Linux auditd expects it on, and leaves it on when it stops), and not after a
    holder saw another process assert it (`release(keep=True)`, which is remembered for the
    holders still there).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._users: int | None = None

    def acquire(
        self,
        current: Callable[[], int] = current_enabled,
        set_enabled: Callable[[int], None] = set_enabled,
    ) -> LeaseStart:
        """Blocks while another process arrives or leaves: run it in a thread."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._mutex() as mutex:
            users = os.open(self.directory / "audit.users", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                first = _try_exclusive(users)
                saved = _read_saved(mutex)
                now = current()
                prior = saved if saved is not None else now
                if first or saved is None:
                    _write_saved(mutex, prior)
                enabled_by_us = now == 0
                if enabled_by_us:
                    set_enabled(1)
                fcntl.flock(users, fcntl.LOCK_SH)  # from exclusive when first: safe under mutex
            except BaseException:
                os.close(users)
                raise
            self._users = users
            return LeaseStart(prior, enabled_by_us, recovered=first and saved is not None)

    def release(
        self,
        current: Callable[[], int] = current_enabled,
        set_enabled: Callable[[int], None] = set_enabled,
        *,
        keep: bool = False,
        daemon: Callable[[], int] = registered_daemon,
    ) -> int | None:
        """Leave; the last one out restores the saved value (returned), unless someone else
        changed the flag meanwhile, an audit daemon (`daemon()`: its pid, 0 for none) is
        registered now, or a holder saw another process assert the flag (`keep`). Blocks like
        `acquire`."""
        users, self._users = self._users, None
        if users is None:
            return None
        with self._mutex() as mutex:
            try:
                fcntl.flock(users, fcntl.LOCK_UN)
                if keep:  # the flag is someone else's too: no holder may switch it off
                    _write_saved(mutex, 1)
                if not _try_exclusive(users):
                    return None
                saved = _read_saved(mutex)
                os.ftruncate(mutex, 0)
                if saved is None or saved == 1 or current() != 1 or daemon() != 0:
                    return None
                set_enabled(saved)
                return saved
            finally:
                os.close(users)

    def _mutex(self) -> _Mutex:
        return _Mutex(self.directory / "audit.lock")


class _Mutex:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> int:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing drops the lock


def _try_exclusive(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_saved(fd: int) -> int | None:
    text = os.pread(fd, 16, 0).strip()
    return int(text) if text.isdigit() else None


def _write_saved(fd: int, value: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{value}\n".encode(), 0)
