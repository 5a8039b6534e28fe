"""Loader side of allocations.bpf.c: its map layouts, the raw tracepoint prototypes it expects,
and reading, draining and retiring its tables."""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SOURCE = "allocations.bpf.c"
DROPS = "alloc_drops"
TYPE_LEN = 32
SLOT_PROBES = 4
# Numbering of `enum alloc_kind` in the C.
KINDS = ("kmalloc", "slab", "page")


class SlotTotals(ctypes.Structure):
    """Mirror of `struct alloc_totals` (one CPU's share of one slot)."""

    _fields_ = (
        ("count", ctypes.c_uint64 * len(KINDS)),
        ("bytes_req", ctypes.c_uint64 * len(KINDS)),
        ("bytes_alloc", ctypes.c_uint64 * len(KINDS)),
        ("rng", ctypes.c_uint64),
    )


class SiteKey(ctypes.Structure):
    """Mirror of `struct alloc_site_key`."""

    _fields_ = (
        ("cgroup_id", ctypes.c_uint64),
        ("call_site", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("kind", ctypes.c_uint32),
    )


class SiteValue(ctypes.Structure):
    """Mirror of `struct alloc_site_value`."""

    _fields_ = (
        ("count", ctypes.c_uint64),
        ("bytes_req", ctypes.c_uint64),
        ("bytes_alloc", ctypes.c_uint64),
        ("type", ctypes.c_char * TYPE_LEN),
    )


class LiveValue(ctypes.Structure):
    """Mirror of `struct alloc_live_value`."""

    _fields_ = (
        ("cgroup_id", ctypes.c_uint64),
        ("call_site", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("kind", ctypes.c_uint32),
    )


# -- how to attach -------------------------------------------------------------------------

# Raw tracepoint -> the leading argument types the program reads (ctx->args[i]); checked
# against the running kernel's `btf_trace_*` prototypes, which have changed before (6.2 moved
# kmem_cache_alloc's sizes into its struct kmem_cache argument).
RAW_PROTOTYPES: dict[str, tuple[str, ...]] = {
    "kmalloc": ("long unsigned int", "const void *", "size_t", "size_t"),
    "kmem_cache_alloc": ("long unsigned int", "const void *", "struct kmem_cache *"),
    "mm_page_alloc": ("struct page *", "unsigned int"),
    "kfree": ("long unsigned int", "const void *"),
    "kmem_cache_free": ("long unsigned int", "const void *"),
    "mm_page_free": ("struct page *",),
    "mm_page_free_batched": ("struct page *",),
}
# The free tracepoints: attached only when outstanding bytes are tracked (ALLOC_TRACK_LIVE).
FREES = frozenset({"kfree", "kmem_cache_free", "mm_page_free", "mm_page_free_batched"})


# Tracepoints whose address argument is a struct pointer (struct page *): tp_btf would type
# it, and the verifier forbids the arithmetic of hashing a typed pointer: raw, always.
UNTYPED_ONLY = frozenset({"mm_page_alloc", "mm_page_free", "mm_page_free_batched"})


def raw_function(tracepoint: str) -> str:
    """The C function for a raw (or tp_btf) tracepoint."""
    return f"alloc_raw_{tracepoint}"


CACHE_FIELDS = {
    "OFF_KMEM_CACHE_SIZE": "size",
    "OFF_KMEM_CACHE_OBJECT_SIZE": "object_size",
    "OFF_KMEM_CACHE_NAME": "name",
}


def shift_of(power_of_two: int) -> int:
    """log2 of a sampling rate (1 -> 0: every one)."""
    return int(math.log2(power_of_two))


# -- reading the tables --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """Allocations and bytes (requested, allocated) of one kind."""

    count: int = 0
    requested: int = 0
    allocated: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.count + other.count,
            self.requested + other.requested,
            self.allocated + other.allocated,
        )

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.count - other.count,
            self.requested - other.requested,
            self.allocated - other.allocated,
        )


ZERO = Usage()
# kind -> Usage; kinds with nothing are left out.
KindUsage = dict[str, Usage]


def add_usage(into: KindUsage, more: KindUsage) -> None:
    for kind, usage in more.items():
        into[kind] = into.get(kind, ZERO) + usage


@dataclass(frozen=True, slots=True)
class Site:
    """A sampled call site (one drain's worth): samples, not estimates."""

    cgroup_id: int
    call_site: int
    tgid: int
    kind: str
    usage: Usage
    type: str  # slab cache name ("" when unknown or not a slab allocation)


