"""Policy evaluation without a kernel or a real clock: thresholds with windows, dedup, cooldown,
rate limits, bounded state, and summaries whose counts add up to every event."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import auditd
from auditd.model.alert import Alert, Severity
from auditd.policy import language as policy
from auditd.policy.engine import SEVERAL_SERVICES, PolicyEngine
from exporters.families import Family

SCHEMA = json.loads(
    (Path(auditd.__file__).parent / "schemas" / "alert-v1.json").read_text(encoding="utf-8")
)
S = 1_000_000_000  # ns


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * S

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * S)


def engine(rules: str, clock: Clock, *, defaults: str = "", max_keys: int = 4096) -> PolicyEngine:
    text = f"defaults:\n{defaults or '  cooldown: 60s'}\nrules:\n{rules}"
    return PolicyEngine(policy.loads(text, "p.yaml"), max_keys=max_keys, clock=clock, host="h1")


def denial(target: str = "/secret", service: str = "web.service", **extra: Any) -> dict[str, Any]:
    return {
        "source": "syscall",
        "syscall": "openat",
        "errno": "EACCES",
        "target": target,
        "pid": 7,
        "service": service,
        **extra,
    }


def samples(families: list[Family], name: str) -> dict[tuple[str, ...], float]:
    return dict(next(f for f in families if f.name == name).samples)


SECRET = """\
  - name: secret
    description: Someone reached for a secret.
    severity: critical
    match: {kind: denial, target: {glob: "**/secret*"}}
    dedup: [service, target]
"""


def test_a_match_raises_one_alert_with_the_event() -> None:
    clock = Clock()
    e = engine(SECRET, clock)
    assert e.evaluate_fields("denial", denial("/etc/motd")) == []
    [alert] = e.evaluate_fields("denial", denial("/tmp/secret", time_ns=123))
    assert (alert.rule, alert.severity, alert.service, alert.host) == (
        "secret",
        Severity.CRITICAL,
        "web.service",
        "h1",
    )
    assert (alert.count, alert.first_seen_ns, alert.last_seen_ns) == (1, 123, 123)
    assert (alert.event_kind, alert.event["target"], alert.summary) == (
        "denial",
        "/tmp/secret",
        False,
    )
    assert "kind" not in alert.event  # the event as logged; its kind is event_kind
    assert alert.key == {"service": "web.service", "target": "/tmp/secret"}
    jsonschema.validate(alert.document(), SCHEMA)


def test_repeats_within_the_cooldown_fold_into_one_summary() -> None:
    clock = Clock()
    e = engine(SECRET, clock)
    first = e.evaluate_fields("denial", denial(time_ns=clock.now))
    assert len(first) == 1
    for i in range(4):
        clock.advance(1)
        assert e.evaluate_fields("denial", denial(time_ns=clock.now + i)) == []
    assert e.tick() == []  # cooldown (60 s) not over
    clock.advance(60)
    [summary] = e.tick()
    assert summary.summary
    assert summary.count == 4
    assert summary.first_seen_ns == first[0].last_seen_ns + 1 * S
    assert summary.last_seen_ns == first[0].last_seen_ns + 4 * S + 3
    jsonschema.validate(summary.document(), SCHEMA)
    # Quiet for a whole cooldown: the key is forgotten and the next one alerts at once.
    clock.advance(61)
    assert e.tick() == []
    [again] = e.evaluate_fields("denial", denial())
    assert not again.summary
    assert again.count == 1
    counted = samples(e.counters.families(), "bpf_auditd_alerts_suppressed")
    assert counted == {("secret",): 4}
    assert samples(e.counters.families(), "bpf_auditd_alerts") == {("secret", "critical"): 3}


def test_an_event_after_the_cooldown_sends_the_pending_summary_with_itself() -> None:
    clock = Clock()
    e = engine(SECRET, clock)
    e.evaluate_fields("denial", denial())
    e.evaluate_fields("denial", denial())
    clock.advance(61)  # no tick ran in between
    [summary] = e.evaluate_fields("denial", denial())
    assert (summary.summary, summary.count) == (True, 2)


def test_dedup_keys_keep_different_targets_apart() -> None:
    clock = Clock()
    e = engine(SECRET, clock)
    alerts = [
        a
        for t in ("/a/secret", "/b/secret", "/a/secret")
        for a in e.evaluate_fields("denial", denial(t))
    ]
    assert [a.event["target"] for a in alerts] == ["/a/secret", "/b/secret"]
    other = e.evaluate_fields("denial", denial("/a/secret", service="db.service"))
    assert len(other) == 1


def test_cooldown_zero_alerts_every_time() -> None:
    clock = Clock()
    e = engine(SECRET.replace("dedup: [service, target]", "cooldown: 0"), clock)
    assert sum(len(e.evaluate_fields("denial", denial())) for _ in range(5)) == 5


THRESHOLD = """\
  - name: flood
    match: {kind: denial}
    threshold: {count: 3, window: 10s, by: [service]}
