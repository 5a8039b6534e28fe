"""The one event model: every kind the daemon handles is a frozen `Event` with the same origin
fields (time, cgroup, and the cgroup path and service that enrichment fills in)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Self


class Source(StrEnum):
    """What in the kernel said no."""

    SYSCALL = "syscall"
    CAPABILITY = "capability"
    LANDLOCK = "landlock"
    SELINUX = "selinux"
    SECCOMP = "seccomp"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """What the core needs of every event: its kind, the probe that reported it, when, and the
    cgroup it happened in. Decoding fills `cgroup_id`; enrichment returns a copy with `cgroup`
    (the v2 path) and `service` set (`located`).

    Each kind lists in `FIELDS` the keys its `log_fields()` has: what a policy may match (a test
    keeps the two equal)."""

    kind: ClassVar[str]  # the log event name, e.g. "denial"
    probe: ClassVar[str]  # the probe that reports it, for loss accounting
    FIELDS: ClassVar[frozenset[str]]

    time_ns: int  # wall clock, nanoseconds since the epoch
    cgroup_id: int
    cgroup: str | None = None
    service: str | None = None

    def log_fields(self) -> dict[str, object]:
        raise NotImplementedError

    def located(self, cgroup: str | None, service: str) -> Self:
        """The event with its cgroup path and service (enrichment's one change of origin)."""
        return dataclasses.replace(self, cgroup=cgroup, service=service)
