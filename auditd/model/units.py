"""Numbers and durations as operators write them (`64MiB`, `1.5k`, `500ms`, `10s`, `5m`)."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(KiB|MiB|GiB|TiB|k|M|G|T)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
}
SIZE_EXPECTED = "a number, optionally with a unit (k, M, G, T, KiB, MiB, GiB, TiB)"

# The unit is optional: a bare number is seconds, as the expected text says.
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_EXPECTED = "a duration like 500ms, 10s, 5m, 1h, 1d (or seconds as a number)"


def is_number(value: object) -> bool:
    """An int or float that is not a bool (YAML's `yes` is not a count)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_number(value: object) -> float:
    """A number, or text with a decimal or binary unit: `64MiB`, `1.5k`."""
    if is_number(value):
        return float(value)  # type: ignore[arg-type]
    if isinstance(value, str) and (m := _SIZE.match(value)):
        return float(m[1]) * _SIZE_UNITS[m[2]]
    raise ValueError(value)


def parse_duration(value: object) -> float:
    """Seconds, from a number or text like `10s`, `5m`, `1h`, or `5` (seconds)."""
    if is_number(value):
        return float(value)  # type: ignore[arg-type]
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m[1]) * _DURATION_UNITS[m[2]]
    raise ValueError(value)
