"""What every monitored kernel signal (denials, allocations, namespaces) plugs into the daemon."""

from __future__ import annotations

import abc
from typing import Any

from auditd.telemetry import Family
from probes.runtime import ProbeSet, ProbeSpec


class Monitor(abc.ABC):
    """One kernel signal: its probes, the kernel state it reads, and the metrics it exports."""

    name: str

    @abc.abstractmethod
    def probe_specs(self, mono_to_wall_ns: int) -> list[ProbeSpec]:
        """The probes to compile; `mono_to_wall_ns` turns bpf_ktime_get_ns() into wall time."""

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
