"""Decoder for denials.bpf.c: its record, its counter maps, and the syscalls it hooks."""

from __future__ import annotations

import ctypes
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditd.events import CAPABILITIES, ERR_KILLED, Denial, Source
from probes import syscalls
from probes.counters import CounterMap

SOURCE = "denials.bpf.c"
TARGET_LEN = 256

FLAG_TARGET_TRUNCATED = 1
FLAG_TARGET_UNREADABLE = 2
FLAG_CAP_INIT_NS = 4

TARGET_NONE, TARGET_PATH, TARGET_PID, TARGET_SOCKADDR, TARGET_INT = range(5)
NO_CAP = 0xFFFFFFFF
CAUSE_SELINUX = 0xFFFFFFFE

# Numbering of `source` in the kernel records (DENIAL_SOURCE_* in the C).
_SOURCES = {0: Source.SYSCALL, 1: Source.CAPABILITY, 3: Source.SELINUX, 4: Source.SECCOMP}
SOURCE_NUMBERS = {v: k for k, v in _SOURCES.items()}

# The security-relevant syscalls hooked at sys_exit, by tracepoint name: what their target is
# and which argument holds it (the next argument is kept too, for pids and integers).
HOOKS: dict[str, tuple[int, int]] = {
    **dict.fromkeys(("open", "creat", "execve", "unlink", "rename", "mkdir", "rmdir", "link",
                     "chmod", "chown", "lchown", "truncate", "mknod", "setxattr", "lsetxattr",
                     "removexattr", "umount", "pivot_root", "fsopen", "chroot", "swapon",
                     "swapoff", "acct", "sethostname", "setdomainname", "delete_module"),
                    (TARGET_PATH, 0)),
    **dict.fromkeys(("openat", "openat2", "execveat", "unlinkat", "renameat", "renameat2",
                     "mkdirat", "linkat", "symlink", "fchmodat", "fchmodat2", "fchownat",
                     "mknodat", "utimensat", "mount", "name_to_handle_at"),
                    (TARGET_PATH, 1)),
    "symlinkat": (TARGET_PATH, 2),
    "move_mount": (TARGET_PATH, 3),
    **dict.fromkeys(("process_vm_readv", "process_vm_writev", "kill", "tkill", "tgkill",
                     "prlimit64", "sched_setscheduler"), (TARGET_PID, 0)),
    **dict.fromkeys(("ptrace", "perf_event_open"), (TARGET_PID, 1)),
    **dict.fromkeys(("finit_module", "kexec_file_load", "pidfd_send_signal", "bpf", "setuid",
                     "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid",
                     "setfsgid", "setgroups", "socket", "keyctl", "setns", "unshare", "clone",
                     "open_by_handle_at", "iopl", "ioperm"), (TARGET_INT, 0)),
    "setpriority": (TARGET_INT, 1),
    "reboot": (TARGET_INT, 2),
    **dict.fromkeys(("connect", "bind"), (TARGET_SOCKADDR, 1)),
    **dict.fromkeys(("init_module", "capset", "clone3"), (TARGET_NONE, 0)),
}  # fmt: skip
# Tracepoints named otherwise than their syscall.
_TRACEPOINT_TO_SYSCALL = {"umount": "umount2"}


def available_hooks(tracefs: Path | None) -> dict[str, int]:
    """Hooked tracepoint name → syscall number, for those this kernel has (exit and entry)."""
    found = {}
    for name in HOOKS:
        nr = syscalls.NUMBERS.get(_TRACEPOINT_TO_SYSCALL.get(name, name))
        events = tracefs / "events" / "syscalls" if tracefs is not None else None
        if nr is None or (events is not None and not (events / f"sys_exit_{name}").is_dir()):
            continue
        found[name] = nr
    return found


