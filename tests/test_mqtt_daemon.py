"""The real daemon streaming alerts raised by real kernel denials to a real Mosquitto: in order,
through a SIGKILL while the broker is down, with a Last Will when it dies."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from _broker import Mosquitto, Received, Subscriber
from _daemon import DaemonProcess, value
from _workload import run_as_nobody, scratch_cgroup

import auditd
from auditd.kernel.cgroups import service_of

pytestmark = [pytest.mark.needs_bpf, pytest.mark.needs_broker]

SCHEMA = json.loads((Path(auditd.__file__).parent / "schemas" / "alert-v1.json").read_text())
RULE = "secret-read"

# The child names itself `a/+/#` (what the kernel reports as comm), then is refused each file.
_OPEN_EACH = r"""
import ctypes
ctypes.CDLL(None).prctl(15, b"a/+/#", 0, 0, 0)  # PR_SET_NAME
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDONLY))
    except PermissionError:
        continue
    sys.exit("opened " + path)
"""


@contextlib.contextmanager
def secrets(n: int) -> Iterator[list[Path]]:
    """n root-only files in a directory anyone may search: each open by nobody is refused by
    the file's mode (not by the path)."""
    with tempfile.TemporaryDirectory(prefix="bpf-auditd-test-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o755)
        files = [directory / f"secret-{i:03d}" for i in range(n)]
        for f in files:
            f.write_text("not for nobody\n")
            f.chmod(0o600)
        yield files


def write_config(tmp_path: Path, broker: Mosquitto, service: str, prefix: str) -> Path:
    policy = tmp_path / "policy.yaml"
    # One alert per refused file of this test's service: nothing folded, nothing rate-limited.
    policy.write_text(
        "version: 1\n"
        "defaults: {cooldown: 0, dedup: [target], rate_limit: {alerts: 100000, per: 1s}}\n"
        "rules:\n"
        f"  - name: {RULE}\n"
        "    description: A test process was refused a secret file.\n"
        f"    match: {{kind: denial, service: {json.dumps(service)}}}\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        "metrics: {listen: '127.0.0.1:0'}\n"
        f"policy: {{file: {policy}}}\n"
        f"state_dir: {tmp_path / 'state'}\n"
        "mqtt:\n"
        f"  url: {broker.url}\n"
        f"  topic_prefix: {prefix}\n"
        "  reconnect_max_delay: 1.0\n"
    )
    return config


def alerts_by_target(messages: list[Received]) -> list[str]:
    return [m.json()["event"]["target"] for m in messages if "/alerts/" in m.topic]


def first_seen(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def scrape_until(d: DaemonProcess, metric: str, want: float) -> str:
    """The daemon's /metrics once `metric` reads `want` (bounded wait)."""
    deadline = time.monotonic() + 30
    while True:
        text = d.scrape()
        if value(text, metric) == want or time.monotonic() > deadline:
            assert value(text, metric) == want, metric
            return text
        time.sleep(0.1)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b


@pytest.mark.needs_prometheus
def test_kernel_denials_arrive_in_order_then_the_last_will_on_sigkill(
    tmp_path: Path, broker: Mosquitto
) -> None:
    n = 25
    prefix = f"test/{uuid.uuid4().hex[:8]}"
    with scratch_cgroup() as cgroup, secrets(n) as files:
        service = service_of("/" + cgroup.name)
        config = write_config(tmp_path, broker, service, prefix)
        with Subscriber(broker, f"{prefix}/#") as sub:
            d = DaemonProcess(config)
            try:
                d.ready()
                d.wait_for("mqtt_connected")
                assert sub.wait_for(lambda m: [x.payload for x in m] == [b"online"])
                run_as_nobody(_OPEN_EACH, cgroup, *map(str, files))
                assert sub.wait_for(lambda m: len(alerts_by_target(m)) >= n)
                text = scrape_until(d, "bpf_auditd_mqtt_messages_acknowledged_total", n)
                d.signal(signal.SIGKILL)
                d.proc.wait(timeout=60)
                assert sub.wait_for(lambda m: m[-1].payload == b"offline")
            finally:
                d.stop()
    alerts = [m for m in sub.messages if "/alerts/" in m.topic]
    assert [m.json()["event"]["target"] for m in alerts] == [str(f) for f in files]
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for m in alerts:
        doc = m.json()
        validator.validate(doc)
        assert m.topic == f"{prefix}/alerts/warning/{RULE}"
        assert (doc["rule"], doc["service"], doc["event"]["comm"]) == (RULE, service, "a/+/#")
    assert len({m.json()["id"] for m in alerts}) == n
    assert [m.payload for m in sub.messages if m.topic.endswith("/status")] == [
        b"online",
        b"offline",
    ]
    assert value(text, "bpf_auditd_mqtt_connected") == 1
    assert value(text, "bpf_auditd_mqtt_messages_dropped_total", reason="spool_full") == 0
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")


def test_sigkill_while_the_broker_is_down_then_restart_delivers_every_spooled_alert(
    tmp_path: Path, broker: Mosquitto
) -> None:
    n = 30
    prefix = f"test/{uuid.uuid4().hex[:8]}"
    spool = tmp_path / "state" / "mqtt-spool"
    with scratch_cgroup() as cgroup, secrets(n) as files:
        service = service_of("/" + cgroup.name)
        config = write_config(tmp_path, broker, service, prefix)
        with Subscriber(broker, f"{prefix}/alerts/#") as sub:
            first = DaemonProcess(config)
            try:
                first.ready()
                first.wait_for("mqtt_connected")
                broker.stop()
                first.wait_for("mqtt_disconnected")
                run_as_nobody(_OPEN_EACH, cgroup, *map(str, files))
                deadline = time.monotonic() + 30
                while len(list(spool.glob("*.json"))) < n and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert len(list(spool.glob("*.json"))) == n
                text = scrape_until(first, "bpf_auditd_mqtt_spool_messages", n)
                assert value(text, "bpf_auditd_mqtt_connected") == 0
                first.signal(signal.SIGKILL)
                first.proc.wait(timeout=60)
            finally:
                first.stop()
            assert sub.messages == []
            broker.start()
            second = DaemonProcess(config)
            try:
                second.ready()
                assert second.wait_for("mqtt_spool_loaded")["alerts"] == n
                assert sub.wait_for(lambda m: len(set(alerts_by_target(m))) >= n)
                assert second.stop() == 0
            finally:
                second.stop()
    assert first_seen(alerts_by_target(sub.messages)) == [str(f) for f in files]
    assert list(spool.glob("*.json")) == []


def test_broker_down_ten_seconds_while_the_kernel_keeps_refusing_loses_no_alert(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """At-least-once with ids: every alert arrives, first arrivals in the order raised."""
    batch, batches = 4, 14
    prefix = f"test/{uuid.uuid4().hex[:8]}"
    with scratch_cgroup() as cgroup, secrets(batch * batches) as files:
        service = service_of("/" + cgroup.name)
        config = write_config(tmp_path, broker, service, prefix)
        groups = [files[i : i + batch] for i in range(0, len(files), batch)]
        with Subscriber(broker, f"{prefix}/alerts/#") as sub:
            d = DaemonProcess(config)
            try:
                d.ready()
                d.wait_for("mqtt_connected")
                run_as_nobody(_OPEN_EACH, cgroup, *map(str, groups[0]))
                assert sub.wait_for(lambda m: len(m) >= batch)
                broker.stop()
                stopped = time.monotonic()
                raised_while_down = 0
                for group in groups[1:-1]:  # real time on purpose: the broker is away 10 s
                    run_as_nobody(_OPEN_EACH, cgroup, *map(str, group))
                    raised_while_down += len(group)
                    time.sleep(max(0.0, 10 / (batches - 2) - 0.05))
                time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
                text = d.scrape()
                broker.start()
                run_as_nobody(_OPEN_EACH, cgroup, *map(str, groups[-1]))
                assert sub.wait_for(lambda m: len(set(alerts_by_target(m))) >= len(files))
                after = scrape_until(d, "bpf_auditd_mqtt_spool_messages", 0)
            finally:
                d.stop()
    got = alerts_by_target(sub.messages)
    assert first_seen(got) == [str(f) for f in files]
    assert value(text, "bpf_auditd_mqtt_connected") == 0
    assert value(text, "bpf_auditd_mqtt_spool_messages") == raised_while_down
    assert (value(after, "bpf_auditd_mqtt_reconnects_total") or 0) >= 1
    assert value(after, "bpf_auditd_mqtt_messages_dropped_total", reason="spool_full") == 0
    print(
        f"{len(files)} alerts, {raised_while_down} while down, {len(got) - len(set(got))} repeats"
    )
