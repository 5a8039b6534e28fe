"""LSM causes for denials: Landlock and SELinux audit records joined to the syscall refusal.

The kernel's BPF probe sees a refusal at sys_exit but not which LSM refused; Landlock and
SELinux say so only in audit records, which arrive on their own path, a little before or after
the probe's record. Both sides wait a moment for each other: a refusal whose cause the kernel
could not name (`dac_or_other`) and an LSM audit event for the same process, syscall and result
become one Denial with `source=landlock` (or `selinux`), `cause=landlock:<rights>` and the LSM's
own detail.

The LSM writes a record for every denial; the probe sends one record per (process, syscall,
errno, target) per dedup window and counts the rest as repeats. So an audit event that finds no
refusal is usually such a repeat: when a join for the same process, syscall, result, cause and
target happened within the window, it is absorbed (its refusal is in the next record's
`repeats` or in a summary, which gets the joined cause too). Otherwise (a syscall that is not
hooked, a refusal the policy keeps in the kernel) it becomes a Denial of its own, deduplicated
the same way. `bpf_auditd_lsm_denials_total` counts every LSM audit record, under the service
of the refusal it joined (the probe's record carries the cgroup, so a process that is already
gone is still attributed), else of the process as /proc or an earlier refusal tells.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from auditd.audit.records import AuditEvent, Avc, LandlockAccess, LandlockDomain
from auditd.model.event import Source
from auditd.signals.denials.event import Denial
from exporters.families import Family, counter

LSM_DENIALS = counter(
    "lsm_denials",
    "Denials reported by an LSM's audit records (Landlock, SELinux), by access right: one per "
    "record and right named, under the service of the refusal it joined.",
    "service",
    "lsm",
    "access",
)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Recent(Generic[K, V]):
    """At most `limit` keys, each valid for `ttl` seconds after it was last put (an LRU: the
    stalest goes first when full)."""

    def __init__(self, limit: int, ttl: float, clock: Callable[[], float]) -> None:
        self.limit, self._ttl, self._clock = limit, ttl, clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]


@dataclass(slots=True)
class _Held:
    denial: Denial
    deadline: float
    rights: tuple[str, ...] = ()  # an LSM claim's access rights (what it counts under)


@dataclass(frozen=True, slots=True)
class _Key:
    pid: int
    syscall: str
    errno: int


class _Waiting:
    """Refusals or LSM claims waiting for their other half, by key, oldest first."""

    def __init__(self) -> None:
        self._by_key: OrderedDict[_Key, list[_Held]] = OrderedDict()
        self.size = 0

    def add(self, key: _Key, held: _Held) -> None:
        self._by_key.setdefault(key, []).append(held)
        self.size += 1

    def pop(self, key: _Key) -> _Held | None:
        waiting = self._by_key.get(key)
        if not waiting:
            return None
        held = waiting.pop(0)
        if not waiting:
            del self._by_key[key]
        self.size -= 1
        return held

    def pop_oldest(self) -> _Held:
        key = next(iter(self._by_key))
        held = self.pop(key)
        assert held is not None
        return held

    def expire(self, now: float, everything: bool) -> list[_Held]:
        """Those whose wait is over (all with `everything`), in arrival order per key."""
        out: list[_Held] = []
        for key in list(self._by_key):
            keep: list[_Held] = []
            for held in self._by_key[key]:
                (out if everything or held.deadline <= now else keep).append(held)
            if keep:
                self._by_key[key] = keep
            else:
                del self._by_key[key]
        self.size -= len(out)
        return out


@dataclass(frozen=True, slots=True)
class _Cause:
    """What a join learned: the LSM's words, and the refusal's cgroup."""

    source: Source
    cause: str
    detail: tuple[tuple[str, str], ...]
    cgroup_id: int


class LsmCorrelator:
    """Joins refusals and LSM audit events. Single-threaded: call from the event loop (the
    scrape thread only reads `families`). Every table holds at most `limit` entries: beyond it
    the oldest waiting refusal or claim is released at once (counted in `held_overflow`), and
    the stalest remembered key is forgotten."""

    def __init__(
        self,
        *,
        wait: float = 0.1,
        window: float = 10.0,
        cgroup_of_pid: Callable[[int], int | None] = lambda pid: None,
        service_of_cgroup: Callable[[int], str] = lambda cgroup_id: "unknown",
        services: Callable[[str], str] = lambda service: service,
        clock: Callable[[], float] = time.monotonic,
        limit: int = 4096,
    ) -> None:
        self._wait = wait
        self._clock = clock
        self._limit = limit
        self._held = _Waiting()  # refusals from the probe
        self._claims = _Waiting()  # LSM-made, waiting too
        # Lone LSM denials sent within the window (they are deduplicated like the probe's).
        self._recent: _Recent[tuple[object, ...], bool] = _Recent(limit, window, clock)
        # Joins within the window, by the LSM's view (pid, syscall, errno, cause, LSM target):
        # a later audit event of the same is a repeat the probe deduplicated.
        self._joined: _Recent[tuple[object, ...], _Cause] = _Recent(limit, window, clock)
        # ... and by the probe's view (pid, syscall, errno, probe target): its summaries, which
        # come a window after the last record, at the next housekeeping pass.
        self._causes: _Recent[tuple[object, ...], _Cause] = _Recent(limit, window + 300, clock)
        # pid → cgroup of recent refusals: attributes audit events of processes already gone.
        self._pids: _Recent[int, int] = _Recent(limit, window, clock)
        self._cgroup_of_pid = cgroup_of_pid
        self._service_of_cgroup = service_of_cgroup
        self._services = services  # the label cap: `counts` stays bounded
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.held_overflow = 0

    def sizes(self) -> dict[str, int]:
        """Entries per table (each at most `limit`, the waiting ones released early beyond)."""
        return {
            "held": self._held.size,
            "claims": self._claims.size,
            "recent": len(self._recent),
            "joined": len(self._joined),
            "causes": len(self._causes),
            "pids": len(self._pids),
        }

    # -- refusals from the BPF probe ---------------------------------------------------------

    def hold(self, denial: Denial) -> Denial | None:
        """The denial, or None when it waits for a possible LSM record (see `expire`)."""
        if denial.pid and denial.cgroup_id:
            self._pids.put(denial.pid, denial.cgroup_id)
        if denial.summary:  # repeats of a refusal: the cause its joined record had
            cause = self._causes.get(_refusal_key(denial))
            return denial if cause is None else _with_cause(denial, cause)
        # Refusals whose LSM the kernel could not name, and SELinux ones (the probe knows it was
        # SELinux; the AVC record says which rights): both wait for the audit record.
        if denial.cause not in ("dac_or_other", "selinux"):
            return denial
        key = _Key(denial.pid, denial.syscall, denial.errno)
        claim = self._claims.pop(key)
        if claim is not None:  # the audit record came first
            return self._join(denial, claim)
        if self._held.size >= self._limit:
            self.held_overflow += 1  # no room to wait: released now, unjoined (not lost)
            return denial
        self._held.add(key, _Held(denial, self._clock() + self._wait))
        return None

    def expire(self, *, everything: bool = False) -> list[Denial]:
        """Refusals whose wait is over (all of them when stopping): no LSM claimed them; and
        LSM events no refusal joined: repeats are absorbed, the rest become denials."""
        now = self._clock()
        out = [held.denial for held in self._held.expire(now, everything)]
        for held in self._claims.expire(now, everything):
            out += self._unjoined(held)
        return out

    def _unjoined(self, held: _Held) -> list[Denial]:
        """An LSM claim no refusal joined: absorbed as a repeat of a recent join, or a denial
        of its own (unless one like it went out within the window)."""
        claim = held.denial
        joined = self._joined.get(_claim_key(claim))
        if joined is not None:  # a repeat: its refusal is in a record's `repeats`
            self._count(claim, held.rights, claim.cgroup_id or joined.cgroup_id)
            return []
        self._count(claim, held.rights, claim.cgroup_id)
        key = (claim.pid, claim.syscall, claim.errno, claim.cause, claim.target)
        if self._recent.get(key) is not None:
            return []
        self._recent.put(key, True)
        return [claim]

    # -- audit events ------------------------------------------------------------------------

    def on_audit(self, event: AuditEvent) -> list[Denial]:
        """Denials the event explains: joined to a held refusal (else it waits for one)."""
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
        claim = Denial(
            time_ns=event.time_ns,
            pid=pid,
            tid=pid,
            ppid=(syscall.ppid or 0) if syscall else 0,
            uid=(syscall.uid or 0) if syscall else 0,
            gid=(syscall.gid or 0) if syscall else 0,
            comm=(syscall.comm or "") if syscall else "",
            cgroup_id=self._cgroup_of(pid),
            source=lsm,
            syscall=name,
            errno=errno,
            target=target,
            cause=cause,
            detail=detail,
            exe=syscall.exe if syscall else None,
        )
        waiting = _Held(claim, self._clock() + self._wait, tuple(rights))
        key = _Key(pid, name, errno)
        held = self._held.pop(key)
        if held is not None:
            return [self._join(held.denial, waiting)]
        # The probe's record may still be on its way: wait for it as it would for us.
        out = []
        if self._claims.size >= self._limit:
            self.held_overflow += 1  # no room: the oldest claim stops waiting now
            out = self._unjoined(self._claims.pop_oldest())
        self._claims.add(key, waiting)
        return out

    def families(self) -> list[Family]:
        samples: dict[tuple[str, ...], float] = dict(list(self.counts.items()))
        return [LSM_DENIALS.with_samples(samples)]

    # -- internals ---------------------------------------------------------------------------

    def _cgroup_of(self, pid: int) -> int:
        """The cgroup of a process an audit record names: from a recent refusal of it, else
        from /proc while it lives; 0 when neither knows."""
        if not pid:
            return 0
        known = self._pids.get(pid)
        return known if known is not None else self._cgroup_of_pid(pid) or 0

    def _join(self, refusal: Denial, waiting: _Held) -> Denial:
        claim = waiting.denial
        merged = _merge(refusal, claim)
        cause = _Cause(merged.source, merged.cause, claim.detail, refusal.cgroup_id)
        self._joined.put(_claim_key(claim), cause)
        self._causes.put(_refusal_key(refusal), cause)
        self._count(claim, waiting.rights, refusal.cgroup_id)
        return merged

    def _count(self, claim: Denial, rights: tuple[str, ...], cgroup_id: int) -> None:
        service = self._services(self._service_of_cgroup(cgroup_id))
        for right in rights or ("unknown",):
            self.counts[service, claim.source.value, right] += 1

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


def _claim_key(claim: Denial) -> tuple[object, ...]:
    return (claim.pid, claim.syscall, claim.errno, claim.cause, claim.target)


def _refusal_key(refusal: Denial) -> tuple[object, ...]:
    return (refusal.pid, refusal.syscall, refusal.errno, refusal.target)


def _merge(refusal: Denial, claim: Denial) -> Denial:
    """The probe's refusal (exact process fields, cgroup) with the LSM's cause and detail."""
    return dataclasses.replace(
        refusal,
        source=claim.source,
        cause=claim.cause,
        detail=refusal.detail + claim.detail,
        target=refusal.target or claim.target,
    )


def _with_cause(summary: Denial, cause: _Cause) -> Denial:
    return dataclasses.replace(
        summary,
        source=cause.source,
        cause=cause.cause,
        detail=summary.detail + cause.detail,
    )


def _address(access: LandlockAccess) -> str | None:
    if access.address is None:
        return None
    host = f"[{access.address}]" if ":" in access.address else access.address
    return f"{host}:{access.port}" if access.port is not None else host
