"""Learning without a kernel: observed behaviours become a policy that loads, allows exactly
them on replay, and alerts once on anything new."""

from __future__ import annotations

from typing import Any

import pytest

from auditd.model.alert import Severity
from auditd.policy import language as policy
from auditd.policy import learn
from auditd.policy.engine import PolicyEngine
from auditd.policy.learn import Learner

T0 = 1_700_000_000 * 1_000_000_000


def denial(target: str, service: str = "web.service", **extra: Any) -> dict[str, Any]:
    return {
        "time_ns": T0,
        "source": "syscall",
        "syscall": "openat",
        "errno": "EACCES",
        "target": target,
        "cause": "dac_or_other",
        "pid": 42,
        "uid": 65534,
        "comm": "cat",
        "service": service,
        "cgroup": f"/{service}",
        "repeats": 0,
        **extra,
    }


def nschange(types: list[str], service: str = "web.service", **extra: Any) -> dict[str, Any]:
    return {
        "op": "unshare",
        "types": types,
        "result": "success",
        "escape": False,
        "escaped_types": [],
        "namespaces": {t: {"before": 4026531840, "after": 4026532999} for t in types},
        "target": None,
        "pid": 43,
        "service": service,
        **extra,
    }


def target(owner: str) -> dict[str, Any]:
    return {
        "inode": 4026532001,
        "type": "net",
        "owner_pid": 77,
        "owner_service": owner,
        "host": False,
    }


def alloc(rate: float, outstanding: int, service: str = "web.service") -> dict[str, Any]:
    return {
        "service": service,
        "allocations_per_s": rate,
        "bytes_per_s": rate * 64,
        "outstanding_bytes": outstanding,
        "window": 10.0,
    }


WORKLOAD: list[tuple[str, dict[str, Any]]] = [
    ("denial", denial("/srv/secret")),
    ("denial", denial("/srv/secret", pid=99, comm="python3")),  # the same behaviour
    ("denial", denial("/etc/shadow", service="db.service")),
    ("namespace_change", nschange(["net"])),
    ("namespace_change", nschange(["net"], op="setns", target=target("db.service"))),
    ("allocation_stats", alloc(900.0, 1 << 20)),
    ("allocation_stats", alloc(1200.0, 3 << 20)),
    ("capability_use", {"service": "web.service", "capability": "CAP_NET_RAW", "pid": 5}),
]


def learned(events: list[tuple[str, dict[str, Any]]] = WORKLOAD) -> tuple[Learner, str]:
    learner = Learner()
    for kind, fields in events:
        learner.observe_fields(kind, fields)
    text = learner.render(
        ignore=policy.Ignore(), started_ns=T0, ended_ns=T0 + 60 * 10**9, host="h1"
    )
    return learner, text


