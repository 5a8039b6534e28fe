"""The `AllocationStats` event: a service's kernel allocations over one housekeeping window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from auditd.model.event import Event


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocationStats(Event):
    """A service's kernel allocations over one window (a housekeeping interval): for policy
    thresholds on rate and outstanding bytes, and for learning a service's envelope."""

    kind: ClassVar[str] = "allocation_stats"
    probe: ClassVar[str] = "allocations"
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "time_ns", "window", "allocations_per_s", "bytes_per_s", "page_bytes_per_s",
            "outstanding_bytes", "top_call_site", "cgroup_id", "cgroup", "service",
        }
    )  # fmt: skip

    # time_ns: wall clock at the end of the window; cgroup_id: the service's busiest cgroup in
    # the window (a service may span several).
    window: float  # seconds
    allocations_per_s: float  # kmalloc + slab objects, exact
    bytes_per_s: float  # their allocated bytes, exact
    page_bytes_per_s: float  # page allocator, exact
    # Kernel bytes allocated for the service since the daemon started and not yet freed,
    # estimated from sampled addresses; None when outstanding tracking is off.
    outstanding_bytes: int | None
    top_call_site: str | None  # the sampled call site with most bytes in the window

    def log_fields(self) -> dict[str, object]:
        return {
            "time_ns": self.time_ns,
            "window": round(self.window, 3),
            "allocations_per_s": round(self.allocations_per_s, 1),
            "bytes_per_s": round(self.bytes_per_s, 1),
            "page_bytes_per_s": round(self.page_bytes_per_s, 1),
            "outstanding_bytes": self.outstanding_bytes,
            "top_call_site": self.top_call_site,
            "cgroup_id": self.cgroup_id,
            "cgroup": self.cgroup,
            "service": self.service,
        }
