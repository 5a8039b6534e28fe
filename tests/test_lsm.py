"""Joining refusals to LSM audit events, in either order, without a kernel (clock passed in)."""

from __future__ import annotations

from dataclasses import replace as dataclasses_replace

from auditd.audit.records import AuditEvent, LandlockAccess, Syscall
from auditd.model.event import Source
from auditd.signals.denials.event import Denial
from auditd.signals.denials.lsm import LsmCorrelator


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _refusal(pid: int = 7, cause: str = "dac_or_other") -> Denial:
    return Denial(
        time_ns=1, pid=pid, tid=pid, ppid=1, uid=0, gid=0, comm="cat", cgroup_id=42,
        source=Source.SYSCALL, syscall="openat", errno=13, target="/etc/hostname", cause=cause,
    )  # fmt: skip


def _landlock(pid: int = 7) -> AuditEvent:
    access = LandlockAccess.parse(
        (("domain", "1a2b"), ("blockers", "fs.read_file"), ("path", "/etc/hostname"))
    )
    syscall = Syscall.parse(
        (("arch", "c000003e"), ("syscall", "257"), ("success", "no"), ("exit", "-13"),
         ("pid", str(pid)), ("comm", "cat"))
    )  # fmt: skip
    return AuditEvent(time_ns=5, serial=1, records=(access, syscall), complete=True)


def _correlator(clock: Clock) -> LsmCorrelator:
    return LsmCorrelator(wait=0.1, window=10.0, clock=clock, cgroup_of_pid=lambda pid: 42)


def test_refusal_first_then_audit_is_one_landlock_denial() -> None:
    clock = Clock()
    c = _correlator(clock)
    assert c.hold(_refusal()) is None
    (joined,) = c.on_audit(_landlock())
    assert (joined.source, joined.cause, joined.cgroup_id) == (
        Source.LANDLOCK,
        "landlock:fs.read_file",
        42,
    )
    assert dict(joined.detail)["blockers"] == "fs.read_file"
    clock.now = 1.0
    assert c.expire() == []


def test_audit_first_then_refusal_is_one_landlock_denial() -> None:
    clock = Clock()
    c = _correlator(clock)
    assert c.on_audit(_landlock()) == []
    joined = c.hold(_refusal())
    assert joined is not None
    assert (joined.source, joined.tid, joined.ppid) == (Source.LANDLOCK, 7, 1)
    clock.now = 1.0
    assert c.expire() == []


def test_unclaimed_refusals_and_lone_audit_events_are_released_after_the_wait() -> None:
    clock = Clock()
    c = _correlator(clock)
    assert c.hold(_refusal(pid=1)) is None
    assert c.on_audit(_landlock(pid=2)) == []
    clock.now = 0.05
    assert c.expire() == []
    clock.now = 0.2
    released = sorted(c.expire(), key=lambda d: d.pid)
    assert [(d.pid, d.source) for d in released] == [(1, Source.SYSCALL), (2, Source.LANDLOCK)]
    # A repeat of the lone audit event inside the window is not sent again.
    c.on_audit(_landlock(pid=2))
    clock.now = 0.5
    assert c.expire() == []
    assert c.counts["unknown", "landlock", "fs.read_file"] == 2


def test_refusals_with_a_known_cause_pass_straight_through() -> None:
    c = _correlator(Clock())
    denial = _refusal(cause="capability:CAP_SYS_ADMIN")
    assert c.hold(denial) is denial


def test_selinux_refusal_gets_its_rights_from_the_avc_record() -> None:
    from auditd.audit.records import Avc

    avc = Avc.parse(
        'avc:  denied  { read } for  pid=7 comm="cat" name="shadow" dev="sda1" ino=42 '
        "scontext=user_u:user_r:user_t:s0 tcontext=system_u:object_r:shadow_t:s0 tclass=file "
        "permissive=0"
    )
    assert avc is not None
    syscall = Syscall.parse(
        (("arch", "c000003e"), ("syscall", "257"), ("exit", "-13"), ("pid", "7"))
    )
    event = AuditEvent(time_ns=5, serial=2, records=(avc, syscall), complete=True)
    c = _correlator(Clock())
    refusal = _refusal(cause="selinux")
    assert c.hold(dataclasses_replace(refusal, source=Source.SELINUX)) is None
    (joined,) = c.on_audit(event)
    assert (joined.source, joined.cause) == (Source.SELINUX, "selinux:read")
    assert dict(joined.detail)["tclass"] == "file"


