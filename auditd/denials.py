"""Denial monitor: exact refusal totals per service from the kernel's counters (kept exact
across cgroup removal by auditd/counters.py), repeats accounted, policy filters pushed down."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from auditd.cgroups import CgroupResolver
from auditd.config import DenialProbeConfig
from auditd.counters import CounterSource, KernelTotals
from auditd.events import Denial, Event, Source, errno_name
from auditd.features import active_lsms
from auditd.filters import KernelFilter
from auditd.monitor import KernelContext, Monitor
from auditd.telemetry import Family, LabelCap, counter
from probes import denials as probe
from probes import syscalls
from probes.runtime import ProbeSet, ProbeSpec


class CounterKeyLike(Protocol):
    @property
    def cgroup_id(self) -> int: ...
    @property
    def source(self) -> Source: ...
    @property
    def syscall(self) -> str: ...
    @property
    def errno(self) -> int: ...


K = TypeVar("K", bound=CounterKeyLike)


@dataclass(frozen=True, slots=True, order=True)
class DenialSeries:
    service: str
    source: str
    syscall: str
    errno: str


class DenialTotals(KernelTotals[K, DenialSeries]):
    """Exact refusal totals per (service, source, syscall, errno)."""

    def __init__(
        self, source: CounterSource[K], resolver: CgroupResolver, services: LabelCap
    ) -> None:
        def series(key: K, count: int) -> list[tuple[DenialSeries, int]]:
            service = services(resolver.service(key.cgroup_id))
            name = DenialSeries(service, key.source.value, key.syscall, errno_name(key.errno))
            return [(name, count)]

        super().__init__(source, resolver, series)


class RepeatAccountant:
    """Turns the kernel's running count per dedup key into `repeats` on records, and into
    summaries for floods that stopped inside their window (so no repeat goes unreported)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._accounted: OrderedDict[probe.DedupKey, int] = OrderedDict()
        self._last: dict[probe.DedupKey, Denial] = {}
        self._lock = threading.Lock()

    def on_record(self, decoded: probe.Decoded) -> Denial:
        key = decoded.key
        with self._lock:
            before = self._accounted.get(key)
            repeats = decoded.seen - 1 - (before if before is not None else 0)
            self._accounted[key] = max(decoded.seen, before or 0)
            self._accounted.move_to_end(key)
            denial = dataclasses.replace(decoded.denial, repeats=max(repeats, 0))
            self._last[key] = denial
            while len(self._accounted) > self._limit:
                old, _ = self._accounted.popitem(last=False)
                self._last.pop(old, None)
        return denial

    def summaries(
        self, recent: Mapping[probe.DedupKey, tuple[int, int]], now_mono_ns: int, window_ns: int
    ) -> list[Denial]:
        """Summaries for combinations idle for a window with repeats no record has reported."""
        out = []
        with self._lock:
            for key, (seen, last_sent_ns) in recent.items():
                before = self._accounted.get(key)
                last = self._last.get(key)
                if before is None or last is None or seen <= before:
                    continue
                if now_mono_ns - last_sent_ns < window_ns:
                    continue  # still inside the window: the next record will carry them
                self._accounted[key] = seen
                out.append(
                    dataclasses.replace(
                        last,
                        repeats=seen - before,
                        summary=True,
                        time_ns=time.time_ns(),
                    )
                )
        return out


DENIALS = counter(
    "denials",
    "Refusals by the kernel (EACCES/EPERM and LSM denials), counted exactly in the kernel.",
    "service",
    "source",
    "syscall",
    "errno",
)
CAP_DENIALS = counter(
    "capability_denials",
    "Refusals caused by a failed capability check (exact, in the kernel); user_ns: initial or"
    " child user namespace of the check.",
    "service",
    "capability",
    "user_ns",
)
UNATTRIBUTED = counter(
    "denials_unattributed",
    "Refusals counted after the kernel counter map was full: in no labelled series.",
)


