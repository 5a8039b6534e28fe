"""The MQTT alert stream: topics, credentials, spool bounds, and delivery through a real
Mosquitto (in order, across a broker outage, across a SIGKILL of the sender, with TLS and
passwords)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from _broker import Mosquitto, Received, Subscriber, free_port
from _certs import Certs, make_certs
from _sink_process import SinkProcess

import auditd
from auditd.config import schema as config_mod
from auditd.config.yamlfile import ConfigError
from auditd.model.alert import Alert, Severity
from exporters.mqtt import MqttSink, MqttSinkError, resolve_secret
from exporters.mqtt.config import MqttConfig, parse_mqtt_url
from exporters.mqtt.topics import alert_topic, expand, topic_segment

SCHEMA = json.loads((Path(auditd.__file__).parent / "schemas" / "alert-v1.json").read_text())
_numbers = itertools.count()


def make_alert(rule: str = "test-rule", severity: Severity = Severity.WARNING) -> Alert:
    return Alert(
        rule=rule,
        severity=severity,
        service="test.service",
        description="raised by the test",
        event_kind="denial",
        event={"n": next(_numbers), "comm": "a/+/#", "target": "/etc/shadow"},
        count=1,
        first_seen_ns=time.time_ns(),
        last_seen_ns=time.time_ns(),
        host="h1",
    )


def ids(messages: list[Received]) -> list[str]:
    return [m.json()["id"] for m in messages]


def first_seen(values: list[str]) -> list[str]:
    """Values in order of first appearance: what a consumer that drops repeats by id sees."""
    return list(dict.fromkeys(values))


# -- topics and secrets (pure) ----------------------------------------------------------------


def valid_topic(topic: str) -> bool:
    """A topic one may publish to: UTF-8, no wildcards, no empty level, no NUL, <= 65535 bytes."""
    return (
        0 < len(topic.encode()) <= 65535
        and "\0" not in topic
        and all(level and "+" not in level and "#" not in level for level in topic.split("/"))
    )


@pytest.mark.parametrize(
    ("name", "segment"),
    [
        ("a/+/#", "a"),
        ("rule with spaces/and/slashes", "rule_with_spaces_and_slashes"),
        ("", "_"),
        ("+", "_"),
        ("#", "_"),
        ("$SYS", "SYS"),
        ("nul\0byte", "nul_byte"),
        ("caps-OK_1.2:x", "caps-OK_1.2:x"),  # every valid policy rule name passes unchanged
        ("ünïcode", "n_code"),
        ("x" * 300, "x" * 64),
    ],
)
def test_topic_segments_never_carry_wildcards_separators_or_nothing(
    name: str, segment: str
) -> None:
    assert topic_segment(name) == segment
    topic = alert_topic("bpf-auditd/host", "warning", name)
    assert valid_topic(topic)
    assert topic.split("/") == ["bpf-auditd", "host", "alerts", "warning", segment]


def test_hostname_placeholder_is_made_topic_safe() -> None:
    assert expand("bpf-auditd/{hostname}", "evil/+#host") == "bpf-auditd/evil_host"
    assert expand("site/a/{hostname}/x", "h1") == "site/a/h1/x"


def test_secret_from_env_or_file_and_errors_never_show_it(tmp_path: Path) -> None:
    assert resolve_secret("env:MQTT_PW", {"MQTT_PW": "s3cret"}) == "s3cret"
    f = tmp_path / "pw"
    f.write_text("s3cret\n")
    assert resolve_secret(f"file:{f}", {}) == "s3cret"
    with pytest.raises(MqttSinkError, match="environment variable MQTT_PW is not set"):
        resolve_secret("env:MQTT_PW", {})
    with pytest.raises(MqttSinkError, match=r"cannot read .*/nope: No such file"):
        resolve_secret(f"file:{tmp_path}/nope", {})


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ("mqtt:\n  url: http://broker\n", "mqtt.url", "mqtt://host[:port]"),
        ("mqtt:\n  url: mqtt://user:hunter2@broker\n", "mqtt.url", "credentials go in"),
        ("mqtt:\n  password: hunter2\n", "mqtt.password", "'env:VARIABLE' or 'file:"),
        ("mqtt:\n  topic_prefix: a/+/b\n", "mqtt.topic_prefix", "without '+', '#'"),
        ("mqtt:\n  topic_prefix: a//b\n", "mqtt.topic_prefix", "none empty"),
        ("mqtt:\n  topic_prefix: $SYS/x\n", "mqtt.topic_prefix", "leading '$'"),
        ("mqtt:\n  qos: 3\n", "mqtt.qos", "0, 1 or 2"),
        ("mqtt:\n  protocol: '5'\n", "mqtt.protocol", "auto, v5, v311"),
        ("mqtt:\n  spool_max_messages: 0\n", "mqtt.spool_max_messages", "1..10000000"),
        ("mqtt:\n  brokr: x\n", "mqtt.brokr", "unknown key"),
        ("state_dir: relative/dir\n", "state_dir", "absolute"),
    ],
)
def test_config_errors_name_file_line_key_and_hide_secrets(text: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.loads(text, "c.yaml")
    message = str(info.value)
    assert message.startswith(f"c.yaml:{text.count(chr(10))}: {key}: "), message
    assert says in message
    assert "hunter2" not in message


def test_config_accepts_a_full_section() -> None:
    c = config_mod.loads(
        "state_dir: /srv/auditd\n"
        "mqtt:\n  url: mqtts://[::1]:8884\n  username: auditd\n  password: env:PW\n"
        "  tls_ca: /etc/ca.pem\n  qos: 2\n  protocol: v311\n  topic_prefix: site/{hostname}\n"
    )
    assert c.mqtt.url == "mqtts://[::1]:8884"
    assert (c.mqtt.qos, c.mqtt.protocol, c.state_dir) == (2, "v311", "/srv/auditd")
    assert parse_mqtt_url("mqtts://[::1]:8884") == (True, "::1", 8884)
    assert parse_mqtt_url("mqtt://broker") == (False, "broker", 1883)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"url": "mqtt://b", "tls_ca": "/ca.pem"}, "use mqtts://"),
        ({"url": "mqtts://b", "tls_key": "/k.pem"}, "tls_key needs mqtt.tls_cert"),
        ({"url": "mqtt://b", "password": "env:X"}, "password needs mqtt.username"),
    ],
)
def test_inconsistent_settings_refuse_to_start(
    tmp_path: Path, fields: dict[str, Any], says: str
) -> None:
    with pytest.raises(MqttSinkError, match=says):
        MqttSink(MqttConfig(**fields), tmp_path, hostname="h1")


@pytest.mark.parametrize(
    ("mqtt", "says"),
    [
        ("  username: u\n  password: file:/nonexistent/pw\n", "mqtt.password: cannot read"),
        ("  username: u\n  password: env:BPF_AUDITD_TEST_UNSET\n", "BPF_AUDITD_TEST_UNSET is not"),
        ("  tls_ca: /nonexistent/ca.pem\n", "mqtt.tls_ca: cannot read /nonexistent/ca.pem"),
    ],
)
def test_unreadable_credentials_stop_start_up_with_one_line(
    tmp_path: Path, mqtt: str, says: str
) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(f"state_dir: {tmp_path}\nmqtt:\n  url: mqtts://localhost:1\n{mqtt}")
    proc = subprocess.run(
        [sys.executable, "-m", "auditd", "run", "--config", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bpf-auditd: mqtt."), lines[0]
    assert says in lines[0], lines[0]


# -- the spool bound, without a broker --------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_full_spool_drops_oldest_counts_every_drop_and_logs_once_per_interval(
    tmp_path: Path,
) -> None:
    from structlog.testing import capture_logs

    from exporters import mqtt

    nobody = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: alerts accumulate
    clock = Clock()
    config = MqttConfig(url=nobody, spool_max_messages=5, reconnect_max_delay=60)
    submitted: list[Alert] = []

    async def scenario() -> dict[str, Any]:
        sink = MqttSink(config, tmp_path, hostname="h1", clock=clock)
        async with sink:
            for _ in range(12):
                submitted.append(make_alert())
                sink.submit(submitted[-1])
            clock.now += mqtt.DROP_LOG_INTERVAL_S - 1
            sink.submit(make_alert())  # within the interval: counted, not logged
            clock.now += 2
            sink.submit(make_alert())  # interval over: logged, with what piled up
            while sink.spooled < 5 or len(list(tmp_path.glob("mqtt-spool/*.json"))) != 5:
                await asyncio.sleep(0.01)
            return {f.name: f.samples for f in sink.families()}

    with capture_logs() as logs:
        families = asyncio.run(scenario())
    dropped = families["bpf_auditd_mqtt_messages_dropped"]
    assert dropped[("spool_full",)] == 9  # 14 raised, 5 kept
    assert families["bpf_auditd_mqtt_spool_messages"][()] == 5
    drop_logs = [e for e in logs if e["event"] == "mqtt_alerts_dropped"]
    # The first drop is logged at once; the next ones within the interval are summed into the
    # next line (the exit line would carry any left over).
    assert [(e["reason"], e["dropped"], e["total"]) for e in drop_logs] == [
        ("spool_full", 1, 1),
        ("spool_full", 8, 9),
    ]
    # The survivors are the newest five, still on disk for the next start.
    kept = sorted(tmp_path.glob("mqtt-spool/*.json"))
    assert [json.loads(p.read_bytes())["event"]["n"] for p in kept][:3] == [
        a.event["n"] for a in submitted[9:12]
    ]


# -- with a real broker ------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b


def sink_config(broker: Mosquitto, **overrides: Any) -> MqttConfig:
    fields: dict[str, Any] = {
        "url": broker.url,
        "topic_prefix": f"test/{uuid.uuid4().hex[:8]}",
        "reconnect_max_delay": 1.0,
    }
    fields.update(overrides)
    return MqttConfig(**fields)


def config_file(tmp_path: Path, mqtt: dict[str, Any], name: str = "sink.yaml") -> Path:
    lines = [f"state_dir: {tmp_path / 'state'}", "mqtt:"]
    lines += [f"  {key}: {json.dumps(value)}" for key, value in mqtt.items()]
    f = tmp_path / name
    f.write_text("\n".join(lines) + "\n")
    return f


@pytest.mark.needs_broker
def test_alerts_arrive_in_order_as_schema_valid_json(tmp_path: Path, broker: Mosquitto) -> None:
    config = sink_config(broker)
    raised = [make_alert(severity=s) for s in itertools.islice(itertools.cycle(Severity), 200)]

    async def scenario() -> dict[str, Any]:
        async with MqttSink(config, tmp_path, hostname="h") as sink:
            for alert in raised:
                sink.submit(alert)
            ok = await asyncio.to_thread(
                sub.wait_for, lambda m: len([x for x in m if "/alerts/" in x.topic]) >= 200
            )
            assert ok, f"{len(sub.alerts())} of 200 arrived"
        # After the stop (the flush): every acknowledgement has been taken in.
        return {f.name: f.samples[()] for f in sink.families() if not f.labels}

    with Subscriber(broker, f"{config.topic_prefix}/#") as sub:
        metrics = asyncio.run(scenario())
        assert sub.wait_for(lambda m: any(x.payload == b"offline" for x in m))
        statuses = sub.statuses()
    received = sub.alerts()
    assert ids(received) == [a.id for a in raised]  # in order, each once
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for alert, message in zip(raised, received, strict=True):
        doc = message.json()
        validator.validate(doc)
        assert doc == json.loads(json.dumps(alert.document()))
        assert message.topic == f"{config.topic_prefix}/alerts/{alert.severity}/test-rule"
    assert statuses == ["online", "offline"]  # retained online on connect, offline on stop
    assert metrics["bpf_auditd_mqtt_messages_acknowledged"] == 200
    assert metrics["bpf_auditd_mqtt_messages_spooled"] == 200
    assert metrics["bpf_auditd_mqtt_spool_messages"] == 0
    assert list(tmp_path.glob("mqtt-spool/*.json")) == []  # acknowledged: removed


@pytest.mark.needs_broker
def test_broker_down_ten_seconds_while_alerts_keep_coming_loses_none(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """At-least-once: every alert arrives; a repeat (same id) is possible only for alerts the
    broker had taken but not yet acknowledged when it went away. First arrivals are in order."""
    config = sink_config(broker)
    raised: list[Alert] = []

    async def raise_for(sink: MqttSink, seconds: float) -> None:
        # Real time on purpose: alerts keep being raised while the broker is away.
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            raised.append(make_alert())
            sink.submit(raised[-1])
            await asyncio.sleep(0.05)

    async def scenario() -> dict[str, Any]:
        async with MqttSink(config, tmp_path, hostname="h1") as sink:
            await raise_for(sink, 1.5)
            await asyncio.to_thread(broker.stop)
            before = len(raised)
            await raise_for(sink, 10)
            during = len(raised) - before
            waiting = {f.name: f.samples[()] for f in sink.families() if not f.labels}
            assert waiting["bpf_auditd_mqtt_connected"] == 0
            assert waiting["bpf_auditd_mqtt_spool_messages"] >= during  # kept while away
            await asyncio.to_thread(broker.start)
            await raise_for(sink, 1.5)
            ok = await asyncio.to_thread(
                sub.wait_for, lambda m: set(ids(alerts_of(m))) >= {a.id for a in raised}
            )
            assert ok, f"{len(set(ids(sub.alerts())))} of {len(raised)} distinct arrived"
            families = {f.name: f.samples for f in sink.families()}
            return {"during": during, "families": families}

    def alerts_of(m: list[Received]) -> list[Received]:
        return [x for x in m if "/alerts/" in x.topic]

    with Subscriber(broker, f"{config.topic_prefix}/#") as sub:
        result = asyncio.run(scenario())
    got = ids(sub.alerts())
    assert first_seen(got) == [a.id for a in raised]  # none missing, none reordered
    families = result["families"]
    assert result["during"] >= 100
    assert families["bpf_auditd_mqtt_reconnects"][()] >= 1
    assert families["bpf_auditd_mqtt_messages_dropped"][("spool_full",)] == 0
    assert families["bpf_auditd_mqtt_messages_acknowledged"][()] == len(raised)
    print(
        f"raised {len(raised)}, {result['during']} while the broker was down; "
        f"received {len(got)} ({len(got) - len(set(got))} repeats)"
    )


@pytest.mark.needs_broker
def test_sigkill_while_broker_is_down_then_restart_delivers_the_spool(
    tmp_path: Path, broker: Mosquitto
) -> None:
    prefix = f"test/{uuid.uuid4().hex[:8]}"
    config = config_file(tmp_path, {"url": broker.url, "topic_prefix": prefix})
    spool = tmp_path / "state" / "mqtt-spool"
    with Subscriber(broker, f"{prefix}/alerts/#") as sub:
        with SinkProcess(config) as first:
            first.wait_for("mqtt_connected")
            first.raise_alerts(5)
            assert sub.wait_for(lambda m: len(m) >= 5)
            broker.stop()
            first.wait_for("mqtt_disconnected")
            first.raise_alerts(40)
            deadline = time.monotonic() + 30
            while len(list(spool.glob("*.json"))) < 40 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(list(spool.glob("*.json"))) == 40
            first.kill()  # SIGKILL: no clean stop, no flush
        broker.start()
        with SinkProcess(config) as second:
            assert second.wait_for("mqtt_spool_loaded")["alerts"] == 40
            assert sub.wait_for(lambda m: len(set(ids(m))) >= 45)
            assert second.stop() == 0
    numbers = [m.json()["event"]["n"] for m in sub.messages]
    assert first_seen([str(n) for n in numbers]) == [str(n) for n in range(45)]
    assert list(spool.glob("*.json")) == []


@pytest.mark.needs_broker
def test_last_will_says_offline_when_the_sender_is_killed(
    tmp_path: Path, broker: Mosquitto
) -> None:
    prefix = f"test/{uuid.uuid4().hex[:8]}"
    config = config_file(tmp_path, {"url": broker.url, "topic_prefix": prefix})
    with Subscriber(broker, f"{prefix}/status") as sub, SinkProcess(config) as sender:
        sender.wait_for("mqtt_connected")
        assert sub.wait_for(lambda m: [x.payload for x in m] == [b"online"])
        sender.kill()
        assert sub.wait_for(lambda m: [x.payload for x in m] == [b"online", b"offline"])
    # Retained: a subscriber arriving later learns the sender is gone.
    with Subscriber(broker, f"{prefix}/status") as late:
        assert late.wait_for(lambda m: len(m) == 1)
        assert (late.messages[0].payload, late.messages[0].retain) == (b"offline", True)


@pytest.mark.needs_broker
def test_hostile_rule_process_and_host_names_give_valid_topics(
    tmp_path: Path, broker: Mosquitto
) -> None:
    config = sink_config(broker, topic_prefix="bpf-auditd/{hostname}")
    alert = make_alert(rule="rule with spaces/and/slashes")
    assert alert.event["comm"] == "a/+/#"
    want = "bpf-auditd/evil_host/alerts/warning/rule_with_spaces_and_slashes"

    async def scenario() -> None:
        async with MqttSink(config, tmp_path, hostname="evil/+#host") as sink:
            sink.submit(alert)
            assert await asyncio.to_thread(exact.wait_for, lambda m: len(m) >= 1)

    # Subscribed to the literal topic: it only matches if that is exactly where it went.
    with Subscriber(broker, want) as exact:
        asyncio.run(scenario())
    (message,) = exact.messages
    assert message.topic == want
    doc = message.json()
    assert (doc["rule"], doc["event"]["comm"]) == ("rule with spaces/and/slashes", "a/+/#")


# -- passwords and TLS --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def secure_broker(tmp_path: Path, certs: Certs) -> Iterator[Mosquitto]:
    """TLS, a password file, and a client certificate required (mutual TLS)."""
    with Mosquitto(
        tmp_path / "broker",
        users={"auditd": "right-horse"},
        certs=certs,
        require_client_cert=True,
    ) as b:
        yield b


def _secure_sink(tmp_path: Path, broker: Mosquitto, certs: Certs, **change: Any) -> Path:
    pw = tmp_path / "mqtt.pass"
    pw.write_text(change.pop("secret", "right-horse") + "\n")
    settings = {
        "url": broker.url,
        "topic_prefix": "secure/test",
        "username": "auditd",
        "password": f"file:{pw}",
        "tls_ca": str(certs.ca),
        "tls_cert": str(certs.client_cert),
        "tls_key": str(certs.client_key),
        "reconnect_max_delay": 0.3,
        "connect_timeout": 2.0,
    }
    settings.update(change)
    return config_file(tmp_path, {k: v for k, v in settings.items() if v is not None})


@pytest.mark.needs_broker
def test_tls_and_password_accept_the_right_credentials(
    tmp_path: Path, secure_broker: Mosquitto, certs: Certs
) -> None:
    config = _secure_sink(tmp_path, secure_broker, certs)
    with (
        Subscriber(
            secure_broker, "secure/test/#", username="auditd", password="right-horse"
        ) as sub,
        SinkProcess(config) as sender,
    ):
        connected = sender.wait_for("mqtt_connected")
        assert connected["broker"] == secure_broker.url
        sender.raise_alerts(3)
        assert sub.wait_for(lambda m: len([x for x in m if "/alerts/" in x.topic]) == 3)
        assert sender.stop() == 0
    assert not [e for e in sender.lines if e.get("level") in ("error", "warning")]


@pytest.mark.needs_broker
@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"secret": "wrong-horse"}, "broker refused the connection: Not authorized"),
        ({"username": "nobody"}, "broker refused the connection: Not authorized"),
        ({"tls_ca": "rogue"}, "certificate verify failed"),
        ({"tls_cert": None, "tls_key": None}, "certificate required"),
    ],
    ids=["wrong-password", "wrong-user", "untrusted-server", "no-client-certificate"],
)
def test_wrong_credentials_are_refused_with_one_clear_line(
    tmp_path: Path, secure_broker: Mosquitto, certs: Certs, change: dict[str, Any], says: str
) -> None:
    if change.get("tls_ca") == "rogue":
        change = {"tls_ca": str(certs.rogue_cert)}  # self-signed: did not sign the server
    config = _secure_sink(tmp_path, secure_broker, certs, **change)
    with SinkProcess(config) as sender:
        sender.wait_for("ready")
        # Two failed attempts, a third begun: the reason is logged once. (Without a client
        # certificate an attempt lasts the CONNACK timeout, 2 s here: TLS 1.3 reports it late.)
        deadline = time.monotonic() + 60
        while secure_broker.log_text().count("New connection from 127.0.0.1") < 3:
            assert time.monotonic() < deadline, secure_broker.log_text()
            time.sleep(0.1)
        assert sender.stop() == 0
    failures = [e for e in sender.lines if e.get("event") == "mqtt_connect_failed"]
    assert len(failures) == 1, failures
    assert says in failures[0]["error"], failures[0]
    assert failures[0]["broker"] == secure_broker.url
    assert not [e for e in sender.lines if e.get("event") == "mqtt_connected"]
    # Credentials and TLS are no version question: `auto` does not try the other version.
    assert not [e for e in sender.lines if e.get("event") == "mqtt_protocol_fallback"]
    everything = json.dumps(sender.lines)
    assert "right-horse" not in everything
    assert "wrong-horse" not in everything


# -- a broker that speaks only MQTT 3.1.1 ------------------------------------------------------


class V311OnlyBroker:
    """Just enough of an MQTT 3.1.1 broker that knows no v5 (Mosquitto cannot be told to forget
    it): refuses a v5 CONNECT with return code 1, accepts a 3.1.1 one, acknowledges QoS 1
    PUBLISHes and records them."""

    def __init__(self) -> None:
        self.levels: list[int] = []
        self.published: list[tuple[str, bytes]] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @staticmethod
    def _packet(conn: Any) -> tuple[int, bytes] | None:
        head = conn.recv(1)
        if not head:
            return None
        length, shift = 0, 0
        while True:
            byte = conn.recv(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = b""
        while len(body) < length:
            chunk = conn.recv(length - len(body))
            if not chunk:
                return None
            body += chunk
        return head[0], body

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                try:
                    self._session(conn)
                except (OSError, IndexError):
                    continue

    def _session(self, conn: Any) -> None:
        packet = self._packet(conn)
        if packet is None:
            return
        level = packet[1][6]  # after the protocol name "\0\4MQTT"
        self.levels.append(level)
        if level != 4:
            conn.sendall(b"\x20\x02\x00\x01")  # unacceptable protocol version
            return
        conn.sendall(b"\x20\x02\x00\x00")
        while (packet := self._packet(conn)) is not None:
            kind, body = packet
            if kind >> 4 == 3:  # PUBLISH
                n = int.from_bytes(body[:2], "big")
                topic = body[2 : 2 + n].decode()
                qos = (kind >> 1) & 3
                rest = body[2 + n :]
                if qos:
                    conn.sendall(b"\x40\x02" + rest[:2])  # PUBACK with the packet id
                    rest = rest[2:]
                self.published.append((topic, rest))
            elif kind >> 4 == 12:  # PINGREQ
                conn.sendall(b"\xd0\x00")
            elif kind >> 4 == 14:  # DISCONNECT
                return

    def close(self) -> None:
        self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self._server.close()
        self._thread.join(timeout=5)


def test_auto_protocol_falls_back_to_3_1_1_when_v5_is_refused(tmp_path: Path) -> None:
    broker = V311OnlyBroker()
    config = MqttConfig(url=f"mqtt://127.0.0.1:{broker.port}", topic_prefix="p")
    alert = make_alert()

    async def scenario() -> None:
        async with MqttSink(config, tmp_path, hostname="h1") as sink:
            sink.submit(alert)
            while sink.acknowledged < 1:
                await asyncio.sleep(0.01)

    try:
        asyncio.run(scenario())
    finally:
        broker.close()
    assert broker.levels == [5, 4]  # tried v5, then spoke 3.1.1
    topics = [topic for topic, _ in broker.published]
    assert topics == ["p/status", "p/alerts/warning/test-rule", "p/status"]
    assert json.loads(broker.published[1][1])["id"] == alert.id
    assert [payload for topic, payload in broker.published if topic == "p/status"] == [
        b"online",
        b"offline",
    ]