"""


def test_threshold_counts_within_a_sliding_window() -> None:
    clock = Clock()
    e = engine(THRESHOLD, clock)
    t0 = clock.now

    def at(seconds: float, service: str = "web.service") -> list[Alert]:
        return e.evaluate_fields("denial", denial(service=service, time_ns=t0 + int(seconds * S)))

    assert at(0) == []
    assert at(5) == []
    assert at(15) == []  # 0 and 5 fell out of the 10 s window before this one
    assert at(16, "db.service") == []  # counted apart: `by: [service]`
    assert at(16) == []
    [alert] = at(17)
    assert (alert.count, alert.first_seen_ns, alert.last_seen_ns) == (3, t0 + 15 * S, t0 + 17 * S)
    # The window starts again after a firing: three more are needed.
    assert at(17.5) == []
    assert at(18) == []


def test_threshold_firing_is_in_time_order_whatever_the_arrival_order() -> None:
    # A refusal held for its LSM record, or a summary, arrives after later events.
    clock = Clock()
    e = engine(THRESHOLD, clock)
    t0 = clock.now
    assert e.evaluate_fields("denial", denial(time_ns=t0 + 5 * S)) == []
    assert e.evaluate_fields("denial", denial(time_ns=t0 - 20 * S)) == []  # outside the window
    assert e.evaluate_fields("denial", denial(time_ns=t0 + 1 * S)) == []
    [alert] = e.evaluate_fields("denial", denial(time_ns=t0 + 3 * S))
    assert (alert.count, alert.first_seen_ns, alert.last_seen_ns) == (3, t0 + 1 * S, t0 + 5 * S)


def test_threshold_exact_edge_of_the_window() -> None:
    clock = Clock()
    e = engine(THRESHOLD, clock)
    t0 = clock.now
    e.evaluate_fields("denial", denial(time_ns=t0))
    e.evaluate_fields("denial", denial(time_ns=t0 + 5 * S))
    # An event exactly one window after the first no longer counts the first.
    assert e.evaluate_fields("denial", denial(time_ns=t0 + 10 * S)) == []
    assert len(e.evaluate_fields("denial", denial(time_ns=t0 + 10 * S + 1))) == 1


def test_threshold_weight_counts_summary_records() -> None:
    clock = Clock()
    rules = (
        "  - name: flood\n    match: {kind: denial}\n"
        "    threshold: {count: 1000, window: 1s, weight: count}\n"
    )
    e = engine(rules, clock)
    assert e.evaluate_fields("denial", denial(count=600)) == []
    assert e.evaluate_fields("denial", denial(count=0)) == []  # stands for nothing
    [alert] = e.evaluate_fields("denial", denial(count=500))
    assert alert.count == 1100
    e2 = engine(rules, clock)
    # Records without the field stand for themselves.
    assert sum(len(e2.evaluate_fields("denial", denial())) for _ in range(1000)) == 1


def test_rate_limit_folds_the_excess_into_one_summary_per_period() -> None:
    clock = Clock()
    rules = SECRET + "    rate_limit: {alerts: 2, per: 10s}\n"
    e = engine(rules, clock)
    alerts = []
    for i in range(5):
        alerts += e.evaluate_fields("denial", denial(f"/{i}/secret"))
    # Limits are per service: another service's alerts are never held back by this flood.
    alerts += e.evaluate_fields("denial", denial("/0/secret", service="db.service"))
    assert [(a.service, a.event["target"]) for a in alerts] == [
        ("web.service", "/0/secret"),
        ("web.service", "/1/secret"),
        ("db.service", "/0/secret"),
    ]
    assert e.tick() == []
    clock.advance(10)
    [overflow] = e.tick()
    assert (overflow.summary, overflow.count, overflow.service) == (True, 3, "web.service")
    assert overflow.event["target"] == "/4/secret"
    assert overflow.key == {}
    jsonschema.validate(overflow.document(), SCHEMA)
    assert samples(e.counters.families(), "bpf_auditd_alerts_suppressed") == {("secret",): 3}
    # The next period starts afresh.
    assert len(e.evaluate_fields("denial", denial("/5/secret"))) == 1


def test_repeats_from_several_services_say_so() -> None:
    clock = Clock()
    e = engine(SECRET.replace("dedup: [service, target]", "dedup: [target]"), clock)
    for service in ("a", "b", "c"):
        e.evaluate_fields("denial", denial(service=service))
    [summary] = e.flush()
    assert (summary.service, summary.count) == (SEVERAL_SERVICES, 2)


def test_a_flood_yields_a_bounded_number_of_alerts_and_every_event_is_counted() -> None:
    clock = Clock()
    e = engine(SECRET, clock)
    alerts: list[Alert] = []
    n = 100_000
    for i in range(n):
        alerts += e.evaluate_fields("denial", denial())
        if i % 1000 == 999:  # 100 s of flood, a tick per second
            clock.advance(1)
            alerts += e.tick()
    alerts += e.flush()
    assert len(alerts) <= 1 + 100 // 60 + 1
    assert sum(a.count for a in alerts) == n


def test_state_is_bounded_and_an_evicted_key_sends_its_summary() -> None:
    clock = Clock()
    e = engine(SECRET, clock, max_keys=2)
    for target in ("/a/secret", "/a/secret", "/b/secret", "/b/secret"):
        e.evaluate_fields("denial", denial(target))
    # A third key evicts the stalest (a), whose folded repeat goes out now.
    alerts = e.evaluate_fields("denial", denial("/c/secret"))
    assert [(a.event["target"], a.summary, a.count) for a in alerts] == [
        ("/a/secret", True, 1),
        ("/c/secret", False, 1),
    ]
    evicted = samples(e.counters.families(), "bpf_auditd_policy_keys_evicted")
    assert evicted == {("secret", "dedup"): 1}


def test_threshold_state_is_bounded() -> None:
    clock = Clock()
    e = engine(THRESHOLD, clock, max_keys=2)
    for service in ("a", "b", "c"):
        e.evaluate_fields("denial", denial(service=service))
    assert samples(e.counters.families(), "bpf_auditd_policy_keys_evicted") == {
        ("flood", "threshold"): 1
    }


def test_flush_sends_every_pending_summary() -> None:
    clock = Clock()
    e = engine(SECRET, clock)
    for _ in range(3):
        e.evaluate_fields("denial", denial())
    [summary] = e.flush()
    assert summary.count == 2
    assert e.flush() == []


def test_unless_and_disabled_rules() -> None:
    clock = Clock()
    rules = (
        SECRET
        + "    unless: [{service: backup.service}, {target: {prefix: /srv/}}]\n"
        + "  - name: switched-off\n    match: {}\n    enabled: false\n"
    )
    e = engine(rules, clock)
    assert e.evaluate_fields("denial", denial(service="backup.service")) == []
    assert e.evaluate_fields("denial", denial("/srv/secret")) == []
    assert [a.rule for a in e.evaluate_fields("denial", denial())] == ["secret"]


def test_rules_see_the_event_kind() -> None:
    clock = Clock()
    e = engine("  - name: any-escape\n    match: {kind: namespace_change, escape: true}\n", clock)
    assert e.evaluate_fields("denial", {"escape": True, "service": "x"}) == []
    assert len(e.evaluate_fields("namespace_change", {"escape": True, "service": "x"})) == 1


def test_defaults_apply_to_rules_that_do_not_say() -> None:
    clock = Clock()
    e = engine(
        "  - name: r\n    match: {}\n",
        clock,
        defaults="  severity: info\n  cooldown: 1s\n  dedup: [target]",
    )
    [a] = e.evaluate_fields("denial", denial("/x"))
    assert a.severity is Severity.INFO
    assert a.key == {"target": "/x"}
    assert len(e.evaluate_fields("denial", denial("/y"))) == 1
    assert e.evaluate_fields("denial", denial("/y")) == []
    clock.advance(1)
    assert len(e.tick()) == 1


@pytest.mark.parametrize("n", [1, 7])
def test_alert_ids_are_unique(n: int) -> None:
    clock = Clock()
    e = engine(SECRET.replace("dedup: [service, target]", "cooldown: 0"), clock)
    ids = {a.id for _ in range(n) for a in e.evaluate_fields("denial", denial())}
    assert len(ids) == n
