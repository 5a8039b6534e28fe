"""advise_files.bpf.c records → `FileRecord` values. Pure: no file system access."""

from __future__ import annotations

import os
from dataclasses import dataclass

from probes import advise as probe
from probes.syscalls import name as syscall_name


@dataclass(frozen=True, slots=True)
class Walked:
    """Where the kernel says a path leads: components root first, as the service sees them."""

    components: tuple[str, ...]
    truncated: bool  # deeper than the probe walks: the top is missing
    name_cut: bool  # a component longer than the probe reads
    imode: int  # the leaf inode's mode (its type bits)
    fmode: int  # file walks: the open file's f_mode
    fflags: int  # file walks: its f_flags

    @property
    def path(self) -> str | None:
        """The absolute path, or None when the walk is incomplete."""
        if self.truncated or self.name_cut:
            return None
        return "/" + "/".join(self.components)


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One successful syscall Landlock would check, first seen for its cgroup."""

    time_ns: int  # wall clock
    cgroup_id: int
    syscall: str
    pid: int
    ret: int
    args: tuple[int, ...]  # for opens, args[1] holds the open flags whatever the syscall
    key: tuple[int, int, int, int, int]  # the probe's dedup key: joins adv_seen's counts
    path1: str  # as the caller gave them (for bind/connect: path1 is a unix socket's path)
    path2: str
    sockaddr: bytes  # bind/connect: the raw address
    walk: Walked | None  # the file used, or the directory path1 is relative to
    walk2: Walked | None  # the directory path2 (exec: its script path) is relative to


def _string(raw: bytes) -> str:
    return os.fsdecode(raw.split(b"\0", 1)[0])


def _walked(w: probe.Walk) -> Walked | None:
    components = probe.walk_components(w)
    if components is None:
        return None
    return Walked(
        components=tuple(os.fsdecode(c) for c in components),
        truncated=bool(w.flags & probe.WALK_TRUNCATED),
        name_cut=bool(w.flags & probe.WALK_NAME_CUT),
        imode=w.imode,
        fmode=w.fmode,
        fflags=w.fflags,
    )


def decode(data: bytes, mono_to_wall_ns: int) -> FileRecord:
    """One ring-buffer record; ValueError when the bytes are too short."""
    r = probe.parse(data)
    k = r.key
    return FileRecord(
        time_ns=r.ktime_ns + mono_to_wall_ns,
        cgroup_id=r.cgroup,
        syscall=syscall_name(r.nr),
        pid=r.pid,
        ret=r.ret,
        args=tuple(r.args),
        key=(k.cgroup, k.a, k.b, k.nr, k.access),
        path1=_string(r.path1),
        path2=_string(r.path2),
        sockaddr=probe.sockaddr(data),
        walk=_walked(r.walk[0]),
        walk2=_walked(r.walk[1]),
    )
