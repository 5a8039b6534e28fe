"""Namespace monitor: the probes of namespaces.bpf.c, PID 1's namespaces for escape checks, the
per-service totals, and repeats accounted (records deduplicated in the kernel)."""

from __future__ import annotations

import ctypes
import time
from typing import Any

import structlog

from auditd.config.schema import NamespaceProbeConfig
from auditd.kernel.cgroups import CgroupResolver
from auditd.kernel.context import KernelContext
from auditd.model.labels import LabelCap
from auditd.signals.monitor import Monitor
from auditd.signals.namespaces import decode as decoding
from auditd.signals.namespaces.event import TYPES, NamespaceChange
from auditd.signals.namespaces.identity import NamespaceIdentity
from auditd.signals.namespaces.repeats import RepeatAccountant
from auditd.signals.namespaces.totals import NamespaceTotals
from exporters.families import Family, counter
from probes import namespaces as probe
from probes.perf import has_tracepoint
from probes.runtime import ProbeSet, ProbeSpec

# Per-thread entries older than this belong to threads that never returned from the call.
PENDING_MAX_AGE_NS = 60 * 1_000_000_000

CHANGES = counter(
    "namespace_changes",
    "setns/unshare/clone/clone3 calls that asked for or made a namespace change, per namespace "
    "type (a call on several types counts for each), counted exactly in the kernel.",
    "service",
    "op",
    "type",
    "result",
)
ESCAPES = counter(
    "namespace_escapes",
    "Namespace changes from a namespace that was not the host's (PID 1's) into the host's.",
    "service",
    "type",
)
UNATTRIBUTED = counter(
    "namespace_changes_unattributed",
    "Namespace changes counted after the kernel counter map was full: in no labelled series.",
)
FLAG_FAULTS = counter(
    "namespace_flag_read_faults",
    "clone3 calls whose flags could not be read from user memory: at entry (read again at "
    "exit), or at exit too (types then come from the inodes that changed).",
    "stage",
)


