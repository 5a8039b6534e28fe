"""The `Denial` event: one refusal by the kernel, as seen by one probe (or an LSM audit record)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from auditd.model.errnos import errno_name
from auditd.model.event import Event, Source


@dataclass(frozen=True, slots=True, kw_only=True)
class Denial(Event):
    """One refusal by the kernel, as seen by one probe."""

    kind: ClassVar[str] = "denial"
    probe: ClassVar[str] = "denials"
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "time_ns", "source", "syscall", "errno", "target", "target_truncated", "cause",
            "repeats", "summary", "count", "detail", "ppid", "exe", "pid", "tid", "uid", "gid",
            "comm", "cgroup_id", "cgroup", "service",
        }
    )  # fmt: skip

    pid: int
    tid: int
    ppid: int  # 0 where the kernel's struct layouts are unknown
    uid: int
    gid: int
    comm: str
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
