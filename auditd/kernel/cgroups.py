"""Cgroup id → cgroup v2 path → service name.

`bpf_get_current_cgroup_id()` is the inode number of the task's cgroup v2 directory, so the
path is found by walking the cgroup2 mount once and caching; a miss triggers a rate-limited
rescan. Paths of removed cgroups stay cached for a while (the most recently removed
`max_removed`), so late counters and records are still attributed.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from auditd.kernel.paths import KernelPaths
from auditd.model.errnos import errno_text

ROOT_SERVICE = "host"
UNKNOWN_SERVICE = "unknown"

_CONTAINER_SCOPE = re.compile(r"^(?:docker|cri-containerd|crio|libpod)-([0-9a-f]{12,64})\.scope$")
_CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Cgroup2:
    path: Path | None
    detail: str


def _unescape_mount(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def cgroup2_mount(paths: KernelPaths) -> Cgroup2:
    if paths.cgroup2 is not None:
        return Cgroup2(paths.cgroup2, f"{paths.cgroup2} (configured)")
    mountinfo = paths.proc / "self" / "mountinfo"
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError as exc:
        return Cgroup2(None, f"cannot read {mountinfo}: {errno_text(exc.errno)}")
    for line in lines:
        # The optional fields end at " - "; the filesystem type follows it.
        mount, separator, filesystem = line.partition(" - ")
        if separator and filesystem.split()[:1] == ["cgroup2"] and len(mount.split()) > 4:
            path = Path(_unescape_mount(mount.split()[4]))
            return Cgroup2(path, f"{path} (from {mountinfo})")
    return Cgroup2(None, f"no cgroup2 mount in {mountinfo}")


def cgroup2_path(paths: KernelPaths) -> Path | None:
    """Where cgroup v2 is mounted: the configured path, else the first cgroup2 mount."""
    return cgroup2_mount(paths).path


def process_cgroup(proc: Path, pid: int) -> str | None:
    """A live process's cgroup v2 path (`/system.slice/x.service`) from /proc/PID/cgroup; None
    when the process is gone or has no v2 entry."""
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def service_of(path: str) -> str:
    """The service a cgroup path belongs to, in the words operators use for it.

    systemd: the innermost `*.service` (delegated sub-cgroups belong to their service);
    containers: `container:<12-hex id>`; LinuxKit and plain hierarchies: the last component;
    the root cgroup: "host".
    """
    parts = [p for p in path.split("/") if p]
    if not parts:
        return ROOT_SERVICE
    for part in reversed(parts):
        if m := _CONTAINER_SCOPE.match(part):
            return f"container:{m.group(1)[:12]}"
        if _CONTAINER_ID.match(part):
            return f"container:{part[:12]}"
    for part in reversed(parts):
        if part.endswith(".service"):
            return part
    return parts[-1]


class CgroupResolver:
    """Thread-safe cache of cgroup id → path (relative to the cgroup2 root, starting with '/').

    Bounded: the live cgroups (what the last walk found: the kernel bounds them), plus the
    `max_removed` most recently removed ones (kept so that counters and records that arrive
    after a removal are still attributed: the daemon retires a removed cgroup's counters at
    the next housekeeping pass), plus at most `max_missed` ids no walk found yet, and
    `max_removed` ids known to be gone though no walk ever saw them (short-lived cgroups).
    """

    def __init__(
        self,
        root: Path | None,
        *,
        min_rescan_interval: float = 1.0,
        max_removed: int = 8192,
        max_missed: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.max_removed = max_removed
        self.max_missed = max_missed
        self._live: dict[int, str] = {}  # replaced whole by each walk
        self._removed: OrderedDict[int, str] = OrderedDict()  # oldest removal first
        self._lock = threading.Lock()
        self._clock = clock
        self._min_interval = min_rescan_interval
        # Ids a full scan did not find (a cgroup gone before we looked): retried only slowly.
        self._missed: OrderedDict[int, None] = OrderedDict()
        # Ids of cgroups gone before any walk saw them (`gone`): never looked for again.
        self._dead: OrderedDict[int, None] = OrderedDict()
        self._last_scan = float("-inf")
        self.scans = 0

    def cached(self, cgroup_id: int) -> str | None:
        found = self._live.get(cgroup_id)
        return found if found is not None else self._removed.get(cgroup_id)

    def known(self) -> dict[int, str]:
        """Every cgroup known now, id → path (recently removed ones included)."""
        with self._lock:
            return {**self._removed, **self._live}

    def sizes(self) -> dict[str, int]:
        return {
            "live": len(self._live),
            "removed": len(self._removed),
            "missed": len(self._missed),
            "dead": len(self._dead),
        }

    def path(self, cgroup_id: int) -> str | None:
        """The path, rescanning on a miss. Blocks on the walk.

        The first miss of an id always rescans (a scan that ran before the cgroup existed
        proves nothing, and a new cgroup is found by one walk); ids that a scan already failed
        to find (removed before we looked) rescan at most once per `min_rescan_interval`.
        """
        found = self.cached(cgroup_id)
        if found is not None or cgroup_id in self._dead:
            return found
        missed_before = cgroup_id in self._missed
        interval = self._min_interval if missed_before else 0.0
        if self._clock() - self._last_scan >= interval:
            self.rescan()
            found = self.cached(cgroup_id)
            if found is None:
                with self._lock:
                    self._missed[cgroup_id] = None
                    self._missed.move_to_end(cgroup_id)
                    while len(self._missed) > self.max_missed:  # forgotten: at worst rescan
                        self._missed.popitem(last=False)
        return found

    def service(self, cgroup_id: int) -> str:
        found = self.path(cgroup_id)
        return UNKNOWN_SERVICE if found is None else service_of(found)

    def rescan(self) -> None:
        with self._lock:
            self._last_scan = self._clock()
            if self.root is None:
                return
            found = _walk(self.root)
            for cgroup_id, path in self._live.items():
                if cgroup_id not in found:
                    self._removed[cgroup_id] = path
                    self._removed.move_to_end(cgroup_id)
            for cgroup_id in found:
                self._removed.pop(cgroup_id, None)
                self._missed.pop(cgroup_id, None)
            while len(self._removed) > self.max_removed:
                self._removed.popitem(last=False)
            self._live = found
            self.scans += 1

    def gone(self, cgroup_ids: Iterable[int]) -> set[int]:
        """Of `cgroup_ids` (read from a kernel map just before this call), those whose cgroup
        no longer exists: a walk started now does not find them. Each existed when it was read
        and cgroup ids are never reused, so this holds also for cgroups no walk ever saw (a
        short-lived one, between two walks). Empty without a cgroup2 mount. Blocks on a walk."""
        ids = set(cgroup_ids)
        if not ids or self.root is None:
            return set()
        self.rescan()
        with self._lock:
            dead = {i for i in ids if i not in self._live}
            for cgroup_id in dead:
                if cgroup_id not in self._removed:
                    self._dead[cgroup_id] = None
                    self._missed.pop(cgroup_id, None)
            while len(self._dead) > self.max_removed:
                self._dead.popitem(last=False)
        return dead

    def id_of(self, path: str) -> int | None:
        """The id of the cgroup at a v2 path (its directory's inode); None when it is gone."""
        if self.root is None:
            return None
        try:
            return os.stat(self.root / path.lstrip("/")).st_ino
        except OSError:
            return None

    def alive(self, cgroup_id: int) -> bool:
        """Whether the cgroup still exists (its directory is there with the same inode)."""
        rel = self.cached(cgroup_id)
        if rel is None or self.root is None:
            return False
        try:
            return os.stat(self.root / rel.lstrip("/")).st_ino == cgroup_id
        except OSError:
            return False


def _walk(root: Path) -> dict[int, str]:
    found: dict[int, str] = {}
    stack = [(str(root), "/")]
    while stack:
        fs_path, rel = stack.pop()
        try:
            found[os.stat(fs_path).st_ino] = rel
            with os.scandir(fs_path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        child = rel.rstrip("/") + "/" + entry.name
                        stack.append((entry.path, child))
        except OSError:  # removed while walking
            continue
    return found
