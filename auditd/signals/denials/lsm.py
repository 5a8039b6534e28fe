"""LSM causes for denials: Landlock and SELinux audit records joined to the syscall refusal.

The kernel's BPF probe sees a refusal at sys_exit but not which LSM refused; Landlock and
SELinux say so only in audit records, which arrive on their own path, a little before or after
the probe's record. Both sides wait a moment for each other: a refusal whose cause the kernel
could not name (`dac_or_other`) and an LSM audit event for the same process, syscall and result
become one Denial with `source=landlock` (or `selinux`), `cause=landlock:<rights>` and the LSM's
own detail. An audit event with no refusal to join (a syscall that is not hooked, or a repeat
the kernel deduplicated) becomes a Denial of its own, deduplicated the same way.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from auditd.audit.records import AuditEvent, Avc, LandlockAccess, LandlockDomain
from auditd.model.event import Source
from auditd.model.labels import LabelCap
from auditd.signals.denials.event import Denial
from exporters.families import Family, counter

LSM_DENIALS = counter(
    "lsm_denials",
    "Denials reported by an LSM's audit records (Landlock, SELinux), by access right.",
    "service",
    "lsm",
    "access",
)


@dataclass(slots=True)
class _Held:
    denial: Denial
    deadline: float


@dataclass(frozen=True, slots=True)
class _Key:
    pid: int
    syscall: str
    errno: int


class LsmCorrelator:
    """Joins refusals and LSM audit events. Single-threaded: call from the event loop."""

    def __init__(
        self,
        *,
        wait: float = 0.1,
        window: float = 10.0,
        cgroup_of_pid: Callable[[int], int | None] = lambda pid: None,
        service_of_cgroup: Callable[[int], str] = lambda cgroup_id: "unknown",
        clock: Callable[[], float] = time.monotonic,
        limit: int = 4096,
    ) -> None:
        self._wait = wait
        self._window = window
        self._clock = clock
        self._limit = limit
        self._held: OrderedDict[_Key, list[_Held]] = OrderedDict()  # refusals from the probe
        self._claims: OrderedDict[_Key, list[_Held]] = OrderedDict()  # LSM-made, waiting too
        self._recent: OrderedDict[tuple[object, ...], float] = OrderedDict()
        self._cgroup_of_pid = cgroup_of_pid
        self._service_of_cgroup = service_of_cgroup
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.held_overflow = 0

    # -- refusals from the BPF probe ---------------------------------------------------------

    def hold(self, denial: Denial) -> Denial | None:
        """The denial, or None when it waits for a possible LSM record (see `expire`)."""
        # Refusals whose LSM the kernel could not name, and SELinux ones (the probe knows it was
        # SELinux; the AVC record says which rights): both wait for the audit record.
        if denial.cause not in ("dac_or_other", "selinux") or denial.summary:
            return denial
        key = _Key(denial.pid, denial.syscall, denial.errno)
        claim = _pop(self._claims, key)
        if claim is not None:  # the audit record came first
            return _merge(denial, claim)
        self._held.setdefault(key, []).append(_Held(denial, self._clock() + self._wait))
        if sum(len(v) for v in self._held.values()) > self._limit:
            self.held_overflow += 1  # released early, not lost
        return None

    def expire(self, *, everything: bool = False) -> list[Denial]:
        """Refusals whose wait is over (all of them when stopping): no LSM claimed them."""
        out = self._expire(self._held, everything)
        for claim in self._expire(self._claims, everything):
            key = (claim.pid, claim.syscall, claim.errno, claim.cause, claim.target)
            if not self._repeat(key):
                out.append(claim)
        return out

    def _expire(self, table: OrderedDict[_Key, list[_Held]], everything: bool) -> list[Denial]:
        now = self._clock()
        out: list[Denial] = []
        total = sum(len(v) for v in table.values())
        for key in list(table):
            keep = []
            for held in table[key]:
                if everything or held.deadline <= now or total > self._limit:
                    out.append(held.denial)
                    total -= 1
                else:
                    keep.append(held)
            if keep:
                table[key] = keep
            else:
                del table[key]
        return out

    # -- audit events ------------------------------------------------------------------------

    def on_audit(self, event: AuditEvent) -> list[Denial]:
        """Denials the event explains: joined to a held refusal, or on their own."""
        access = event.first(LandlockAccess)
        avc = next((a for a in event.all(Avc) if a.denied), None)
        if access is None and avc is None:
            return []
        syscall = event.syscall
        pid = event.pid or 0
        errno = -(syscall.exit or 0) if syscall and syscall.exit and syscall.exit < 0 else 0
        name = (syscall.name if syscall else None) or "none"
        if access is not None:
            lsm, rights = Source.LANDLOCK, access.blockers
            detail = self._landlock_detail(access, event.first(LandlockDomain))
            target = access.path or _address(access) or ""
        else:
            assert avc is not None
            lsm, rights = Source.SELINUX, tuple(avc.permissions)
            detail = tuple(
                (k, str(v))
                for k, v in (
                    ("lsm", "selinux"),
                    ("scontext", avc.scontext),
                    ("tcontext", avc.tcontext),
                    ("tclass", avc.tclass),
                    ("permissive", avc.permissive),
                )
                if v is not None
            )
            target = avc.target or ""
        cause = f"{lsm.value}:{','.join(rights)}" if rights else lsm.value
        cgroup_id = self._cgroup_of_pid(pid) or 0
        service = self._service_of_cgroup(cgroup_id)
        for right in rights or ("unknown",):
            self.counts[service, lsm.value, right] += 1

        key = _Key(pid, name, errno)
        claim = Denial(
            time_ns=event.time_ns,
            pid=pid,
            tid=pid,
            ppid=(syscall.ppid or 0) if syscall else 0,
            uid=(syscall.uid or 0) if syscall else 0,
            gid=(syscall.gid or 0) if syscall else 0,
            comm=(syscall.comm or "") if syscall else "",
            cgroup_id=cgroup_id,
            source=lsm,
            syscall=name,
            errno=errno,
            target=target,
            cause=cause,
            detail=detail,
            exe=syscall.exe if syscall else None,
        )
        held = _pop(self._held, key)
        if held is not None:
            return [_merge(held, claim)]
        # The probe's record may still be on its way: wait for it as it would for us.
        self._claims.setdefault(key, []).append(_Held(claim, self._clock() + self._wait))
        return []

    def families(self, services: LabelCap) -> list[Family]:
        samples: Counter[tuple[str, ...]] = Counter()
        for (service, lsm, right), n in list(self.counts.items()):
            samples[services(service), lsm, right] += n
        return [LSM_DENIALS.with_samples(dict(samples))]

    # -- internals ---------------------------------------------------------------------------

    def _repeat(self, key: tuple[object, ...]) -> bool:
        now = self._clock()
        last = self._recent.get(key)
        if last is not None and now - last < self._window:
            return True
        self._recent[key] = now
        self._recent.move_to_end(key)
        while len(self._recent) > self._limit:
            self._recent.popitem(last=False)
        return False

    @staticmethod
    def _landlock_detail(
        access: LandlockAccess, domain: LandlockDomain | None
    ) -> tuple[tuple[str, str], ...]:
        detail = [("lsm", "landlock"), ("blockers", ",".join(access.blockers))]
        if access.domain is not None:
            detail.append(("domain", f"{access.domain:x}"))
        if domain is not None and domain.pid is not None:
            detail.append(("domain_creator_pid", str(domain.pid)))
        return tuple(detail)


def _pop(table: OrderedDict[_Key, list[_Held]], key: _Key) -> Denial | None:
    waiting = table.get(key)
    if not waiting:
        return None
    held = waiting.pop(0)
    if not waiting:
        del table[key]
    return held.denial


def _merge(refusal: Denial, claim: Denial) -> Denial:
    """The probe's refusal (exact process fields, cgroup) with the LSM's cause and detail."""
    return dataclasses.replace(
        refusal,
        source=claim.source,
        cause=claim.cause,
        detail=refusal.detail + claim.detail,
        target=refusal.target or claim.target,
    )


def _address(access: LandlockAccess) -> str | None:
    if access.address is None:
        return None
    host = f"[{access.address}]" if ":" in access.address else access.address
    return f"{host}:{access.port}" if access.port is not None else host
