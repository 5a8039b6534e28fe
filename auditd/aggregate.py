"""Exact denial totals: the kernel's live counters plus those retired from removed cgroups.

The kernel map is the count; nothing is kept twice while a cgroup lives. When a cgroup is
removed its entries are folded into `retired` (by service) and deleted from the map, which keeps
the bounded kernel map from filling with dead cgroups while every total stays exact.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Generic, Protocol, TypeVar

from auditd.cgroups import CgroupResolver
from auditd.events import Source, errno_name
from auditd.telemetry import DenialSeries, LabelCap


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
            gone = {
                k: n
                for k, n in self._source.read().items()
                if not self._resolver.alive(k.cgroup_id)
            }
            # Only cgroups we once saw can be known dead; unknown ids are left for a later pass.
            gone = {k: n for k, n in gone.items() if self._resolver.cached(k.cgroup_id) is not None}
            for key, count in gone.items():
                self._retired[self._series(key)] += count
            self._source.delete(gone)
            return len(gone)
