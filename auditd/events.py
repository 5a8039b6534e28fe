"""The events the daemon handles: plain frozen values, decoded from kernel records."""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Protocol


class Source(StrEnum):
    """What in the kernel said no."""

    SYSCALL = "syscall"
    CAPABILITY = "capability"
    LANDLOCK = "landlock"
    SELINUX = "selinux"
    SECCOMP = "seccomp"


def errno_name(number: int) -> str:
    return _errno.errorcode.get(number, f"E{number}")


class Event(Protocol):
    """What the core needs of every event: where it came from, its cgroup, its log fields.

    Events are frozen dataclasses; enrichment returns a copy with `cgroup` and `service` set.
    """

    kind: ClassVar[str]  # the log event name, e.g. "denial"
    probe: ClassVar[str]  # the probe that reports it, for loss accounting

    @property
    def cgroup_id(self) -> int: ...
    @property
    def cgroup(self) -> str | None: ...
    @property
    def service(self) -> str | None: ...

    def log_fields(self) -> dict[str, object]: ...


@dataclass(frozen=True, slots=True)
class Denial:
    """One refusal by the kernel, as seen by one probe."""

    kind: ClassVar[str] = "denial"
    probe: ClassVar[str] = "denials"

    time_ns: int  # wall clock, nanoseconds since the epoch
    pid: int
    tid: int
    uid: int
    gid: int
    comm: str
    cgroup_id: int
    source: Source
    syscall: str
    errno: int
    target: str
    target_truncated: bool = False
    # Filled by enrichment: the cgroup v2 path and the service it maps to.
    cgroup: str | None = None
    service: str | None = None

    @property
    def errno_name(self) -> str:
        return errno_name(self.errno)

    def log_fields(self) -> dict[str, object]:
        return {
            "time_ns": self.time_ns,
            "source": self.source.value,
            "syscall": self.syscall,
            "errno": self.errno_name,
            "target": self.target,
            "target_truncated": self.target_truncated,
            "pid": self.pid,
            "tid": self.tid,
            "uid": self.uid,
            "gid": self.gid,
            "comm": self.comm,
            "cgroup_id": self.cgroup_id,
            "cgroup": self.cgroup,
            "service": self.service,
        }
