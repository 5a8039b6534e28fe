"""namespaces.bpf.c records → `NamespaceChange` events. Pure: owners are resolved later, by
enrichment (`identity`)."""

from __future__ import annotations

from dataclasses import dataclass

from auditd.model.text import kernel_text
from auditd.signals.namespaces.event import (
    CLONE_FLAGS,
    OPS,
    TYPES,
    NamespaceChange,
    NamespaceMove,
    NamespaceOp,
    NamespaceTarget,
    NamespaceType,
    types_of,
)
from probes import namespaces as probe


@dataclass(frozen=True, slots=True)
class Decoded:
    change: NamespaceChange  # `repeats` still 0: the accountant fills it
    key: probe.DedupKey
    seen: int  # calls of this combination so far, this one included


def decode(data: bytes, mono_to_wall_ns: int) -> Decoded:
    """One ring-buffer record; ValueError when the bytes are too short or the op is unknown."""
    r = probe.parse(data)
    return Decoded(change_of(r, mono_to_wall_ns), probe.DedupKey.of(r), r.seen)


def change_of(r: probe.NamespaceRecord, mono_to_wall_ns: int) -> NamespaceChange:
    """The event a kernel record describes (pure: no owner resolved yet)."""
    op = OPS[r.op] if r.op < len(OPS) else None
    if op is None:
        raise ValueError(f"unknown namespace op {r.op}")
    types = types_of(r.types)
    moves = tuple(
        NamespaceMove(t, r.before[TYPES.index(t)] or None, r.after[TYPES.index(t)] or None)
        for t in types
    )
    target = None
    pidfd = False
    if op is NamespaceOp.SETNS:
        if r.target_magic == probe.NSFS_MAGIC and r.target_ino:
            target = NamespaceTarget(r.target_ino, _target_type(r.flags, moves))
        pidfd = r.target_magic == probe.PIDFS_MAGIC
    return NamespaceChange(
        time_ns=r.ktime_ns + mono_to_wall_ns,
        pid=r.pid,
        tid=r.tid,
        uid=r.uid,
        comm=kernel_text(r.comm),
        cgroup_id=r.cgroup_id,
        op=op,
        flags=r.flags,
        errno=r.err,
        moves=moves,
        escaped=types_of(r.escaped),
        child_pid=(r.child_pid or None) if r.rflags & probe.FLAG_CHILD else None,
        fd=r.fd if op is NamespaceOp.SETNS else None,
        target=target,
        pidfd=pidfd,
        host_known=not r.rflags & probe.FLAG_HOST_UNKNOWN,
        flags_known=not r.rflags & probe.FLAG_FLAGS_UNREADABLE,
    )


def _target_type(nstype: int, moves: tuple[NamespaceMove, ...]) -> NamespaceType | None:
    """A namespace file's type when the call says it: setns's nstype, or the one type moved."""
    named = [t for t, flag in CLONE_FLAGS.items() if nstype == flag]
    if named:
        return named[0]
    moved = [m.type for m in moves if m.before != m.after]
    return moved[0] if len(moved) == 1 else None
