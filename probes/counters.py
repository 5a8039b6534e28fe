"""Reading a probe's exact counters: a per-CPU hash of counts and a one-slot per-CPU overflow
array (refusals or calls whose key did not fit), as the probes define them."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

K = TypeVar("K")


class RawKeyed(Protocol):
    def raw(self) -> ctypes.Structure: ...


class CounterMap:
    def __init__(self, counts: Any, overflow: Any) -> None:
        self._counts = counts
        self._overflow = overflow

    def _read(self, key: Callable[[Any], K]) -> dict[K, int]:
        """Counts summed over CPUs, keyed by `key(kernel key)`."""
        return {key(k): sum(per_cpu) for k, per_cpu in self._counts.items()}

    def delete(self, keys: Iterable[RawKeyed]) -> None:
        for key in keys:
            with contextlib.suppress(KeyError):  # already gone: nothing to retire
                del self._counts[key.raw()]

    def unattributed(self) -> int:
        return sum(self._overflow[ctypes.c_uint32(0)])
