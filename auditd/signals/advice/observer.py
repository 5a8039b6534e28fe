"""The `advise` probes while they run: load and attach them, decide which cgroups are observed,
collect what they record, and hand over an `Observation` when detached.

Nothing here runs in the daemon: `advise` loads its own probes and detaches them when done.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import threading
import time
from dataclasses import dataclass
from typing import Any

from auditd.kernel import fs_layout
from auditd.kernel.cgroups import CgroupResolver, cgroup2_path, service_of
from auditd.kernel.context import kernel_context
from auditd.kernel.paths import KernelPaths
from auditd.kernel.symbols import KernelSymbols
from auditd.model.capabilities import NAMES as CAPABILITIES
from auditd.signals.advice import capabilities
from auditd.signals.advice.decode import FileRecord, decode
from auditd.signals.advice.files import Access, HostFiles, accesses
from auditd.signals.advice.observation import Observation, ServiceObservation, SyscallUse
from probes import advise as probe
from probes.runtime import DropKind, ProbeSet, ProbeSpec
from probes.syscalls import name as syscall_name

# Bounds on what a flood of distinct file accesses can make this process hold.
MAX_PENDING = 65536  # records waiting for the next poll
MAX_ACCESSES = 262144  # distinct file accesses kept

_STAT_PROBLEMS = {
    probe.Stat.CGROUPS_FULL: "new cgroups not observed: the cgroup table was full",
    probe.Stat.STACK_FAILED: "capability checks with no kernel stack (classified unknown)",
    probe.Stat.UNLOCATED: "capability checks whose stack did not show cap_capable (unknown)",
    probe.Stat.COMPAT: "32-bit syscalls of compat tasks (not advised: x86_64 table only)",
    probe.Stat.CLONE3_UNREAD: "clone3 calls whose flags could not be read (namespaces unknown)",
}
_DROP_PROBLEMS = {
    DropKind.RINGBUF: "file records the ring buffer could not take (sent again when repeated)",
    DropKind.COUNTER_FULL: "cgroups or capability checks the maps could not hold (not advised)",
    DropKind.PENDING_FULL: "execs whose path could not be kept",
}


@dataclass(frozen=True, slots=True)
class Parts:
    """What to observe: the formats asked for decide (Landlock needs files, and so on)."""

    capabilities: bool = True
    syscalls: bool = True
    files: bool = True

    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self) if getattr(self, f.name))


@dataclass(slots=True)
class _Cgroup:
    path: str
    service: str
    advised: bool


class Observer:
    """`start()` and `finish()` block (compile, attach, detach); `poll()` is quick."""

    def __init__(
        self,
        paths: KernelPaths,
        log: Any,
        *,
        parts: Parts = Parts(),
        pattern: str | None = None,
        ringbuf_pages: int = 1024,
        data_cgroups: int = 256,
    ) -> None:
        self.paths = paths
        self.log = log
        self.pattern = pattern
        self.kernel = kernel_context(paths, log)
        self.layout = fs_layout.resolve(paths.btf)
        self.symbols = KernelSymbols(paths.kallsyms)
        self.problems: list[str] = []
        regs = "OFF_PT_REGS_ORIG_AX" in self.kernel.plan.offsets
        files = parts.files and self.layout.files and regs
        if parts.files and not files:
            self.problems.append(
                self.layout.reason or "no file tracking: syscall registers unknown (no BTF)"
            )
        if parts.syscalls and not regs:
            self.problems.append("refusals and namespaces not observed: no BTF for pt_regs")
        self.parts = dataclasses.replace(parts, files=files)
        self._exits = regs and (parts.syscalls or files)
        self._ringbuf_pages = ringbuf_pages
        self._data_cgroups = data_cgroups
        root = cgroup2_path(paths)
        if root is None:
            raise RuntimeError("no cgroup v2 mount: services cannot be told apart")
        self.resolver = CgroupResolver(root)
        self.files = HostFiles(paths.proc)
        self._cgroups: dict[int, _Cgroup] = {}
        self._records: list[FileRecord] = []
        self._records_lock = threading.Lock()
        self._found: dict[tuple[int, ...], tuple[int, list[Access] | None, int]] = {}
        self._syscall_seen: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._probes: ProbeSet | None = None
        self._maps: probe.Maps | None = None
        self._failure: BaseException | None = None
        self._started_ns = 0
        self._polls = 0
        self._lost = 0  # file records over MAX_PENDING or MAX_ACCESSES

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        cap_range = self.symbols.range_of("cap_capable")
        if self.parts.capabilities and cap_range is None:
            self.problems.append(
                f"cap_capable not found in {self.paths.kallsyms} ({self.symbols.status()}): "
                "every capability check is classified unknown"
            )
        specs = []
        if self.parts.files:
            specs.append(
                ProbeSpec(
                    name="advise_files",
                    source="advise_files.bpf.c",
                    ringbuf=probe.RINGBUF,
                    drops="adv_fs_drops",
                    decode=functools.partial(decode, mono_to_wall_ns=self.kernel.mono_to_wall_ns),
                )
            )
        specs.append(
            ProbeSpec(
                name="advise",
                source=probe.SOURCE,
                drops=probe.DROPS,
                cflags=(
                    *probe.cflags(
                        caps=self.parts.capabilities,
                        syscalls=self.parts.syscalls,
                        files=self.parts.files,
                        cap_capable=cap_range,
                        data_cgroups=self._data_cgroups,
                    ),
                    *self.layout.cflags,
                ),
                raw_tracepoints=probe.raw_tracepoints(
                    caps=self.parts.capabilities,
                    enters=self.parts.syscalls or self.parts.files,
                    exits=self._exits,
                ),
            )
        )
        base = [f"-DRINGBUF_PAGES={self._ringbuf_pages}", *self.kernel.plan.cflags]
        probes = ProbeSet(specs, base, tracefs=self.kernel.tracefs)
        # The tables must be filled before the programs run: attach happens in load(), so the
        # maps are written right after it and the first poll decides what ran meanwhile.
        probes.load()
        self._probes = probes
        try:
            self._maps = probe.Maps(
                probes.table,
                syscalls=self.parts.syscalls,
                files=self.parts.files,
                caps=self.parts.capabilities,
            )
            if self.parts.files:
                probe.fill_fs_specs(probes.table("adv_fs_specs"))
            self._started_ns = time.time_ns()
            self.resolver.rescan()
            for cgroup_id in self.resolver.known():
                self._decide(cgroup_id)
            probes.start(self._deliver, self._failed)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._probes is not None:
            self._probes.stop()
            self._probes.close()
            self._probes = None

    def _deliver(self, batch: list[object]) -> None:
        """From the reader thread; bounded, whatever the services do between two polls."""
        with self._records_lock:
            room = MAX_PENDING - len(self._records)
            records = [r for r in batch if isinstance(r, FileRecord)]
            self._records.extend(records[: max(0, room)])
            self._lost += max(0, len(records) - max(0, room))

    def _failed(self, exc: BaseException) -> None:
        self._failure = exc

    # -- while observing -------------------------------------------------------------------

    def matches(self, path: str, service: str) -> bool:
        if self.pattern is None:
            return True
        return fnmatch.fnmatchcase(service, self.pattern) or fnmatch.fnmatchcase(path, self.pattern)

    def _decide(self, cgroup_id: int) -> _Cgroup:
        known = self._cgroups.get(cgroup_id)
        if known is not None:
            return known
        path = self.resolver.path(cgroup_id)
        service = service_of(path) if path is not None else "unknown"
        advised = path is not None and self.matches(path, service)
        cgroup = self._cgroups[cgroup_id] = _Cgroup(path or f"id:{cgroup_id}", service, advised)
        maps = self._require_maps()
        maps.decide(cgroup_id, probe.ADVISED if advised else probe.IGNORED)
        maps.bump()  # every CPU's cached decision is stale now
        if not advised:
            maps.forget_syscalls(cgroup_id)
        else:
            self.log.info("advising_cgroup", cgroup=cgroup.path, service=service)
        return cgroup

    def _require_maps(self) -> probe.Maps:
        if self._maps is None:
            raise RuntimeError("the advise probes are not loaded")
        return self._maps

    def poll(self) -> None:
        """Decide new cgroups, note syscall times and processes' capabilities, read records."""
        if self._failure is not None:
            raise RuntimeError(f"reading the advise probes failed: {self._failure}")
        maps = self._require_maps()
        self._polls += 1
        for cgroup_id, state in maps.cgroups().items():
            if state == probe.PENDING:
                self._decide(cgroup_id)
            elif (
                state == probe.IGNORED
                and self._polls % 20 == 0
                and not self.resolver.alive(cgroup_id)
            ):  # gone: keep the table small
                maps.forget_cgroup(cgroup_id)
                self._cgroups.pop(cgroup_id, None)
                maps.bump()
        now = time.time_ns()
        for cgroup_id, use in maps.syscalls():
            cgroup = self._cgroups.get(cgroup_id) or self._decide(cgroup_id)
            if not cgroup.advised:  # counted while a CPU still had it pending: drop again
                maps.forget_syscalls(cgroup_id)
                continue
            for nr in range(probe.NR):
                calls = use.used[nr]
                if calls:
                    first, last, before = self._syscall_seen.get((cgroup_id, nr), (now, now, 0))
                    self._syscall_seen[cgroup_id, nr] = (
                        first,
                        now if calls > before else last,
                        calls,
                    )
        with self._records_lock:
            records, self._records = self._records, []
        for record in records:
            if not self._decide(record.cgroup_id).advised:
                continue
            if record.key not in self._found and len(self._found) >= MAX_ACCESSES:
                self._lost += 1
                continue
            found = accesses(record, self.files)
            self._found[record.key] = (record.cgroup_id, found, record.time_ns)

    # -- the end ---------------------------------------------------------------------------

    def finish(self) -> Observation:
        """Last poll, read everything, detach: the observation of every advised service."""
        try:
            if self._probes is not None:
                self._probes.stop()  # hands over what the ring buffer still holds
            self.poll()
            maps = self._require_maps()
            ended = time.time_ns()
            services: dict[str, ServiceObservation] = {}

            def of(cgroup_id: int) -> ServiceObservation | None:
                cgroup = self._cgroups.get(cgroup_id)
                if cgroup is None or not cgroup.advised:
                    return None
                found = services.setdefault(cgroup.service, ServiceObservation(cgroup.service))
                found.cgroups.add(cgroup.path)
                return found

            for cgroup_id, use in maps.syscalls():
                if (seen := of(cgroup_id)) is None:
                    continue
                seen.add_syscalls(self._syscall_uses(cgroup_id, use))
                seen.add_namespaces(use.ns_created, use.ns_joined, use.setns_any)
                seen.ambient.update(_names(use.ambient))
                seen.execs_root += use.execs_root
                seen.execs_user += use.execs_user
            mono = self.kernel.mono_to_wall_ns
            for check in capabilities.checks(maps.caps(), self.symbols.name, mono):
                if (seen := of(check.cgroup_id)) is not None:
                    seen.capabilities.append(check)
            counts = {tuple(_key(k)): v for k, v in maps.seen()}
            for key, (cgroup_id, found, first) in self._found.items():
                if (seen := of(cgroup_id)) is None:
                    continue
                if found is None:
                    seen.unresolved += 1
                    continue
                value = counts.get(key)
                count, last = (value.count, value.last_ns + mono) if value else (1, first)
                seen.add_accesses(found, count, first, max(first, last))
            problems = [*self.problems, *self._kernel_problems(maps)]
        finally:
            self.close()
        return Observation(
            started_ns=self._started_ns,
            ended_ns=ended,
            pattern=self.pattern,
            services=tuple(sorted(services.values(), key=lambda s: s.service)),
            parts=self.parts.names(),
            problems=tuple(problems),
        )

    def _syscall_uses(self, cgroup_id: int, use: probe.SyscallUse) -> list[SyscallUse]:
        found = []
        for nr in range(probe.NR):
            if use.used[nr] or use.refused[nr]:
                first, last, _ = self._syscall_seen.get((cgroup_id, nr), (0, 0, 0))
                name = syscall_name(nr)
                found.append(SyscallUse(name, use.used[nr], use.refused[nr], first, last))
        return found

    def _kernel_problems(self, maps: probe.Maps) -> list[str]:
        found = []
        if self._lost:
            found.append(f"{self._lost} file records over this process's bounds (not advised)")
        for stat, n in maps.stats().items():
            if n and stat in _STAT_PROBLEMS:
                found.append(f"{n} {_STAT_PROBLEMS[stat]}")
        if self._probes is not None:
            for (_, kind), n in self._probes.kernel_drops().items():
                if n and kind in _DROP_PROBLEMS:
                    found.append(f"{n} {_DROP_PROBLEMS[kind]}")
        return found


def _key(key: probe.SeenKey) -> tuple[int, int, int, int, int]:
    return (key.cgroup, key.a, key.b, key.nr, key.access)


def _names(mask: int) -> set[str]:
    return {name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1}
