"""A BPF map read and written through raw bpf(2), with the mapping interface monitors use (the
one BCC's tables offer): index, assign, delete, iterate, clear, batch reads.

Key and value types are ctypes types built from the compiler's own description of the C types
(`ctype_of`), so they cannot drift from the C; per-CPU maps hold one value per possible CPU,
each padded to 8 bytes in the kernel's buffer.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
from collections.abc import Iterator
from typing import Any

from probes import bpfsys

_SCALARS: dict[str, Any] = {
    "_Bool": ctypes.c_bool,
    "char": ctypes.c_char,
    "unsigned char": ctypes.c_ubyte,
    "signed char": ctypes.c_byte,
    "short": ctypes.c_short,
    "unsigned short": ctypes.c_ushort,
    "int": ctypes.c_int,
    "unsigned int": ctypes.c_uint,
    "long": ctypes.c_long,
    "unsigned long": ctypes.c_ulong,
    "long long": ctypes.c_longlong,
    "unsigned long long": ctypes.c_ulonglong,
    "__int128": ctypes.c_int64 * 2,
    "unsigned __int128": ctypes.c_uint64 * 2,
}
_COMPOSITES = ("struct", "struct_packed", "union")


def ctype_of(desc: Any) -> Any:
    """A ctypes type from a BCC type description: a scalar's name, or
    ``[name, [[field, type], [field, type, [count]], [field, type, bits], ...], "struct"]``."""
    if isinstance(desc, str):
        if desc not in _SCALARS:
            raise ValueError(f"unknown scalar type {desc!r}")
        return _SCALARS[desc]
    name, members = desc[0], desc[1]
    kind = desc[2] if len(desc) > 2 else "struct"
    fields: list[tuple[Any, ...]] = []
    anonymous: list[str] = []
    for member in members:
        if len(member) == 2:
            fields.append((member[0], ctype_of(member[1])))
        elif isinstance(member[2], list):  # an array, of arrays for more dimensions
            array = ctype_of(member[1])
            for count in reversed(member[2]):
                array = array * count
            fields.append((member[0], array))
        elif isinstance(member[2], int):
            fields.append((member[0], ctype_of(member[1]), member[2]))
        elif member[2] in _COMPOSITES:
            field = member[0] or f"__anon{len(anonymous)}"
            if not member[0]:
                anonymous.append(field)
            fields.append((field, ctype_of(member)))
        else:
            raise ValueError(f"cannot describe member {member!r}")
    base: Any = ctypes.Union if kind == "union" else ctypes.Structure
    body: dict[str, Any] = {"_fields_": fields, "_anonymous_": anonymous}
    if kind == "struct_packed":
        body["_pack_"] = 1
    return type(str(name) or "anon", (base,), body)


def _plain(value: Any) -> Any:
    """A scalar as int (what BCC's batch reads give), anything else as it is."""
    return value.value if isinstance(value, ctypes._SimpleCData) else value


class Table:
    """One map by fd. Thread-safe: every call uses buffers of its own."""

    def __init__(
        self, fd: int, name: str, *, map_type: int, max_entries: int, key: Any, value: Any
    ) -> None:
        self.fd = fd
        self.name = name
        self.map_type = map_type
        self.max_entries = max_entries
        self.Key = key
        self.percpu = map_type in bpfsys.PERCPU_MAPS
        self._array = map_type in bpfsys.ARRAY_MAPS
        self._ncpu = bpfsys.possible_cpus() if self.percpu else 1
        self.sLeaf = value
        self._stride = (ctypes.sizeof(value) + 7) & ~7 if self.percpu else ctypes.sizeof(value)
        self.Leaf = value * self._ncpu if self.percpu else value
        self._value_bytes = self._stride * self._ncpu

    def __repr__(self) -> str:
        return f"Table({self.name!r}, fd={self.fd})"

    # -- conversions -----------------------------------------------------------------------

    def _key_buf(self, key: Any) -> ctypes.Array[ctypes.c_char]:
        raw = bytes(self.Key(key) if isinstance(key, int) else key)
        if len(raw) != ctypes.sizeof(self.Key):
            size = ctypes.sizeof(self.Key)
            raise ValueError(f"{self.name}: key of {len(raw)} bytes, the map's are {size}")
        return ctypes.create_string_buffer(raw, len(raw))

    def _value_buf(self, leaf: Any) -> ctypes.Array[ctypes.c_char]:
        if not self.percpu:
            raw = bytes(leaf)
        else:
            pad = b"\0" * (self._stride - ctypes.sizeof(self.sLeaf))
            raw = b"".join(self._one(leaf[cpu]) + pad for cpu in range(self._ncpu))
        if len(raw) != self._value_bytes:
            raise ValueError(
                f"{self.name}: value of {len(raw)} bytes, the map's are {self._value_bytes}"
            )
        return ctypes.create_string_buffer(raw, len(raw))

    def _one(self, value: Any) -> bytes:
        """One CPU's value as bytes (a scalar element of a per-CPU array is a plain int)."""
        raw = bytes(self.sLeaf(value) if isinstance(value, (int, float, bytes)) else value)
        if len(raw) != ctypes.sizeof(self.sLeaf):
            raise ValueError(f"{self.name}: a per-CPU value of {len(raw)} bytes")
        return raw

    def _decode_value(self, raw: bytes) -> Any:
        if not self.percpu:
            return self.Leaf.from_buffer_copy(raw)
        out = self.Leaf()
        for cpu in range(self._ncpu):
            out[cpu] = self.sLeaf.from_buffer_copy(raw, cpu * self._stride)
        return out

    # -- mapping interface -----------------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        value = ctypes.create_string_buffer(self._value_bytes)
        if not bpfsys.map_lookup(self.fd, self._key_buf(key), value):
            raise KeyError(key)
        return self._decode_value(value.raw)

    def getvalue(self, key: Any) -> Any:
        return self[key]

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key: Any, leaf: Any) -> None:
        bpfsys.map_update(self.fd, self._key_buf(key), self._value_buf(leaf))

    def __delitem__(self, key: Any) -> None:
        if self._array:  # array entries cannot go: they become zero
            self[key] = self.Leaf()
            return
        if not bpfsys.map_delete(self.fd, self._key_buf(key)):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def raw_keys(self) -> Iterator[bytes]:
        size = ctypes.sizeof(self.Key)
        key: ctypes.Array[ctypes.c_char] | None = None
        while True:
            nxt = ctypes.create_string_buffer(size)
            if not bpfsys.map_next_key(self.fd, key, nxt):
                return
            yield nxt.raw
            key = nxt

    def __iter__(self) -> Iterator[Any]:
        return (self.Key.from_buffer_copy(raw) for raw in list(self.raw_keys()))

    def keys(self) -> Iterator[Any]:
        return iter(self)

    def __len__(self) -> int:
        if self._array:
            return self.max_entries
        return sum(1 for _ in self.raw_keys())

    def items(self) -> list[tuple[Any, Any]]:
        """Every entry (keys first, then one lookup each: entries deleted meanwhile are left
        out)."""
        out = []
        for key in list(self):
            try:
                out.append((key, self[key]))
            except KeyError:
                continue
        return out

    def values(self) -> list[Any]:
        return [value for _, value in self.items()]

    def clear(self) -> None:
        if self._array:
            zero = self.Leaf()
            for index in range(self.max_entries):
                self[index] = zero
            return
        for key in list(self):
            try:
                del self[key]
            except KeyError:
                continue

    def _batch(self, delete: bool) -> Iterator[tuple[Any, Any]]:
        entries = bpfsys.map_batch(
            self.fd, ctypes.sizeof(self.Key), self._value_bytes, self.max_entries, delete=delete
        )
        try:
            first = next(entries, None)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOTSUP, 524):  # 524: ENOTSUPP (kernel-internal)
                raise NotImplementedError(f"{self.name}: no batch operations here") from exc
            raise
        if first is None:
            return
        for k, v in itertools.chain((first,), entries):
            yield _plain(self.Key.from_buffer_copy(k)), _plain(self._decode_value(v))

    def items_lookup_batch(self) -> Iterator[tuple[Any, Any]]:
        """Every entry in few syscalls; scalar keys and values as ints (as BCC gives them).
        NotImplementedError where the kernel has no batch reads."""
        yield from self._batch(delete=False)

    def items_lookup_and_delete_batch(self) -> Iterator[tuple[Any, Any]]:
        yield from self._batch(delete=True)

    def nonzero_items(self) -> Iterator[tuple[Any, Any]]:
        """The entries whose value is not all zero bytes (every CPU's, for per-CPU maps), decoded
        only then: a mostly empty array of thousands of slots costs no object per slot."""
        zero = bytes(self._value_bytes)
        entries = bpfsys.map_batch(
            self.fd, ctypes.sizeof(self.Key), self._value_bytes, self.max_entries, nonzero=True
        )
        try:
            first = next(entries, None)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP, 524):
                raise
            for key, value in self.items():  # no batch reads: one lookup per entry
                if bytes(self._value_buf(value)) != zero:
                    yield _plain(key), _plain(value)
            return
        if first is None:
            return
        for k, v in itertools.chain((first,), entries):
            yield _plain(self.Key.from_buffer_copy(k)), _plain(self._decode_value(v))
