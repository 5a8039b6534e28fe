"""The `NamespaceChange` event and its vocabulary: namespace types, operations, moves, targets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from auditd.model.errnos import errno_name
from auditd.model.event import Event


class NamespaceType(StrEnum):
    """In the order of `enum auditd_ns_type` (include/task.h): bit i of a kernel mask."""

    MNT = "mnt"
    PID = "pid"
    NET = "net"
    UTS = "uts"
    IPC = "ipc"
    USER = "user"
    CGROUP = "cgroup"
    TIME = "time"


TYPES = tuple(NamespaceType)


class NamespaceOp(StrEnum):
    """In the order of NS_OP_* in namespaces.bpf.c (the kernel record's `op` number)."""

    SETNS = "setns"
    UNSHARE = "unshare"
    CLONE = "clone"
    CLONE3 = "clone3"


OPS = tuple(NamespaceOp)

# CLONE_NEW* flag of each type (include/uapi/linux/sched.h).
CLONE_FLAGS: Mapping[NamespaceType, int] = {
    NamespaceType.MNT: 0x00020000,
    NamespaceType.PID: 0x20000000,
    NamespaceType.NET: 0x40000000,
    NamespaceType.UTS: 0x04000000,
    NamespaceType.IPC: 0x08000000,
    NamespaceType.USER: 0x10000000,
    NamespaceType.CGROUP: 0x02000000,
    NamespaceType.TIME: 0x00000080,
}

# /proc/PID/ns links per type, the one the probe reports first: for pid and time, setns and
# unshare change the namespace of the caller's future children, not its own.
LINKS: Mapping[NamespaceType, tuple[str, ...]] = {
    **{t: (t.value,) for t in NamespaceType},
    NamespaceType.PID: ("pid_for_children", "pid"),
    NamespaceType.TIME: ("time_for_children", "time"),
}


def types_of(mask: int) -> tuple[NamespaceType, ...]:
    return tuple(t for i, t in enumerate(TYPES) if mask & (1 << i))


@dataclass(frozen=True, slots=True)
class NamespaceMove:
    """One namespace type of one call: its inode before and after (None: unknown)."""

    type: NamespaceType
    before: int | None
    after: int | None


@dataclass(frozen=True, slots=True)
class NamespaceTarget:
    """The namespace a setns fd refers to, and who owns it (None: not found)."""

    inode: int
    type: NamespaceType | None = None
    owner_pid: int | None = None
    owner_service: str | None = None
    host: bool = False

    def log_fields(self) -> dict[str, object]:
        return {
            "inode": self.inode,
            "type": self.type.value if self.type else None,
            "owner_pid": self.owner_pid,
            "owner_service": self.owner_service,
            "host": self.host,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class NamespaceChange(Event):
    """One setns, unshare, clone or clone3 call that asked for or made a namespace change.

    For clone and clone3, `after` is the child's namespaces; for setns and unshare, the
    caller's. For pid and time the inodes are those of the children's namespaces.
    """

    kind: ClassVar[str] = "namespace_change"
    probe: ClassVar[str] = "namespaces"
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "time_ns", "op", "types", "result", "flags", "escape", "escaped_types", "namespaces",
            "child_pid", "fd", "target", "pidfd", "host_known", "flags_known", "repeats",
            "summary", "count", "pid", "tid", "uid", "comm", "cgroup_id", "cgroup", "service",
        }
    )  # fmt: skip

    pid: int
    tid: int
    uid: int
    comm: str
    op: NamespaceOp
    flags: int  # the call's flags (setns: its nstype argument)
    errno: int  # 0: the call succeeded
    moves: tuple[NamespaceMove, ...]  # each type the call asked for or changed
    escaped: tuple[NamespaceType, ...] = ()  # moved from a non-host namespace into the host's
    child_pid: int | None = None  # clone/clone3: the new task, as the host's pid namespace sees it
    fd: int | None = None  # setns: the descriptor passed
    target: NamespaceTarget | None = None  # setns into a namespace file
    pidfd: bool = False  # setns through a pidfd: `moves` say where it went
    host_known: bool = True  # False: the host's namespaces were unknown, escapes not checked
    flags_known: bool = True  # False: clone3 arguments unreadable; types from inodes only
    # Identical calls (same program — cgroup, uid, comm —, op, types, result, escapes, types
    # that left the host's namespaces, setns target) since the previous record, not sent on
    # their own (dedup window); they are in the exact counters.
    repeats: int = 0
    # A summary of `repeats` calls that no later record reported (the flood stopped); it shows
    # the last record of the combination.
    summary: bool = False

    @property
    def types(self) -> tuple[NamespaceType, ...]:
        return tuple(m.type for m in self.moves)

    @property
    def result(self) -> str:
        return "success" if self.errno == 0 else errno_name(self.errno)

    @property
    def escape(self) -> bool:
        return bool(self.escaped)

    def log_fields(self) -> dict[str, object]:
        return {
            "time_ns": self.time_ns,
            "op": self.op.value,
            "types": [t.value for t in self.types],
            "result": self.result,
            "flags": hex(self.flags),
            "escape": self.escape,
            "escaped_types": [t.value for t in self.escaped],
            "namespaces": {
                m.type.value: {"before": m.before, "after": m.after} for m in self.moves
            },
            "child_pid": self.child_pid,
            "fd": self.fd,
            "target": self.target.log_fields() if self.target else None,
            "pidfd": self.pidfd,
            "host_known": self.host_known,
            "flags_known": self.flags_known,
            "repeats": self.repeats,
            "summary": self.summary,
            # Calls this event stands for (what thresholds add up): itself and its repeats, or
            # for a summary only the repeats it reports.
            "count": self.repeats if self.summary else 1 + self.repeats,
            "pid": self.pid,
            "tid": self.tid,
            "uid": self.uid,
            "comm": self.comm,
            "cgroup_id": self.cgroup_id,
            "cgroup": self.cgroup,
            "service": self.service,
        }