class DenialMonitor(Monitor):
    name = "denials"

    def __init__(
        self, config: DenialProbeConfig, resolver: CgroupResolver, services: LabelCap
    ) -> None:
        self.config = config
        self._resolver = resolver
        self._services = services
        self.totals: DenialTotals[probe.CounterKey] | None = None
        self._counters: probe.DenialCounters | None = None
        self._recent: Any = None
        self._hooks: dict[str, int] = {}
        self._probes: ProbeSet | None = None
        self._enter_hooks = False
        self._accountant = RepeatAccountant(2 * config.recent_entries)
        self._exe = ExeCache()

    def probe_specs(self, kernel: KernelContext) -> list[ProbeSpec]:
        tracefs = next((p for p in kernel.paths.tracefs if (p / "events").is_dir()), None)
        self._hooks = probe.available_hooks(tracefs)
        cflags = set(kernel.plan.cflags)
        pt_regs = "-DAUDITD_HAVE_TASK_PT_REGS=1" in cflags
        seccomp = pt_regs and "-DAUDITD_HAVE_SECCOMP_MODE=1" in cflags
        # Entry hooks only where needed: seccomp marks, or saving targets without pt_regs.
        self._enter_hooks = seccomp or not pt_regs
        # SELinux denials become causes where SELinux enforces (the tracepoint exists anyway).
        lsms = active_lsms(kernel.paths).names or ()
        self.selinux = "selinux" in lsms
        decode = probe.decoder(kernel.mono_to_wall_ns)

        def on_record(data: bytes) -> Denial:
            denial = self._accountant.on_record(decode(data))
            return dataclasses.replace(denial, exe=self._exe(denial.pid))

        return [
            ProbeSpec(
                name=self.name,
                source=probe.SOURCE,
                ringbuf="denial_events",
                drops="denial_drops",
                decode=on_record,
                cflags=(
                    f"-DDENIAL_COUNTER_ENTRIES={self.config.counter_entries}",
                    f"-DDENIAL_RECENT_ENTRIES={self.config.recent_entries}",
                    f"-DDENIAL_WINDOW_NS={int(self.config.window * 1e9)}ULL",
                    f"-DTARGET_LEN={probe.TARGET_LEN}",
                    *(["-DDENIAL_SELINUX"] if self.selinux else []),
                ),
            )
        ]

    def bind(self, probes: ProbeSet) -> None:
        hooked = probes.table("denial_hooked")
        specs = probes.table("denial_specs")
        for name, nr in self._hooks.items():
            kind, index = probe.HOOKS[name]
            specs[ctypes.c_int(nr)] = specs.Leaf(kind, index)
            hooked[ctypes.c_int(nr)] = ctypes.c_uint8(1)
            probes.attach_tracepoint(f"syscalls:sys_exit_{name}", "denial_exit_hook")
            if self._enter_hooks:
                probes.attach_tracepoint(f"syscalls:sys_enter_{name}", "denial_enter_hook")
        self._counters = probe.DenialCounters(
            probes.table("denial_counts"),
            probes.table("denial_cap_counts"),
            probes.table("denial_overflow"),
        )
        self._recent = probes.table("denial_recent")
        self._probes = probes
        self.totals = DenialTotals(self._counters, self._resolver, self._services)

    def apply_filter(self, f: KernelFilter) -> None:
        """Push the policy's ignore list into the kernel: matching refusals stay counted
        exactly but send no record. Tables are rewritten whole (filters are small)."""
        probes = self._probes
        if probes is None:
            return
        cgroups = probes.table("denial_quiet_cgroups")
        errnos = probes.table("denial_quiet_errnos")
        syscall_flags = probes.table("denial_quiet_syscalls")
        source_flags = probes.table("denial_quiet_sources")
        cgroups.clear()
        errnos.clear()
        if len(f.cgroup_ids) > 1024 or len(f.errnos) > 64:
            # The rest are still ignored, in user space (records arrive, are counted, dropped).
            structlog.get_logger("bpf-auditd").warning(
                "kernel_filter_truncated", cgroups=len(f.cgroup_ids), errnos=len(f.errnos),
                kernel_limits={"cgroups": 1024, "errnos": 64},
            )  # fmt: skip
        for cgroup_id in sorted(f.cgroup_ids)[:1024]:
            cgroups[ctypes.c_uint64(cgroup_id)] = ctypes.c_uint8(1)
        for err in sorted(f.errnos)[:64]:
            errnos[ctypes.c_uint32(err)] = ctypes.c_uint8(1)
        wanted = {syscalls.NUMBERS[name] for name in f.syscalls if name in syscalls.NUMBERS}
        for nr in range(512):
            syscall_flags[ctypes.c_int(nr)] = ctypes.c_uint8(1 if nr in wanted else 0)
        for source, number in probe.SOURCE_NUMBERS.items():
            source_flags[ctypes.c_int(number)] = ctypes.c_uint8(1 if source in f.sources else 0)
        probes.table("denial_quiet")[ctypes.c_int(0)] = ctypes.c_uint8(0 if f.empty else 1)

    def declared(self) -> list[Family]:
        return [DENIALS, CAP_DENIALS, UNATTRIBUTED]

    def families(self) -> list[Family]:
        if self.totals is None or self._counters is None:
            return self.declared()
        snapshot = self.totals.snapshot()
        caps: Counter[tuple[str, ...]] = Counter()
        for key, n in self._counters.read_caps().items():
            service = self._services(self._resolver.service(key.cgroup_id))
            caps[service, key.capability, "initial" if key.init_user_ns else "child"] += n
        return [
            DENIALS.with_samples(
                {(s.service, s.source, s.syscall, s.errno): n for s, n in sorted(snapshot.items())}
            ),
            CAP_DENIALS.with_samples(dict(caps)),
            UNATTRIBUTED.with_samples({(): self.totals.unattributed()}),
        ]

    def housekeeping(self) -> list[Event]:
        """Retire removed cgroups' counters; summarize floods that stopped inside a window."""
        if self.totals is None or self._recent is None:
            return []
        self.totals.retire_removed()
        recent = probe.read_recent(self._recent)
        window_ns = int(self.config.window * 1e9)
        return list(self._accountant.summaries(recent, time.monotonic_ns(), window_ns))


class ExeCache:
    """pid → executable path from /proc, kept briefly: records of one process come in bursts,
    and pids are reused, so entries expire after a second."""

    def __init__(self, proc: Path = Path("/proc"), ttl_ns: int = 1_000_000_000) -> None:
        self._proc = proc
        self._ttl = ttl_ns
        self._cache: dict[int, tuple[int, str | None]] = {}

    def __call__(self, pid: int) -> str | None:
        now = time.monotonic_ns()
        hit = self._cache.get(pid)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        try:
            exe: str | None = os.readlink(self._proc / str(pid) / "exe")
        except OSError:  # gone already, or a kernel thread
            exe = None
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[pid] = (now, exe)
        return exe