def _unshare_nothing() -> None:
    """unshare(0): a no-op for the caller, and the probe's cue to read PID 1's namespaces."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare(0)


class NamespaceMonitor(Monitor):
    name = "namespaces"

    def __init__(
        self,
        config: NamespaceProbeConfig,
        resolver: CgroupResolver,
        services: LabelCap,
        identity: NamespaceIdentity | None = None,
    ) -> None:
        self.config = config
        self._resolver = resolver
        self._services = services
        # Whose namespace it is: the host's for escape checks (set in `bind`), owners for
        # enrichment, which shares this object.
        self.identity = identity if identity is not None else NamespaceIdentity()
        self.totals: NamespaceTotals | None = None
        self._counters: probe.NamespaceCounters | None = None
        self._pending: Any = None
        self._recent: Any = None
        # Twice the kernel's LRU: a key is forgotten here only after the kernel forgot it.
        self.accountant = RepeatAccountant(2 * config.recent_entries)
        self._loaded = False
        self._log = structlog.get_logger("bpf-auditd")

    def probe_specs(self, kernel: KernelContext) -> list[ProbeSpec]:
        tracefs = kernel.tracefs
        if tracefs is None:
            self._log.error("namespace_probe_off", reason="tracefs is not mounted")
            return []
        syscalls = [
            name
            for name in probe.SYSCALLS
            if all(
                has_tracepoint(tracefs, "syscalls", f"sys_{end}_{name}")
                for end in ("enter", "exit")
            )
        ]
        if missing := sorted(set(probe.SYSCALLS) - set(syscalls)):
            self._log.warning("namespace_syscalls_untraced", syscalls=missing)
        attach = probe.tracepoints(syscalls)
        problems = [p for _, tp in attach if (p := probe.check_tracepoint(tracefs, tp))]
        if problems:
            self._log.error("namespace_probe_off", reason="; ".join(problems))
            return []
        if not kernel.plan.struct_reads:
            # Calls, flags and results are still reported; inodes, child pids and escapes need
            # struct layouts this kernel does not offer.
            self._log.warning("namespace_inodes_off", reason=kernel.plan.reason)
        elif "-DAUDITD_HAVE_FILE_READS=0" in kernel.plan.cflags:
            self._log.warning(
                "namespace_targets_off",
                reason="kernel BTF lacks a field of the file table (auditd/kernel/offsets.py "
                "OPTIONAL): setns targets are not read; the inodes after the call tell where it "
                "went",
            )
        self._loaded = True
        offset = kernel.mono_to_wall_ns
        accountant = self.accountant

        def on_record(data: bytes) -> NamespaceChange:
            # On the reader thread: decode (pure), then account the kernel's repeat count.
            return accountant.on_record(decoding.decode(data, offset))

        return [
            ProbeSpec(
                name=self.name,
                source=probe.SOURCE,
                ringbuf="ns_events",
                drops="ns_drops",
                decode=on_record,
                cflags=(
                    f"-DNS_COUNTER_ENTRIES={self.config.counter_entries}",
                    f"-DNS_PENDING_ENTRIES={self.config.pending_entries}",
                    f"-DNS_RECENT_ENTRIES={self.config.recent_entries}",
                    f"-DNS_WINDOW_NS={int(self.config.window * 1e9)}ULL",
                ),
                tracepoints=attach,
                raw_tracepoints=probe.RAW_TRACEPOINTS if kernel.plan.struct_reads else (),
            )
        ]

    def bind(self, probes: ProbeSet) -> None:
        if not self._loaded:
            return
        self._counters = probe.NamespaceCounters(
            probes.table("ns_counts"), probes.table("ns_overflow"), probes.table("ns_faults")
        )
        self.totals = NamespaceTotals(self._counters, self._resolver, self._services)
        self._pending = probes.table("ns_pending")
        self._recent = probes.table("ns_recent")
        host_table = probe.HostTable(probes.table("ns_host_table"))
        _unshare_nothing()
        inodes = host_table.read()
        if inodes is not None:
            self.identity.set_host(dict(zip(TYPES, inodes, strict=True)))
            return
        # The probe could not read PID 1's task (no struct layouts): /proc may still tell.
        host = self.identity.read_host()
        if len(host) == len(TYPES):
            host_table.write(host[t] for t in TYPES)
            self.identity.set_host(host)
        else:
            self._log.warning(
                "namespace_escapes_off",
                reason="the host's (PID 1's) namespaces are unknown: neither its task nor "
                f"{self.identity.proc}/1/ns could be read",
            )

    def declared(self) -> list[Family]:
        return [CHANGES, ESCAPES, UNATTRIBUTED, FLAG_FAULTS]

    def families(self) -> list[Family]:
        if self.totals is None or self._counters is None:
            return self.declared()
        changes, escapes = self.totals.snapshot()
        faults = self._counters.faults()
        return [
            CHANGES.with_samples(
                {(s.service, s.op, s.type, s.result): n for s, n in sorted(changes.items())}
            ),
            ESCAPES.with_samples({(s.service, s.type): n for s, n in sorted(escapes.items())}),
            UNATTRIBUTED.with_samples({(): self.totals.unattributed()}),
            FLAG_FAULTS.with_samples(
                {
                    ("entry",): faults[probe.FAULT_ENTRY],
                    ("exit",): faults[probe.FAULT_EXIT],
                }
            ),
        ]

    def housekeeping(self) -> list[NamespaceChange]:
        """Retire removed cgroups' counters, prune stale per-thread entries and dead owners;
        summarize floods that stopped inside a window."""
        if self.totals is None:
            return []
        self.totals.retire_removed()
        probe.prune_pending(self._pending, time.monotonic_ns() - PENDING_MAX_AGE_NS)
        self.identity.forget_dead()
        recent = probe.read_recent(self._recent)
        window_ns = int(self.config.window * 1e9)
        return self.accountant.summaries(recent, time.monotonic_ns(), window_ns)
