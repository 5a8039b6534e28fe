"""A recorded syscall → the Landlock rights it needed, on which path (or TCP port).

The rights are those Landlock itself checks (security/landlock/fs.c): an open needs read_file
(read_dir for a directory) for FMODE_READ and write_file for FMODE_WRITE, truncate with O_TRUNC,
make_reg on the parent when it created the file (FMODE_CREATED); an exec needs execute and
read_file on the binary, on its ELF interpreter and on a `#!` script (the kernel opens those
itself: no syscall shows them); path changes need make_*/remove_* on the parent directory, and
refer when a rename or link crosses directories.

`accesses` is pure but for `HostFiles`, the one place that reads files (an executable's
PT_INTERP, a script's `#!` line, what a rename produced).
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from auditd.signals.advice.decode import FileRecord, Walked

# include/linux/fs.h (6.x)
FMODE_READ = 0x1
FMODE_WRITE = 0x2
FMODE_CREATED = 1 << 20
O_TRUNC = 0o1000
AT_REMOVEDIR = 0x200

_MAKE = {
    stat.S_IFREG: "make_reg",
    stat.S_IFDIR: "make_dir",
    stat.S_IFCHR: "make_char",
    stat.S_IFBLK: "make_block",
    stat.S_IFIFO: "make_fifo",
    stat.S_IFSOCK: "make_sock",
    stat.S_IFLNK: "make_sym",
}
_OPENS = frozenset({"open", "creat", "openat", "openat2"})
_RENAMES = frozenset({"rename", "renameat", "renameat2"})
_LINKS = frozenset({"link", "linkat"})


@dataclass(frozen=True, slots=True)
class FileAccess:
    path: str  # absolute, as the service sees it
    right: str  # a Landlock filesystem right
    why: str
    uncertain: bool = False  # needed only in some cases (a rename that replaced a file)


@dataclass(frozen=True, slots=True)
class Created:
    """A path the service made: no rule can name it before it exists."""

    path: str


@dataclass(frozen=True, slots=True)
class PortAccess:
    port: int
    right: str  # bind_tcp or connect_tcp
    why: str


Access = FileAccess | Created | PortAccess


class HostFiles:
    """What the kernel opened on its own, read from the file system (cached). A service with
    its own root is read through /proc/PID/root while the process lives."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self._interp: dict[str, str | None] = {}

    def _open(self, path: str, pid: int) -> Path:
        inside = self.proc / str(pid) / "root" / path.lstrip("/")
        return inside if inside.exists() else Path(path)

    def interpreter(self, executable: str, pid: int) -> str | None:
        """An ELF file's PT_INTERP, or a script's `#!` interpreter; None for neither."""
        if executable not in self._interp:
            if len(self._interp) >= 4096:  # bounded: forget, at worst read again
                self._interp.clear()
            self._interp[executable] = _interpreter(self._open(executable, pid))
        return self._interp[executable]

    def kind(self, path: str, pid: int) -> int:
        """The file type at `path` now (S_IFMT bits), regular when it cannot be seen."""
        try:
            return stat.S_IFMT(os.lstat(self._open(path, pid)).st_mode)
        except OSError:
            return stat.S_IFREG

    def real(self, path: str, pid: int) -> str:
        """`path` with symlinks resolved, as the service sees it."""
        root = self.proc / str(pid) / "root"
        if (root / path.lstrip("/")).exists():
            try:
                real = (root / path.lstrip("/")).resolve()
                return "/" + str(real.relative_to(root.resolve()))
            except (OSError, ValueError):
                return path
        return os.path.realpath(path)


