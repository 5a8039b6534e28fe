"""Struct layouts and function ids read from raw kernel BTF (``/sys/kernel/btf/vmlinux``).

A pure-Python reader of the format in the kernel's ``include/uapi/linux/btf.h``, indexed lazily.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Final, NamedTuple

_MAGIC: Final = 0xEB9F
_HEADER_LEN: Final = 24  # magic u16, version u8, flags u8, hdr_len, type_off/len, str_off/len u32
_TYPE_LEN: Final = 12  # struct btf_type: name_off, info, size-or-type

# Kind numbers from include/uapi/linux/btf.h.
_INT: Final = 1
_PTR: Final = 2
_ARRAY: Final = 3
_STRUCT: Final = 4
_UNION: Final = 5
_ENUM: Final = 6
_FWD: Final = 7
_TYPEDEF: Final = 8
_VOLATILE: Final = 9
_CONST: Final = 10
_RESTRICT: Final = 11
_FUNC: Final = 12
_FUNC_PROTO: Final = 13
_VAR: Final = 14
_DATASEC: Final = 15
_FLOAT: Final = 16
_DECL_TAG: Final = 17
_TYPE_TAG: Final = 18
_ENUM64: Final = 19

_NR_KINDS: Final = 20

# Bytes that follow struct btf_type, per kind: a fixed part plus one part per vlen item. Kinds
# absent here (PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG) have neither;
# FUNC's vlen holds its linkage, not a count.
_FIXED: Final = tuple(
    {_INT: 4, _ARRAY: 12, _VAR: 4, _DECL_TAG: 4}.get(kind, 0) for kind in range(_NR_KINDS)
)
_PER_ITEM: Final = tuple(
    {_STRUCT: 12, _UNION: 12, _ENUM: 8, _FUNC_PROTO: 8, _DATASEC: 12, _ENUM64: 12}.get(kind, 0)
    for kind in range(_NR_KINDS)
)

# Kinds that only qualify or rename another type: offsetof looks through them.
_TRANSPARENT: Final = frozenset({_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG})
# Kinds whose names are indexed, so lookups by name never scan the whole section.
_INDEXED: Final = frozenset({_STRUCT, _UNION, _FUNC, _TYPEDEF})
_MAX_CHAIN: Final = 64  # typedef/const chains are short; a longer one means a corrupt loop


_LOADED: dict[tuple[str, int, int, int], Btf] = {}


class BtfError(Exception):
    """The BTF is missing or malformed, or it does not describe what was asked for."""


class _Member(NamedTuple):
    bit_offset: int
    type_id: int
    bitfield_size: int


class Btf:
    """One BTF blob: type ids are indexed once, names and members are read on demand."""

    __slots__ = (
        "_by_name",
        "_data",
        "_members_of",
        "_names",
        "_str_end",
        "_str_start",
        "_type_pos",
        "_u32",
        "_u32x3",
        "source",
    )

    def __init__(self, data: bytes, source: str = "<bytes>") -> None:
        self.source = source
        self._data = data
        if len(data) < _HEADER_LEN:
            raise BtfError(f"{source}: too short for a BTF header ({len(data)} bytes)")
        if struct.unpack_from("<H", data)[0] == _MAGIC:
            order = "<"
        elif struct.unpack_from(">H", data)[0] == _MAGIC:
            order = ">"
        else:
            raise BtfError(f"{source}: not BTF (magic {data[:2].hex()}, expected 9feb or eb9f)")
        hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(order + "5I", data, 4)
        type_start = hdr_len + type_off
        self._str_start = hdr_len + str_off
        self._str_end = self._str_start + str_len
        if hdr_len < _HEADER_LEN or type_start + type_len > len(data) or self._str_end > len(data):
            raise BtfError(f"{source}: header describes sections beyond the end of the file")
        self._u32 = struct.Struct(order + "I").unpack_from
        self._u32x3 = struct.Struct(order + "III").unpack_from
        self._type_pos: list[int] = [-1]  # type id 0 is void and has no record
        self._by_name: dict[int, list[int]] = {}  # name_off -> ids of indexed kinds
        self._names: dict[tuple[str, frozenset[int]], list[int]] = {}  # cache of name lookups
        self._members_of: dict[int, list[tuple[str, _Member]]] = {}  # cache of decoded members
        self._index(order, type_start, type_start + type_len)

    @classmethod
    def load(cls, path: Path) -> Btf:
        """Read and index the BTF file at *path* (e.g. ``/sys/kernel/btf/vmlinux``). The same
        unchanged file is read and indexed once per process (several planners ask)."""
        try:
            st = path.stat()
        except OSError as exc:
            raise BtfError(f"cannot read BTF at {path}: {exc.strerror or exc}") from exc
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        cached = _LOADED.get(key)
        if cached is not None:
            return cached
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BtfError(f"cannot read BTF at {path}: {exc.strerror or exc}") from exc
        btf = cls(data, str(path))
        _LOADED.clear()  # one file at a time: a new kernel's BTF replaces the last
        _LOADED[key] = btf
        return btf

    def _index(self, order: str, pos: int, end: int) -> None:
        # One pass that only records where each type starts; everything else is decoded later.
        head = struct.Struct(order + "II").unpack_from
        data, positions, by_name = self._data, self._type_pos, self._by_name
        fixed, per_item, indexed = _FIXED, _PER_ITEM, _INDEXED
        while pos < end:
            if pos + _TYPE_LEN > end:
                raise BtfError(f"{self.source}: type {len(positions)} is cut off")
            name_off, info = head(data, pos)
            kind = (info >> 24) & 0x1F
            if kind == 0 or kind >= _NR_KINDS:
                raise BtfError(f"{self.source}: type {len(positions)} has unknown kind {kind}")
            positions.append(pos)
            if kind in indexed and name_off:
                by_name.setdefault(name_off, []).append(len(positions) - 1)
            pos += _TYPE_LEN + fixed[kind] + (info & 0xFFFF) * per_item[kind]
        if pos != end:
            raise BtfError(f"{self.source}: last type {len(positions) - 1} overruns its section")

    # -- raw access ------------------------------------------------------------------------

    def _type(self, type_id: int) -> tuple[int, int, int, int, int]:
        """(name_off, kind, vlen, kind_flag, size_or_type) of *type_id*."""
        if not 0 < type_id < len(self._type_pos):
            raise BtfError(f"{self.source}: reference to type id {type_id}, which does not exist")
        pos = self._type_pos[type_id]
        name_off, info, size = self._u32x3(self._data, pos)
        return name_off, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size

    def _name(self, name_off: int) -> str:
        start = self._str_start + name_off
        end = self._data.find(b"\0", start, self._str_end)
        if name_off < 0 or end < 0:
            raise BtfError(f"{self.source}: string offset {name_off} is outside the string section")
        return self._data[start:end].decode("utf-8", "replace")

    def _ids_named(self, name: str, kinds: frozenset[int]) -> list[int]:
        """Ids of types of *kinds* (indexed kinds only) called *name*, in id order."""
        key = (name, kinds)
        if key in self._names:
            return self._names[key]
        ids: list[int] = []
        needle = b"\0" + name.encode() + b"\0"
        # The section starts with the empty string, so every name is preceded by a NUL; strings
        # are usually deduplicated, but a non-deduplicated blob may hold the same one twice.
        at = self._data.find(needle, self._str_start, self._str_end)
        while name and at >= 0:
            ids.extend(self._by_name.get(at + 1 - self._str_start, ()))
            at = self._data.find(needle, at + 1, self._str_end)
        ids = sorted(i for i in ids if self._type(i)[1] in kinds)
        self._names[key] = ids
        return ids

    def _strip(self, type_id: int) -> int:
        """Follow typedefs and qualifiers to the type they name."""
        for _ in range(_MAX_CHAIN):
            if type_id == 0:
                return 0
            _, kind, _, _, target = self._type(type_id)
            if kind not in _TRANSPARENT:
                return type_id
            type_id = target
        raise BtfError(f"{self.source}: typedef/qualifier chain from type {type_id} is too long")

    def _members(self, type_id: int) -> list[tuple[str, _Member]]:
        if type_id in self._members_of:
            return self._members_of[type_id]
        _, _, vlen, kind_flag, _ = self._type(type_id)
        base = self._type_pos[type_id] + _TYPE_LEN
        out = []
        for i in range(vlen):
            name_off, member_type, offset = self._u32x3(self._data, base + 12 * i)
            bits = offset >> 24 if kind_flag else self._int_bitfield_size(member_type)
            bit_offset = offset & 0xFFFFFF if kind_flag else offset
            out.append((self._name(name_off), _Member(bit_offset, member_type, bits)))
        self._members_of[type_id] = out
        return out

    def _int_bitfield_size(self, type_id: int) -> int:
        # Without kind_flag, a bitfield is an INT whose encoding narrows or shifts it.
        type_id = self._strip(type_id)
        if type_id == 0:
            return 0
        _, kind, _, _, size = self._type(type_id)
        if kind != _INT:
            return 0
        encoding = self._u32(self._data, self._type_pos[type_id] + _TYPE_LEN)[0]
        nr_bits, shift = encoding & 0xFF, (encoding >> 16) & 0xFF
        return nr_bits if nr_bits != size * 8 or shift else 0

    def _find_member(self, type_id: int, name: str) -> _Member | None:
        """Member *name* of a struct/union, looking inside anonymous members as C does."""
        for member_name, member in self._members(type_id):
            if member_name == name:
                return member
            if member_name:
                continue
            inner = self._strip(member.type_id)
            if inner and self._type(inner)[1] in (_STRUCT, _UNION):
                found = self._find_member(inner, name)
                if found is not None:
                    return found._replace(bit_offset=member.bit_offset + found.bit_offset)
        return None

    def _composites(self, struct_name: str) -> list[int]:
        ids = self._ids_named(struct_name, frozenset({_STRUCT})) or self._ids_named(
            struct_name, frozenset({_UNION})
        )
        if not ids:
            raise BtfError(f"no struct or union named {struct_name!r} in {self.source}")
        return ids

    def _offsetof_in(self, type_id: int, struct_name: str, member_path: str) -> int | None:
        parts = member_path.split(".")
        bits = 0
        for depth, part in enumerate(parts):
            walked = ".".join(parts[: depth + 1])
            member = self._find_member(type_id, part)
            if member is None:
                return None
            bits += member.bit_offset
            if member.bitfield_size:
                raise BtfError(
                    f"struct {struct_name} member {walked!r} is a {member.bitfield_size}-bit "
                    "bitfield: it has no byte offset; read its containing word instead"
                )
            if depth + 1 == len(parts):
                break
            type_id = self._strip(member.type_id)
            kind = self._type(type_id)[1] if type_id else 0
            if kind == _PTR:
                raise BtfError(
                    f"struct {struct_name} member {walked!r} is a pointer: offsetof only walks "
                    "embedded structs/unions; read the pointer, then use the pointee's offsets"
                )
            if kind not in (_STRUCT, _UNION):
                raise BtfError(
                    f"struct {struct_name} member {walked!r} is not a struct or union, "
                    f"so {member_path!r} cannot go further"
                )
        if bits % 8:
            raise BtfError(f"struct {struct_name} member {member_path!r} is not byte-aligned")
        return bits // 8

    # -- public API ------------------------------------------------------------------------

    def offsetof(self, struct_name: str, member_path: str) -> int:
        """Byte offset of *member_path* (dotted through embedded structs, e.g. ``ns.inum``).

        Anonymous struct/union members are searched transparently and typedefs/qualifiers are
        followed; bitfields and paths through pointers are errors. Several structs may share a
        name (file-local definitions); the answer must then be the same in all that have it.
        """
        if not member_path or not all(member_path.split(".")):
            raise BtfError(
                f"bad member path {member_path!r} for struct {struct_name}: "
                "expected member names joined by '.', e.g. 'ns.inum'"
            )
        found = {
            off
            for type_id in self._composites(struct_name)
            if (off := self._offsetof_in(type_id, struct_name, member_path)) is not None
        }
        if not found:
            raise BtfError(f"struct {struct_name} has no member {member_path!r} in {self.source}")
        if len(found) > 1:
            raise BtfError(
                f"struct {struct_name} member {member_path!r} is ambiguous in {self.source}: "
                f"several structs of that name put it at offsets {sorted(found)}"
            )
        return found.pop()

    def sizeof(self, struct_name: str) -> int:
        """Size in bytes of the struct (or union) *struct_name*."""
        sizes = {self._type(type_id)[4] for type_id in self._composites(struct_name)}
        if len(sizes) > 1:
            raise BtfError(
                f"struct {struct_name} is ambiguous in {self.source}: "
                f"several structs of that name have sizes {sorted(sizes)}"
            )
        return sizes.pop()

    def func_id(self, name: str) -> int | None:
        """Type id of the FUNC called *name* (what fentry/BPF-LSM attach by), or None."""
        ids = self._ids_named(name, frozenset({_FUNC}))
        return ids[0] if ids else None

    @staticmethod
    def forget() -> None:
        """Drop the file read by `load` (several MB): for when planning is done."""
        _LOADED.clear()

    def tracepoint_type_id(self, name: str) -> int | None:
        """Type id of the ``btf_trace_<name>`` typedef: what a tp_btf program attaches by."""
        ids = self._ids_named(f"btf_trace_{name}", frozenset({_TYPEDEF}))
        return ids[0] if ids else None

    def tracepoint_args(self, name: str) -> tuple[str, ...] | None:
        """C types of raw tracepoint *name*'s arguments, as ``ctx->args[i]`` holds them (from the
        ``btf_trace_<name>`` typedef, its leading context pointer left out), e.g.
        ``("long unsigned int", "const void *")``; None when the kernel has no such tracepoint."""
        ids = self._ids_named(f"btf_trace_{name}", frozenset({_TYPEDEF}))
        if not ids:
            return None
        proto = self._strip(self._type(self._strip(ids[0]))[4])  # typedef -> pointer -> proto
        _, kind, vlen, _, _ = self._type(proto)
        if kind != _FUNC_PROTO:
            raise BtfError(f"btf_trace_{name} in {self.source} is not a function pointer")
        base = self._type_pos[proto] + _TYPE_LEN
        params = [self._u32x3(self._data, base + 8 * i)[1] for i in range(vlen)]
        return tuple(self._c_type(p) for p in params[1:])

    def _c_type(self, type_id: int) -> str:
        """A type as C spells it, far enough to compare prototypes (no arrays or functions)."""
        for _ in range(_MAX_CHAIN):
            if type_id == 0:
                return "void"
            name_off, kind, _, _, target = self._type(type_id)
            if kind == _PTR:
                return self._c_type(target) + " *"
            if kind == _CONST:
                return "const " + self._c_type(target)
            if kind in (_VOLATILE, _RESTRICT, _TYPE_TAG):
                type_id = target
                continue
            prefix = {_STRUCT: "struct ", _UNION: "union ", _ENUM: "enum ", _ENUM64: "enum "}
            return prefix.get(kind, "") + self._name(name_off)
        raise BtfError(f"{self.source}: qualifier chain from type {type_id} is too long")

    def __len__(self) -> int:
        """Number of types, not counting void (id 0)."""
        return len(self._type_pos) - 1
