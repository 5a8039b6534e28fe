"""Loader side of advise.bpf.c (and include/advise_files.h): its records, maps and parameters.

Raw numbers only: what they mean (which capability a caller proves, which Landlock right an
open needs) is decided above, in auditd.signals.advice.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from probes.syscalls import NUMBERS

SOURCE: Final = "advise.bpf.c"
RINGBUF: Final = "adv_events"
DROPS: Final = "adv_drops"

NR: Final = 512  # ADV_NR: syscall numbers counted
NS_COUNT: Final = 8  # enum auditd_ns_type
CALLERS: Final = 3  # ADV_CALLERS
PATH: Final = 256  # ADV_PATH
DEPTH: Final = 20  # ADV_DEPTH
NAME: Final = 64  # ADV_NAME
SOCKADDR: Final = 128  # ADV_SOCKADDR: bind/connect addresses are read into path2
ARG_NONE: Final = 0xFF
WHOLE_PATH: Final = 1
WHOLE_PATH2: Final = 2

# Cgroup decisions in adv_cgroups.
IGNORED: Final = 0
PENDING: Final = 1
ADVISED: Final = 2

# Walk flags.
WALK_TRUNCATED: Final = 1
WALK_NAME_CUT: Final = 2
WALK_NONE: Final = 4


class Stat(enum.IntEnum):
    """Slots of adv_stats."""

    CGROUPS_FULL = 0
    STACK_FAILED = 1
    UNLOCATED = 2
    COMPAT = 3
    CLONE3_UNREAD = 4
    SEEN_REPEATS = 5
    SENT = 6


class FsKind(enum.IntEnum):
    """How adv_fs_exit reads a syscall's arguments (ADV_FS_*)."""

    OPEN = 1
    OPENAT2 = 2
    CREAT = 3
    EXEC = 4
    PATH = 5
    FD = 6
    SOCKADDR = 7


@dataclass(frozen=True, slots=True)
class FsSpec:
    """A syscall's argument roles: indexes 0-5, None where it has no such argument."""

    kind: FsKind
    dfd: int | None = None
    path: int | None = None
    dfd2: int | None = None
    path2: int | None = None
    flags: int | None = None
    mode: int | None = None
    fd: int | None = None
    whole: int = 0  # WHOLE_*: paths told apart whole (they name what the call made)


# The syscalls whose successful calls Landlock would check (and bind/connect for its TCP port
# rules). stat, access, chdir, chmod/chown, xattrs, utimes, flock and fcntl are not restricted
# by Landlock, so not recorded.
FS_SPECS: Final[dict[str, FsSpec]] = {
    "open": FsSpec(FsKind.OPEN, path=0, flags=1),
    "creat": FsSpec(FsKind.CREAT, path=0),
    "openat": FsSpec(FsKind.OPEN, dfd=0, path=1, flags=2),
    "openat2": FsSpec(FsKind.OPENAT2, dfd=0, path=1),
    "execve": FsSpec(FsKind.EXEC, path=0),
    "execveat": FsSpec(FsKind.EXEC, dfd=0, path=1, flags=4),
    "mkdir": FsSpec(FsKind.PATH, path=0, whole=WHOLE_PATH),
    "mkdirat": FsSpec(FsKind.PATH, dfd=0, path=1, whole=WHOLE_PATH),
    "unlink": FsSpec(FsKind.PATH, path=0),
    "unlinkat": FsSpec(FsKind.PATH, dfd=0, path=1, flags=2),
    "rmdir": FsSpec(FsKind.PATH, path=0),
    "rename": FsSpec(FsKind.PATH, path=0, path2=1, whole=WHOLE_PATH2),
    "renameat": FsSpec(FsKind.PATH, dfd=0, path=1, dfd2=2, path2=3, whole=WHOLE_PATH2),
    "renameat2": FsSpec(FsKind.PATH, dfd=0, path=1, dfd2=2, path2=3, whole=WHOLE_PATH2),
    "link": FsSpec(FsKind.PATH, path=0, path2=1, whole=WHOLE_PATH2),
    "linkat": FsSpec(FsKind.PATH, dfd=0, path=1, dfd2=2, path2=3, whole=WHOLE_PATH2),
    "symlink": FsSpec(FsKind.PATH, path2=1, whole=WHOLE_PATH2),
    "symlinkat": FsSpec(FsKind.PATH, dfd2=1, path2=2, whole=WHOLE_PATH2),
    "mknod": FsSpec(FsKind.PATH, path=0, mode=1, whole=WHOLE_PATH),
    "mknodat": FsSpec(FsKind.PATH, dfd=0, path=1, mode=2, whole=WHOLE_PATH),
    "truncate": FsSpec(FsKind.PATH, path=0, whole=WHOLE_PATH),
    "ftruncate": FsSpec(FsKind.FD, fd=0),
    "bind": FsSpec(FsKind.SOCKADDR),
    "connect": FsSpec(FsKind.SOCKADDR),
}


