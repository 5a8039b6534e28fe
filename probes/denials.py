"""Loader side of denials.bpf.c: its record and map layouts, the syscalls it hooks, and reading its
counter and dedup maps (raw numbers; auditd/signals/denials gives them meaning)."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probes import syscalls
from probes.counters import SlotCounters
from probes.perf import has_tracepoint

SOURCE = "denials.bpf.c"
TARGET_LEN = 256
CACHE_ENTRIES = 1024  # the per-CPU dedup cache (a power of two)
CAUSE_MAX_AGE_S = 0.010  # a failed capability check causes the refusal that follows this soon
# The leading arguments of tp_btf/cap_capable the program reads (args[1], args[3], args[4]).
CAP_PROTOTYPE = (
    "const struct cred *",
    "struct user_namespace *",
    "const struct user_namespace *",
    "int",
    "int",
)


def power_of_two(n: int) -> int:
    """The smallest power of two >= n (slot tables index with a mask)."""
    return 1 << max(0, (n - 1).bit_length())


FLAG_TARGET_TRUNCATED = 1
FLAG_TARGET_UNREADABLE = 2
FLAG_CAP_INIT_NS = 4

TARGET_NONE, TARGET_PATH, TARGET_PID, TARGET_SOCKADDR, TARGET_INT = range(5)
NO_CAP = 0xFFFFFFFF
CAUSE_SELINUX = 0xFFFFFFFE

# Numbering of `source` in the kernel records (DENIAL_SOURCE_* in the C).
SOURCE_SYSCALL, SOURCE_CAPABILITY, SOURCE_SELINUX, SOURCE_SECCOMP = 0, 1, 3, 4

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
        if nr is None or (
            tracefs is not None and not has_tracepoint(tracefs, "syscalls", f"sys_exit_{name}")
        ):
            continue
        found[name] = nr
    return found


EXE_DEPTH = 16
EXE_NAME = 64
FLAG_EXE_READ = 16
FLAG_EXE_TRUNCATED = 32
FLAG_EXE_NAME_CUT = 64


class DenialRecord(ctypes.Structure):
    """Mirror of `struct denial_record` (records arrive without the unused end of `exe`)."""

    _fields_ = (
        ("ktime_ns", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("target_hash", ctypes.c_uint64),
        ("target_int", ctypes.c_int64),
        ("target_int2", ctypes.c_int64),
        ("seen", ctypes.c_uint64),
        ("start_time", ctypes.c_uint64),
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
        ("exe_count", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("exe", ctypes.c_char * (EXE_NAME * EXE_DEPTH)),
    )


RECORD_HEAD = DenialRecord.exe.offset  # every record has at least this many bytes


def parse(data: bytes) -> DenialRecord:
    """A record from ring-buffer bytes (sent without the unused end of `exe`); ValueError when
    shorter than its fixed part."""
    if len(data) < RECORD_HEAD:
        raise ValueError(
            f"Buffer size too small for a denial record: {len(data)} bytes, at least {RECORD_HEAD}"
        )
    return DenialRecord.from_buffer_copy(
        data[: ctypes.sizeof(DenialRecord)].ljust(ctypes.sizeof(DenialRecord), b"\0")
    )


def exe_path(r: DenialRecord) -> str | None:
    """The executable's path from the record's leaf-first components: absolute when the walk
    reached the process's root, else starting with ".../" where the components nearest the
    root are left out. None when the kernel did not read it (no BTF walk, or no executable)."""
    if not r.flags & FLAG_EXE_READ or r.exe_count == 0:
        return None
    raw = bytes(r)[RECORD_HEAD:]  # (r.exe would stop at the first NUL)
    names = [
        raw[i * EXE_NAME : (i + 1) * EXE_NAME]
        .split(b"\0", 1)[0]
        .decode("utf-8", "backslashreplace")
        for i in reversed(range(min(r.exe_count, EXE_DEPTH)))
    ]
    prefix = ".../" if r.flags & FLAG_EXE_TRUNCATED else "/"
    return prefix + "/".join(names)


class DenialSlot(ctypes.Structure):
    """Mirror of `struct denial_slot` (a counter slot's owner)."""

    _fields_ = (("cgroup", ctypes.c_uint64), ("rest", ctypes.c_uint64))


class DenialCapKey(ctypes.Structure):
    """Mirror of `struct denial_cap_key`."""

    _fields_ = (
        ("cgroup_id", ctypes.c_uint64),
        ("cap", ctypes.c_uint32),
        ("init_ns", ctypes.c_uint32),
    )


class DenialRecentKey(ctypes.Structure):
    """Mirror of `struct denial_recent_key`."""

    _fields_ = (
        ("target_hash", ctypes.c_uint64),
        ("start_time", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("syscall", ctypes.c_uint32),
        ("err", ctypes.c_uint32),
        ("source", ctypes.c_uint32),
    )


class DenialRecent(ctypes.Structure):
    """Mirror of `struct denial_recent` (one dedup-window entry)."""

    _fields_ = (
        ("last_sent_ns", ctypes.c_uint64),
        ("last_sent_j", ctypes.c_uint64),
        ("seen", ctypes.c_uint64),
    )


class DenialCached(ctypes.Structure):
    """Mirror of `struct denial_cached` (one per-CPU cache entry in front of denial_recent)."""

    _fields_ = (
        ("key", DenialRecentKey),
        ("last_sent_j", ctypes.c_uint64),
        ("pending", ctypes.c_uint64),
    )


@dataclass(frozen=True, slots=True)
class DedupKey:
    """A (process, syscall, errno, source, target) combination: a `denial_recent` entry. The
    process is its pid and start time (pids are reused)."""

    target_hash: int
    start_time: int
    tgid: int
    syscall: int
    err: int
    source: int

    @classmethod
    def of(cls, k: Any) -> DedupKey:
        return cls(k.target_hash, k.start_time, k.tgid, k.syscall, k.err, k.source)


def read_recent(recent: Any, cache: Any) -> dict[DedupKey, tuple[int, int]]:
    """The dedup window entries: key → (refusals seen, monotonic ns of the last record sent).

    `seen` is the entry's own count plus the repeats the CPUs' caches still hold for it. The
    entries are read before the caches: a cache moving its repeats into an entry between the
    two reads makes this read short by them (the next one has them), never count them twice.
    """
    entries = {DedupKey.of(k): [v.seen, v.last_sent_ns] for k, v in _items(recent)}
    for _, per_cpu in cache.nonzero_items():
        for cached in per_cpu:
            if cached.pending and (key := DedupKey.of(cached.key)) in entries:
                entries[key][0] += cached.pending
    return {k: (seen, sent) for k, (seen, sent) in entries.items()}


def _items(table: Any) -> Iterator[tuple[Any, Any]]:
    try:
        yield from table.items_lookup_batch()
    except NotImplementedError:
        yield from table.items()


@dataclass(frozen=True, slots=True)
class CounterKey:
    """One key of the exact counters, as raw numbers."""

    cgroup_id: int
    syscall_nr: int
    errno: int
    source_nr: int


@dataclass(frozen=True, slots=True)
class CapKey:
    cgroup_id: int
    cap: int
    init_user_ns: bool


class DenialCounters(SlotCounters[CounterKey]):
    """The exact counters in the kernel: the slot table (denial_count_owner, denial_count_vals,
    whose last slot counts refusals that found none) and denial_cap_counts."""

    def __init__(self, owners: Any, values: Any, cap_counts: Any) -> None:
        super().__init__(owners, values)
        self._cap_counts = cap_counts

    def key_of(self, owner: Any) -> CounterKey | None:
        if not owner.cgroup or not owner.rest:
            return None  # free, or being claimed right now
        rest = owner.rest
        return CounterKey(
            owner.cgroup & ~(1 << 63), rest >> 32, (rest >> 8) & 0x7FFFFF, rest & 0xFF
        )

    def read_caps(self) -> dict[CapKey, int]:
        return {
            CapKey(k.cgroup_id, k.cap, bool(k.init_ns)): sum(per_cpu)
            for k, per_cpu in self._cap_counts.items()
        }
