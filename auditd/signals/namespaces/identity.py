"""Whose namespace it is: the host's (PID 1's) namespaces, and a cache from namespace inode to the
process and service that own it, read from /proc. Blocking reads: call off the event loop."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from auditd.kernel.cgroups import ROOT_SERVICE, UNKNOWN_SERVICE, process_cgroup, service_of
from auditd.signals.namespaces.event import LINKS, NamespaceChange, NamespaceOp, NamespaceType

HOST_PID = 1


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
    Bounded: each cache holds about `max_entries` namespaces at most (the created ones forget
    their oldest half beyond it; a scan stops after the pid that reached it, keeping the lowest
    pids'), so a flood of new namespaces costs at worst a rescan.
    """

    def __init__(
        self,
        proc: Path = Path("/proc"),
        *,
        rescan_interval: float = 1.0,
        max_entries: int = 16384,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.proc = proc
        self.host: dict[NamespaceType, int] = {}
        self._rescan_interval = rescan_interval
        self.max_entries = max_entries
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
            if len(found) >= self.max_entries:
                break
            for t in NamespaceType:
                for link in LINKS[t]:
                    inode = self._readlink(pid, link)
                    if inode is not None:
                        found.setdefault(inode, (t, pid))
        with self._lock:
            self._scanned = found
            self._last_scan = self._clock()
            self.scans += 1

    def sizes(self) -> dict[str, int]:
        return {"created": len(self._created), "scanned": len(self._scanned)}

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
        path = process_cgroup(self.proc, pid)
        return UNKNOWN_SERVICE if path is None else service_of(path)

    def _bound(self, cache: dict[int, Any]) -> None:
        # Bounded: forget the oldest half (dicts keep insertion order); a miss rescans.
        if len(cache) > self.max_entries:
            for inode in list(cache)[: len(cache) // 2]:
                del cache[inode]
