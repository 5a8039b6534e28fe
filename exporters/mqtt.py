"""MQTT alert stream: every alert spooled on disk, published as versioned JSON, removed from the
spool when the broker acknowledges it; reconnects with backoff and resends in order.

Topics: `<prefix>/alerts/<severity>/<rule>`. The severity is a closed set; the rule name is the
operator's, made topic-safe (`[A-Za-z0-9._:-]`, anything else → `_`: a valid policy rule name
passes unchanged, a name from elsewhere cannot add a level or a wildcard). Process-controlled
strings (comm, paths, cgroup names) only ever appear in the payload. Subscribe to
`<prefix>/alerts/#` for everything, `<prefix>/alerts/critical/#` for one severity,
`<prefix>/alerts/+/<rule>` for one rule. `<prefix>/status` holds `online` (retained, sent on
connect) or `offline` (retained: the Last Will when the daemon dies, and sent on a clean stop).

Delivery is at-least-once: an alert is removed from the spool only after its PUBACK (QoS 1), so a
connection or the daemon lost between the broker's acknowledgement and the removal resends it.
Each payload carries a unique `id`: consumers drop repeats. Alerts go out in the order they were
raised; a resend after a reconnect restarts from the oldest unacknowledged alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import socket
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import structlog
from aiomqtt.exceptions import MqttCodeError, MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from auditd.alerts import Alert, SinkError
from auditd.config import MqttConfig, parse_mqtt_url
from auditd.telemetry import Family, counter, gauge
from exporters.spool import Spool, SpoolError

log = structlog.get_logger("bpf-auditd.mqtt")

HOSTNAME_PLACEHOLDER = "{hostname}"
SPOOL_DIRECTORY = "mqtt-spool"  # under the daemon's state_dir
WINDOW = 20  # publishes awaiting PUBACK at once (paho's default in-flight limit)
PUBLISH_TIMEOUT_S = 30.0  # no PUBACK by then: treat the connection as broken, resend
CONNECT_TIMEOUT_S = 10.0
FIRST_RETRY_S = 0.5
FLUSH_TIMEOUT_S = 1.0  # on stop, time to get the last alerts acknowledged (the rest stay spooled)
OFFLINE_TIMEOUT_S = 0.5
DROP_LOG_INTERVAL_S = 10.0
DROP_REASONS = ("spool_full", "spool_corrupt", "not_spooled")
# CONNACK codes for "this protocol version is not spoken here" (3.1.1: 1, v5: 0x84).
_UNSUPPORTED_PROTOCOL = {1, 0x84}

PUBLISHED = counter(
    "mqtt_messages_published",
    "Alert messages sent to the broker (a resend after a reconnect counts again).",
)
ACKNOWLEDGED = counter(
    "mqtt_messages_acknowledged",
    "Alert messages the broker acknowledged (PUBACK at QoS 1) and that left the spool.",
)
SPOOLED = counter("mqtt_messages_spooled", "Alert messages written to the on-disk spool.")
DROPPED = counter(
    "mqtt_messages_dropped",
    "Alert messages lost, by reason: spool_full (the oldest made room), spool_corrupt "
    "(unreadable at start), not_spooled (spool write failed and not delivered by exit).",
    "reason",
)
SPOOL_ERRORS = counter(
    "mqtt_spool_errors", "Spool writes or removals that failed (a failed write is still sent)."
)
SPOOL_MESSAGES = gauge("mqtt_spool_messages", "Alert messages not yet acknowledged by the broker.")
SPOOL_BYTES = gauge("mqtt_spool_bytes", "Payload bytes of the alert messages not yet acknowledged.")
CONNECTED = gauge("mqtt_connected", "1 while connected to the broker.")
RECONNECTS = counter(
    "mqtt_reconnects", "Connections to the broker established after the first one."
)
CONNECT_FAILURES = counter("mqtt_connect_failures", "Connection attempts that failed.")


class MqttSinkError(SinkError):
    """The MQTT sink cannot start (unreadable credentials or TLS files, unusable spool)."""


# -- topics and payloads (pure) -------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")


def topic_segment(text: str, max_length: int = 64) -> str:
    """One topic level from an arbitrary name: never empty, never `+`, `#`, `/`, `$` or NUL."""
    return _UNSAFE.sub("_", text).strip("_")[:max_length] or "_"


def expand(template: str, hostname: str) -> str:
    return template.replace(HOSTNAME_PLACEHOLDER, topic_segment(hostname))


def alert_topic(prefix: str, severity: str, rule: str) -> str:
    return f"{prefix}/alerts/{topic_segment(severity)}/{topic_segment(rule)}"


def status_topic(prefix: str) -> str:
    return f"{prefix}/status"


def encode(alert: Alert) -> bytes:
    return json.dumps(alert.document(), separators=(",", ":"), default=str).encode()


def valid_topic(topic: str) -> bool:
    """A topic one may publish to: UTF-8, no wildcards, no empty level, no NUL, ≤ 65535 bytes."""
    return (
        0 < len(topic.encode()) <= 65535
        and "\0" not in topic
        and all(level and "+" not in level and "#" not in level for level in topic.split("/"))
    )


def resolve_secret(reference: str, environ: Mapping[str, str]) -> str:
    """`env:NAME` or `file:PATH` → the secret. Errors name where, never what."""
    kind, _, where = reference.partition(":")
    if kind == "env":
        if where not in environ:
            raise MqttSinkError(f"mqtt.password: environment variable {where} is not set")
        return environ[where]
    try:
        return Path(where).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise MqttSinkError(f"mqtt.password: cannot read {where}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise MqttSinkError(f"mqtt.password: {where} is not UTF-8 text") from exc


def describe_error(exc: BaseException) -> str:
    """One line for the operator from what aiomqtt/paho raised."""
    if isinstance(exc, MqttConnectError):
        return f"broker refused the connection: {exc.rc}"
    if isinstance(exc, MqttCodeError) and exc.rc is not None:
        return str(exc)
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _connect_code(exc: MqttConnectError) -> int | None:
    rc = exc.rc
    return rc if isinstance(rc, int) else getattr(rc, "value", None)


class _ClientLog(logging.Handler):
    """Where paho and aiomqtt log (stdlib logging, configured by no one here: left alone it
    would print plain text into our JSON stdout). Keeps paho's last error, such as a TLS alert
    while waiting for CONNACK, which aiomqtt reports only as a timeout."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last_error: str | None = None
        # Not registered with logging's manager: one per connection, garbage with it.
        self.logger = logging.Logger("bpf-auditd.mqtt.client", logging.ERROR)
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.last_error = record.getMessage().splitlines()[0]


