"""Denial monitor: exact refusal totals per service, from the kernel's counters.

The kernel map is the count; nothing is kept twice while a cgroup lives. When a cgroup is
removed, its entries are folded into `retired` (by series) and deleted from the map: the bounded
kernel map does not fill with dead cgroups, and every total stays exact.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from auditd.cgroups import CgroupResolver
from auditd.config import DenialProbeConfig
from auditd.events import Source, errno_name
from auditd.monitor import KernelContext, Monitor
from auditd.telemetry import Family, LabelCap, counter
from probes import denials as probe
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


class CounterSource(Protocol[K]):
    """The kernel's exact counter map, as the probe side exposes it."""

    def read(self) -> Mapping[K, int]: ...
    def delete(self, keys: Iterable[K]) -> None: ...
    def unattributed(self) -> int: ...


@dataclass(frozen=True, slots=True, order=True)
class DenialSeries:
    service: str
    source: str
    syscall: str
    errno: str


class DenialTotals(Generic[K]):
    def __init__(
        self, source: CounterSource[K], resolver: CgroupResolver, services: LabelCap
    ) -> None:
        self._source = source
        self._resolver = resolver
        self._services = services
        self._retired: Counter[DenialSeries] = Counter()
        self._lock = threading.Lock()

    def _series(self, key: K) -> DenialSeries:
        return DenialSeries(
            service=self._services(self._resolver.service(key.cgroup_id)),
            source=key.source.value,
            syscall=key.syscall,
            errno=errno_name(key.errno),
        )

    def snapshot(self) -> dict[DenialSeries, int]:
        """Current totals per series. Blocks on a kernel map read (call off the event loop)."""
        with self._lock:
            totals: Counter[DenialSeries] = Counter(self._retired)
            for key, count in self._source.read().items():
                totals[self._series(key)] += count
            return dict(totals)

    def unattributed(self) -> int:
        return self._source.unattributed()

    def retire_removed(self) -> int:
        """Fold counters of removed cgroups into `retired`; returns how many keys were retired.
        Blocks (map read, stat calls)."""
        with self._lock:
            # Only cgroups once seen can be known dead; unknown ids wait for a later pass.
            gone = {
                k: n
                for k, n in self._source.read().items()
                if self._resolver.cached(k.cgroup_id) is not None
                and not self._resolver.alive(k.cgroup_id)
            }
            for key, count in gone.items():
                self._retired[self._series(key)] += count
            self._source.delete(gone)
            return len(gone)


DENIALS = counter(
    "denials",
    "Refusals by the kernel (EACCES/EPERM and LSM denials), counted exactly in the kernel.",
    "service",
    "source",
    "syscall",
    "errno",
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

    def probe_specs(self, kernel: KernelContext) -> list[ProbeSpec]:
        return [
            ProbeSpec(
                name=self.name,
                source=probe.SOURCE,
                ringbuf="denial_events",
                drops="denial_drops",
                decode=probe.decoder(kernel.mono_to_wall_ns),
                cflags=(
                    f"-DDENIAL_COUNTER_ENTRIES={self.config.counter_entries}",
                    f"-DTARGET_LEN={probe.TARGET_LEN}",
                ),
            )
        ]

    def bind(self, probes: ProbeSet) -> None:
        counters = probe.DenialCounters(
            probes.table("denial_counts"), probes.table("denial_overflow")
        )
        self.totals = DenialTotals(counters, self._resolver, self._services)

    def declared(self) -> list[Family]:
        return [DENIALS, UNATTRIBUTED]

    def families(self) -> list[Family]:
        if self.totals is None:
            return self.declared()
        snapshot = self.totals.snapshot()
        return [
            DENIALS.with_samples(
                {(s.service, s.source, s.syscall, s.errno): n for s, n in sorted(snapshot.items())}
            ),
            UNATTRIBUTED.with_samples({(): self.totals.unattributed()}),
        ]

    def housekeeping(self) -> int:
        return self.totals.retire_removed() if self.totals is not None else 0
