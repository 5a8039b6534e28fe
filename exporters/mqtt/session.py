"""The broker connection: connect (MQTT 5 or 3.1.1; with `auto`, the version that last worked
first and the other when a version is refused, met with silence or dropped: `protocols`),
publish the outbox in order with a window of unacknowledged messages, reconnect with backoff
and jitter, say online/offline on the status topic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import deque
from dataclasses import dataclass

import aiomqtt
import paho.mqtt.client as paho
import structlog
from aiomqtt.exceptions import MqttCodeError, MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from exporters.mqtt.config import MqttConfig
from exporters.mqtt.outbox import Message, Outbox
from exporters.mqtt.protocols import (
    NAMES,
    ProtocolMemory,
    no_connack,
    order,
    release,
    version_refused,
)

log = structlog.get_logger("bpf-auditd.mqtt")

WINDOW = 20  # publishes awaiting PUBACK at once (paho's default in-flight limit)
PUBLISH_TIMEOUT_S = 30.0  # no PUBACK by then: treat the connection as broken, resend
FIRST_RETRY_S = 0.5
OFFLINE_TIMEOUT_S = 0.5


def describe_error(exc: BaseException) -> str:
    """One line for the operator from what aiomqtt/paho raised."""
    if isinstance(exc, MqttConnectError):
        return f"broker refused the connection: {exc.rc}"
    if isinstance(exc, MqttCodeError) and exc.rc is not None:
        return str(exc)
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


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


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and as whom to connect."""

    url: str
    host: str
    port: int
    client_id: str
    status_topic: str
    password: str | None
    tls: ssl.SSLContext | None


