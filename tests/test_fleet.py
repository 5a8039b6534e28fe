"""A fleet on one machine: three real daemons as three hosts (own host name, MQTT client id and
topic, metrics port, state directory), one TUF repository served over HTTP on loopback, one
real Mosquitto, one real Prometheus scraping the three. A policy published once reaches every
host; every kind of bad update is refused by every host, which keeps its policy, counts the
refusal and says so once; a root key rotation is followed; a host restarted while the
repository is down starts with the policy it had."""

from __future__ import annotations

import base64
import json
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from _broker import Mosquitto, Received, Subscriber
from _daemon import DaemonProcess, value
from _prometheus import PrometheusServer
from _tuf_repo import TARGET, Publisher, StaticServer
from _workload import denied_opens, scratch_cgroup, secret_file

from auditd.kernel.cgroups import service_of

pytestmark = [pytest.mark.needs_bpf, pytest.mark.needs_broker, pytest.mark.needs_prometheus]

HOSTS = ("fleet-a", "fleet-b", "fleet-c")
INTERVAL = 1.0
REFUSED = "policy-update-refused"
V1 = "version: 1\nrules:\n  - name: fleet-v1\n    match: {kind: denial, service: none.service}\n"
V2 = (
    "version: 1\n"
    "defaults: {{cooldown: 0, dedup: [pid], rate_limit: {{alerts: 1000, per: 1s}}}}\n"
    "rules:\n"
    "  - name: fleet-v2\n"
    "    description: A process of the fleet test was refused a file.\n"
    "    match: {{kind: denial, service: {service}}}\n"
)
V3 = "version: 1\nrules:\n  - name: fleet-v3\n    match: {kind: denial}\n"


def write_config(tmp: Path, host: str, repo_url: str, pinned: Path, broker: Mosquitto) -> Path:
    config = tmp / f"{host}.yaml"
    config.write_text(
        f"host: {host}\n"
        "metrics: {listen: '127.0.0.1:0'}\n"
        f"state_dir: {tmp / host}\n"
        "probes:\n"
        "  denials: {audit: false}\n"  # only one process may be the kernel's audit daemon
        "  namespaces: {enabled: false}\n"
        "  allocations: {enabled: false}\n"
        "policy:\n"
        f"  tuf: {{url: '{repo_url}', root: {pinned}, target: {TARGET}, interval: {INTERVAL},"
        " timeout: 5}\n"
        "mqtt:\n"
        f"  url: {broker.url}\n"
        "  topic_prefix: fleet/{hostname}\n"
        "  reconnect_max_delay: 1.0\n"
    )
    return config


