"""An image (probes/image.py) in the kernel: its maps created, its programs loaded on first use
with their map references filled in. bpf(2) only: no compiler, no BCC, no libbpf.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from dataclasses import dataclass

from probes import bpfsys
from probes.image import Image, MapSpec
from probes.table import Table, ctype_of


class LoadError(Exception):
    """The kernel refused a map or a program; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class ProgramKind:
    """How a function is loaded: its program type and, for tp_btf, what it attaches to."""

    prog_type: int
    attach_type: int = 0
    attach_btf_id: int = 0


TRACEPOINT = ProgramKind(bpfsys.PROG_TRACEPOINT)
RAW_TRACEPOINT = ProgramKind(bpfsys.PROG_RAW_TRACEPOINT)


def tp_btf(btf_type_id: int) -> ProgramKind:
    """A BTF-typed raw tracepoint program (`btf_type_id`: its btf_trace_<name> typedef)."""
    return ProgramKind(bpfsys.PROG_TRACING, bpfsys.ATTACH_TRACE_RAW_TP, btf_type_id)


def _create_map(spec: MapSpec) -> int:
    btf_fd = -1
    btf = None
    try:
        if spec.type == bpfsys.MAP_TASK_STORAGE:
            # Local storage needs BTF for its key and value; any types of the right size do.
            btf_fd = bpfsys.btf_load(bpfsys.storage_btf(spec.value_size))
            btf = (btf_fd, bpfsys.STORAGE_KEY_TYPE, bpfsys.STORAGE_VALUE_TYPE)
        return bpfsys.map_create(
            spec.type,
            spec.key_size,
            spec.value_size,
            spec.max_entries,
            flags=spec.flags,
            name=spec.name,
            btf=btf,
        )
    except OSError as exc:
        raise LoadError(f"map {spec.name}: {exc.strerror or exc}") from exc
    finally:
        if btf_fd >= 0:
            os.close(btf_fd)  # the map holds its own reference


class LoadedImage:
    """The maps of an image, created at once; programs loaded when first asked for."""

    def __init__(self, image: Image) -> None:
        self.image = image
        self.map_fds: dict[str, int] = {}
        self._programs: dict[str, int] = {}
        self._tables: dict[str, Table] = {}
        try:
            for spec in image.maps:
                self.map_fds[spec.name] = _create_map(spec)
        except BaseException:
            self.close()
            raise

    def program(self, function: str, kind: ProgramKind) -> int:
        """The fd of `function` loaded as `kind` (loaded once; the verifier runs here)."""
        if function in self._programs:
            return self._programs[function]
        try:
            fn = self.image.function(function)
        except KeyError as exc:
            raise LoadError(f"no function {function} in the probes") from exc
        insns = bytearray(fn.insns)
        for index, name in fn.relocations:
            # ld_imm64: dst in the low nibble, source PSEUDO_MAP_FD, imm the map's fd.
            at = index * bpfsys.INSN_LEN
            insns[at + 1] = (insns[at + 1] & 0x0F) | (bpfsys.PSEUDO_MAP_FD << 4)
            struct.pack_into("<i", insns, at + 4, self.map_fds[name])
        try:
            fd = bpfsys.prog_load(
                kind.prog_type,
                bytes(insns),
                name=function,
                license=self.image.license.encode(),
                attach_type=kind.attach_type,
                attach_btf_id=kind.attach_btf_id,
            )
        except OSError as exc:
            raise LoadError(f"program {function}: {exc.strerror or exc}") from exc
        self._programs[function] = fd
        return fd

    def programs(self) -> dict[str, int]:
        return dict(self._programs)

    def table(self, name: str) -> Table:
        if name not in self._tables:
            try:
                spec = self.image.map(name)
            except KeyError as exc:
                raise LoadError(f"no map {name} in the probes") from exc
            key = ctype_of(spec.key_desc) if spec.key_size else ctypes.c_uint32
            leaf = ctype_of(spec.leaf_desc) if spec.value_size else ctypes.c_uint32
            for what, ctype, size in (
                ("key", key, spec.key_size),
                ("value", leaf, spec.value_size),
            ):
                if size and ctypes.sizeof(ctype) != size:
                    raise LoadError(
                        f"map {name}: its {what} type is described as {ctypes.sizeof(ctype)} "
                        f"bytes, the map's are {size}"
                    )
            self._tables[name] = Table(
                self.map_fds[name],
                name,
                map_type=spec.type,
                max_entries=spec.max_entries,
                key=key,
                value=leaf,
            )
        return self._tables[name]

    def close(self) -> None:
        for fd in [*self._programs.values(), *self.map_fds.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._programs.clear()
        self.map_fds.clear()
        self._tables.clear()
