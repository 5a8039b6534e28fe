"""Topics and payloads of the alert stream (pure).

Topics: `<prefix>/alerts/<severity>/<rule>`. The severity is a closed set; the rule name is the
operator's, made topic-safe (`[A-Za-z0-9._:-]`, anything else → `_`: a valid policy rule name
passes unchanged, a name from elsewhere cannot add a level or a wildcard). Process-controlled
strings (comm, paths, cgroup names) only ever appear in the payload.
"""

from __future__ import annotations

import json
import re

from exporters.sink import Publishable

HOSTNAME_PLACEHOLDER = "{hostname}"

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


def encode(alert: Publishable) -> bytes:
    return json.dumps(alert.document(), separators=(",", ":"), default=str).encode()


def topic_of(prefix: str, payload: bytes) -> str | None:
    """The topic of an encoded alert, from its document; None when it is not one."""
    try:
        doc = json.loads(payload)
        return alert_topic(prefix, str(doc["severity"]), str(doc["rule"]))
    except (ValueError, KeyError, TypeError):
        return None
