"""Kernel bytes as text: one rule for comm, paths and audit fields."""

from __future__ import annotations


def kernel_text(raw: bytes) -> str:
    """Bytes from the kernel as text that round-trips and cannot break a log line: undecodable
    bytes stay visible as ``\\xNN``."""
    return raw.decode("utf-8", errors="backslashreplace")