class DenialRecord(ctypes.Structure):
    """Mirror of `struct denial_record`."""

    _fields_ = (
        ("ktime_ns", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("target_hash", ctypes.c_uint64),
        ("target_int", ctypes.c_int64),
        ("target_int2", ctypes.c_int64),
        ("seen", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("syscall", ctypes.c_uint32),
        ("err", ctypes.c_uint32),
        ("source", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("target_kind", ctypes.c_uint32),
        ("cause_cap", ctypes.c_uint32),
        ("family", ctypes.c_uint16),
        ("port", ctypes.c_uint16),
        ("addr", ctypes.c_uint8 * 16),
        ("comm", ctypes.c_char * 16),
        ("target", ctypes.c_char * TARGET_LEN),
    )


class DenialKey(ctypes.Structure):
    """Mirror of `struct denial_key`."""

    _fields_ = (
        ("cgroup_id", ctypes.c_uint64),
        ("syscall", ctypes.c_uint32),
        ("err", ctypes.c_uint32),
        ("source", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    )


class DenialCapKey(ctypes.Structure):
    """Mirror of `struct denial_cap_key`."""

    _fields_ = (
        ("cgroup_id", ctypes.c_uint64),
        ("cap", ctypes.c_uint32),
        ("init_ns", ctypes.c_uint32),
    )


class DenialRecent(ctypes.Structure):
    """Mirror of `struct denial_recent` (one dedup-window entry)."""

    _fields_ = (
        ("last_sent_ns", ctypes.c_uint64),
        ("seen", ctypes.c_uint64),
        ("sent_seen", ctypes.c_uint64),
    )


def text(raw: bytes) -> str:
    """Kernel bytes (comm, paths) as text that round-trips and cannot break a log line."""
    return raw.decode("utf-8", errors="backslashreplace")


def capability_name(cap: int) -> str:
    return CAPABILITIES[cap] if 0 <= cap < len(CAPABILITIES) else f"CAP_{cap}"


def _sockaddr(r: DenialRecord) -> str:
    if r.family == 2:
        return f"{ipaddress.IPv4Address(bytes(r.addr[:4]))}:{r.port}"
    if r.family == 10:
        return f"[{ipaddress.IPv6Address(bytes(r.addr))}]:{r.port}"
    if r.family == 1:
        return f"unix:{text(r.target)}"
    return f"family={r.family}"


def _target(r: DenialRecord, syscall: str) -> str:
    if r.flags & FLAG_TARGET_UNREADABLE:
        return ""
    kind = r.target_kind
    if kind == TARGET_PATH:
        return text(r.target)
    if kind == TARGET_SOCKADDR:
        return _sockaddr(r)
    if kind == TARGET_PID:
        if syscall in ("kill", "tkill"):
            return f"pid={r.target_int} sig={r.target_int2}"
        if syscall == "tgkill":
            return f"pid={r.target_int} tid={r.target_int2}"
        return f"pid={r.target_int}"
    if kind == TARGET_INT:
        if r.source == SOURCE_NUMBERS[Source.SECCOMP] and r.err == ERR_KILLED:
            return f"seccomp_data={r.target_int}"
        if syscall in ("unshare", "clone"):
            return f"flags={r.target_int:#x}"
        if syscall == "setns":
            return f"fd={r.target_int} nstype={r.target_int2:#x}"
        return f"arg={r.target_int}"
    return ""


def _cause(r: DenialRecord, source: Source) -> str:
    if r.cause_cap == CAUSE_SELINUX:
        return "selinux"
    if r.cause_cap != NO_CAP:
        return f"capability:{capability_name(r.cause_cap)}"
    if source is Source.SECCOMP:
        return "seccomp"
    return "dac_or_other"


@dataclass(frozen=True, slots=True)
class DedupKey:
    """A (process, syscall, errno, source, target) combination: a `denial_recent` entry."""

    target_hash: int
    tgid: int
    syscall: int
    err: int
    source: int


@dataclass(frozen=True, slots=True)
class Decoded:
    denial: Denial  # `repeats` still 0: the accountant fills it
    key: DedupKey
    seen: int  # refusals of this combination so far, this one included


def decoder(mono_to_wall_ns: int) -> Callable[[bytes], Decoded]:
    """A decoder for records whose monotonic timestamps are shifted by `mono_to_wall_ns`."""

    def decode(data: bytes) -> Decoded:
        r = DenialRecord.from_buffer_copy(data)
        source = _SOURCES.get(r.source, Source.SYSCALL)
        syscall = syscalls.name(r.syscall) if r.syscall != NO_CAP else "none"
        detail: tuple[tuple[str, str], ...] = ()
        if r.cause_cap not in (NO_CAP, CAUSE_SELINUX):
            detail = (
                ("capability", capability_name(r.cause_cap)),
                ("init_user_ns", "true" if r.flags & FLAG_CAP_INIT_NS else "false"),
            )
        denial = Denial(
            time_ns=r.ktime_ns + mono_to_wall_ns,
            pid=r.pid,
            tid=r.tid,
            ppid=r.ppid,
            uid=r.uid,
            gid=r.gid,
            comm=text(r.comm),
            cgroup_id=r.cgroup_id,
            source=source,
            syscall=syscall,
            errno=r.err,
            target=_target(r, syscall),
            target_truncated=bool(r.flags & FLAG_TARGET_TRUNCATED),
            cause=_cause(r, source),
            detail=detail,
        )
        key = DedupKey(r.target_hash, r.pid, r.syscall, r.err, r.source)
        return Decoded(denial, key, r.seen)

    return decode


def read_recent(table: Any) -> dict[DedupKey, tuple[int, int]]:
    """The dedup window entries: key → (refusals seen, monotonic ns of the last record sent)."""
    return {
        DedupKey(k.target_hash, k.tgid, k.syscall, k.err, k.source): (v.seen, v.last_sent_ns)
        for k, v in table.items()
    }


@dataclass(frozen=True, slots=True)
class CounterKey:
    """One entry of denial_counts, with its raw numbers kept so it can be deleted."""

    cgroup_id: int
    syscall_nr: int
    errno: int
    source_nr: int

    @property
    def syscall(self) -> str:
        return syscalls.name(self.syscall_nr) if self.syscall_nr != NO_CAP else "none"

    @property
    def source(self) -> Source:
        return _SOURCES.get(self.source_nr, Source.SYSCALL)

    def raw(self) -> DenialKey:
        return DenialKey(self.cgroup_id, self.syscall_nr, self.errno, self.source_nr, 0)


@dataclass(frozen=True, slots=True)
class CapKey:
    cgroup_id: int
    capability: str
    init_user_ns: bool


class DenialCounters(CounterMap):
    """The exact counters in the kernel (denial_counts, denial_cap_counts, denial_overflow)."""

    def __init__(self, counts: Any, cap_counts: Any, overflow: Any) -> None:
        super().__init__(counts, overflow)
        self._cap_counts = cap_counts

    def read(self) -> dict[CounterKey, int]:
        return self._read(lambda k: CounterKey(k.cgroup_id, k.syscall, k.err, k.source))

    def read_caps(self) -> dict[CapKey, int]:
        return {
            CapKey(k.cgroup_id, capability_name(k.cap), bool(k.init_ns)): sum(per_cpu)
            for k, per_cpu in self._cap_counts.items()
        }
