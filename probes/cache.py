"""Compiled images kept across starts: a restart on an unchanged kernel and configuration loads
the instructions it compiled last time instead of starting a compiler.

An image is used only when everything it was compiled from is unchanged, as far as this can
be told: the C text and cflags, BCC's version and library, the kernel's build and BTF, the
tracefs formats BCC builds tracepoint arguments from, and the kernel headers BCC compiled
against. Any difference is a different key; anything doubtful (a directory or file not owned
by us, writable by others, unreadable, not an image) is a miss, and the caller compiles.

Loading cached instructions is running code as root: the directory must be ours and closed to
everyone else (0700), and every file in it ours and not writable by others.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from probes.image import FORMAT, Image, ImageError

KEEP = 6  # images kept: other configurations (advise, allocmap) and the last kernels
_TRACEPOINT_PROBE = re.compile(r"^\s*TRACEPOINT_PROBE\(\s*(\w+)\s*,\s*(\w+)\s*\)", re.MULTILINE)
_LIBBCC = ("/usr/lib/*/libbcc.so.0", "/usr/lib/libbcc.so.0", "/usr/lib64/libbcc.so.0")


@dataclass(frozen=True, slots=True)
class KeyInputs:
    """What the instructions depend on besides the text and flags."""

    bcc_version: str
    btf: Path
    tracefs: Path | None
    headers: Path  # /lib/modules/<release>/build


def _stat_line(path: Path) -> str:
    try:
        real = path.resolve()
        st = real.stat()
    except OSError:
        return f"{path}: absent"
    return f"{real} {st.st_size} {st.st_mtime_ns}"


def cache_key(
    text: str, cflags: Iterable[str], inputs: KeyInputs, extra: Iterable[str] = ()
) -> str:
    """sha256 over everything an image was compiled from (`extra`: the caller's own inputs)."""
    h = hashlib.sha256()

    def put(label: str, data: bytes) -> None:
        h.update(label.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    put("format", str(FORMAT).encode())
    put("text", text.encode())
    put("cflags", "\0".join(cflags).encode())
    put("bcc", inputs.bcc_version.encode())
    for pattern in _LIBBCC:
        for lib in sorted(glob.glob(pattern)):
            put("libbcc", _stat_line(Path(lib)).encode())
    uname = os.uname()
    put("kernel", f"{uname.release} {uname.version} {uname.machine}".encode())
    try:
        put("btf", hashlib.sha256(inputs.btf.read_bytes()).digest())
    except OSError:
        put("btf", b"absent")
    put("headers", _stat_line(inputs.headers).encode())
    for category, event in sorted(set(_TRACEPOINT_PROBE.findall(text))):
        fmt = b"absent"
        if inputs.tracefs is not None:
            with contextlib.suppress(OSError):
                fmt = (inputs.tracefs / "events" / category / event / "format").read_bytes()
        put(f"tracepoint {category}:{event}", fmt)
    for item in extra:
        put("extra", item.encode())
    return h.hexdigest()


class CacheUnsafe(Exception):
    """The directory cannot be trusted with code that will run as root."""


def _private(st: os.stat_result, what: str, *, directory: bool) -> None:
    kind = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    if not kind:
        raise CacheUnsafe(f"{what} is not a {'directory' if directory else 'regular file'}")
    if st.st_uid != os.geteuid():
        raise CacheUnsafe(f"{what} is owned by uid {st.st_uid}, not {os.geteuid()}")
    if st.st_mode & (0o077 if directory else 0o022):
        raise CacheUnsafe(f"{what} has mode {stat.S_IMODE(st.st_mode):04o}: open to others")


class ImageCache:
    """A directory of images by key. Every method may raise CacheUnsafe."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _checked(self, *, create: bool) -> Path:
        if create:
            with contextlib.suppress(FileExistsError):
                os.makedirs(self.directory, mode=0o700)
        try:
            st = os.lstat(self.directory)
        except FileNotFoundError as exc:
            raise CacheUnsafe(f"{self.directory} does not exist") from exc
        _private(st, str(self.directory), directory=True)
        return self.directory

    def get(self, key: str) -> Image | None:
        """The image stored under `key`, or None when there is none (or it is not an image)."""
        if not os.path.lexists(self.directory):
            return None  # nothing cached yet: `put` creates the directory
        path = self._checked(create=False) / f"{key}.image"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheUnsafe(f"{path}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as f:
            _private(os.fstat(fd), str(path), directory=False)
            data = f.read()
        try:
            return Image.from_json(data)
        except ImageError:
            return None

    def put(self, key: str, image: Image) -> Path:
        directory = self._checked(create=True)
        path = directory / f"{key}.image"
        tmp = directory / f".{key}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(image.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._prune(keep=path)
        return path

    def _prune(self, keep: Path) -> None:
        entries = sorted(
            (p for p in self.directory.glob("*.image") if p != keep),
            key=lambda p: p.stat().st_mtime_ns,
            reverse=True,
        )
        for old in entries[KEEP - 1 :]:
            with contextlib.suppress(OSError):
                old.unlink()
