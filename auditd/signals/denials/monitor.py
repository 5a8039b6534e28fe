"""Denial monitor: exact refusal totals per service from the kernel's counters (kept exact
across cgroup removal by signals/totals.py), repeats accounted, policy filters pushed down."""

from __future__ import annotations

import ctypes
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from auditd.config.schema import DenialProbeConfig
from auditd.kernel.cgroups import CgroupResolver
from auditd.kernel.context import KernelContext
from auditd.kernel.facts import active_lsms
from auditd.model.capabilities import capability_name
from auditd.model.errnos import errno_name
from auditd.model.event import Event
from auditd.model.filter import KernelFilter
from auditd.model.labels import LabelCap
from auditd.signals.denials import decode as decoding
from auditd.signals.denials.event import Denial
from auditd.signals.denials.repeats import RepeatAccountant
from auditd.signals.monitor import Monitor
from auditd.signals.totals import CounterSource, KernelTotals
from exporters.families import Family, counter
from probes import denials as probe
from probes import syscalls
from probes.runtime import ProbeSet, ProbeSpec


class CounterKeyLike(Protocol):
    """A denial_counts key as numbers (probes.denials.CounterKey, or a fake in pure tests)."""

    @property
    def cgroup_id(self) -> int: ...
    @property
    def syscall_nr(self) -> int: ...
    @property
    def errno(self) -> int: ...
    @property
    def source_nr(self) -> int: ...


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
            name = DenialSeries(
                service,
                decoding.source_of(key.source_nr).value,
                decoding.syscall_of(key.syscall_nr),
                errno_name(key.errno),
            )
            return [(name, count)]

        super().__init__(source, resolver, series)


DENIALS = counter(
    "denials",
    "Refused calls (EACCES/EPERM, seccomp kills), counted exactly in the kernel; source as the "
    "tracepoints tell it (syscall, capability, selinux, seccomp): Landlock refusals count as "
    "syscall, their rights are in lsm_denials.",
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
        self._cache: Any = None
        self.exe_in_kernel = False
        self.cap_btf_off = "not planned yet"
        self._hooks: dict[str, int] = {}
        self._probes: ProbeSet | None = None
        self._enter_hooks = False
        self._accountant = RepeatAccountant(2 * config.recent_entries)

    def probe_specs(self, kernel: KernelContext) -> list[ProbeSpec]:
        self._hooks = probe.available_hooks(kernel.tracefs)
        cflags = set(kernel.plan.cflags)
        pt_regs = "-DAUDITD_HAVE_TASK_PT_REGS=1" in cflags
        seccomp = pt_regs and "-DAUDITD_HAVE_SECCOMP_MODE=1" in cflags
        # Entry hooks only where needed: seccomp marks, or saving targets without pt_regs.
        self._enter_hooks = seccomp or not pt_regs
        # The executable's path walked in the kernel; else enrichment reads /proc/PID/exe.
        self.exe_in_kernel = kernel.btf_loads and "-DAUDITD_HAVE_EXE_WALK=1" in cflags
        cap_btf = self._cap_btf(kernel)
        # SELinux denials become causes where SELinux enforces (the tracepoint exists anyway).
        lsms = active_lsms(kernel.paths).names or ()
        self.selinux = "selinux" in lsms
        offset = kernel.mono_to_wall_ns
        accountant = self._accountant

        def on_record(data: bytes) -> Denial:
            # On the reader thread: decode (pure), then account the kernel's repeat count.
            return accountant.on_record(decoding.decode(data, offset))

        return [
            ProbeSpec(
                name=self.name,
                source=probe.SOURCE,
                ringbuf="denial_events",
                drops="denial_drops",
                decode=on_record,
                cflags=(
                    f"-DDENIAL_COUNT_SLOTS={probe.power_of_two(self.config.counter_entries)}",
                    f"-DDENIAL_RECENT_ENTRIES={self.config.recent_entries}",
                    f"-DDENIAL_CACHE_ENTRIES={probe.CACHE_ENTRIES}",
                    f"-DDENIAL_WINDOW_J={kernel.jiffies(self.config.window)}ULL",
                    f"-DDENIAL_CAUSE_J={kernel.jiffies(probe.CAUSE_MAX_AGE_S)}ULL",
                    f"-DDENIAL_CAP_BTF={int(cap_btf is not None)}",
                    f"-DTARGET_LEN={probe.TARGET_LEN}",
                    f"-DDENIAL_EXE_DEPTH={probe.EXE_DEPTH}",
                    *(["-DDENIAL_SELINUX"] if self.selinux else []),
                ),
                btf_tracepoints=(() if cap_btf is None else (cap_btf,)),
            )
        ]

    def _cap_btf(self, kernel: KernelContext) -> tuple[str, str, int] | None:
        """cap_capable as tp_btf (no trace record built per capability check) where the
        kernel takes it and its prototype is the one the program reads; else classic."""
        btf = kernel.btf()
        if not kernel.tp_btf or btf is None:
            self.cap_btf_off = kernel.tp_btf_off or "no BTF"
            return None
        got = btf.tracepoint_args("cap_capable")
        type_id = btf.tracepoint_type_id("cap_capable")
        if got is None or type_id is None or got[: len(probe.CAP_PROTOTYPE)] != probe.CAP_PROTOTYPE:
            self.cap_btf_off = f"cap_capable takes {got}, expected {probe.CAP_PROTOTYPE} first"
            return None
        self.cap_btf_off = ""
        return ("denial_cap_btf", "cap_capable", type_id)

    def bind(self, probes: ProbeSet) -> None:
        # A new dedup-hash key per start, before any refusal is hashed with the zero key.
        probes.table("denial_seed")[ctypes.c_uint32(0)] = ctypes.c_uint64(
            int.from_bytes(os.urandom(8), "little")
        )
        if self.exe_in_kernel:
            probes.tail_call("denial_tail", 0, "denial_send")  # the executable's path, then send
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
            probes.table("denial_count_owner"),
            probes.table("denial_count_vals"),
            probes.table("denial_cap_counts"),
        )
        self._recent = probes.table("denial_recent")
        self._cache = probes.table("denial_cache")
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
        for source, number in decoding.SOURCE_NUMBERS.items():
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
            user_ns = "initial" if key.init_user_ns else "child"
            caps[service, capability_name(key.cap), user_ns] += n
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
        recent = probe.read_recent(self._recent, self._cache)
        window_ns = int(self.config.window * 1e9)
        return list(self._accountant.summaries(recent, time.monotonic_ns(), window_ns))
