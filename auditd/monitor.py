"""What every monitored kernel signal (denials, allocations, namespaces) plugs into the daemon."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from auditd.offsets import OffsetPlan
from auditd.paths import KernelPaths
from auditd.telemetry import Family
from probes.runtime import ProbeSet, ProbeSpec


@dataclass(frozen=True, slots=True)
class KernelContext:
    """What monitors may know about the kernel when they choose their probes."""

    paths: KernelPaths
    plan: OffsetPlan  # struct offsets: from BTF, own headers, or off (plan.reason says why)
    mono_to_wall_ns: int  # add to bpf_ktime_get_ns() for wall-clock nanoseconds


class Monitor(abc.ABC):
    """One kernel signal: its probes, the kernel state it reads, and the metrics it exports."""

    name: str

    @abc.abstractmethod
    def probe_specs(self, kernel: KernelContext) -> list[ProbeSpec]:
        """The probes to compile on this kernel."""

    def bind(self, probes: ProbeSet) -> None:  # noqa: B027 - optional hook
        """After load: take the kernel tables this monitor reads."""

    @abc.abstractmethod
    def declared(self) -> list[Family]:
        """Every family `families()` yields, without samples (registration must not read maps)."""

    @abc.abstractmethod
    def families(self) -> list[Family]:
        """Current values. Called from the exporter's thread at scrape time; may block."""

    def housekeeping(self) -> Any:
        """Periodic blocking upkeep, run in an executor (e.g. retiring removed cgroups)."""
        return None
