"""Exact totals from a kernel counter map keyed by cgroup, kept exact across cgroup removal.

The kernel map is the count; nothing is kept twice while a cgroup lives. When a cgroup is
removed its entries are folded into `retired` (by series) and deleted from the map: the bounded
kernel map does not fill with dead cgroups, and every total stays exact. Monitors say how a
kernel key becomes labelled series; this module does the rest.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Generic, Protocol, TypeVar

from auditd.kernel.cgroups import CgroupResolver


class CgroupKeyed(Protocol):
    @property
    def cgroup_id(self) -> int: ...


K = TypeVar("K", bound=CgroupKeyed)
S = TypeVar("S", bound=Hashable)


class CounterSource(Protocol[K]):
    """A kernel counter map, as the probe side exposes it."""

    def read(self) -> Mapping[K, int]: ...
    def delete(self, keys: Iterable[K]) -> None: ...
    def unattributed(self) -> int: ...


class KernelTotals(Generic[K, S]):
    """`series(key, count)` names the labelled series a key's count belongs to (one key may
    count in several, e.g. one per namespace type)."""

    def __init__(
        self,
        source: CounterSource[K],
        resolver: CgroupResolver,
        series: Callable[[K, int], Iterable[tuple[S, int]]],
    ) -> None:
        self._source = source
        self._resolver = resolver
        self._series = series
        self._retired: Counter[S] = Counter()
        self._lock = threading.Lock()

    def snapshot(self) -> dict[S, int]:
        """Current totals per series. Blocks on a kernel map read (call off the event loop)."""
        with self._lock:
            totals: Counter[S] = Counter(self._retired)
            for key, count in self._source.read().items():
                for name, n in self._series(key, count):
                    totals[name] += n
            return dict(totals)

    def unattributed(self) -> int:
        return self._source.unattributed()

    def retire_removed(self) -> int:
        """Fold counters of removed cgroups into `retired`; returns how many keys were retired.
        Blocks (map read, a cgroup walk)."""
        with self._lock:
            counts = self._source.read()
            # Walked after the read: a key whose cgroup the walk does not find is dead, seen
            # before or not (a short-lived cgroup must not hold its map entries forever).
            dead = self._resolver.gone(k.cgroup_id for k in counts)
            gone = {k: n for k, n in counts.items() if k.cgroup_id in dead}
            for key, count in gone.items():
                for name, n in self._series(key, count):
                    self._retired[name] += n
            self._source.delete(gone)
            return len(gone)
