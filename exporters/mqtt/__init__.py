"""MQTT alert stream: every alert spooled on disk, published as versioned JSON, removed from the
spool when the broker acknowledges it; reconnects with backoff and resends in order.

Topics are `<prefix>/alerts/<severity>/<rule>` (`topics`). Subscribe to `<prefix>/alerts/#` for
everything, `<prefix>/alerts/critical/#` for one severity, `<prefix>/alerts/+/<rule>` for one
rule. `<prefix>/status` holds `online` (retained, sent on connect) or `offline` (retained: the
Last Will when the daemon dies, and sent on a clean stop).

Delivery is at-least-once: an alert is removed from the spool only after its PUBACK (QoS 1), so a
connection or the daemon lost between the broker's acknowledgement and the removal resends it.
Each payload carries a unique `id`: consumers drop repeats. Alerts go out in the order they were
raised; a resend after a reconnect restarts from the oldest unacknowledged alert.

The sink composes three parts: the `outbox` (spool, bounds, drops), the `session` (the broker
connection) and the telemetry they keep.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from exporters.families import Family, counter, gauge
from exporters.mqtt.config import MqttConfig, parse_mqtt_url
from exporters.mqtt.outbox import DROP_LOG_INTERVAL_S, DROP_REASONS, Outbox, OutboxError
from exporters.mqtt.protocols import ProtocolMemory
from exporters.mqtt.session import Endpoint, Session
from exporters.mqtt.topics import alert_topic, encode, expand, status_topic, topic_of
from exporters.sink import Publishable, SinkError
from exporters.spool import Spool

__all__ = ["DROP_LOG_INTERVAL_S", "MqttSink", "MqttSinkError", "resolve_secret"]

log = structlog.get_logger("bpf-auditd.mqtt")

SPOOL_DIRECTORY = "mqtt-spool"  # under the daemon's state_dir
FLUSH_TIMEOUT_S = 1.0  # on stop, time to get the last alerts acknowledged (the rest stay spooled)
OFFLINE_TIMEOUT_S = 0.5

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


class MqttSink:
    """`async with MqttSink(config, state_dir, hostname=host):` streams submitted alerts to the
    broker; the spool is `<state_dir>/mqtt-spool`. `hostname` fills `{hostname}` in the client
    id and the topic prefix."""

    name = "mqtt"

    def __init__(
        self,
        config: MqttConfig,
        state_dir: Path,
        *,
        hostname: str,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.url is None:
            raise MqttSinkError("mqtt.url is not set")
        self.config = config
        self.url = config.url
        tls, host, port = parse_mqtt_url(config.url)
        if not tls and (config.tls_ca or config.tls_cert or config.tls_key):
            raise MqttSinkError(
                "mqtt.tls_ca/tls_cert/tls_key are set but mqtt.url is mqtt:// (plain); use mqtts://"
            )
        if config.tls_key and not config.tls_cert:
            raise MqttSinkError("mqtt.tls_key needs mqtt.tls_cert")
        if config.password and not config.username:
            raise MqttSinkError("mqtt.password needs mqtt.username")
        self.prefix = expand(config.topic_prefix, hostname)
        self.client_id = expand(config.client_id, hostname)
        self.status_topic = status_topic(self.prefix)
        # Read now, so unreadable credentials or certificates stop start-up before any probe
        # is loaded (small files, read once).
        password = None
        if config.password is not None:
            password = resolve_secret(config.password, os.environ if environ is None else environ)
        endpoint = Endpoint(
            config.url, host, port, self.client_id, self.status_topic, password,
            _tls_context(config) if tls else None,
        )  # fmt: skip
        self.outbox = Outbox(
            Spool(state_dir / SPOOL_DIRECTORY, fsync=config.spool_fsync),
            max_messages=config.spool_max_messages,
            max_bytes=config.spool_max_bytes,
            clock=clock,
        )
        memory = ProtocolMemory(state_dir, config.url) if config.protocol == "auto" else None
        self.session = Session(config, endpoint, self.outbox, memory)
        self._runner: asyncio.Task[None] | None = None

    # -- telemetry (read from the metrics thread) -------------------------------------------

    @property
    def spooled(self) -> int:
        return self.outbox.spooled

    @property
    def acknowledged(self) -> int:
        return self.outbox.acknowledged

    def declared(self) -> list[Family]:
        return [
            PUBLISHED, ACKNOWLEDGED, SPOOLED, DROPPED, SPOOL_ERRORS, SPOOL_MESSAGES, SPOOL_BYTES,
            CONNECTED, RECONNECTS, CONNECT_FAILURES,
        ]  # fmt: skip

    def families(self) -> list[Family]:
        outbox, session = self.outbox, self.session
        return [
            PUBLISHED.with_samples({(): session.published}),
            ACKNOWLEDGED.with_samples({(): outbox.acknowledged}),
            SPOOLED.with_samples({(): outbox.spooled}),
            DROPPED.with_samples({(r,): outbox.dropped[r] for r in DROP_REASONS}),
            SPOOL_ERRORS.with_samples({(): outbox.spool_errors}),
            SPOOL_MESSAGES.with_samples({(): len(outbox)}),
            SPOOL_BYTES.with_samples({(): outbox.bytes}),
            CONNECTED.with_samples({(): int(session.connected)}),
            RECONNECTS.with_samples({(): max(0, session.connections - 1)}),
            CONNECT_FAILURES.with_samples({(): session.connect_failures}),
        ]

    # -- AlertSink ---------------------------------------------------------------------------

    def submit(self, alert: Publishable) -> None:
        """Queue the alert for the spool, then the broker. Never blocks."""
        assert self._runner is not None, "submit before __aenter__"
        self.outbox.add(alert_topic(self.prefix, str(alert.severity), alert.rule), encode(alert))

    async def __aenter__(self) -> MqttSink:
        try:
            await self.outbox.open(lambda payload: topic_of(self.prefix, payload))
        except OutboxError as exc:
            raise MqttSinkError(str(exc)) from exc
        self._runner = asyncio.create_task(self.session.run(), name="mqtt-client")
        for task in (self._runner, self.outbox.disk_task):
            if task is not None:
                task.add_done_callback(_report_crash)
        return self

    async def __aexit__(self, *exc: object) -> None:
        runner = self._runner
        assert runner is not None
        self.session.close()
        done, _ = await asyncio.wait({runner}, timeout=FLUSH_TIMEOUT_S)
        if not done:
            # Still waiting for acknowledgements: stop waiting, say offline, disconnect.
            self.session.close(abandon=True)
            done, _ = await asyncio.wait({runner}, timeout=OFFLINE_TIMEOUT_S)
        if not done:
            runner.cancel()
        # A task that crashed was logged by _report_crash; the stop goes on regardless.
        await asyncio.gather(runner, return_exceptions=True)
        unacknowledged = await self.outbox.close()
        log.info("mqtt_stopped", unacknowledged=unacknowledged)


def _tls_context(config: MqttConfig) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=config.tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise MqttSinkError(_file_error("mqtt.tls_ca", config.tls_ca, exc)) from exc
    if config.tls_cert:
        try:
            context.load_cert_chain(config.tls_cert, config.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise MqttSinkError(_file_error("mqtt.tls_cert", config.tls_cert, exc)) from exc
    return context


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
