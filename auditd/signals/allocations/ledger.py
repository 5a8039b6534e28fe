"""Exact allocation totals per (service, kind): the kernel's live slots, plus what the slots of
removed cgroups held (folded into `retired`, so the slot can serve another cgroup)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from auditd.kernel.cgroups import UNKNOWN_SERVICE, CgroupResolver, service_of
from auditd.model.labels import LabelCap
from probes.allocations import ZERO, KindUsage, Live, Site, Usage, add_usage


class TablesLike(Protocol):
    """The kernel tables, as probes/allocations.py exposes them (a fake in pure tests)."""

    slots: int

    def owners(self) -> dict[int, int]: ...
    def read(self) -> tuple[dict[int, KindUsage], KindUsage]: ...
    def release(self, slot: int) -> KindUsage: ...
    def drain_sites(self) -> list[Site]: ...
    def live(self) -> list[Live]: ...


@dataclass(frozen=True, slots=True, order=True)
class AllocationSeries:
    service: str
    kind: str


class AllocationLedger:
    """Exact totals per (service, kind): the live slots plus what removed cgroups left."""

    def __init__(self, tables: TablesLike, resolver: CgroupResolver, services: LabelCap) -> None:
        self.tables = tables
        self._resolver = resolver
        self._services = services
        self._retired: dict[AllocationSeries, Usage] = {}
        self._lock = threading.Lock()

    def snapshot(self) -> tuple[dict[AllocationSeries, Usage], KindUsage]:
        """Totals per series and the unattributed (overflow) totals. Blocks on map reads."""
        with self._lock:
            totals = dict(self._retired)
            per_cgroup, overflow = self.tables.read()
            for cgroup_id, usage in per_cgroup.items():
                service = self._services(self._resolver.service(cgroup_id))
                for kind, u in usage.items():
                    series = AllocationSeries(service, kind)
                    totals[series] = totals.get(series, ZERO) + u
            return totals, overflow

    def retire_removed(self) -> dict[int, KindUsage]:
        """Free the slots of removed cgroups, folding their totals into `retired`; returns each
        retired cgroup's final totals. Blocks (map reads and writes, stat calls)."""
        final: dict[int, KindUsage] = {}
        with self._lock:
            owners = self.tables.owners()
            # Walked after the read: a slot whose cgroup the walk does not find is dead, seen
            # before or not (a short-lived cgroup must not hold its slot forever).
            dead = self._resolver.gone(owners.values())
            for slot, cgroup_id in sorted(owners.items()):
                if cgroup_id not in dead:
                    continue
                held = self.tables.release(slot)
                add_usage(final.setdefault(cgroup_id, {}), held)
                path = self._resolver.cached(cgroup_id)
                service = self._services(UNKNOWN_SERVICE if path is None else service_of(path))
                for kind, u in held.items():
                    series = AllocationSeries(service, kind)
                    self._retired[series] = self._retired.get(series, ZERO) + u
        return final