def _interpreter(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            head = f.read(64)
            if head[:2] == b"#!":
                line = (head + f.readline(192)).split(b"\n", 1)[0][2:].split()
                return os.fsdecode(line[0]) if line else None
            if head[:4] != b"\x7fELF" or len(head) < 64 or head[4] != 2:  # 64-bit ELF only
                return None
            (phoff,) = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            for i in range(min(phnum, 64)):
                f.seek(phoff + i * phentsize)
                ptype, _, offset, _, _, size = struct.unpack("<IIQQQQ", f.read(40))
                if ptype == 3:  # PT_INTERP
                    f.seek(offset)
                    return os.fsdecode(f.read(min(size, 4096)).rstrip(b"\0"))
    except (OSError, struct.error):
        return None
    return None


def _parent(path: str) -> str:
    return os.path.dirname(path) or "/"


def _resolve(path: str, base: Walked | None) -> str | None:
    """An absolute path: `path` itself, or joined to the directory it was relative to (lexical:
    `..` after a symlink is not followed as the kernel would)."""
    if path.startswith("/"):
        return os.path.normpath(path)
    base_path = base.path if base is not None else None
    if base_path is None or not path:
        return None
    return os.path.normpath(os.path.join(base_path, path))


def accesses(record: FileRecord, files: HostFiles) -> list[Access] | None:
    """The rights the call needed; None when its paths could not be resolved."""
    handler = _HANDLERS.get(record.syscall)
    return handler(record, files) if handler else []


def _open(r: FileRecord, files: HostFiles) -> list[Access] | None:
    walk = r.walk
    path = walk.path if walk else None
    if walk is None or path is None:
        return None
    found: list[Access] = []
    directory = stat.S_ISDIR(walk.imode)
    if walk.fmode & FMODE_READ:
        found.append(FileAccess(path, "read_dir" if directory else "read_file", r.syscall))
    if walk.fmode & FMODE_WRITE:
        found.append(FileAccess(path, "write_file", r.syscall))
    if r.args[1] & O_TRUNC and not directory:
        found.append(FileAccess(path, "truncate", f"{r.syscall} O_TRUNC"))
    if walk.fmode & FMODE_CREATED:
        name = os.path.basename(path)
        found += [
            FileAccess(_parent(path), "make_reg", f"{r.syscall} created {name}"),
            Created(path),
        ]
    if stat.S_ISCHR(walk.imode) or stat.S_ISBLK(walk.imode):
        found.append(FileAccess(path, "ioctl_dev", "device file (ioctl not traced)", True))
    return found


def _exec(r: FileRecord, files: HostFiles) -> list[Access] | None:
    exe = r.walk.path if r.walk else None
    if exe is None:
        return None
    chain = [(exe, r.syscall)]
    script = _resolve(r.path1, r.walk2) if r.path1 else None
    if script is not None and files.real(script, r.pid) != exe:
        chain.append((files.real(script, r.pid), f"{r.syscall} script (run by {exe})"))
    interp = files.interpreter(exe, r.pid)
    if interp is not None:
        chain.append((files.real(interp, r.pid), f"ELF interpreter of {exe}"))
    return [FileAccess(p, right, why) for p, why in chain for right in ("execute", "read_file")]


def _path_change(r: FileRecord, files: HostFiles) -> list[Access] | None:
    name = r.syscall
    first = _resolve(r.path1, r.walk) if r.path1 else None
    second = _resolve(r.path2, r.walk2) if r.path2 else None
    if name in ("mkdir", "mkdirat"):
        return (
            None
            if first is None
            else [FileAccess(_parent(first), "make_dir", name), Created(first)]
        )
    if name in ("unlink", "unlinkat", "rmdir"):
        if first is None:
            return None
        removes_dir = name == "rmdir" or bool(r.args[2] & AT_REMOVEDIR and name == "unlinkat")
        right = "remove_dir" if removes_dir else "remove_file"
        return [FileAccess(_parent(first), right, f"{name} {os.path.basename(first)}")]
    if name in ("symlink", "symlinkat"):
        if second is None:
            return None
        return [FileAccess(_parent(second), "make_sym", name), Created(second)]
    if name in ("mknod", "mknodat"):
        if first is None:
            return None
        mode = r.args[1 if name == "mknod" else 2] & 0o170000
        return [FileAccess(_parent(first), _MAKE.get(mode, "make_reg"), name), Created(first)]
    if name == "truncate":
        return None if first is None else [FileAccess(first, "truncate", name)]
    if first is None or second is None:
        return None
    kind = files.kind(second, r.pid)
    made = _MAKE.get(kind, "make_reg")
    found: list[Access] = [
        FileAccess(_parent(second), made, f"{name} to {os.path.basename(second)}"),
        Created(second),
    ]
    if name in _RENAMES:
        removed = "remove_dir" if kind == stat.S_IFDIR else "remove_file"
        found += [
            FileAccess(_parent(first), removed, f"{name} from {os.path.basename(first)}"),
            FileAccess(_parent(second), removed, f"{name} may have replaced a file", True),
        ]
    if _parent(first) != _parent(second):
        found += [
            FileAccess(_parent(first), "refer", f"{name} across directories"),
            FileAccess(_parent(second), "refer", f"{name} across directories"),
        ]
    return found


def _ftruncate(r: FileRecord, files: HostFiles) -> list[Access] | None:
    path = r.walk.path if r.walk else None
    return None if path is None else [FileAccess(path, "truncate", r.syscall)]


def _socket(r: FileRecord, files: HostFiles) -> list[Access] | None:
    (family,) = struct.unpack_from("<H", r.sockaddr, 0)
    if family in (2, 10):  # AF_INET, AF_INET6
        (port,) = struct.unpack_from(">H", r.sockaddr, 2)
        return [PortAccess(port, "bind_tcp" if r.syscall == "bind" else "connect_tcp", r.syscall)]
    target = _resolve(r.path1, r.walk2) if r.path1 else None
    if target is None:
        return None
    name = os.path.basename(target)
    return [FileAccess(_parent(target), "make_sock", f"bind unix {name}"), Created(target)]


Handler = Callable[[FileRecord, HostFiles], list[Access] | None]
_PATH_CHANGES = (
    "mkdir", "mkdirat", "unlink", "unlinkat", "rmdir", "rename", "renameat", "renameat2",
    "link", "linkat", "symlink", "symlinkat", "mknod", "mknodat", "truncate",
)  # fmt: skip
_HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(_OPENS, _open),
    **dict.fromkeys(_PATH_CHANGES, _path_change),
    "execve": _exec,
    "execveat": _exec,
    "ftruncate": _ftruncate,
    "bind": _socket,
    "connect": _socket,
}
