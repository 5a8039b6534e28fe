"""Reading a probe's exact counters, as the probes keep them: a per-CPU hash of counts and a
one-slot per-CPU overflow array (calls whose key did not fit), or a slot table (an array of
owners and a per-CPU array of counts, its last slot the overflow)."""

from __future__ import annotations

import abc
import contextlib
import ctypes
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, Protocol, TypeVar

K = TypeVar("K")
H = TypeVar("H", bound=Hashable)


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


class SlotCounters(abc.ABC, Generic[H]):
    """A slot table: `owners` (an array of owner records, all zero when free) and `values` (a
    per-CPU array of counts, one more than the owners: the overflow). A key may own two slots
    (two CPUs claimed at once): its counts are summed."""

    def __init__(self, owners: Any, values: Any) -> None:
        self._owners = owners
        self._values = values
        self.slots = int(owners.max_entries)

    @abc.abstractmethod
    def key_of(self, owner: Any) -> H | None:
        """The key an owner record stands for (None: free, or half-claimed)."""

    def _claimed(self) -> dict[int, H]:
        found: dict[int, H] = {}
        for slot, owner in self._owners.nonzero_items():
            key = self.key_of(owner)
            if key is not None:
                found[slot if isinstance(slot, int) else int(slot.value)] = key
        return found

    def read(self) -> dict[H, int]:
        totals: dict[H, int] = {}
        for slot, key in self._claimed().items():
            totals[key] = totals.get(key, 0) + sum(self._values[ctypes.c_uint32(slot)])
        return totals

    def delete(self, keys: Iterable[H]) -> None:
        """Free the slots of `keys`: counts zeroed first, the owner last (an increment racing
        with it is lost or lands in the next owner's count, as for any retired key)."""
        gone = set(keys)
        for slot, key in self._claimed().items():
            if key in gone:
                self._values[ctypes.c_uint32(slot)] = self._values.Leaf()
                self._owners[ctypes.c_uint32(slot)] = self._owners.Leaf()

    def unattributed(self) -> int:
        return sum(self._values[ctypes.c_uint32(self.slots)])
