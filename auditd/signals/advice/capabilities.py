"""Successful capability checks, told apart by who made them: a real use of the privilege, a
silent no-audit probe, or unknown.

`capability:cap_capable` fires for every check, the overcommit accounting's included (each
accountable mmap asks for CAP_SYS_ADMIN without auditing, and does not need it). Only the
callers say which kind a check was (the kernel's own split between `ns_capable` and
`ns_capable_noaudit`, kernel/capability.c and security/commoncap.c); the probe keeps the three
return addresses below cap_capable. A caller outside the lists below is reported as unknown,
never silently one or the other.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from auditd.model.capabilities import capability_name
from probes import advise as probe


class Certainty(enum.StrEnum):
    CERTAIN = "certain"  # an audited check that granted: the privilege was used
    PROBE = "probe"  # a no-audit check: the caller asked whether, it did not need it
    UNKNOWN = "unknown"  # the callers are not known: neither proven nor ruled out


# cap_capable(..., CAP_OPT_NOAUDIT) called directly: the overcommit check (a tail call, so its
# caller security_vm_enough_memory_mm is the frame seen).
NOAUDIT_DIRECT = frozenset({"security_vm_enough_memory_mm", "cap_vm_enough_memory"})
# security_capable(..., CAP_OPT_NOAUDIT) callers.
NOAUDIT_VIA_SECURITY = frozenset(
    {
        "ns_capable_noaudit",
        "has_ns_capability_noaudit",
        "has_capability_noaudit",
        "ptracer_capable",
        "kallsyms_show_value",
    }
)
# security_capable(..., CAP_OPT_NONE or CAP_OPT_INSETID) callers: audited checks.
AUDITED_VIA_SECURITY = frozenset(
    {
        "ns_capable",
        "capable",
        "ns_capable_setid",
        "file_ns_capable",
        "has_ns_capability",
        "has_capability",
        "capable_wrt_inode_uidgid",
    }
)
# commoncap's own audited calls of cap_capable: capset's CAP_SETPCAP, prctl securebits, an mmap
# below mmap_min_addr.
AUDITED_DIRECT = frozenset({"cap_capset", "cap_task_prctl", "cap_mmap_addr"})


def function_of(symbol: str) -> str:
    """`ns_capable` from `ns_capable+0x2b` (or `func.cold+0x5`); hex addresses stay as they are."""
    name = symbol.split("+", 1)[0].split(" ", 1)[0]
    return name.removesuffix(".cold")


def classify(callers: Sequence[str]) -> tuple[Certainty, str]:
    """The kind of check and the caller that decides it, from the functions below cap_capable
    (nearest first)."""
    if not callers:
        return Certainty.UNKNOWN, "(callers unknown)"
    first = callers[0]
    if first in NOAUDIT_DIRECT:
        return Certainty.PROBE, first
    if first in AUDITED_DIRECT:
        return Certainty.CERTAIN, first
    if first == "security_capable" and len(callers) > 1:
        second = callers[1]
        if second in NOAUDIT_VIA_SECURITY:
            return Certainty.PROBE, second
        if second in AUDITED_VIA_SECURITY:
            return Certainty.CERTAIN, second
        return Certainty.UNKNOWN, second
    return Certainty.UNKNOWN, first


@dataclass(frozen=True, slots=True)
class CapabilityCheck:
    """Successful checks of one capability by one chain of callers in one cgroup."""

    cgroup_id: int
    capability: str
    certainty: Certainty
    via: str  # the caller that decided the certainty
    call_site: str  # the furthest caller kept: where in the kernel it was asked for
    count: int
    first_ns: int  # wall clock
    last_ns: int


def checks(
    raw: Iterable[tuple[probe.CapKey, probe.Seen]],
    symbol: Callable[[int], str],
    mono_to_wall_ns: int,
) -> list[CapabilityCheck]:
    """The probe's map, classified (`symbol` names a kernel address)."""
    found = []
    for key, seen in raw:
        callers = [function_of(symbol(a)) for a in key.caller if a] if key.located else []
        certainty, via = classify(callers)
        found.append(
            CapabilityCheck(
                cgroup_id=key.cgroup,
                capability=capability_name(key.cap),
                certainty=certainty,
                via=via,
                call_site=symbol(key.caller[-1]) if key.located and key.caller[-1] else "",
                count=seen.count,
                first_ns=seen.first_ns + mono_to_wall_ns,
                last_ns=seen.last_ns + mono_to_wall_ns,
            )
        )
    return found
