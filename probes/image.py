"""What compiling the probes produces, independent of any process: every map's shape and type
description, and every function's instructions with its map references by name. An image can
be loaded into the kernel (probes/loader.py) without a compiler, by the process that compiled
it or by another, now or on a later start (probes/cache.py).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from probes import bpfsys

FORMAT = 1  # bump when the image's meaning changes: cached images of other formats are ignored


class ImageError(Exception):
    """Bytes that do not describe an image (truncated, another format, inconsistent)."""


@dataclass(frozen=True, slots=True)
class MapSpec:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    key_desc: Any  # the compiler's description of the C key type (probes/table.py ctype_of)
    leaf_desc: Any


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    insns: bytes  # map references zeroed: filled from `relocations` at load
    relocations: tuple[tuple[int, str], ...]  # (instruction index, map name)


@dataclass(frozen=True, slots=True)
class Image:
    maps: tuple[MapSpec, ...]
    functions: tuple[Function, ...]
    license: str

    def map(self, name: str) -> MapSpec:
        for spec in self.maps:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def function(self, name: str) -> Function:
        for fn in self.functions:
            if fn.name == name:
                return fn
        raise KeyError(name)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "license": self.license,
                "maps": [
                    [m.name, m.type, m.key_size, m.value_size, m.max_entries, m.flags,
                     m.key_desc, m.leaf_desc]
                    for m in self.maps
                ],
                "functions": [
                    [f.name, f.insns.hex(), [list(r) for r in f.relocations]]
                    for f in self.functions
                ],
            },
            separators=(",", ":"),
        ).encode()  # fmt: skip

    @classmethod
    def from_json(cls, data: bytes) -> Image:
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ImageError(f"image format {doc.get('format')!r}, expected {FORMAT}")
            maps = tuple(
                MapSpec(str(n), int(t), int(k), int(v), int(e), int(fl), kd, ld)
                for n, t, k, v, e, fl, kd, ld in doc["maps"]
            )
            functions = tuple(
                Function(str(n), bytes.fromhex(h), tuple((int(i), str(m)) for i, m in r))
                for n, h, r in doc["functions"]
            )
            image = cls(maps, functions, str(doc["license"]))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ImageError(f"not an image: {exc}") from exc
        image.check()
        return image

    def check(self) -> None:
        """Every reference lands on a map load of a known map."""
        names = {m.name for m in self.maps}
        for fn in self.functions:
            if len(fn.insns) % bpfsys.INSN_LEN:
                raise ImageError(f"{fn.name}: {len(fn.insns)} bytes is not whole instructions")
            count = len(fn.insns) // bpfsys.INSN_LEN
            for index, name in fn.relocations:
                if name not in names:
                    raise ImageError(f"{fn.name}: reference to unknown map {name!r}")
                if (
                    not 0 <= index < count - 1
                    or fn.insns[index * bpfsys.INSN_LEN] != bpfsys.LD_IMM64
                ):
                    raise ImageError(f"{fn.name}: reference {index} is not a 64-bit load")


def relocate(
    insns: bytes, names_by_fd: dict[int, str]
) -> tuple[bytes, tuple[tuple[int, str], ...]]:
    """Compiled instructions → (instructions with map fds zeroed, references by map name).
    Any other 64-bit load of a pseudo source (global data, BTF ids) is refused: the loader could
    not reproduce it."""
    out = bytearray(insns)
    refs = []
    for index in range(len(insns) // bpfsys.INSN_LEN):
        at = index * bpfsys.INSN_LEN
        code, regs, _off, imm = struct.unpack_from("<BBhi", out, at)
        if code != bpfsys.LD_IMM64:
            continue
        source = regs >> 4
        if source == 0:
            continue
        if source != bpfsys.PSEUDO_MAP_FD or imm not in names_by_fd:
            raise ImageError(f"instruction {index}: a 64-bit load of kind {source} (imm {imm})")
        refs.append((index, names_by_fd[imm]))
        struct.pack_into("<i", out, at + 4, 0)
    return bytes(out), tuple(refs)