def wait_line(d: DaemonProcess, event: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
    """The first log line `event` with `fields` (read so far or within `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        for entry in list(d.lines):
            if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
                return entry
        if time.monotonic() > deadline or d.proc.poll() is not None:
            raise AssertionError(f"no {event} {fields} within {timeout}s: {d.lines[-5:]}")
        time.sleep(0.1)


def until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.2)


def metric(d: DaemonProcess, name: str, **labels: str) -> float:
    got = value(d.scrape(), name, **labels)
    return -1.0 if got is None else got


def refused_alerts(sub: Subscriber, host: str, reason: str) -> list[Received]:
    topic = f"fleet/{host}/alerts/critical/{REFUSED}"
    return [m for m in sub.alerts() if m.topic == topic and m.json()["event"]["reason"] == reason]


def rule_alerts(sub: Subscriber, host: str, rule: str) -> list[Received]:
    return [m for m in sub.alerts() if m.topic == f"fleet/{host}/alerts/warning/{rule}"]


class Fleet:
    def __init__(self, tmp: Path, broker: Mosquitto, sub: Subscriber) -> None:
        self.tmp = tmp
        self.pub = Publisher(tmp / "publisher")
        self.server = StaticServer(self.pub.repo_dir).start()
        self.broker = broker
        self.sub = sub
        self.configs = {
            h: write_config(tmp, h, self.server.url, self.pub.pinned, broker) for h in HOSTS
        }
        self.daemons: dict[str, DaemonProcess] = {}

    def start(self, host: str) -> DaemonProcess:
        self.daemons[host] = DaemonProcess(self.configs[host])
        return self.daemons[host]

    def applied(self) -> int:
        """Policies applied by every host so far (all agree, or the test fails)."""
        counts = {metric(d, "bpf_auditd_policy_updates_total", result="applied")
                  for d in self.daemons.values()}  # fmt: skip
        assert len(counts) == 1, counts
        return int(counts.pop())

    def refusal_case(
        self, reason: str, breakage: Callable[[], object], repair: Callable[[], object]
    ) -> None:
        """`breakage` makes the repository bad in one way: every host refuses each update for
        `reason` (three times at least), keeps its policy, and raises one alert; `repair`
        ends the episode (every host updates successfully again)."""
        applied = self.applied()
        counter = "bpf_auditd_policy_update_refusals_total"
        before = {h: metric(d, counter, reason=reason) for h, d in self.daemons.items()}
        recovered = {h: count(d, "policy_update_recovered") for h, d in self.daemons.items()}
        breakage()
        for host, d in self.daemons.items():

            def counted(d: DaemonProcess = d, host: str = host) -> bool:
                return metric(d, counter, reason=reason) >= before[host] + 3

            until(counted, f"{host} counts {reason} refusals")
        for host in HOSTS:  # three refusals or more, one alert each
            alerts = refused_alerts(self.sub, host, reason)
            assert len(alerts) == 1, (host, reason, [a.json() for a in alerts])
            doc = alerts[0].json()
            assert (doc["host"], doc["severity"]) == (host, "critical")
            assert doc["key"] == {"reason": reason}
            assert doc["id"].startswith(f"{host}-")
        assert self.applied() == applied  # the policy in force stayed
        repair()
        for host, d in self.daemons.items():

            def back(d: DaemonProcess = d, host: str = host) -> bool:
                return count(d, "policy_update_recovered") > recovered[host]

            until(back, f"{host} recovers from {reason}")
        assert self.applied() == applied


def count(d: DaemonProcess, event: str) -> int:
    return sum(1 for e in list(d.lines) if e.get("event") == event)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with Mosquitto(tmp_path / "broker") as broker, Subscriber(broker, "fleet/#") as sub:
        f = Fleet(tmp_path, broker, sub)
        try:
            yield f
        finally:
            for d in f.daemons.values():
                d.stop()
            f.server.stop()


def test_three_hosts_one_repository_one_broker_one_prometheus(fleet: Fleet) -> None:
    pub, sub = fleet.pub, fleet.sub
    pub.add(V1)
    v1_era = pub.save_metadata("v1-era")
    for host in HOSTS:
        fleet.start(host)
    for d in fleet.daemons.values():
        assert d.ready()
        wait_line(d, "policy_update_applied", targets_version=2)
        wait_line(d, "mqtt_connected")
    log = fleet.broker.log_text()
    assert all(f"as bpf-auditd-{host} " in log for host in HOSTS), log  # its own client id

    with scratch_cgroup() as cgroup, secret_file() as secret:
        service = service_of("/" + cgroup.name)
        # -- publish v2: every host applies it within the interval ---------------------------
        published = datetime.now(UTC)
        pub.add(V2.format(service=json.dumps(service)))
        took = {}
        for host, d in fleet.daemons.items():
            line = wait_line(d, "policy_update_applied", targets_version=3)
            took[host] = (datetime.fromisoformat(line["timestamp"]) - published).total_seconds()
        print(f"\nv2 applied after {', '.join(f'{h} {s:.2f} s' for h, s in took.items())}")
        assert max(took.values()) < INTERVAL + 5, took  # one interval plus one update's work
        assert fleet.applied() == 2

        # -- an event v2 alerts on reaches the broker from each host under its own topic ------
        denied_opens(secret, 1, cgroup)
        for host in HOSTS:
            until(lambda host=host: len(rule_alerts(sub, host, "fleet-v2")) == 1,
                  f"fleet-v2 alert from {host}")  # fmt: skip
            doc = rule_alerts(sub, host, "fleet-v2")[0].json()
            assert (doc["host"], doc["service"]) == (host, service)
        print(f"alert message: {len(rule_alerts(sub, HOSTS[0], 'fleet-v2')[0].payload)} bytes")

        # -- Prometheus: the three hosts' counters, told apart by `instance` ------------------
        scrape = [{"targets": [d.metrics_url.split("/")[2]], "labels": {"instance": h}}
                  for h, d in fleet.daemons.items()]  # fmt: skip
        job = {"job_name": "bpf-auditd", "static_configs": scrape}
        config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [job]}
        (fleet.tmp / "prometheus").mkdir()
        with PrometheusServer(fleet.tmp / "prometheus", config) as prom:
            expr = 'bpf_auditd_alerts_total{job="bpf-auditd",rule="fleet-v2"}'
            until(lambda: len(prom.query(expr)) == 3, "three hosts' alert counters", timeout=60)
            assert {(s["instance"], v) for s, v in prom.query(expr)} == {(h, 1.0) for h in HOSTS}
            applied = prom.query('bpf_auditd_policy_updates_total{result="applied"}')
            assert {(s["instance"], v) for s, v in applied} == {(h, 2.0) for h in HOSTS}
            assert prom.query('{job="bpf-auditd", host!=""}') == []  # no host label of ours

            # -- every refusal: kept, counted, alerted once per host and reason --------------
            fleet.refusal_case(
                "bad_signature", lambda: (pub.timestamp(), pub.corrupt_signature()), pub.timestamp
            )
            fleet.refusal_case(
                "threshold",
                lambda: pub.add(V3, "targets-1", "snapshot-1", "timestamp-1", strict=False),
                lambda: pub.add(V2.format(service=json.dumps(service))),
            )
            fleet.refusal_case("expired", lambda: pub.timestamp(timestamp=-60), pub.timestamp)
            current = pub.save_metadata("current")
            fleet.refusal_case(
                "rollback", lambda: pub.serve_metadata(v1_era), lambda: pub.serve_metadata(current)
            )
            fleet.refusal_case(
                "target_mismatch",
                lambda: (pub.add(V3), pub.tamper_target(V3.replace("v3", "v4").encode())),
                lambda: pub.add(V2.format(service=json.dumps(service))),
            )
            fleet.refusal_case("unreachable", fleet.server.stop, fleet.server.start)
            sizes = sorted(len(m.payload) for m in sub.alerts() if m.topic.endswith(REFUSED))
            print(f"{REFUSED} messages: {sizes[0]}..{sizes[-1]} bytes")
            refusals = prom.query("sum by (instance) (bpf_auditd_policy_update_refusals_total)")
            assert {s["instance"] for s, v in refusals if v >= 18} == set(HOSTS), refusals

            # -- a root key rotation (new root signed by the old and the new key) ------------
            new_root = pub.key("root-2")
            pub.repo().rotate(
                "root", pub.signers(), add=[new_root.public_key], revoke=[pub.keys["root-1"].keyid]
            )
            until(lambda: {(s["instance"], v) for s, v in prom.query(
                "bpf_auditd_policy_tuf_root_version")} == {(h, 2.0) for h in HOSTS},
                "every host trusts root v2")  # fmt: skip

        # -- restarted while the repository is down: the cached v2 is in force ---------------
        fleet.server.stop()
        restarted = fleet.daemons["fleet-a"]
        restarted.stop()
        restarted = fleet.start("fleet-a")
        cached = wait_line(restarted, "policy_tuf_cached")
        assert (cached["targets_version"], cached["expired"]) == (
            pub.repo().targets().signed.version, []
        )  # fmt: skip
        restarted.ready()
        wait_line(restarted, "policy_update_refused", reason="unreachable")
        denied_opens(secret, 1, cgroup)
        until(lambda: len(rule_alerts(sub, "fleet-a", "fleet-v2")) == 2,
              "fleet-v2 alert from the restarted host")  # fmt: skip


def test_sighup_updates_at_once_and_a_damaged_cache_is_refused(tmp_path: Path) -> None:
    """One host with an interval of an hour: SIGHUP is what brings the new policy (and leaves
    it in force: the policy file is not re-read over it). Restarted with its saved policy
    altered on disk, it refuses that copy (`invalid_cache`) and takes the repository's."""
    pub = Publisher(tmp_path / "publisher")
    pub.add(V1)
    server = StaticServer(pub.repo_dir).start()
    with Mosquitto(tmp_path / "broker") as broker, Subscriber(broker, "fleet/#") as sub:
        config = write_config(tmp_path, "fleet-h", server.url, pub.pinned, broker)
        config.write_text(config.read_text().replace(f"interval: {INTERVAL}", "interval: 3600"))
        d = DaemonProcess(config)
        try:
            d.ready()
            wait_line(d, "policy_update_applied", targets_version=2)
            pub.add(V3)
            time.sleep(2 * INTERVAL)
            assert count(d, "policy_update_applied") == 1  # an hour to go
            d.signal(signal.SIGHUP)
            wait_line(d, "policy_update_applied", targets_version=3, timeout=10)
            wait_line(d, "policy_reload_skipped")
            d.stop()
            record = tmp_path / "fleet-h" / "tuf" / "applied.json"
            saved = json.loads(record.read_text())
            saved["policy"] = base64.b64encode(V1.encode()).decode()  # an older policy
            record.write_text(json.dumps(saved))
            d = DaemonProcess(config)
            d.ready()
            refused = wait_line(d, "policy_update_refused", reason="invalid_cache")
            assert "LengthOrHashMismatchError" in refused["detail"]
            until(lambda: len(refused_alerts(sub, "fleet-h", "invalid_cache")) == 1,
                  "invalid_cache alert")  # fmt: skip
            wait_line(d, "policy_update_applied", targets_version=3)
        finally:
            d.stop()
            server.stop()
