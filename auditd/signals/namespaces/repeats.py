"""Repeats of a namespace change within its dedup window (namespaces.bpf.c counts them; the
shared accountant, fed decoded records)."""

from __future__ import annotations

from auditd.signals import repeats
from auditd.signals.namespaces.decode import Decoded
from auditd.signals.namespaces.event import NamespaceChange
from probes.namespaces import DedupKey


class RepeatAccountant(repeats.RepeatAccountant[DedupKey, NamespaceChange]):
    def on_record(self, decoded: Decoded) -> NamespaceChange:
        return self.account(decoded.key, decoded.seen, decoded.change)
