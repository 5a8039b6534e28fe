"""Repeats of a refusal within its dedup window (the shared accountant, fed decoded records)."""

from __future__ import annotations

from auditd.signals import repeats
from auditd.signals.denials.decode import Decoded
from auditd.signals.denials.event import Denial
from probes.denials import DedupKey


class RepeatAccountant(repeats.RepeatAccountant[DedupKey, Denial]):
    def on_record(self, decoded: Decoded) -> Denial:
        return self.account(decoded.key, decoded.seen, decoded.denial)