class CapKey(ctypes.Structure):
    """Mirror of `struct adv_cap_key`."""

    _fields_ = (
        ("cgroup", ctypes.c_uint64),
        ("cap", ctypes.c_uint32),
        ("located", ctypes.c_uint32),
        ("caller", ctypes.c_uint64 * CALLERS),
    )


class Seen(ctypes.Structure):
    """Mirror of `struct adv_cap_value` and `struct adv_seen_value`."""

    _fields_ = (
        ("count", ctypes.c_uint64),
        ("first_ns", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
    )


class SyscallUse(ctypes.Structure):
    """Mirror of `struct adv_sys`."""

    _fields_ = (
        ("used", ctypes.c_uint64 * NR),
        ("refused", ctypes.c_uint64 * NR),
        ("ns_created", ctypes.c_uint64 * NS_COUNT),
        ("ns_joined", ctypes.c_uint64 * NS_COUNT),
        ("setns_any", ctypes.c_uint64),
        ("ambient", ctypes.c_uint64),
        ("execs_root", ctypes.c_uint64),
        ("execs_user", ctypes.c_uint64),
    )


class SeenKey(ctypes.Structure):
    """Mirror of `struct adv_seen_key`."""

    _fields_ = (
        ("cgroup", ctypes.c_uint64),
        ("a", ctypes.c_uint64),
        ("b", ctypes.c_uint64),
        ("nr", ctypes.c_uint32),
        ("access", ctypes.c_uint32),
    )


class Walk(ctypes.Structure):
    """Mirror of `struct adv_walk`."""

    _fields_ = (
        ("n", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("imode", ctypes.c_uint32),
        ("fmode", ctypes.c_uint32),
        ("fflags", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("comp", (ctypes.c_char * NAME) * DEPTH),
    )


class FileRecord(ctypes.Structure):
    """Mirror of `struct adv_file_record`."""

    _fields_ = (
        ("ktime_ns", ctypes.c_uint64),
        ("cgroup", ctypes.c_uint64),
        ("ret", ctypes.c_int64),
        ("nr", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("args", ctypes.c_uint64 * 6),
        ("key", SeenKey),
        ("path1", ctypes.c_char * PATH),
        ("path2", ctypes.c_char * PATH),
        ("walk", Walk * 2),
    )


def parse(data: bytes) -> FileRecord:
    """A record from ring-buffer bytes; ValueError when they are too short."""
    return FileRecord.from_buffer_copy(data)


def sockaddr(data: bytes) -> bytes:
    """The raw address of a bind/connect record (path2 as bytes, zeros included)."""
    start = FileRecord.path2.offset
    return data[start : start + SOCKADDR]


def walk_components(walk: Walk) -> tuple[bytes, ...] | None:
    """The walked components root first, or None when nothing was walked."""
    if walk.flags & WALK_NONE:
        return None
    return tuple(
        bytes(walk.comp[i]).split(b"\0", 1)[0] for i in reversed(range(min(walk.n, DEPTH)))
    )


def cflags(
    *,
    caps: bool,
    syscalls: bool,
    files: bool,
    cap_capable: tuple[int, int] | None,
    data_cgroups: int,
) -> tuple[str, ...]:
    start, end = cap_capable or (0, 0)
    return (
        f"-DADV_CAPS={int(caps)}",
        f"-DADV_SYSCALLS={int(syscalls)}",
        f"-DADV_FILES={int(files)}",
        f"-DADV_CAP_START=0x{start:x}ULL",
        f"-DADV_CAP_END=0x{end:x}ULL",
        f"-DADV_DATA_CGROUPS={data_cgroups}",
    )


def raw_tracepoints(*, caps: bool, enters: bool, exits: bool) -> tuple[tuple[str, str], ...]:
    """(function, raw tracepoint) pairs: only the hooks something is read at."""
    attach = []
    if enters:
        attach.append(("adv_enter", "sys_enter"))
    if exits:
        attach.append(("adv_exit", "sys_exit"))
    if caps:
        attach.append(("adv_cap", "cap_capable"))
    return tuple(attach)


def fill_fs_specs(table: Any) -> None:
    """Tell the probe which syscalls to follow and where their arguments are."""

    def index(value: int | None) -> int:
        return ARG_NONE if value is None else value

    for name, spec in FS_SPECS.items():
        leaf = table.Leaf(
            spec.kind,
            index(spec.dfd),
            index(spec.path),
            index(spec.dfd2),
            index(spec.path2),
            index(spec.flags),
            index(spec.mode),
            index(spec.fd),
            spec.whole,
        )
        table[ctypes.c_uint32(NUMBERS[name])] = leaf


class Maps:
    """Raw reads and writes of the probe's maps (BCC tables)."""

    def __init__(self, table: Any, *, syscalls: bool, files: bool, caps: bool) -> None:
        self._cgroups = table("adv_cgroups")
        self._generation = table("adv_generation")
        self._stats = table("adv_stats")
        self._drops = table(DROPS)
        self._caps = table("adv_caps") if caps else None
        self._syscalls = table("adv_syscalls") if syscalls else None
        self._seen = table("adv_seen") if files else None

    def decide(self, cgroup: int, state: int) -> None:
        self._cgroups[ctypes.c_uint64(cgroup)] = ctypes.c_uint8(state)

    def bump(self) -> None:
        """Make every CPU look its cached decision up again (after decide/forget)."""
        slot = ctypes.c_uint32(0)
        self._generation[slot] = ctypes.c_uint32((self._generation[slot].value + 1) & 0xFFFFFFFF)

    def forget_cgroup(self, cgroup: int) -> None:
        with contextlib.suppress(KeyError):
            del self._cgroups[ctypes.c_uint64(cgroup)]

    def cgroups(self) -> dict[int, int]:
        """Every cgroup the probe knows, with its decision."""
        return {k.value: v.value for k, v in self._cgroups.items()}

    def forget_syscalls(self, cgroup: int) -> None:
        if self._syscalls is not None:
            with contextlib.suppress(KeyError):
                del self._syscalls[ctypes.c_uint64(cgroup)]

    def syscalls(self) -> Iterator[tuple[int, SyscallUse]]:
        if self._syscalls is None:
            return
        for key, value in self._syscalls.items():
            yield key.value, SyscallUse.from_buffer_copy(bytes(value))

    def caps(self) -> Iterator[tuple[CapKey, Seen]]:
        if self._caps is None:
            return
        for key, value in self._caps.items():
            yield CapKey.from_buffer_copy(bytes(key)), Seen.from_buffer_copy(bytes(value))

    def seen(self) -> Iterator[tuple[SeenKey, Seen]]:
        if self._seen is None:
            return
        for key, value in self._seen.items():
            yield SeenKey.from_buffer_copy(bytes(key)), Seen.from_buffer_copy(bytes(value))

    def stats(self) -> dict[Stat, int]:
        return {stat: sum(self._stats[ctypes.c_uint32(stat)]) for stat in Stat}
