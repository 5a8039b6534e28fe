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


# errno stand-ins in denial records: a failed capability check whose outcome the kernel did not
# report (it may have allowed the operation by another route), and a seccomp kill.
ERR_UNKNOWN = 0
ERR_KILLED = 1000

# Capability numbers (include/uapi/linux/capability.h), index = number.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip


def errno_name(number: int) -> str:
    if number == ERR_UNKNOWN:
        return "unknown"
    if number == ERR_KILLED:
        return "SIGSYS"
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
    ppid: int  # 0 where the kernel's struct layouts are unknown
    uid: int
    gid: int
    comm: str
    cgroup_id: int
    source: Source
    syscall: str
    errno: int
    target: str
    target_truncated: bool = False
    # Why: "capability:CAP_X", "seccomp", "landlock:<rights>", "selinux", or "dac_or_other".
    cause: str = "dac_or_other"
    # Identical refusals (same process, syscall, errno, source, target) since the previous
    # record, not sent on their own (dedup window); they are in the exact counters.
    repeats: int = 0
    # The refusing mechanism's own words (capability, Landlock blockers and domain, AVC fields).
    detail: tuple[tuple[str, str], ...] = ()
    exe: str | None = None
    # A summary of `repeats` refusals that no later record reported (the flood stopped).
    summary: bool = False
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
            "cause": self.cause,
            "repeats": self.repeats,
            "summary": self.summary,
            # Refusals this event stands for (what thresholds add up): itself and its repeats,
            # or for a summary only the repeats it reports.
            "count": self.repeats if self.summary else 1 + self.repeats,
            "detail": dict(self.detail),
            "ppid": self.ppid,
            "exe": self.exe,
            "pid": self.pid,
            "tid": self.tid,
            "uid": self.uid,
            "gid": self.gid,
            "comm": self.comm,
            "cgroup_id": self.cgroup_id,
            "cgroup": self.cgroup,
            "service": self.service,
        }