@dataclass(frozen=True, slots=True)
class Live:
    """A tracked live object (one of the sampled addresses)."""

    cgroup_id: int
    call_site: int
    tgid: int
    kind: str
    bytes: int


def _kind(number: int) -> str:
    return KINDS[number] if 0 <= number < len(KINDS) else f"kind{number}"


def _items(table: Any) -> Iterator[tuple[Any, Any]]:
    """Every entry, in one BPF_MAP_LOOKUP_BATCH where the kernel has it (a syscall per entry
    otherwise: 64k entries took seconds from Python)."""
    try:
        yield from table.items_lookup_batch()
    except NotImplementedError:  # the kernel refuses batch operations (raised before any entry)
        yield from table.items()


def _nonzero(table: Any) -> Iterator[tuple[Any, Any]]:
    """The entries that are not all zero (slot tables are mostly empty)."""
    if hasattr(table, "nonzero_items"):
        yield from table.nonzero_items()
    else:
        yield from ((k, v) for k, v in table.items() if bytes(v) != bytes(len(bytes(v))))


def _int(value: Any) -> int:
    """A scalar key or value: batch reads give ints, per-entry reads ctypes scalars."""
    return value if isinstance(value, int) else int(value.value)


class AllocationTables:
    """The probe's maps. Reads block on syscalls: call them off the event loop."""

    def __init__(self, owners: Any, totals: Any, sites: Any, live: Any, *, slots: int) -> None:
        self._owners = owners
        self._totals = totals
        self._sites = sites
        self._live = live
        self.slots = slots

    @staticmethod
    def _usage(per_cpu: Any) -> KindUsage:
        out: KindUsage = {}
        for k, kind in enumerate(KINDS):
            usage = Usage(
                sum(cpu.count[k] for cpu in per_cpu),
                sum(cpu.bytes_req[k] for cpu in per_cpu),
                sum(cpu.bytes_alloc[k] for cpu in per_cpu),
            )
            if usage.count:
                out[kind] = usage
        return out

    def owners(self) -> dict[int, int]:
        """slot -> cgroup id, for claimed slots."""
        return {_int(k): _int(v) for k, v in _nonzero(self._owners)}

    def read(self) -> tuple[dict[int, KindUsage], KindUsage]:
        """Exact totals per cgroup (summed over its slots and CPUs), and the overflow slot's."""
        owners = self.owners()
        per_cgroup: dict[int, KindUsage] = {}
        overflow: KindUsage = {}
        for key, per_cpu in _nonzero(self._totals):
            slot = _int(key)
            if slot == self.slots:
                overflow = self._usage(per_cpu)
            elif slot in owners:
                add_usage(per_cgroup.setdefault(owners[slot], {}), self._usage(per_cpu))
        return per_cgroup, overflow

    def release(self, slot: int) -> KindUsage:
        """Free a slot of a removed cgroup; returns what it held. Totals are zeroed before the
        owner is cleared, so a cgroup that claims it next starts from zero."""
        key = ctypes.c_uint32(slot)
        held = self._usage(self._totals.getvalue(key))
        self._totals[key] = self._totals.Leaf()
        self._owners[key] = ctypes.c_uint64(0)
        return held

    def drain_sites(self) -> list[Site]:
        """Take every sampled call site out of the kernel map (so it never fills with dead
        processes), decoded as it comes. An increment racing with the delete is lost: these are
        samples."""
        try:
            return [s for key, per_cpu in self._sites.items_lookup_and_delete_batch()
                    if (s := self._site(key, per_cpu)) is not None]  # fmt: skip
        except NotImplementedError:  # no batch operations: read, then delete key by key
            entries = list(self._sites.items())
            for key, _ in entries:
                with contextlib.suppress(KeyError):
                    del self._sites[key]
            return [s for key, per_cpu in entries if (s := self._site(key, per_cpu)) is not None]

    @staticmethod
    def _site(key: Any, per_cpu: Any) -> Site | None:
        usage = Usage(
            sum(v.count for v in per_cpu),
            sum(v.bytes_req for v in per_cpu),
            sum(v.bytes_alloc for v in per_cpu),
        )
        if not usage.count:
            return None
        type_name = next((v.type for v in per_cpu if v.type), b"")
        return Site(
            key.cgroup_id,
            key.call_site,
            key.tgid,
            _kind(key.kind),
            usage,
            type_name.decode("utf-8", "backslashreplace"),
        )

    def live(self) -> list[Live]:
        return [
            Live(v.cgroup_id, v.call_site, v.tgid, _kind(v.kind), v.bytes)
            for _, v in _items(self._live)
        ]
