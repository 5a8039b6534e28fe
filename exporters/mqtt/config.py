"""MQTT sink options: the `mqtt:` section of the daemon's config, validated where it is defined.

Field metadata follows the daemon's config loader: `check` (a predicate), `expected` (what a
valid value looks like, for the error line) and `secret` (never repeat the value in an error).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal


def _check(predicate: Callable[[Any], bool], expected: str) -> dict[str, Any]:
    return {"check": predicate, "expected": expected}


def _is_mqtt_url(value: str | None) -> bool:
    if value is None:
        return True
    try:
        parse_mqtt_url(value)
    except ValueError:
        return False
    return True


def parse_mqtt_url(value: str) -> tuple[bool, str, int]:
    """`mqtt://host[:port]` or `mqtts://host[:port]` → (tls, host, port). No credentials, path
    or query: credentials in a URL end up in logs."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("mqtt", "mqtts") or parts.username is not None:
        raise ValueError(value)
    if parts.path not in ("", "/") or parts.query or parts.fragment or not parts.hostname:
        raise ValueError(value)
    tls = parts.scheme == "mqtts"
    port = parts.port  # raises ValueError when out of range
    return tls, parts.hostname, port or (8883 if tls else 1883)


def _is_topic_prefix(value: str) -> bool:
    # MQTT topic rules plus ours: no wildcards, no empty levels, not a `$SYS`-style topic.
    levels = value.split("/")
    return (
        0 < len(value.encode()) <= 512
        and "\0" not in value
        and not value.startswith("$")
        and all(level and "+" not in level and "#" not in level for level in levels)
    )


def _is_secret_ref(value: str | None) -> bool:
    if value is None:
        return True
    kind, sep, rest = value.partition(":")
    return bool(sep and rest) and kind in ("env", "file")


def _is_path_or_none(value: str | None) -> bool:
    return value is None or bool(value)


def _secret(predicate: Callable[[Any], bool], expected: str) -> dict[str, Any]:
    """Like `_check`, for keys where a mistake may hold a secret: errors do not repeat it."""
    return {**_check(predicate, expected), "secret": True}


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """Live alerts over MQTT: off while `url` is null. `{hostname}` in `client_id` and
    `topic_prefix` is replaced by the host name the sink is given (made topic-safe)."""

    url: str | None = field(
        default=None,
        metadata=_secret(
            _is_mqtt_url,
            "null or 'mqtt://host[:port]' or 'mqtts://host[:port]' (credentials go in "
            "mqtt.username and mqtt.password)",
        ),
    )
    client_id: str = field(
        default="bpf-auditd-{hostname}",
        metadata=_check(lambda v: 0 < len(v) <= 128 and "\0" not in v, "1..128 characters"),
    )
    topic_prefix: str = field(
        default="bpf-auditd/{hostname}",
        metadata=_check(
            _is_topic_prefix,
            "topic levels joined by '/', none empty, without '+', '#' or a leading '$'",
        ),
    )
    qos: int = field(default=1, metadata=_check(lambda v: v in (0, 1, 2), "0, 1 or 2"))
    # auto: MQTT 5 or 3.1.1, whichever the broker speaks: the version that last worked first
    # (remembered in state_dir per broker URL), the other when a version is refused, met with
    # silence or dropped before CONNACK.
    protocol: Literal["auto", "v5", "v311"] = "auto"
    # Seconds to wait for CONNACK; also how long a broker that ignores a version takes to be
    # recognised as one.
    connect_timeout: float = field(
        default=10.0, metadata=_check(lambda v: 0.1 <= v <= 300, "0.1..300 seconds")
    )
    username: str | None = None
    # Never the secret itself: where to read it.
    password: str | None = field(
        default=None, metadata=_secret(_is_secret_ref, "'env:VARIABLE' or 'file:/path/to/file'")
    )
    tls_ca: str | None = field(default=None, metadata=_check(_is_path_or_none, "a file path"))
    tls_cert: str | None = field(default=None, metadata=_check(_is_path_or_none, "a file path"))
    tls_key: str | None = field(default=None, metadata=_check(_is_path_or_none, "a file path"))
    keepalive: int = field(default=60, metadata=_check(lambda v: 5 <= v <= 3600, "5..3600"))
    reconnect_max_delay: float = field(
        default=30.0, metadata=_check(lambda v: 0.1 <= v <= 3600, "0.1..3600 seconds")
    )
    spool_max_messages: int = field(
        default=10000, metadata=_check(lambda v: 1 <= v <= 10_000_000, "1..10000000")
    )
    spool_max_bytes: int = field(
        default=16 << 20, metadata=_check(lambda v: 4096 <= v <= 1 << 40, "4096..2^40")
    )
    # fsync every spooled alert: survives power loss too, at the cost of a disk flush each.
    spool_fsync: bool = False
