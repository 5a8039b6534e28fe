"""Which MQTT version to speak to a broker (`protocol: auto`): the order to try, which failures
mean "not this version", and the memory of what last worked, kept in the state directory and
keyed by the broker URL.

Measured against aiomqtt 2.5.1 / paho 2.2.0: a broker that refuses the version answers CONNACK
1 (3.1.1) or 0x84 (v5); amqtt 0.12.1 says nothing at all to an MQTT 5 CONNECT that carries a
will or a username (ours always has a will), and a peer that closes or resets the connection
before CONNACK looks exactly the same to aiomqtt: `MqttError("Operation timed out")` after the
connect timeout. Refused TCP connections, DNS and TLS handshake failures come at once as other
errors, and credentials are refused with other CONNACK codes: none of those is a version
question.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

V5 = aiomqtt.ProtocolVersion.V5
V311 = aiomqtt.ProtocolVersion.V311
NAMES = {V5: "5", V311: "3.1.1"}
_BY_NAME = {name: version for version, name in NAMES.items()}
MEMORY_FILE = "mqtt-protocol.json"
_UNSUPPORTED = {1, 0x84}  # CONNACK: 3.1.1 "unacceptable protocol version", v5 "unsupported"
_NO_CONNACK = "Operation timed out"  # aiomqtt's words for silence and for an early drop


def connack_code(exc: MqttConnectError) -> int | None:
    rc = exc.rc
    return rc if isinstance(rc, int) else getattr(rc, "value", None)


def version_refused(exc: BaseException) -> bool:
    """The broker answered CONNACK "this protocol version is not spoken here"."""
    return isinstance(exc, MqttConnectError) and connack_code(exc) in _UNSUPPORTED


def no_connack(exc: BaseException) -> bool:
    """No CONNACK came: silence, or the connection closed or reset before it."""
    return (
        isinstance(exc, aiomqtt.MqttError)
        and not isinstance(exc, MqttConnectError)
        and str(exc) == _NO_CONNACK
    )


def release(client: aiomqtt.Client) -> None:
    """Close the socket aiomqtt keeps open after a CONNACK timeout: without this, each attempt
    against a silent broker leaked one file descriptor (20 attempts: 9 fds -> 29)."""
    paho = getattr(client, "_client", None)
    if paho is not None:
        with contextlib.suppress(Exception):
            paho.disconnect()


class ProtocolMemory:
    """The version that last got a CONNACK from this broker URL, in `<state_dir>/` +
    MEMORY_FILE. An unreadable or foreign file is ignored: the memory is an optimisation (a
    restart connects at once instead of waiting out a silent version), never a failure."""

    def __init__(self, state_dir: Path, url: str) -> None:
        self.path = state_dir / MEMORY_FILE
        self.url = url

    def load(self) -> aiomqtt.ProtocolVersion | None:
        try:
            with self.path.open("rb") as f:
                doc = json.loads(f.read(4096))
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("broker") != self.url:
            return None
        protocol = doc.get("protocol")
        return _BY_NAME.get(protocol) if isinstance(protocol, str) else None

    def save(self, protocol: aiomqtt.ProtocolVersion) -> bool:
        """Remember `protocol` for this URL (atomically); False when it could not be written."""
        doc = {"broker": self.url, "protocol": NAMES[protocol], "since": int(time.time())}
        tmp = self.path.with_name(f".{MEMORY_FILE}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc) + "\n")
            os.replace(tmp, self.path)
        except OSError:
            return False
        return True


def order(mode: str, remembered: aiomqtt.ProtocolVersion | None) -> list[aiomqtt.ProtocolVersion]:
    """The versions to try, in order: `v5` and `v311` one each; `auto` the remembered version
    (v5 when none), then the other."""
    if mode == "v5":
        return [V5]
    if mode == "v311":
        return [V311]
    first = remembered or V5
    return [first, V311 if first is V5 else V5]
