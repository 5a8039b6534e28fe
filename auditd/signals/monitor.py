"""What every monitored kernel signal (denials, allocations, namespaces) plugs into the daemon."""

from __future__ import annotations

import abc
from collections.abc import Iterable

from auditd.kernel.context import KernelContext
from auditd.model.event import Event
from auditd.model.filter import KernelFilter
from exporters.families import Family
from probes.runtime import ProbeSet, ProbeSpec


class Monitor(abc.ABC):
    """One kernel signal: its probes, the kernel state it reads, and the metrics it exports."""

    name: str

    @abc.abstractmethod
    def probe_specs(self, kernel: KernelContext) -> list[ProbeSpec]:
        """The probes to compile on this kernel."""

    def bind(self, probes: ProbeSet) -> None:  # noqa: B027 - optional hook
        """After load: take the kernel tables this monitor reads."""

    def apply_filter(self, f: KernelFilter) -> None:  # noqa: B027 - optional hook
        """Push the policy's ignore list into this monitor's kernel filter maps, so ignored
        events are still counted but never sent as records. Called after `bind` and whenever
        the filter changes (policy reload, a new cgroup of an ignored service); on the event
        loop, so keep it to map updates. Without it, user space drops and counts them."""

    @abc.abstractmethod
    def declared(self) -> list[Family]:
        """Every family `families()` yields, without samples (registration must not read maps)."""

    @abc.abstractmethod
    def families(self) -> list[Family]:
        """Current values. Called from the exporter's thread at scrape time; may block."""

    def housekeeping(self) -> Iterable[Event] | None:
        """Periodic blocking upkeep, run in an executor (e.g. retiring removed cgroups).

        Events it returns (summaries, periodic stats) go through the pipeline like records
        from the kernel: enriched, logged, evaluated by the policy."""
        return None