class Session:
    """`run()` keeps a connection up until `close()` (then flushes what it can, in time)."""

    def __init__(
        self,
        config: MqttConfig,
        endpoint: Endpoint,
        outbox: Outbox,
        memory: ProtocolMemory | None = None,
    ) -> None:
        self.config = config
        self.endpoint = endpoint
        self.outbox = outbox
        self.memory = memory  # `auto` only: the version that worked last, per broker URL
        self._remembered = memory.load() if memory is not None else None
        self._closing = asyncio.Event()
        self._abandon = False
        self._last_error: str | None = None
        self._client_log = _ClientLog()
        # Telemetry, read from the metrics thread.
        self.published = 0
        self.connected = False
        self.connections = 0
        self.connect_failures = 0

    def close(self, *, abandon: bool = False) -> None:
        """Stop after the outbox is sent (or at once with `abandon`: say offline, disconnect)."""
        self._closing.set()
        self._abandon = self._abandon or abandon
        self.outbox.wakeup.set()

    async def run(self) -> None:
        delay = FIRST_RETRY_S
        while not self._closing.is_set():
            before = self.connections
            failure = await self._attempt()
            if failure is None:
                return
            lost = self.connections > before  # it was up: a disconnection, retry soon
            if lost:
                delay = FIRST_RETRY_S
            self._report(failure, lost=lost, retry_in=delay)
            # Jitter keeps a fleet that lost one broker from reconnecting in lock step.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.config.reconnect_max_delay)

    async def _attempt(self) -> Exception | None:
        """One connection, trying the versions in order while the failure is a version
        question; the error that ended it (None: closed as asked)."""
        failure: Exception | None = None
        versions = order(self.config.protocol, self._remembered)
        for i, protocol in enumerate(versions):
            before = self.connections
            try:
                await self._connection(protocol)
                return None
            except aiomqtt.MqttError as exc:
                failure = exc
            except (OSError, ValueError, RuntimeError) as exc:
                # What paho raises outside aiomqtt's translation: retried like a refused
                # connection (and logged), so alerts keep being spooled rather than stranded.
                return exc
            if self.connections > before or i + 1 == len(versions):
                break
            why = self._version_question(failure)
            if why is None:
                break
            log.info(
                "mqtt_protocol_fallback",
                broker=self.endpoint.url,
                failed=NAMES[protocol],
                why=why,
                protocol=NAMES[versions[i + 1]],
            )
        return failure

    def _version_question(self, exc: BaseException) -> str | None:
        """Why the broker may not speak this version; None when the failure is anything else
        (network, TLS, credentials), which another version would not fix."""
        if version_refused(exc):
            return f"CONNACK refused the version ({describe_error(exc)})"
        tls = self._client_log.last_error is not None and "SSL" in self._client_log.last_error
        if no_connack(exc) and not tls:
            return (
                f"no CONNACK within {self.config.connect_timeout:g} s "
                "(silence, or the connection was dropped)"
            )
        return None

    def _connected_with(self, protocol: aiomqtt.ProtocolVersion) -> None:
        if self.memory is None or self.config.protocol != "auto":
            return
        if protocol is not self._remembered and self.memory.save(protocol):
            log.info("mqtt_protocol_remembered", broker=self.endpoint.url, protocol=NAMES[protocol])
        self._remembered = protocol

    def _report(self, exc: BaseException, *, lost: bool, retry_in: float) -> None:
        """One log line per disconnection, and per distinct reason a connection fails (a
        broker that stays down, or refuses our credentials, is not logged every retry)."""
        error = describe_error(exc)
        if not lost and error == "Operation timed out":
            # No CONNACK: say why when paho saw it (e.g. the broker wants a client certificate).
            why = self._client_log.last_error or f"nothing within {self.config.connect_timeout:g} s"
            error = f"no answer to CONNECT: {why}"
        if not lost:
            self.connect_failures += 1
            if error == self._last_error:
                return
        self._last_error = error
        log.error(
            "mqtt_disconnected" if lost else "mqtt_connect_failed",
            broker=self.endpoint.url,
            error=error,
            retry_in_s=round(retry_in, 2),
            unacknowledged=len(self.outbox),
        )

    def _client(self, protocol: aiomqtt.ProtocolVersion) -> aiomqtt.Client:
        v5 = protocol is aiomqtt.ProtocolVersion.V5
        self._client_log = _ClientLog()
        client = aiomqtt.Client(
            self.endpoint.host,
            self.endpoint.port,
            username=self.config.username,
            password=self.endpoint.password,
            identifier=self.endpoint.client_id,
            protocol=protocol,
            will=aiomqtt.Will(self.endpoint.status_topic, b"offline", qos=1, retain=True),
            # Our spool is the session state: every connection starts clean.
            clean_session=None if v5 else True,
            clean_start=True if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,  # v3: the only value
            keepalive=self.config.keepalive,
            timeout=self.config.connect_timeout,
            tls_context=self.endpoint.tls,
            logger=self._client_log.logger,
            max_inflight_messages=WINDOW,
        )
        client.pending_calls_threshold = WINDOW + 10
        return client

    @staticmethod
    def _properties(protocol: aiomqtt.ProtocolVersion) -> Properties | None:
        if protocol is not aiomqtt.ProtocolVersion.V5:
            return None
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ContentType = "application/json"
        properties.PayloadFormatIndicator = 1  # UTF-8
        return properties

    async def _connection(self, protocol: aiomqtt.ProtocolVersion) -> None:
        client = self._client(protocol)
        status = self.endpoint.status_topic
        before = self.connections
        try:
            async with client:
                self.connections += 1
                self.connected = True
                self._last_error = None
                self._connected_with(protocol)
                log.info(
                    "mqtt_connected",
                    broker=self.endpoint.url,
                    protocol=NAMES[protocol],
                    client_id=self.endpoint.client_id,
                    unacknowledged=len(self.outbox),
                )
                try:
                    await client.publish(
                        status, b"online", qos=1, retain=True, timeout=PUBLISH_TIMEOUT_S
                    )
                    await self._serve(client, self._properties(protocol))
                    # A clean DISCONNECT suppresses the will: say offline ourselves.
                    await client.publish(
                        status, b"offline", qos=1, retain=True, timeout=OFFLINE_TIMEOUT_S
                    )
                finally:
                    self.connected = False
        except aiomqtt.MqttError:
            if self.connections == before:  # never got up: aiomqtt may hold its socket open
                release(client)
            raise

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
        outbox = self.outbox
        outbox.start_sending()
        inflight: deque[tuple[Message, asyncio.Task[None]]] = deque()
        wake = outbox.wakeup

        def woken(_: object) -> None:
            wake.set()

        try:
            while True:
                for message in outbox.take(WINDOW - len(inflight)):
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
                    outbox.acknowledge(message)
                if self._abandon:
                    return
                if (
                    self._closing.is_set()
                    and not inflight
                    and not outbox.has_unsent()
                    and outbox.idle()
                ):
                    return
                if (outbox.has_unsent() and len(inflight) < WINDOW) or (
                    inflight and inflight[0][1].done()
                ):
                    continue
                await wake.wait()
                wake.clear()
        finally:
            outbox.stop_sending()
            for _, task in inflight:  # unacknowledged: they stay spooled for the next connection
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # retrieved: asyncio would report it as never retrieved
