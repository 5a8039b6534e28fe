"""What each command runs: `run` and `learn` get their parts from one place, and learning never
touches MQTT (no credentials read, no session, no spool, no MQTT metrics). No kernel."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from auditd.config.schema import Config
from auditd.daemon import wiring
from auditd.daemon.daemon import Daemon
from auditd.daemon.sinks import LogSink
from auditd.kernel.paths import KernelPaths
from auditd.policy.learn import Learner
from exporters.mqtt import MqttSink, MqttSinkError
from exporters.mqtt.config import MqttConfig


def _with_mqtt(tmp_path: Path, **mqtt: object) -> Config:
    return dataclasses.replace(
        Config(),
        mqtt=MqttConfig(url="mqtt://127.0.0.1:1", **mqtt),  # type: ignore[arg-type]
        state_dir=str(tmp_path),
    )


def test_run_gets_the_mqtt_sink_and_its_metrics(tmp_path: Path) -> None:
    parts = wiring.build(_with_mqtt(tmp_path), None, KernelPaths())
    assert [type(s) for s in parts.sinks] == [LogSink, MqttSink]
    assert [type(t) for t in parts.telemetry] == [MqttSink]
    names = {f.name for f in Daemon(Config(), None, KernelPaths(), parts).declared()}
    assert "bpf_auditd_mqtt_messages_published" in names


def test_run_fails_on_unreadable_mqtt_credentials(tmp_path: Path) -> None:
    config = _with_mqtt(tmp_path, username="u", password="env:AUDITD_TEST_NO_SUCH_VARIABLE")
    with pytest.raises(MqttSinkError, match="AUDITD_TEST_NO_SUCH_VARIABLE is not set"):
        wiring.build(config, None, KernelPaths())


def test_learn_neither_reads_mqtt_credentials_nor_exports_mqtt_metrics(tmp_path: Path) -> None:
    config = _with_mqtt(tmp_path, username="u", password="env:AUDITD_TEST_NO_SUCH_VARIABLE")
    learner = Learner()
    parts = wiring.build(config, None, KernelPaths(), evaluate=learner.observe, alert_sinks=False)
    assert [type(s) for s in parts.sinks] == [LogSink]
    assert parts.telemetry == []
    assert parts.evaluate == learner.observe
    daemon = Daemon(config, None, KernelPaths(), parts)
    assert not any("mqtt" in f.name for f in daemon.declared())
    assert not (tmp_path / "mqtt-spool").exists()


def test_run_evaluates_with_the_policy_engine(tmp_path: Path) -> None:
    parts = wiring.build(Config(), None, KernelPaths())
    assert parts.evaluate == parts.alerting.evaluate
    assert [m.name for m in parts.monitors] == ["denials", "namespaces", "allocations"]
    # Enrichment and the namespace monitor share one identity (owners, the host's namespaces).
    namespaces = next(m for m in parts.monitors if m.name == "namespaces")
    assert parts.enricher.namespaces is namespaces.identity  # type: ignore[attr-defined]


def test_one_host_identity_reaches_alerts_ids_and_mqtt(tmp_path: Path) -> None:
    """The config's `host` is the one name every part uses; unset, the machine's name."""
    import socket

    config = dataclasses.replace(
        _with_mqtt(tmp_path, client_id="c-{hostname}", topic_prefix="fleet/{hostname}"),
        host="fleet-b",
    )
    parts = wiring.build(config, None, KernelPaths())
    mqtt = next(s for s in parts.sinks if isinstance(s, MqttSink))
    assert (parts.host, mqtt.client_id, mqtt.prefix) == ("fleet-b", "c-fleet-b", "fleet/fleet-b")
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: any-denial\n    match: {kind: denial}\n")
    alerting = wiring.build(config, None, KernelPaths(), policy_file=policy).alerting
    [alert] = alerting.engine.evaluate_fields("denial", {"service": "a.service", "errno": 13})
    assert alert.host == "fleet-b"
    assert alert.id.startswith("fleet-b-")
    assert wiring.build(Config(), None, KernelPaths()).host == socket.gethostname()
