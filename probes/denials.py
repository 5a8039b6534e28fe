"""Loader side of denials.bpf.c: its record and map layouts, the syscalls it hooks, and reading its
counter and dedup maps (raw numbers; auditd/signals/denials gives them meaning)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probes import syscalls
from probes.counters import CounterMap
from probes.perf import has_tracepoint

SOURCE = "denials.bpf.c"
TARGET_LEN = 256

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


@dataclass(frozen=True, slots=True)
class DedupKey:
    """A (process, syscall, errno, source, target) combination: a `denial_recent` entry."""

    target_hash: int
    tgid: int
    syscall: int
    err: int
    source: int


def read_recent(table: Any) -> dict[DedupKey, tuple[int, int]]:
    """The dedup window entries: key → (refusals seen, monotonic ns of the last record sent)."""
    return {
        DedupKey(k.target_hash, k.tgid, k.syscall, k.err, k.source): (v.seen, v.last_sent_ns)
        for k, v in table.items()
    }


@dataclass(frozen=True, slots=True)
class CounterKey:
    """One entry of denial_counts, as raw numbers (so it can be deleted)."""

    cgroup_id: int
    syscall_nr: int
    errno: int
    source_nr: int

    def raw(self) -> DenialKey:
        return DenialKey(self.cgroup_id, self.syscall_nr, self.errno, self.source_nr, 0)


@dataclass(frozen=True, slots=True)
class CapKey:
    cgroup_id: int
    cap: int
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
            CapKey(k.cgroup_id, k.cap, bool(k.init_ns)): sum(per_cpu)
            for k, per_cpu in self._cap_counts.items()
        }