# -- the sink -------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Message:
    seq: int
    topic: str
    payload: bytes
    on_disk: bool = False
    ready: bool = False  # spool write done (or failed): may be sent
    dropped: bool = False


class MqttSink:
    """`async with MqttSink(config, state_dir):` streams submitted alerts to the broker; the
    spool is `<state_dir>/mqtt-spool`."""

    name = "mqtt"

    def __init__(
        self,
        config: MqttConfig,
        state_dir: Path,
        *,
        hostname: str | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.url is None:
            raise MqttSinkError("mqtt.url is not set")
        self.config = config
        self.url = config.url
        self._tls, self._host, self._port = parse_mqtt_url(config.url)
        if not self._tls and (config.tls_ca or config.tls_cert or config.tls_key):
            raise MqttSinkError(
                "mqtt.tls_ca/tls_cert/tls_key are set but mqtt.url is mqtt:// (plain); use mqtts://"
            )
        if config.tls_key and not config.tls_cert:
            raise MqttSinkError("mqtt.tls_key needs mqtt.tls_cert")
        if config.password and not config.username:
            raise MqttSinkError("mqtt.password needs mqtt.username")
        host = hostname if hostname is not None else socket.gethostname()
        self.prefix = expand(config.topic_prefix, host)
        self.client_id = expand(config.client_id, host)
        self.status_topic = status_topic(self.prefix)
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self._spool = Spool(state_dir / SPOOL_DIRECTORY, fsync=config.spool_fsync)
        self._protocol = (
            aiomqtt.ProtocolVersion.V311
            if config.protocol == "v311"
            else aiomqtt.ProtocolVersion.V5
        )
        # Read now, so unreadable credentials or certificates stop start-up before any probe
        # is loaded (small files, read once).
        self._password, self._ssl = self._credentials()
        # Every alert not yet acknowledged (nor dropped), oldest first.
        self._pending: OrderedDict[int, _Message] = OrderedDict()
        self._bytes = 0
        self._next_seq = 1
        self._to_write: list[_Message] = []
        self._to_remove: list[int] = []
        self._unsent: deque[_Message] = deque()
        self._disk_busy = False
        self._disk_stopping = False
        self._pumping = False  # a connection is up and taking messages from _unsent
        self._tasks: list[asyncio.Task[None]] = []
        self._disk_wakeup = asyncio.Event()  # work for the spool task
        self._wakeup = asyncio.Event()  # work for the publishing loop
        self._closing = asyncio.Event()
        self._entered = False
        self._abandon = False
        self._last_error: str | None = None
        self._client_log = _ClientLog()
        # Telemetry, read from the metrics thread (ints only; dict keys fixed up front).
        self.published = 0
        self.acknowledged = 0
        self.spooled = 0
        self.spool_errors = 0
        self.connected = False
        self.connections = 0
        self.connect_failures = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._unlogged_drops = dict.fromkeys(DROP_REASONS, 0)
        self._last_drop_log = self._last_spool_log = -DROP_LOG_INTERVAL_S

    # -- telemetry --------------------------------------------------------------------------

    def declared(self) -> list[Family]:
        return [
            PUBLISHED,
            ACKNOWLEDGED,
            SPOOLED,
            DROPPED,
            SPOOL_ERRORS,
            SPOOL_MESSAGES,
            SPOOL_BYTES,
            CONNECTED,
            RECONNECTS,
            CONNECT_FAILURES,
        ]

    def families(self) -> list[Family]:
        return [
            PUBLISHED.with_samples({(): self.published}),
            ACKNOWLEDGED.with_samples({(): self.acknowledged}),
            SPOOLED.with_samples({(): self.spooled}),
            DROPPED.with_samples({(r,): self.dropped[r] for r in DROP_REASONS}),
            SPOOL_ERRORS.with_samples({(): self.spool_errors}),
            SPOOL_MESSAGES.with_samples({(): len(self._pending)}),
            SPOOL_BYTES.with_samples({(): self._bytes}),
            CONNECTED.with_samples({(): int(self.connected)}),
            RECONNECTS.with_samples({(): max(0, self.connections - 1)}),
            CONNECT_FAILURES.with_samples({(): self.connect_failures}),
        ]

    # -- AlertSink ---------------------------------------------------------------------------

    def submit(self, alert: Alert) -> None:
        """Queue the alert for the spool, then the broker. Never blocks."""
        assert self._entered, "submit before __aenter__"
        message = _Message(
            self._next_seq,
            alert_topic(self.prefix, alert.severity.value, alert.rule),
            encode(alert),
        )
        self._next_seq += 1
        self._pending[message.seq] = message
        self._bytes += len(message.payload)
        self._to_write.append(message)
        self._disk_wakeup.set()
        self._enforce_bounds()

    async def __aenter__(self) -> MqttSink:
        loaded = await asyncio.to_thread(self._open_spool)
        corrupt = 0
        for seq, payload in loaded.records:
            topic = self._topic_of(payload)
            if topic is None:
                corrupt += 1
                self._to_remove.append(seq)
                continue
            self._pending[seq] = _Message(seq, topic, payload, on_disk=True, ready=True)
            self._bytes += len(payload)
        if loaded.records:
            self._next_seq = loaded.records[-1][0] + 1
        self._count_drops("spool_corrupt", corrupt + loaded.unreadable)
        self._enforce_bounds()
        if self._pending:
            log.info(
                "mqtt_spool_loaded", alerts=len(self._pending), spool=str(self._spool.directory)
            )
        self._tasks = [
            asyncio.create_task(self._disk(), name="mqtt-spool"),
            asyncio.create_task(self._run(), name="mqtt-client"),
        ]
        for task in self._tasks:
            task.add_done_callback(_report_crash)
        self._entered = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        disk, runner = self._tasks
        self._closing.set()
        self._wakeup.set()
        done, _ = await asyncio.wait({runner}, timeout=FLUSH_TIMEOUT_S)
        if not done:
            # Still waiting for acknowledgements: stop waiting, say offline, disconnect.
            self._abandon = True
            self._wakeup.set()
            done, _ = await asyncio.wait({runner}, timeout=OFFLINE_TIMEOUT_S)
        if not done:
            runner.cancel()
        self._disk_stopping = True
        self._disk_wakeup.set()
        # A task that crashed was logged by _report_crash; the stop goes on regardless.
        await asyncio.gather(runner, disk, return_exceptions=True)
        unspooled = sum(1 for m in self._pending.values() if not m.on_disk)
        self._count_drops("not_spooled", unspooled)
        self._log_drops(force=True)
        await asyncio.to_thread(self._spool.close)
        log.info("mqtt_stopped", unacknowledged=len(self._pending) - unspooled)

    # -- start-up ------------------------------------------------------------------------------

    def _credentials(self) -> tuple[str | None, ssl.SSLContext | None]:
        config = self.config
        password = None
        if config.password is not None:
            password = resolve_secret(config.password, self._environ)
        if not self._tls:
            return password, None
        try:
            context = ssl.create_default_context(cafile=config.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise MqttSinkError(_file_error("mqtt.tls_ca", config.tls_ca, exc)) from exc
        if config.tls_cert:
            try:
                context.load_cert_chain(config.tls_cert, config.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise MqttSinkError(_file_error("mqtt.tls_cert", config.tls_cert, exc)) from exc
        return password, context

    def _open_spool(self) -> Any:
        try:
            return self._spool.open()
        except SpoolError as exc:
            raise MqttSinkError(str(exc)) from exc

    def _topic_of(self, payload: bytes) -> str | None:
        """The topic of a spooled alert, from its document (the prefix may have changed)."""
        try:
            doc = json.loads(payload)
            return alert_topic(self.prefix, str(doc["severity"]), str(doc["rule"]))
        except (ValueError, KeyError, TypeError):
            return None

    # -- bounds and drops -------------------------------------------------------------------

    def _enforce_bounds(self) -> None:
        limit, max_bytes = self.config.spool_max_messages, self.config.spool_max_bytes
        dropped = 0
        while self._pending and (len(self._pending) > limit or self._bytes > max_bytes):
            seq, message = self._pending.popitem(last=False)
            self._bytes -= len(message.payload)
            message.dropped = True
            dropped += 1
            if message.on_disk:
                self._to_remove.append(seq)
        self._count_drops("spool_full", dropped)

    def _count_drops(self, reason: str, n: int) -> None:
        if n <= 0:
            return
        self.dropped[reason] += n
        self._unlogged_drops[reason] += n
        self._log_drops()

    def _log_drops(self, *, force: bool = False) -> None:
        now = self._clock()
        if not any(self._unlogged_drops.values()):
            return
        if not force and now - self._last_drop_log < DROP_LOG_INTERVAL_S:
            return
        self._last_drop_log = now
        for reason, n in self._unlogged_drops.items():
            if n:
                log.warning(
                    "mqtt_alerts_dropped",
                    reason=reason,
                    dropped=n,
                    total=self.dropped[reason],
                    spool_max_messages=self.config.spool_max_messages,
                    spool_max_bytes=self.config.spool_max_bytes,
                )
        self._unlogged_drops = dict.fromkeys(DROP_REASONS, 0)

    # -- the spool task: every disk operation, in order ------------------------------------

    async def _disk(self) -> None:
        while True:
            await self._disk_wakeup.wait()
            self._disk_wakeup.clear()
            await self._disk_round()
            if self._disk_stopping and not self._to_write and not self._to_remove:
                return

    async def _disk_round(self) -> None:
        self._disk_busy = True
        try:
            batch = [m for m in self._to_write if not m.dropped]
            self._to_write = []
            if batch:
                failed = await asyncio.to_thread(
                    self._spool.write, [(m.seq, m.payload) for m in batch]
                )
                for message in batch:
                    if message.seq in failed:
                        self.spool_errors += 1
                        self._spool_failure("write", failed[message.seq])
                    else:
                        message.on_disk = True
                        self.spooled += 1
                    if message.dropped:
                        if message.on_disk:
                            self._to_remove.append(message.seq)
                    else:
                        message.ready = True
                        if self._pumping:  # else the next connection picks it up
                            self._unsent.append(message)
            removals, self._to_remove = self._to_remove, []
            if removals:
                errors = await asyncio.to_thread(self._spool.remove, removals)
                if errors:
                    self.spool_errors += errors
                    self._spool_failure("remove", f"{errors} file(s) not removed")
        finally:
            self._disk_busy = False
            self._wakeup.set()

    def _spool_failure(self, operation: str, reason: str) -> None:
        now = self._clock()
        if now - self._last_spool_log >= DROP_LOG_INTERVAL_S:
            self._last_spool_log = now
            log.error(
                "mqtt_spool_failed",
                operation=operation,
                error=reason,
                spool=str(self._spool.directory),
                total=self.spool_errors,
            )

    def _disk_idle(self) -> bool:
        return not self._disk_busy and not self._to_write

    # -- the client task: connect, publish in order, reconnect with backoff ---------------

    async def _run(self) -> None:
        delay = FIRST_RETRY_S
        while not self._closing.is_set():
            protocol = self._protocol
            before = self.connections
            try:
                await self._session(protocol)
                return
            except aiomqtt.MqttError as exc:
                if (
                    isinstance(exc, MqttConnectError)
                    and self.config.protocol == "auto"
                    and protocol is aiomqtt.ProtocolVersion.V5
                    and _connect_code(exc) in _UNSUPPORTED_PROTOCOL
                ):
                    self._protocol = aiomqtt.ProtocolVersion.V311
                    log.info("mqtt_protocol_fallback", broker=self.url, protocol="3.1.1")
                    continue
                failure: Exception = exc
            except (OSError, ValueError, RuntimeError) as exc:
                # What paho raises outside aiomqtt's translation: retried like a refused
                # connection (and logged), so alerts keep being spooled rather than stranded.
                failure = exc
            lost = self.connections > before  # it was up: a disconnection, retry soon
            if lost:
                delay = FIRST_RETRY_S
            self._report(failure, lost=lost, retry_in=delay)
            # Jitter keeps a fleet that lost one broker from reconnecting in lock step.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.config.reconnect_max_delay)

    def _report(self, exc: BaseException, *, lost: bool, retry_in: float) -> None:
        """One log line per disconnection, and per distinct reason a connection fails (a
        broker that stays down, or refuses our credentials, is not logged every retry)."""
        error = describe_error(exc)
        if not lost and error == "Operation timed out":
            # No CONNACK: say why when paho saw it (e.g. the broker wants a client certificate).
            why = self._client_log.last_error or f"nothing within {CONNECT_TIMEOUT_S:g} s"
            error = f"no answer to CONNECT: {why}"
        if not lost:
            self.connect_failures += 1
            if error == self._last_error:
                return
        self._last_error = error
        log.error(
            "mqtt_disconnected" if lost else "mqtt_connect_failed",
            broker=self.url,
            error=error,
            retry_in_s=round(retry_in, 2),
            unacknowledged=len(self._pending),
        )

    def _client(self, protocol: aiomqtt.ProtocolVersion) -> aiomqtt.Client:
        v5 = protocol is aiomqtt.ProtocolVersion.V5
        self._client_log = _ClientLog()
        client = aiomqtt.Client(
            self._host,
            self._port,
            username=self.config.username,
            password=self._password,
            identifier=self.client_id,
            protocol=protocol,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
            # Our spool is the session state: every connection starts clean.
            clean_session=None if v5 else True,
            clean_start=True if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,  # v3: the only value
            keepalive=self.config.keepalive,
            timeout=CONNECT_TIMEOUT_S,
            tls_context=self._ssl,
            logger=self._client_log.logger,
            max_inflight_messages=WINDOW,
        )
        client.pending_calls_threshold = WINDOW + 10
        return client

    def _properties(self, protocol: aiomqtt.ProtocolVersion) -> Properties | None:
        if protocol is not aiomqtt.ProtocolVersion.V5:
            return None
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ContentType = "application/json"
        properties.PayloadFormatIndicator = 1  # UTF-8
        return properties

    async def _session(self, protocol: aiomqtt.ProtocolVersion) -> None:
        client = self._client(protocol)
        async with client:
            self.connections += 1
            self.connected = True
            self._last_error = None
            log.info(
                "mqtt_connected",
                broker=self.url,
                protocol="5" if protocol is aiomqtt.ProtocolVersion.V5 else "3.1.1",
                client_id=self.client_id,
                unacknowledged=len(self._pending),
            )
            try:
                await client.publish(
                    self.status_topic, b"online", qos=1, retain=True, timeout=PUBLISH_TIMEOUT_S
                )
                await self._serve(client, self._properties(protocol))
                # A clean DISCONNECT suppresses the will: say offline ourselves.
                await client.publish(
                    self.status_topic, b"offline", qos=1, retain=True, timeout=OFFLINE_TIMEOUT_S
                )
            finally:
                self.connected = False

    async def _serve(self, client: aiomqtt.Client, properties: Properties | None) -> None:
        """Publish until asked to close; raises MqttError when the connection is lost."""
        watcher = asyncio.create_task(self._watch(client))
        pump = asyncio.create_task(self._pump(client, properties))
        try:
            done, _ = await asyncio.wait({watcher, pump}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watcher, pump):
                task.cancel()
            await asyncio.gather(watcher, pump, return_exceptions=True)
        if pump in done:
            pump.result()
        else:
            watcher.result()

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        # We subscribe to nothing: the iterator ends only by raising when the connection drops.
        try:
            async for _ in client.messages:
                pass
        except aiomqtt.MqttError as exc:
            why = describe_error(exc.__cause__) if exc.__cause__ else "closed"
            raise aiomqtt.MqttError(f"connection lost: {why}") from exc
        raise aiomqtt.MqttError("connection lost: closed")

    async def _pump(self, client: aiomqtt.Client, properties: Properties | None) -> None:
        # A new connection starts over from the oldest unacknowledged alert, in order.
        self._unsent = deque(m for m in self._pending.values() if m.ready)
        self._pumping = True
        inflight: deque[tuple[_Message, asyncio.Task[None]]] = deque()
        wake = self._wakeup

        def woken(_: object) -> None:
            wake.set()

        try:
            while True:
                while self._unsent and len(inflight) < WINDOW:
                    message = self._unsent.popleft()
                    if message.dropped or message.seq not in self._pending:
                        continue
                    # Tasks start in creation order, so paho sends the PUBLISHes in order.
                    task = asyncio.create_task(
                        client.publish(
                            message.topic,
                            message.payload,
                            qos=self.config.qos,
                            properties=properties,
                            timeout=PUBLISH_TIMEOUT_S,
                        )
                    )
                    task.add_done_callback(woken)
                    inflight.append((message, task))
                    self.published += 1
                while inflight and inflight[0][1].done():
                    message, task = inflight.popleft()
                    task.result()  # MqttError: connection broken; the alert stays spooled
                    self._acknowledged(message)
                if self._abandon:
                    return
                if (
                    self._closing.is_set()
                    and not inflight
                    and not self._unsent
                    and self._disk_idle()
                ):
                    return
                if (self._unsent and len(inflight) < WINDOW) or (
                    inflight and inflight[0][1].done()
                ):
                    continue
                await wake.wait()
                wake.clear()
        finally:
            self._pumping = False
            self._unsent.clear()
            for _, task in inflight:  # unacknowledged: they stay spooled for the next connection
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # retrieved: asyncio would report it as never retrieved

    def _acknowledged(self, message: _Message) -> None:
        if self._pending.pop(message.seq, None) is None:
            return  # dropped while in flight (spool full); already counted
        self._bytes -= len(message.payload)
        self.acknowledged += 1
        if message.on_disk:
            self._to_remove.append(message.seq)
            self._disk_wakeup.set()


def _report_crash(task: asyncio.Task[None]) -> None:
    # A bug in a sink task must not pass silently while alerts pile up in the spool.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("mqtt_task_failed", task=task.get_name(), error=repr(exc))


def _file_error(key: str, path: str | None, exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"{key}: {path}: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return f"{key}: cannot read {path}: {exc.strerror}"
    return f"{key}: {exc}"
