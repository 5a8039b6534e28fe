"""The MQTT sink's on-disk spool: one file per alert, written before it is sent, removed once
the broker has acknowledged it, read back in order when the daemon starts.

Durability (the fsync policy): each alert is written to a temporary file and renamed into
place, so a file is either whole or absent. Without `fsync` the spool survives the daemon's
death (SIGKILL, OOM kill, crash: the data is in the kernel's page cache) but alerts written in
the last seconds before a power loss or kernel crash may be lost; with `fsync` every file and the
directory are flushed before the alert is sent. Bounds (oldest dropped) are the caller's: the
spool stores and removes what it is told to. Methods block; the sink runs them in an executor.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SUFFIX = ".json"
_TMP_PREFIX = "."


class SpoolError(Exception):
    """The spool directory cannot be used (unwritable, or held by another daemon)."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """What `open` found: spooled alerts in order, and files it could not read (removed)."""

    records: list[tuple[int, bytes]]
    unreadable: int


class Spool:
    """Alert payloads keyed by a sequence number that orders them, one file each."""

    def __init__(self, directory: Path, *, fsync: bool = False) -> None:
        self.directory = directory
        self.fsync = fsync
        self._lock_fd: int | None = None

    def open(self) -> Loaded:
        """Create the directory (mode 0700: alerts name processes and paths), take its lock,
        clear half-written files and return what an earlier run left."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot use spool {self.directory}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError(
                f"spool {self.directory} is in use by another bpf-auditd (set a different "
                "state_dir for each daemon)"
            ) from None
        self._lock_fd = fd
        records: list[tuple[int, bytes]] = []
        unreadable = 0
        for entry in sorted(os.scandir(self.directory), key=lambda e: e.name):
            if entry.name.startswith(_TMP_PREFIX):
                # A write the daemon did not finish: the alert was never sent from this file.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                continue
            stem, _, suffix = entry.name.partition(".")
            if "." + suffix != SUFFIX or not stem.isdigit():
                continue
            try:
                payload = Path(entry.path).read_bytes()
            except OSError:
                payload = b""
            if not payload:
                unreadable += 1
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                continue
            records.append((int(stem), payload))
        records.sort()
        return Loaded(records, unreadable)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def path(self, seq: int) -> Path:
        return self.directory / f"{seq:020d}{SUFFIX}"

    def write(self, records: Sequence[tuple[int, bytes]]) -> dict[int, str]:
        """Store each record; returns the ones that failed, with the reason."""
        failed: dict[int, str] = {}
        for seq, payload in records:
            final = self.path(seq)
            tmp = final.with_name(_TMP_PREFIX + final.name)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                try:
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(fd, view) :]
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, final)
            except OSError as exc:
                failed[seq] = exc.strerror or str(exc)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        if self.fsync and len(failed) < len(records):
            self._sync_directory()
        return failed

    def remove(self, seqs: Iterable[int]) -> int:
        """Delete the records; returns how many deletions failed (already gone is fine)."""
        errors = 0
        for seq in seqs:
            try:
                os.unlink(self.path(seq))
            except FileNotFoundError:
                pass
            except OSError:
                errors += 1
        return errors

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
