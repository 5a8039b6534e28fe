"""Allocation monitor: the probes to attach, the metrics from the ledger, and a periodic
`AllocationStats` per service with its busiest call site.

The kernel's slot table is the count. When a cgroup is removed its slots are folded into
`retired` (by series) and freed for other cgroups (`ledger`), so every total stays exact while
the table stays small.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from auditd.config.schema import AllocationProbeConfig
from auditd.kernel.cgroups import CgroupResolver
from auditd.kernel.context import KernelContext
from auditd.kernel.symbols import KernelSymbols
from auditd.model.labels import LabelCap
from auditd.signals.allocations.event import AllocationStats
from auditd.signals.allocations.ledger import AllocationLedger, TablesLike
from auditd.signals.allocations.plan import AttachPlan, attach_plan
from auditd.signals.monitor import Monitor
from exporters.families import Family, counter, gauge
from probes import allocations as probe
from probes.allocations import KINDS, ZERO, KindUsage, Live, Site, add_usage
from probes.runtime import ProbeSet, ProbeSpec

log = structlog.get_logger("bpf-auditd.allocations")

# Object allocations (kmalloc and named slab caches); pages are counted apart, since the page
# allocator also backs slabs and user memory.
OBJECT_KINDS = ("kmalloc", "slab")


ALLOCATIONS = counter(
    "kernel_allocations",
    "Kernel allocations made on behalf of the service, by kind (kmalloc, slab, page); exact.",
    "service",
    "kind",
)
ALLOCATED_BYTES = counter(
    "kernel_allocated_bytes",
    "Bytes the kernel allocated on behalf of the service (slab object or page sizes); exact.",
    "service",
    "kind",
)
REQUESTED_BYTES = counter(
    "kernel_requested_bytes",
    "Bytes the callers asked for (allocated minus requested is allocator slack); exact.",
    "service",
    "kind",
)
UNATTRIBUTED = counter(
    "kernel_allocations_unattributed",
    "Kernel allocations of cgroups that found no free slot (probes.allocations.slots): "
    "in no service's series.",
    "kind",
)
OUTSTANDING = gauge(
    "kernel_outstanding_bytes",
    "Kernel bytes allocated on behalf of the service since the daemon started and not freed "
    "yet, estimated from sampled addresses; updated every housekeeping interval.",
    "service",
)


@dataclass(slots=True)
class Window:
    """What one housekeeping pass saw: per-cgroup deltas, sites and live objects."""

    seconds: float
    deltas: dict[int, KindUsage]
    sites: list[Site]
    live: list[Live]


class AllocationMonitor(Monitor):
    name = "allocations"

    def __init__(
        self,
        config: AllocationProbeConfig,
        resolver: CgroupResolver,
        services: LabelCap,
        *,
        symbols: KernelSymbols | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.config = config
        self._resolver = resolver
        self._services = services
        self._symbols = symbols
        self._clock = clock
        self._wall_clock = wall_clock
        self.ledger: AllocationLedger | None = None
        self.plan: AttachPlan | None = None
        self._previous: dict[int, KindUsage] = {}
        self._window_start = 0.0
        self._outstanding: dict[str, int] = {}  # capped service -> estimated bytes

    # -- probes ------------------------------------------------------------------------------

    def probe_specs(self, kernel: KernelContext) -> list[ProbeSpec]:
        if self._symbols is None:
            self._symbols = KernelSymbols(kernel.paths.kallsyms)
        self.plan = attach_plan(
            kernel.paths.btf,
            want_raw=self.config.attach == "auto",
            tp_btf=kernel.tp_btf and kernel.btf_loads,
            tp_btf_off=kernel.tp_btf_off or kernel.btf_loads_off,
        )
        if self.plan.reason:
            log.warning("allocation_probes_degraded", reason=self.plan.reason)
        c = self.config
        return [
            ProbeSpec(
                name=self.name,
                source=probe.SOURCE,
                drops=probe.DROPS,
                cflags=(
                    *self.plan.cflags,
                    f"-DALLOC_TRACK_LIVE={int(c.track_outstanding)}",
                    f"-DALLOC_SLOT_BITS={probe.shift_of(c.slots)}",
                    f"-DALLOC_SLOT_PROBES={probe.SLOT_PROBES}",
                    f"-DALLOC_SITE_ENTRIES={c.site_entries}",
                    f"-DALLOC_SITE_SHIFT={probe.shift_of(c.site_sample)}",
                    f"-DALLOC_LIVE_ENTRIES={c.live_entries}",
                    f"-DALLOC_LIVE_SHIFT={probe.shift_of(c.live_sample)}",
                    f"-DALLOC_PAGE_SHIFT={probe.shift_of(_page_size())}",
                    f"-DALLOC_TYPE_LEN={probe.TYPE_LEN}",
                ),
                raw_tracepoints=tuple(
                    (fn, tp) for fn, tp in self.plan.raw_tracepoints if self._hooked(tp)
                ),
                btf_tracepoints=tuple(
                    (fn, tp, type_id) for fn, tp, type_id in self.plan.btf if self._hooked(tp)
                ),
            )
        ]

    def _hooked(self, tracepoint: str) -> bool:
        return self.config.track_outstanding or tracepoint not in probe.FREES

    def bind(self, probes: ProbeSet) -> None:
        tables = probe.AllocationTables(
            probes.table("alloc_slot_owner"),
            probes.table("alloc_slot_totals"),
            probes.table("alloc_sites"),
            probes.table("alloc_live"),
            slots=self.config.slots,
        )
        self.attach_tables(tables)

    def attach_tables(self, tables: TablesLike) -> None:
        """Start counting windows from now (bind calls it; pure tests pass a fake)."""
        self.ledger = AllocationLedger(tables, self._resolver, self._services)
        self._window_start = self._clock()
        self._previous = {}

    # -- metrics -----------------------------------------------------------------------------

    def declared(self) -> list[Family]:
        families = [ALLOCATIONS, ALLOCATED_BYTES, REQUESTED_BYTES, UNATTRIBUTED]
        return [*families, OUTSTANDING] if self.config.track_outstanding else families

    def families(self) -> list[Family]:
        if self.ledger is None:
            return self.declared()
        totals, overflow = self.ledger.snapshot()
        ordered = sorted(totals.items())
        families = [
            ALLOCATIONS.with_samples({(s.service, s.kind): u.count for s, u in ordered}),
            ALLOCATED_BYTES.with_samples({(s.service, s.kind): u.allocated for s, u in ordered}),
            REQUESTED_BYTES.with_samples({(s.service, s.kind): u.requested for s, u in ordered}),
            UNATTRIBUTED.with_samples({(k,): overflow.get(k, ZERO).count for k in KINDS}),
        ]
        if self.config.track_outstanding:
            outstanding = dict(self._outstanding)  # replaced whole by housekeeping: no lock
            families.append(OUTSTANDING.with_samples({(s,): n for s, n in outstanding.items()}))
        return families

    # -- periodic work -----------------------------------------------------------------------

    def window(self) -> Window:
        """Close the current window: retire removed cgroups, take per-cgroup deltas, drain the
        sampled sites, read the live objects. Blocks on map reads."""
        assert self.ledger is not None
        tables = self.ledger.tables
        now = self._clock()
        final = self.ledger.retire_removed()
        current, _ = tables.read()
        # A retired cgroup's last totals count in this window; so does anything it allocated
        # after (an exiting task can claim a slot again), added to them.
        merged = {cgroup_id: dict(usage) for cgroup_id, usage in current.items()}
        for cgroup_id, usage in final.items():
            add_usage(merged.setdefault(cgroup_id, {}), usage)
        deltas: dict[int, KindUsage] = {}
        for cgroup_id, usage in merged.items():
            before = self._previous.get(cgroup_id, {})
            delta = {k: u - before.get(k, ZERO) for k, u in usage.items()}
            if any(d.count for d in delta.values()):
                deltas[cgroup_id] = {k: d for k, d in delta.items() if d.count}
        self._previous = current
        seconds, self._window_start = now - self._window_start, now
        live = tables.live() if self.config.track_outstanding else []
        return Window(seconds, deltas, tables.drain_sites(), live)

    def housekeeping(self) -> list[AllocationStats]:
        """One AllocationStats per service that allocated in the window."""
        if self.ledger is None:
            return []
        w = self.window()
        if self.config.track_outstanding:
            # Services that allocated in the window show 0 rather than no series when none
            # of their sampled objects is still live.
            active = {self._services(self._resolver.service(c)): 0 for c in w.deltas}
            self._outstanding = active | self._outstanding_by(w.live, self._services)
        return self.stats(w)

    def _outstanding_by(self, live: list[Live], name: Callable[[str], str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for obj in live:
            service = name(self._resolver.service(obj.cgroup_id))
            out[service] = out.get(service, 0) + obj.bytes * self.config.live_sample
        return out

    def stats(self, w: Window) -> list[AllocationStats]:
        """The window's statistics per service (pure given the resolver's cache)."""
        seconds = max(w.seconds, 1e-9)
        by_service: dict[str, KindUsage] = {}
        busiest: dict[str, tuple[int, int]] = {}  # service -> (allocations, cgroup id)
        for cgroup_id, usage in w.deltas.items():
            service = self._resolver.service(cgroup_id)
            add_usage(by_service.setdefault(service, {}), usage)
            n = sum(u.count for u in usage.values())
            busiest[service] = max(busiest.get(service, (-1, 0)), (n, cgroup_id))
        outstanding = self._outstanding_by(w.live, lambda s: s) if w.live else {}
        top: dict[str, tuple[int, int]] = {}  # service -> (sampled bytes, call site)
        for site in w.sites:
            if site.call_site:
                service = self._resolver.service(site.cgroup_id)
                top[service] = max(top.get(service, (0, 0)), (site.usage.allocated, site.call_site))
        now_ns = self._wall_clock()
        events = []
        for service, usage in sorted(by_service.items()):
            objects = [usage.get(k, ZERO) for k in OBJECT_KINDS]
            if not any(u.count for u in usage.values()):
                continue
            best = top.get(service)
            events.append(
                AllocationStats(
                    time_ns=now_ns,
                    cgroup_id=busiest[service][1],
                    window=w.seconds,
                    allocations_per_s=sum(u.count for u in objects) / seconds,
                    bytes_per_s=sum(u.allocated for u in objects) / seconds,
                    page_bytes_per_s=usage.get("page", ZERO).allocated / seconds,
                    outstanding_bytes=outstanding.get(service, 0)
                    if self.config.track_outstanding
                    else None,
                    top_call_site=self.symbol(best[1]) if best else None,
                    service=service,
                )
            )
        return events

    def symbols_status(self) -> str:
        return self._symbols.status() if self._symbols is not None else "off"

    def symbol(self, address: int) -> str:
        if self._symbols is None:
            return f"0x{address:x}"
        return self._symbols.name(address)


def _page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")
