"""Namespace changes: the `NamespaceChange` event, whose namespace it is, and their totals.

Owns the user-space namespace identity (the host's namespaces, and a cache from namespace
inode to the process and service that own it) and the monitor of probes/namespaces.bpf.c.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol

import structlog

from auditd.cgroups import ROOT_SERVICE, UNKNOWN_SERVICE, CgroupResolver, service_of
from auditd.config import NamespaceProbeConfig
from auditd.counters import CounterSource, KernelTotals
from auditd.events import errno_name
from auditd.monitor import KernelContext, Monitor
from auditd.telemetry import Family, LabelCap, counter
from probes import namespaces as probe
from probes.runtime import ProbeSet, ProbeSpec

HOST_PID = 1
# Per-thread entries older than this belong to threads that never returned from the call.
PENDING_MAX_AGE_NS = 60 * 1_000_000_000


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
    """In the order of NS_OP_* in namespaces.bpf.c."""

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


# -- the event ---------------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class NamespaceChange:
    """One setns, unshare, clone or clone3 call that asked for or made a namespace change.

    For clone and clone3, `after` is the child's namespaces; for setns and unshare, the
    caller's. For pid and time the inodes are those of the children's namespaces.
    """

    kind: ClassVar[str] = "namespace_change"
    probe: ClassVar[str] = "namespaces"

    time_ns: int  # wall clock, nanoseconds since the epoch
    pid: int
    tid: int
    uid: int
    comm: str
    cgroup_id: int
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
    # Filled by enrichment: the cgroup v2 path and the service it maps to.
    cgroup: str | None = None
    service: str | None = None

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
            "pid": self.pid,
            "tid": self.tid,
            "uid": self.uid,
            "comm": self.comm,
            "cgroup_id": self.cgroup_id,
            "cgroup": self.cgroup,
            "service": self.service,
        }


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


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
        comm=_text(r.comm),
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


# -- who owns a namespace ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Owner:
    pid: int
    service: str


def _inode_of(link_text: str) -> int | None:
    """`net:[4026531840]` → 4026531840."""
    _, sep, rest = link_text.partition(":[")
    if not sep or not rest.endswith("]") or not rest[:-1].isdigit():
        return None
    return int(rest[:-1])


class NamespaceIdentity:
    """The host's namespaces and a cache inode → (type, owning process), refreshed cheaply.

    Owners come first from the events themselves (the process that unshared or was cloned into
    a namespace created it), then from a scan of /proc/*/ns (the lowest pid in it), rate
    limited. A cached owner is checked with one readlink before use, so a dead or recycled pid
    is never reported. Thread-safe; every /proc read tolerates vanished or hidden processes.
    """

    def __init__(
        self,
        proc: Path = Path("/proc"),
        *,
        rescan_interval: float = 1.0,
        max_entries: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.proc = proc
        self.host: dict[NamespaceType, int] = {}
        self._rescan_interval = rescan_interval
        self._max_entries = max_entries
        self._clock = clock
        self._created: dict[int, tuple[NamespaceType, int]] = {}
        self._scanned: dict[int, tuple[NamespaceType, int]] = {}
        self._last_scan = float("-inf")
        self._lock = threading.Lock()
        self.scans = 0

    # -- host ----------------------------------------------------------------------------------

    def read_host(self) -> dict[NamespaceType, int]:
        """PID 1's namespaces from /proc/1/ns (empty when they cannot be read, e.g. when PID 1
        lies outside this process's Landlock domain or /proc is mounted with hidepid)."""
        found = {}
        for t in NamespaceType:
            inode = self._link(HOST_PID, t)
            if inode is not None:
                found[t] = inode
        return found

    def set_host(self, host: Mapping[NamespaceType, int]) -> None:
        self.host = {t: i for t, i in host.items() if i}

    def is_host(self, inode: int) -> bool:
        return inode in self.host.values()

    # -- owners --------------------------------------------------------------------------------

    def learn(self, change: NamespaceChange) -> None:
        """A successful unshare or clone made new namespaces: their creator owns them."""
        if change.errno or change.op is NamespaceOp.SETNS:
            return
        pid = change.child_pid if change.op in (NamespaceOp.CLONE, NamespaceOp.CLONE3) else None
        pid = pid or change.pid
        with self._lock:
            for m in change.moves:
                if m.after and m.after != m.before and not self.is_host(m.after):
                    self._created[m.after] = (m.type, pid)
            self._bound(self._created)

    def owner(self, inode: int) -> tuple[NamespaceType | None, Owner | None]:
        """The namespace's type and owner. May block on /proc (a readlink, or a rate-limited
        scan on a miss)."""
        for t, host_inode in self.host.items():
            if host_inode == inode:
                return t, Owner(HOST_PID, ROOT_SERVICE)
        for cache in (self._created, self._scanned):
            found = self._checked(cache, inode)
            if found is not None:
                return found
        if self._clock() - self._last_scan >= self._rescan_interval:
            self.rescan()
            found = self._checked(self._scanned, inode)
            if found is not None:
                return found
        return None, None

    def attribute(self, change: NamespaceChange) -> NamespaceChange:
        """The event with its setns target's type and owner resolved; learns new namespaces."""
        self.learn(change)
        target = change.target
        if target is None:
            return change
        ns_type, owner = self.owner(target.inode)
        return replace(
            change,
            target=replace(
                target,
                type=target.type or ns_type,
                owner_pid=owner.pid if owner else None,
                owner_service=owner.service if owner else None,
                host=self.is_host(target.inode),
            ),
        )

    def rescan(self) -> None:
        """Index every readable /proc/PID/ns link; the lowest pid in a namespace owns it."""
        found: dict[int, tuple[NamespaceType, int]] = {}
        for pid in sorted(self._pids()):
            for t in NamespaceType:
                for link in LINKS[t]:
                    inode = self._readlink(pid, link)
                    if inode is not None:
                        found.setdefault(inode, (t, pid))
        with self._lock:
            self._scanned = found
            self._last_scan = self._clock()
            self.scans += 1

    def forget_dead(self) -> int:
        """Drop created-namespace owners that no longer hold their namespace."""
        with self._lock:
            entries = list(self._created.items())
        dead = [i for i, (t, pid) in entries if not self._holds(pid, t, i)]
        with self._lock:
            for inode in dead:
                self._created.pop(inode, None)
        return len(dead)

    def _checked(
        self, cache: dict[int, tuple[NamespaceType, int]], inode: int
    ) -> tuple[NamespaceType, Owner] | None:
        entry = cache.get(inode)
        if entry is None:
            return None
        ns_type, pid = entry
        if not self._holds(pid, ns_type, inode):
            with self._lock:
                cache.pop(inode, None)
            return None
        return ns_type, Owner(pid, self._service(pid))

    def _holds(self, pid: int, ns_type: NamespaceType, inode: int) -> bool:
        return any(self._readlink(pid, link) == inode for link in LINKS[ns_type])

    def _link(self, pid: int, ns_type: NamespaceType) -> int | None:
        for link in LINKS[ns_type]:
            inode = self._readlink(pid, link)
            if inode is not None:
                return inode
        return None

    def _readlink(self, pid: int, link: str) -> int | None:
        try:
            return _inode_of(os.readlink(self.proc / str(pid) / "ns" / link))
        except OSError:
            return None

    def _pids(self) -> list[int]:
        try:
            return [int(e.name) for e in os.scandir(self.proc) if e.name.isdigit()]
        except OSError:
            return []

    def _service(self, pid: int) -> str:
        try:
            text = (self.proc / str(pid) / "cgroup").read_text()
        except OSError:
            return UNKNOWN_SERVICE
        for line in text.splitlines():
            if line.startswith("0::"):
                return service_of(line[3:])
        return UNKNOWN_SERVICE

    def _bound(self, cache: dict[int, Any]) -> None:
        # Bounded: forget the oldest half (dicts keep insertion order); a miss rescans.
        if len(cache) > self._max_entries:
            for inode in list(cache)[: len(cache) // 2]:
                del cache[inode]


# -- totals from the kernel's counters ---------------------------------------------------------


class CounterKeyLike(Protocol):
    @property
    def cgroup_id(self) -> int: ...
    @property
    def op(self) -> int: ...
    @property
    def types(self) -> int: ...
    @property
    def errno(self) -> int: ...
    @property
    def escaped(self) -> int: ...


@dataclass(frozen=True, slots=True, order=True)
class ChangeSeries:
    service: str
    op: str
    type: str
    result: str


@dataclass(frozen=True, slots=True, order=True)
class EscapeSeries:
    service: str
    type: str


UNKNOWN_TYPE = "unknown"  # a refused setns on a descriptor whose type nothing named


class NamespaceTotals:
    """Per-service totals from ns_counts (auditd/counters.py keeps them exact across cgroup
    removal). A call that changes several types counts once for each."""

    def __init__(
        self, source: CounterSource[Any], resolver: CgroupResolver, services: LabelCap
    ) -> None:
        def series(key: CounterKeyLike, n: int) -> list[tuple[ChangeSeries | EscapeSeries, int]]:
            service = services(resolver.service(key.cgroup_id))
            op = OPS[key.op].value if key.op < len(OPS) else f"op_{key.op}"
            result = "success" if key.errno == 0 else errno_name(key.errno)
            names: list[ChangeSeries | EscapeSeries] = [
                ChangeSeries(service, op, name, result)
                for name in [t.value for t in types_of(key.types)] or [UNKNOWN_TYPE]
            ]
            names += [EscapeSeries(service, t.value) for t in types_of(key.escaped)]
            return [(name, n) for name in names]

        self._totals: KernelTotals[Any, ChangeSeries | EscapeSeries] = KernelTotals(
            source, resolver, series
        )

    def snapshot(self) -> tuple[dict[ChangeSeries, int], dict[EscapeSeries, int]]:
        """Current totals. Blocks on a kernel map read (call off the event loop)."""
        totals = self._totals.snapshot()
        changes = {k: n for k, n in totals.items() if isinstance(k, ChangeSeries)}
        escapes = {k: n for k, n in totals.items() if isinstance(k, EscapeSeries)}
        return changes, escapes

    def unattributed(self) -> int:
        return self._totals.unattributed()

    def retire_removed(self) -> int:
        """Fold counters of removed cgroups into retired totals; returns the keys retired."""
        return self._totals.retire_removed()


# -- the monitor -------------------------------------------------------------------------------

CHANGES = counter(
    "namespace_changes",
    "setns/unshare/clone/clone3 calls that asked for or made a namespace change, per namespace "
    "type (a call on several types counts for each), counted exactly in the kernel.",
    "service",
    "op",
    "type",
    "result",
)
ESCAPES = counter(
    "namespace_escapes",
    "Namespace changes from a namespace that was not the host's (PID 1's) into the host's.",
    "service",
    "type",
)
UNATTRIBUTED = counter(
    "namespace_changes_unattributed",
    "Namespace changes counted after the kernel counter map was full: in no labelled series.",
)
FLAG_FAULTS = counter(
    "namespace_flag_read_faults",
    "clone3 calls whose flags could not be read from user memory: at entry (read again at "
    "exit), or at exit too (types then come from the inodes that changed).",
    "stage",
)


def _unshare_nothing() -> None:
    """unshare(0): a no-op for the caller, and the probe's cue to read PID 1's namespaces."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare(0)


class NamespaceMonitor(Monitor):
    name = "namespaces"

    def __init__(
        self, config: NamespaceProbeConfig, resolver: CgroupResolver, services: LabelCap
    ) -> None:
        self.config = config
        self._resolver = resolver
        self._services = services
        self.identity = NamespaceIdentity()
        self.totals: NamespaceTotals | None = None
        self._counters: probe.NamespaceCounters | None = None
        self._pending: Any = None
        self._loaded = False
        self._log = structlog.get_logger("bpf-auditd")

    def probe_specs(self, kernel: KernelContext) -> list[ProbeSpec]:
        self.identity = NamespaceIdentity(kernel.paths.proc)
        tracefs = next((p for p in kernel.paths.tracefs if (p / "events").is_dir()), None)
        if tracefs is None:
            self._log.error("namespace_probe_off", reason="tracefs is not mounted")
            return []
        syscalls = [
            name
            for name in probe.SYSCALLS
            if all(
                (tracefs / "events" / "syscalls" / f"sys_{end}_{name}").is_dir()
                for end in ("enter", "exit")
            )
        ]
        if missing := sorted(set(probe.SYSCALLS) - set(syscalls)):
            self._log.warning("namespace_syscalls_untraced", syscalls=missing)
        attach = probe.tracepoints(syscalls)
        problems = [p for _, tp in attach if (p := probe.check_tracepoint(tracefs, tp))]
        if problems:
            self._log.error("namespace_probe_off", reason="; ".join(problems))
            return []
        if not kernel.plan.struct_reads:
            # Calls, flags and results are still reported; inodes, child pids and escapes need
            # struct layouts this kernel does not offer.
            self._log.warning("namespace_inodes_off", reason=kernel.plan.reason)
        elif "-DAUDITD_HAVE_FILE_READS=0" in kernel.plan.cflags:
            self._log.warning(
                "namespace_targets_off",
                reason="kernel BTF lacks a field of the file table (auditd/offsets.py OPTIONAL): "
                "setns targets are not read; the inodes after the call say where it went",
            )
        self._loaded = True
        return [
            ProbeSpec(
                name=self.name,
                source=probe.SOURCE,
                ringbuf="ns_events",
                drops="ns_drops",
                decode=self._decoder(kernel.mono_to_wall_ns),
                cflags=(
                    f"-DNS_COUNTER_ENTRIES={self.config.counter_entries}",
                    f"-DNS_PENDING_ENTRIES={self.config.pending_entries}",
                ),
                tracepoints=attach,
                raw_tracepoints=probe.RAW_TRACEPOINTS if kernel.plan.struct_reads else (),
            )
        ]

    def _decoder(self, mono_to_wall_ns: int) -> Callable[[bytes], NamespaceChange]:
        identity = self.identity

        def decode(data: bytes) -> NamespaceChange:
            return identity.attribute(change_of(probe.parse(data), mono_to_wall_ns))

        return decode

    def bind(self, probes: ProbeSet) -> None:
        if not self._loaded:
            return
        self._counters = probe.NamespaceCounters(
            probes.table("ns_counts"), probes.table("ns_overflow"), probes.table("ns_faults")
        )
        self.totals = NamespaceTotals(self._counters, self._resolver, self._services)
        self._pending = probes.table("ns_pending")
        host_table = probe.HostTable(probes.table("ns_host_table"))
        _unshare_nothing()
        inodes = host_table.read()
        if inodes is not None:
            self.identity.set_host(dict(zip(TYPES, inodes, strict=True)))
            return
        # The probe could not read PID 1's task (no struct layouts): /proc may still tell.
        host = self.identity.read_host()
        if len(host) == len(TYPES):
            host_table.write(host[t] for t in TYPES)
            self.identity.set_host(host)
        else:
            self._log.warning(
                "namespace_escapes_off",
                reason="the host's (PID 1's) namespaces are unknown: neither its task nor "
                f"{self.identity.proc}/1/ns could be read",
            )

    def declared(self) -> list[Family]:
        return [CHANGES, ESCAPES, UNATTRIBUTED, FLAG_FAULTS]

    def families(self) -> list[Family]:
        if self.totals is None or self._counters is None:
            return self.declared()
        changes, escapes = self.totals.snapshot()
        faults = self._counters.faults()
        return [
            CHANGES.with_samples(
                {(s.service, s.op, s.type, s.result): n for s, n in sorted(changes.items())}
            ),
            ESCAPES.with_samples({(s.service, s.type): n for s, n in sorted(escapes.items())}),
            UNATTRIBUTED.with_samples({(): self.totals.unattributed()}),
            FLAG_FAULTS.with_samples(
                {
                    ("entry",): faults[probe.FAULT_ENTRY],
                    ("exit",): faults[probe.FAULT_EXIT],
                }
            ),
        ]

    def housekeeping(self) -> None:
        if self.totals is None:
            return
        self.totals.retire_removed()
        probe.prune_pending(self._pending, time.monotonic_ns() - PENDING_MAX_AGE_NS)
        self.identity.forget_dead()
