"""`protocol: auto` against brokers that do not answer an MQTT 5 CONNECT: a real amqtt 0.12.1
(3.1.1 only; silent when the CONNECT has a will, as ours always has), a stand-in peer that drops
the connection, and Mosquitto (speaks both). Falls back on silence and on a drop, remembers what
worked per broker URL, and leaks no file descriptor per timed-out attempt."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from _amqtt import AMQTT, Amqtt, dropper, open_fds
from _broker import Mosquitto, free_port
from paho.mqtt.enums import CallbackAPIVersion
from structlog.testing import capture_logs

from auditd.model.alert import Alert, Severity
from exporters.mqtt import MqttSink
from exporters.mqtt.config import MqttConfig
from exporters.mqtt.protocols import MEMORY_FILE, V5, V311, ProtocolMemory, order

TIMEOUT = 1.0  # connect timeout: how long silence takes to be recognised


def _alert() -> Alert:
    now = time.time_ns()
    return Alert(
        rule="fallback",
        severity=Severity.WARNING,
        service="test.service",
        description="",
        event_kind="denial",
        event={"n": 1},
        count=1,
        first_seen_ns=now,
        last_seen_ns=now,
        host="test-host",
    )


def _config(url: str, **overrides: Any) -> MqttConfig:
    fields: dict[str, Any] = {
        "url": url,
        "topic_prefix": f"t/{uuid.uuid4().hex[:8]}",
        "connect_timeout": TIMEOUT,
        "reconnect_max_delay": 0.2,
    }
    return MqttConfig(**{**fields, **overrides})


async def _deliver(config: MqttConfig, state: Path, within: float) -> float:
    """Submit one alert; seconds until the broker acknowledged it (fails after `within`)."""
    started = time.monotonic()
    async with MqttSink(config, state, hostname="h") as sink:
        sink.submit(_alert())
        while sink.acknowledged < 1:
            assert time.monotonic() - started < within, "alert not acknowledged"
            await asyncio.sleep(0.01)
    return time.monotonic() - started


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


@pytest.fixture
def amqtt(tmp_path: Path) -> Iterator[Amqtt]:
    if AMQTT is None:
        pytest.fail("amqtt is missing: scripts/setup --test installs the test extras")
    with Amqtt(tmp_path / "amqtt") as broker:
        yield broker


def test_amqtt_silent_to_v5_falls_back_then_remembers_3_1_1(tmp_path: Path, amqtt: Amqtt) -> None:
    config = _config(amqtt.url)
    received: list[bytes] = []
    watcher = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    watcher.on_message = lambda _c, _u, m: received.append(m.payload)
    watcher.connect("127.0.0.1", amqtt.port)
    watcher.subscribe(f"{config.topic_prefix}/alerts/#", qos=1)
    watcher.loop_start()
    try:
        with capture_logs() as first_logs:
            first = asyncio.run(_deliver(config, tmp_path, within=30))
        with capture_logs() as second_logs:
            second = asyncio.run(_deliver(config, tmp_path, within=30))
        deadline = time.monotonic() + 10
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    print(f"amqtt: first connection (v5 silent, then 3.1.1) {first:.2f} s; second {second:.2f} s")
    fallback = _events(first_logs, "mqtt_protocol_fallback")
    assert [(e["failed"], e["protocol"]) for e in fallback] == [("5", "3.1.1")], first_logs
    assert "no CONNACK" in fallback[0]["why"]
    assert [e["protocol"] for e in _events(first_logs, "mqtt_connected")] == ["3.1.1"]
    memory = json.loads((tmp_path / MEMORY_FILE).read_text())
    assert (memory["broker"], memory["protocol"]) == (amqtt.url, "3.1.1")
    # The next start tries 3.1.1 first: no silent v5 attempt to wait out.
    assert not _events(second_logs, "mqtt_protocol_fallback")
    assert [e["protocol"] for e in _events(second_logs, "mqtt_connected")] == ["3.1.1"]
    assert len(received) == 2  # both alerts reached a 3.1.1 subscriber


def test_a_timed_out_attempt_leaks_no_file_descriptor(tmp_path: Path, amqtt: Amqtt) -> None:
    """`v5` against amqtt: every attempt times out (silence). aiomqtt kept each socket open."""
    config = _config(amqtt.url, protocol="v5", connect_timeout=0.3, reconnect_max_delay=0.1)

    async def attempts(n: int) -> tuple[int, int]:
        async with MqttSink(config, tmp_path, hostname="h") as sink:
            await asyncio.sleep(0)
            before = open_fds()
            while sink.session.connect_failures < n:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            return before, open_fds()

    before, after = asyncio.run(attempts(6))
    assert after - before <= 1, (before, after)  # one attempt may be under way


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_a_dropped_connection_tries_the_other_version_and_remembers_nothing(
    tmp_path: Path, how: str
) -> None:
    with dropper(how) as url:
        config = _config(url, connect_timeout=0.5)

        async def two_cycles() -> None:
            async with MqttSink(config, tmp_path, hostname="h") as sink:
                while sink.session.connect_failures < 2:
                    await asyncio.sleep(0.02)

        with capture_logs() as logs:
            asyncio.run(two_cycles())
    tried = [(e["failed"], e["protocol"]) for e in _events(logs, "mqtt_protocol_fallback")]
    assert tried[:2] == [("5", "3.1.1"), ("5", "3.1.1")], logs  # each cycle: v5, then 3.1.1
    assert not (tmp_path / MEMORY_FILE).exists()
    assert not _events(logs, "mqtt_connected")


def test_a_refused_tcp_connection_is_no_version_question(tmp_path: Path) -> None:
    config = _config(f"mqtt://127.0.0.1:{free_port()}")  # nothing listens

    async def two_cycles() -> None:
        async with MqttSink(config, tmp_path, hostname="h") as sink:
            while sink.session.connect_failures < 2:
                await asyncio.sleep(0.02)

    with capture_logs() as logs:
        asyncio.run(two_cycles())
    assert not _events(logs, "mqtt_protocol_fallback")
    assert "Connection refused" in _events(logs, "mqtt_connect_failed")[0]["error"]


@pytest.mark.needs_broker
def test_mosquitto_speaks_v5_and_a_remembered_3_1_1_is_kept(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        config = _config(broker.url)
        state = tmp_path / "state"
        with capture_logs() as logs:
            asyncio.run(_deliver(config, state, within=20))
        assert [e["protocol"] for e in _events(logs, "mqtt_connected")] == ["5"]
        assert ProtocolMemory(state, broker.url).load() is V5
        # What worked is tried first, and works: nothing changes.
        assert ProtocolMemory(state, broker.url).save(V311)
        with capture_logs() as logs:
            asyncio.run(_deliver(config, state, within=20))
        assert [e["protocol"] for e in _events(logs, "mqtt_connected")] == ["3.1.1"]
        assert ProtocolMemory(state, broker.url).load() is V311


def test_memory_is_per_broker_and_never_fatal(tmp_path: Path) -> None:
    memory = ProtocolMemory(tmp_path, "mqtt://a:1883")
    assert memory.load() is None
    assert memory.save(V311)
    assert memory.load() is V311
    assert ProtocolMemory(tmp_path, "mqtt://b:1883").load() is None  # another broker
    for junk in (b"", b"\xff\xfe", b"[]", b'{"broker": "mqtt://a:1883", "protocol": 5}', b"{" * 9):
        (tmp_path / MEMORY_FILE).write_bytes(junk)
        assert memory.load() is None
    unwritable = ProtocolMemory(tmp_path / MEMORY_FILE / "sub", "mqtt://a:1883")
    assert unwritable.save(V5) is False
    assert order("auto", None) == [V5, V311]
    assert order("auto", V311) == [V311, V5]
    assert order("v5", V311) == [V5]
    assert order("v311", None) == [V311]
