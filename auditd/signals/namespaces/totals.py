"""Per-service namespace-change totals from the kernel's ns_counts (kept exact across cgroup
removal by signals/totals.py). A call that changes several types counts once for each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from auditd.kernel.cgroups import CgroupResolver
from auditd.model.errnos import errno_name
from auditd.model.labels import LabelCap
from auditd.signals.namespaces.event import OPS, types_of
from auditd.signals.totals import CounterSource, KernelTotals


class CounterKeyLike(Protocol):
    @property
    def cgroup_id(self) -> int: ...
    @property
    def op(self) -> int: ...
    @property
    def types(self) -> int: ...
    @property
    def errno(self) -> int: ...
    @property
    def escaped(self) -> int: ...


@dataclass(frozen=True, slots=True, order=True)
class ChangeSeries:
    service: str
    op: str
    type: str
    result: str


@dataclass(frozen=True, slots=True, order=True)
class EscapeSeries:
    service: str
    type: str


UNKNOWN_TYPE = "unknown"  # a refused setns on a descriptor whose type nothing named


class NamespaceTotals:
    """Per-service totals from ns_counts (auditd/signals/totals.py keeps them exact across cgroup
    removal). A call that changes several types counts once for each."""

    def __init__(
        self, source: CounterSource[Any], resolver: CgroupResolver, services: LabelCap
    ) -> None:
        def series(key: CounterKeyLike, n: int) -> list[tuple[ChangeSeries | EscapeSeries, int]]:
            service = services(resolver.service(key.cgroup_id))
            op = OPS[key.op].value if key.op < len(OPS) else f"op_{key.op}"
            result = "success" if key.errno == 0 else errno_name(key.errno)
            names: list[ChangeSeries | EscapeSeries] = [
                ChangeSeries(service, op, name, result)
                for name in [t.value for t in types_of(key.types)] or [UNKNOWN_TYPE]
            ]
            names += [EscapeSeries(service, t.value) for t in types_of(key.escaped)]
            return [(name, n) for name in names]

        self._totals: KernelTotals[Any, ChangeSeries | EscapeSeries] = KernelTotals(
            source, resolver, series
        )

    def snapshot(self) -> tuple[dict[ChangeSeries, int], dict[EscapeSeries, int]]:
        """Current totals. Blocks on a kernel map read (call off the event loop)."""
        totals = self._totals.snapshot()
        changes = {k: n for k, n in totals.items() if isinstance(k, ChangeSeries)}
        escapes = {k: n for k, n in totals.items() if isinstance(k, EscapeSeries)}
        return changes, escapes

    def unattributed(self) -> int:
        return self._totals.unattributed()

    def retire_removed(self) -> int:
        """Fold counters of removed cgroups into retired totals; returns the keys retired."""
        return self._totals.retire_removed()