def _attributing(clock: Clock) -> LsmCorrelator:
    # /proc knows nothing (the processes are gone); cgroup 42 is web.service.
    return LsmCorrelator(
        wait=0.1,
        window=10.0,
        clock=clock,
        cgroup_of_pid=lambda pid: None,
        service_of_cgroup=lambda cgroup_id: "web.service" if cgroup_id == 42 else "unknown",
    )


def test_a_process_already_gone_counts_under_its_refusals_service() -> None:
    # Both orders: the count waits for the join, which brings the probe's cgroup.
    clock = Clock()
    c = _attributing(clock)
    assert c.hold(_refusal(pid=1)) is None
    assert len(c.on_audit(_landlock(pid=1))) == 1
    assert c.on_audit(_landlock(pid=2)) == []
    assert c.hold(_refusal(pid=2)) is not None
    clock.now = 1.0
    assert c.expire() == []
    assert c.counts == {("web.service", "landlock", "fs.read_file"): 2}


def test_an_audit_repeat_of_a_joined_refusal_is_absorbed_and_its_summary_gets_the_cause() -> None:
    # The kernel sent one record for two refusals of pid 7 (the second is a repeat in its dedup
    # window, maybe by a new process that reused the pid); Landlock wrote two audit events.
    clock = Clock()
    c = _attributing(clock)
    assert c.hold(_refusal()) is None
    (joined,) = c.on_audit(_landlock())
    assert joined.source is Source.LANDLOCK
    assert c.on_audit(_landlock()) == []  # the repeat: no refusal of its own will come
    clock.now = 1.0
    assert c.expire() == []  # absorbed: not a lone "landlock" line with no service
    assert c.counts == {("web.service", "landlock", "fs.read_file"): 2}
    # The flood stopped: the repeat accountant's summary of that one repeat.
    summary = dataclasses_replace(_refusal(), repeats=1, summary=True)
    released = c.hold(summary)
    assert released is not None
    assert (released.source, released.cause, released.repeats) == (
        Source.LANDLOCK,
        "landlock:fs.read_file",
        1,
    )
    assert dict(released.detail)["blockers"] == "fs.read_file"


def test_a_lone_audit_event_after_the_window_is_its_own_denial_again() -> None:
    clock = Clock()
    c = _attributing(clock)
    c.hold(_refusal())
    c.on_audit(_landlock())
    clock.now = 11.0  # the join is older than the window: not a repeat any more
    c.on_audit(_landlock())
    clock.now = 11.5
    (lone,) = c.expire()
    assert (lone.source, lone.pid) == (Source.LANDLOCK, 7)


def test_a_lone_audit_event_takes_the_cgroup_of_a_recent_refusal_of_its_process() -> None:
    clock = Clock()
    c = _attributing(clock)
    c.hold(_refusal(pid=9, cause="capability:CAP_KILL"))  # passes straight through, but seen
    c.on_audit(_landlock(pid=9))
    clock.now = 0.5
    (lone,) = c.expire()
    assert lone.cgroup_id == 42
    assert c.counts == {("web.service", "landlock", "fs.read_file"): 1}


def test_every_table_stays_within_its_limit() -> None:
    clock = Clock()
    c = LsmCorrelator(wait=0.1, window=10.0, clock=clock, limit=64)
    for pid in range(1, 5001):
        clock.now += 0.001
        c.hold(_refusal(pid=pid))
        c.on_audit(_landlock(pid=pid))
        c.on_audit(_landlock(pid=pid + 100_000))  # lone ones too
        if pid % 100 == 0:
            c.expire()
        assert max(c.sizes().values()) <= 64 + 1, c.sizes()
    clock.now += 1
    c.expire()
    assert c.sizes()["held"] == c.sizes()["claims"] == 0
