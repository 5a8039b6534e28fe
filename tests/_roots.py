"""Root filesystems for the deployment tests (Debian bookworm, built with mmdebstrap), cached on
this machine only.

A root is built once per recipe and kept in CACHE, outside the checkout, under a key that hashes
the recipe, the Debian release and the architecture: change any of them and the next run builds
a new one (and removes the old). Roots older than MAX_AGE_S are rebuilt, so Debian's updates
come in. Nothing of the daemon is ever cached: the tests put the current tree on top of the
cached root each run (an overlay for LinuxKit, `--volatile=overlay` and an install for systemd),
and the cached root itself is never written. Concurrent runs share a root under a shared lock;
a build takes the lock exclusively and renames the finished root into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

CACHE = Path("/var/cache/bpf-auditd-tests")
SUITE = "bookworm"
MAX_AGE_S = 7 * 24 * 3600
ROOT = Path(__file__).resolve().parent.parent
MKROOT = ROOT / "linuxkit" / "pkg" / "bpf-auditd" / "mkroot"


def arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


def run(argv: list[str], timeout: float = 600) -> str:
    """Run a build step; its output in the error when it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise AssertionError(f"{shlex.join(argv)} exited {result.returncode}:\n{tail}")
    return str(result.stdout)


def _fresh(path: Path) -> bool:
    return path.is_dir() and time.time() - path.stat().st_mtime < MAX_AGE_S


@contextlib.contextmanager
def cached_root(kind: str, recipe: bytes, build: Callable[[Path], None]) -> Iterator[Path]:
    """The root `build(dir)` makes from `recipe`, built now or found in the cache; held (the
    cache cannot replace it) until the block ends."""
    key = hashlib.sha256(b"\0".join((recipe, SUITE.encode(), arch().encode()))).hexdigest()[:16]
    CACHE.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = CACHE / f"{kind}-{key}"
    with open(CACHE / f"{kind}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        if not _fresh(path):
            fcntl.flock(lock, fcntl.LOCK_EX)  # waits until no other run holds a root of this kind
            if not _fresh(path):
                for old in CACHE.glob(f"{kind}-*"):
                    shutil.rmtree(old)
                partial = CACHE / f"{kind}-{key}.partial-{os.getpid()}"
                started = time.monotonic()
                build(partial)
                os.utime(partial)
                print(f"{kind} root built in {time.monotonic() - started:.0f}s: {path}")
                partial.rename(path)
            fcntl.flock(lock, fcntl.LOCK_SH)
        yield path


def linuxkit_base() -> contextlib.AbstractContextManager[Path]:
    """The LinuxKit image root without the daemon: `mkroot base` (the package's own recipe)."""

    def build(out: Path) -> None:
        run([str(MKROOT), "base", str(out)])

    return cached_root("linuxkit-base", MKROOT.read_bytes(), build)


def setup_packages() -> list[str]:
    """The Debian packages `scripts/setup` (without --test) installs."""
    text = (ROOT / "scripts" / "setup").read_text()
    found = re.search(r"^packages=\(([^)]*)\)", text, re.MULTILINE)
    if found is None:
        raise AssertionError("scripts/setup: no `packages=(...)` line")
    return [p.replace("$arch", arch()) for p in shlex.split(found.group(1))]


def systemd_recipe() -> list[str]:
    """mmdebstrap's arguments for the root the systemd test boots: systemd as init, and what
    `scripts/setup` installs, so that `scripts/install-systemd` needs no apt inside (there is
    none: an apt-get the installer might start fails loudly). Nothing else: no procps (no
    /bin/kill), no dbus, as on a minimal bookworm."""
    packages = ["systemd", "systemd-sysv", "ca-certificates", *setup_packages()]
    return [
        "--variant=essential",
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        f"--include={','.join(packages)}",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        # mmdebstrap leaves the builder's; nspawn provides both at boot.
        '--customize-hook=rm -f "$1/etc/resolv.conf" "$1/etc/hostname"',
        SUITE,
    ]


def systemd_root() -> contextlib.AbstractContextManager[Path]:
    recipe = systemd_recipe()

    def build(out: Path) -> None:
        run(["mmdebstrap", *recipe, str(out)])

    return cached_root("systemd", "\n".join(recipe).encode(), build)


def size_bytes(path: Path) -> int:
    """Disk usage of a tree (du), in bytes."""
    out = subprocess.run(
        ["du", "-s", "-x", "--block-size=1", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[0])


ROOTS: dict[str, Callable[[], contextlib.AbstractContextManager[Path]]] = {
    "linuxkit": linuxkit_base,
    "systemd": systemd_root,
}
_warming: dict[str, threading.Thread] = {}


def warm(items: Iterable[pytest.Item]) -> None:
    """Start building, side by side, every root the selected tests name (`needs_containers`
    marker arguments) that the cache lacks: on a cold cache the two builds overlap (one
    downloads while the other unpacks), about a minute less than one after the other. A test
    that needs a root still being built waits for it on the cache's lock."""
    kinds = {
        kind
        for item in items
        if (marker := item.get_closest_marker("needs_containers")) is not None
        for kind in marker.args
    }
    for kind in sorted(kinds - _warming.keys()):

        def build(kind: str = kind) -> None:
            # A failure here is left to the test that uses the root: it builds again, and fails.
            with contextlib.suppress(Exception), ROOTS[kind]():
                pass

        # Not a daemon thread: an interrupted session still finishes the build it started.
        _warming[kind] = threading.Thread(target=build, name=f"root-{kind}")
        _warming[kind].start()
