"""What a probe should not send to user space: the policy's ignore list as kernel filter values."""

from __future__ import annotations

from dataclasses import dataclass

from auditd.model.event import Source


@dataclass(frozen=True, slots=True)
class KernelFilter:
    """Pushed to every monitor by `Monitor.apply_filter` on load and on every change (policy
    reload, new cgroups of an ignored service).

    A record is dropped when ANY criterion matches. Exact kernel counters keep counting dropped
    events (bpf_auditd_denials_total stays exact); only the records are not sent.
    """

    cgroup_ids: frozenset[int] = frozenset()  # cgroups of ignored services and cgroup patterns
    syscalls: frozenset[str] = frozenset()  # names as in probes/syscalls.py
    errnos: frozenset[int] = frozenset()
    sources: frozenset[Source] = frozenset()  # sources switched off

    @property
    def empty(self) -> bool:
        return not (self.cgroup_ids or self.syscalls or self.errnos or self.sources)

    def drops(self, *, cgroup_id: int, syscall: str, errno: int, source: Source) -> bool:
        """The reference semantics a kernel implementation must match."""
        return (
            cgroup_id in self.cgroup_ids
            or syscall in self.syscalls
            or errno in self.errnos
            or source in self.sources
        )
