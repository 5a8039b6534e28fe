"""The daemon's alert stage without a kernel: reloads keep the old policy on error and send
the replaced engine's pending summaries; the ignore list is applied and counted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from structlog.testing import capture_logs

from auditd.config.schema import PolicyConfig
from auditd.policy.alerting import Alerting
from exporters.families import Family

RULE = "rules:\n  - name: {name}\n    match: {{kind: denial}}\n"


@dataclass(frozen=True, slots=True)
class FakeDenial:
    kind: ClassVar[str] = "denial"
    probe: ClassVar[str] = "denials"
    target: str
    cgroup_id: int = 5
    cgroup: str | None = "/web.service"
    service: str | None = "web.service"

    def log_fields(self) -> dict[str, object]:
        return {"target": self.target, "cgroup": self.cgroup, "service": self.service}


def sample(families: list[Family], name: str, labels: tuple[str, ...] = ()) -> float | None:
    family = next(f for f in families if f.name == name)
    return family.samples.get(labels)


def test_reload_keeps_the_policy_in_force_when_the_new_one_is_broken(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(RULE.format(name="first"))
    config = PolicyConfig(file=str(f))
    a = Alerting(config, None, clock=lambda: 0, host="h1")
    assert [x.rule for x in a.evaluate(FakeDenial("/a"))] == ["first"]
    a.evaluate(FakeDenial("/a"))  # folded: pending until the cooldown ends

    f.write_text("rules:\n  - name: [broken\n")
    with capture_logs() as logs:
        assert a.reload(config, None) == []
    assert [e["event"] for e in logs] == ["policy_reload_failed"]
    assert logs[0]["error"].startswith(f"{f}:")
    assert sample(a.families(), "bpf_auditd_policy_reload_failures") == 1
    assert a.policy.rules[0].name == "first"
    assert a.evaluate(FakeDenial("/a")) == []  # the same engine, still in its cooldown

    f.write_text(RULE.format(name="second"))
    with capture_logs() as logs:
        flushed = a.reload(config, None)
    # A real change sends the old engine's pending summary before switching.
    assert [(x.rule, x.summary, x.count) for x in flushed] == [("first", True, 2)]
    assert logs[0]["event"] == "policy_reloaded"
    assert logs[0]["changed"] is True
    assert [x.rule for x in a.evaluate(FakeDenial("/a"))] == ["second"]
    assert sample(a.families(), "bpf_auditd_alerts", ("first", "warning")) == 2


def test_an_unchanged_policy_keeps_its_cooldowns(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(RULE.format(name="r"))
    config = PolicyConfig(file=str(f))
    a = Alerting(config, None, clock=lambda: 0, host="h1")
    assert len(a.evaluate(FakeDenial("/a"))) == 1
    with capture_logs() as logs:
        assert a.reload(config, None) == []
    assert logs[0]["changed"] is False
    assert a.evaluate(FakeDenial("/a")) == []  # still in its cooldown


def test_ignored_events_are_counted_per_probe(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("ignore: {services: [web.service]}\nrules: []\n")
    a = Alerting(PolicyConfig(file=str(f)), None, host="h1")
    assert a.ignores(FakeDenial("/a"))
    assert not a.ignores(FakeDenial("/a", service="db.service"))
    assert sample(a.families(), "bpf_auditd_events_ignored", ("denials",)) == 1
    assert a.kernel_filter({5: "/web.service", 6: "/db.service"}).cgroup_ids == {5}