def replay(text: str, events: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    engine = PolicyEngine(policy.loads(text, "learned.yaml"), clock=lambda: T0, host="h1")
    alerts = [a for kind, fields in events for a in engine.evaluate_fields(kind, fields)]
    return alerts + engine.flush()


def test_learned_policy_is_commented_and_loads() -> None:
    learner, text = learned()
    assert text.startswith('# bpf-auditd policy learned on "h1" by `bpf-auditd learn`.')
    assert "# Observed 2023-11-14T22:13:20+00:00 to 2023-11-14T22:14:20+00:00: 8 events" in text
    assert learner.services == {"web.service", "db.service"}
    p = policy.loads(text, "learned.yaml")
    names = [r.name for r in p.rules]
    assert names == [
        "host-namespace-join",
        "allocation-envelope",
        "new-capability-use",
        "new-denial",
        "new-namespace-change",
    ]
    assert '# service "web.service": largest seen allocations_per_s 1200' in text
    assert "outstanding_bytes: {not: {gt: 6291456}}" in text  # largest seen x 2 headroom
    assert "allocations_per_s: {not: {gt: 2400}}" in text
    assert "bytes_per_s: {not: {gt: 1048576}}" in text  # the floor: 76800 x 2 is noise


def test_replaying_the_learned_workload_raises_nothing() -> None:
    _, text = learned()
    replayed = [(k, {**f, "pid": 1000, "time_ns": T0 + 5}) for k, f in WORKLOAD]
    assert replay(text, replayed) == []


@pytest.mark.parametrize(
    ("kind", "fields", "rule", "severity"),
    [
        ("denial", denial("/srv/other-secret"), "new-denial", Severity.WARNING),
        ("denial", denial("/srv/secret", errno="EPERM"), "new-denial", Severity.WARNING),
        ("denial", denial("/srv/secret", service="new.service"), "new-denial", Severity.WARNING),
        ("namespace_change", nschange(["net", "mnt"]), "new-namespace-change", Severity.WARNING),
        (
            "namespace_change",
            {**nschange(["net"]), "op": "setns"},
            "new-namespace-change",
            Severity.WARNING,
        ),
        (
            "namespace_change",
            nschange(["net"], op="setns", target=target("other.service")),
            "new-namespace-change",
            Severity.WARNING,
        ),
        ("allocation_stats", alloc(2401.0, 1 << 20), "allocation-envelope", Severity.WARNING),
        (
            "allocation_stats",
            {**alloc(100.0, 1 << 20), "bytes_per_s": float(2 << 20)},
            "allocation-envelope",
            Severity.WARNING,
        ),
        ("allocation_stats", alloc(100.0, 7 << 20), "allocation-envelope", Severity.WARNING),
        (
            "capability_use",
            {"service": "web.service", "capability": "CAP_SYS_ADMIN"},
            "new-capability-use",
            Severity.WARNING,
        ),
    ],
)
def test_one_new_behaviour_raises_exactly_one_alert_naming_it(
    kind: str, fields: dict[str, Any], rule: str, severity: Severity
) -> None:
    _, text = learned()
    replayed = [*WORKLOAD, (kind, fields), *WORKLOAD]
    [alert] = replay(text, replayed)
    assert (alert.rule, alert.severity, alert.event_kind, alert.count) == (rule, severity, kind, 1)
    assert dict(alert.event) == fields


def test_an_untracked_value_stays_within_the_envelope() -> None:
    _, text = learned()
    assert (
        replay(text, [("allocation_stats", {**alloc(100.0, 0), "outstanding_bytes": None})]) == []
    )


def test_an_escape_is_never_learned() -> None:
    escape = ("namespace_change", nschange(["net"], op="setns", escape=True))
    _, text = learned([*WORKLOAD, escape])
    alerts = replay(text, [escape])
    assert [(a.rule, a.severity) for a in alerts] == [("host-namespace-join", Severity.CRITICAL)]


def test_the_ignore_list_in_force_is_kept() -> None:
    learner = Learner()
    ignore = policy.loads(
        "ignore: {services: [noisy.service], errnos: [EPERM]}\nrules: []\n"
    ).ignore
    text = learner.render(ignore=ignore, started_ns=T0, ended_ns=T0, host="h1")
    assert policy.loads(text).ignore == ignore


@pytest.mark.parametrize(
    "target",
    [
        'a"b\\c',
        "line\nbreak\ttab",
        "\\xff\\xfe/backslash-replaced",
        "ünïcødé/😀",
        "\x7f\x85\x9b\u2028\ufeff",
        "yes",
        "- [x]: {y}",
        "",
    ],
)
def test_hostile_values_survive_the_round_trip(target: str) -> None:
    _, text = learned([("denial", denial(target))])
    assert replay(text, [("denial", denial(target))]) == []
    assert len(replay(text, [("denial", denial(target + "x"))])) == 1


def test_learning_is_bounded_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learn, "MAX_BEHAVIOURS", 3)
    learner, text = learned([("denial", denial(f"/t/{i}")) for i in range(5)])
    assert learner.unlisted == {("denial", "web.service"): 2}
    assert "# ... and 2 events of behaviours not listed (learning keeps 3 per service)" in text
    assert len(replay(text, [("denial", denial("/t/4"))])) == 1


def test_services_learned_are_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learn, "MAX_SERVICES", 2)
    events = [("denial", denial("/t", service=f"s{i}.service")) for i in range(5)]
    learner, text = learned(events)
    assert learner.services == {"s0.service", "s1.service"}
    assert learner.unlearned == 3
    assert "# 3 events of services beyond the first 2 of their kind were not learned" in text
    assert len(replay(text, [("denial", denial("/t", service="s4.service"))])) == 1


def test_nothing_learned_still_alerts_on_every_kind() -> None:
    _, text = learned([])
    assert text.count("unless: []") == 3
    assert len(replay(text, [("denial", denial("/x"))])) == 1
