"""The bpf(2) commands the probes need, made directly (no BCC, no libbpf): maps, programs, links,
object info and run-time statistics. Attribute layouts follow include/uapi/linux/bpf.h; the
kernel zero-fills what an older attribute size leaves out.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

SYS_BPF = 321  # x86_64
SYS_PERF_EVENT_OPEN = 298

# Commands.
MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
PROG_LOAD = 5
PROG_GET_FD_BY_ID = 13
OBJ_GET_INFO_BY_FD = 15
RAW_TRACEPOINT_OPEN = 17
BTF_LOAD = 18
MAP_LOOKUP_BATCH = 24
MAP_LOOKUP_AND_DELETE_BATCH = 25
LINK_CREATE = 28
ENABLE_STATS = 32

# Program types and attach types.
PROG_TRACEPOINT = 5
PROG_RAW_TRACEPOINT = 17
PROG_TRACING = 26
ATTACH_TRACE_RAW_TP = 23
ATTACH_PERF_EVENT = 41

# Map types.
MAP_HASH = 1
MAP_ARRAY = 2
MAP_PERF_EVENT_ARRAY = 4
MAP_PERCPU_HASH = 5
MAP_PERCPU_ARRAY = 6
MAP_LRU_HASH = 9
MAP_LRU_PERCPU_HASH = 10
MAP_RINGBUF = 27
MAP_TASK_STORAGE = 29
PERCPU_MAPS = frozenset({MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_LRU_PERCPU_HASH})
ARRAY_MAPS = frozenset({MAP_ARRAY, MAP_PERCPU_ARRAY})

UPDATE_ANY = 0
PSEUDO_MAP_FD = 1
LD_IMM64 = 0x18
INSN_LEN = 8


@functools.cache
def _libcsyscall() -> Callable[..., int]:
    call = ctypes.CDLL(None, use_errno=True).syscall
    call.restype = ctypes.c_long
    return call


def syscall(number: int, *args: object) -> int:
    """syscall(2) with every integer widened to long, as the variadic ABI needs; OSError on
    failure."""
    wide = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = _libcsyscall()(ctypes.c_long(number), *wide)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def bpf(cmd: int, attr: ctypes.Structure | ctypes.Array[ctypes.c_char]) -> int:
    return syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))


@functools.cache
def possible_cpus() -> int:
    """How many CPUs per-CPU map values hold (the kernel's possible mask, not the online one)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


# -- maps ------------------------------------------------------------------------------------


class MapCreateAttr(ctypes.Structure):
    _fields_ = (
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
        ("map_ifindex", ctypes.c_uint32),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
    )


class _ElemAttr(ctypes.Structure):
    _fields_ = (
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # next_key for GET_NEXT_KEY
        ("flags", ctypes.c_uint64),
    )


class _BatchAttr(ctypes.Structure):
    _fields_ = (
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    )


def map_create(
    map_type: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    *,
    flags: int = 0,
    name: str = "",
    btf: tuple[int, int, int] | None = None,
) -> int:
    """A new map's fd; `btf` is (btf fd, key type id, value type id) where the type needs it."""
    attr = MapCreateAttr(
        map_type=map_type,
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        map_flags=flags,
        map_name=name.encode()[:15],
    )
    if btf is not None:
        attr.btf_fd, attr.btf_key_type_id, attr.btf_value_type_id = btf
    return bpf(MAP_CREATE, attr)


def _addr(buf: ctypes.Array[ctypes.c_char] | None) -> int:
    return 0 if buf is None else ctypes.addressof(buf)


def map_lookup(
    fd: int, key: ctypes.Array[ctypes.c_char], value: ctypes.Array[ctypes.c_char]
) -> bool:
    """Fill `value`; False when the key is absent."""
    attr = _ElemAttr(map_fd=fd, key=_addr(key), value=_addr(value))
    try:
        bpf(MAP_LOOKUP_ELEM, attr)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_update(
    fd: int, key: ctypes.Array[ctypes.c_char], value: ctypes.Array[ctypes.c_char], flags: int = 0
) -> None:
    bpf(MAP_UPDATE_ELEM, _ElemAttr(map_fd=fd, key=_addr(key), value=_addr(value), flags=flags))


def map_delete(fd: int, key: ctypes.Array[ctypes.c_char]) -> bool:
    """False when the key was absent."""
    try:
        bpf(MAP_DELETE_ELEM, _ElemAttr(map_fd=fd, key=_addr(key)))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_next_key(
    fd: int, key: ctypes.Array[ctypes.c_char] | None, next_key: ctypes.Array[ctypes.c_char]
) -> bool:
    """The key after `key` (the first with None); False at the end."""
    attr = _ElemAttr(map_fd=fd, key=_addr(key), value=_addr(next_key))
    try:
        bpf(MAP_GET_NEXT_KEY, attr)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


_NONZERO_BYTE = re.compile(rb"[^\x00]")
_BATCH_BYTES = 256 * 1024


def map_batch(
    fd: int,
    key_size: int,
    value_size: int,
    capacity: int,
    *,
    delete: bool = False,
    nonzero: bool = False,
) -> Iterator[tuple[bytes, bytes]]:
    """Every entry, up to 256 KiB of values per BPF_MAP_LOOKUP(_AND_DELETE)_BATCH call, handed
    over as it comes (a big map is never held twice in memory). With `nonzero`, only the entries
    whose value has a byte that is not zero, found by a scan in C: a mostly empty array of
    thousands of slots costs a syscall or two and no Python step per empty slot. OSError
    EINVAL/ENOTSUPP, on the first step, when the kernel or the map type has no batch
    operations."""
    # One call per chunk: each releases and retakes the GIL, and under load every retake can wait
    # a switch interval (5 ms), so a scrape that reads a 16,384-slot table in 32 calls could wait
    # ~160 ms. Chunks of up to 256 KiB of values read such a table in one or two calls.
    chunk = max(1, min(capacity, _BATCH_BYTES // max(1, value_size)))
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    token_in = ctypes.create_string_buffer(max(key_size, 8))
    token_out = ctypes.create_string_buffer(max(key_size, 8))
    cmd = MAP_LOOKUP_AND_DELETE_BATCH if delete else MAP_LOOKUP_BATCH
    first = True
    while True:
        attr = _BatchAttr(
            in_batch=0 if first else ctypes.addressof(token_in),
            out_batch=ctypes.addressof(token_out),
            keys=ctypes.addressof(keys),
            values=ctypes.addressof(values),
            count=chunk,
            map_fd=fd,
        )
        done = False
        try:
            bpf(cmd, attr)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            done = True  # the last (possibly partial) chunk
        raw_keys, raw_values = keys.raw, values.raw
        end, at = attr.count * value_size, 0
        while at < end:
            if nonzero:
                hit = _NONZERO_BYTE.search(raw_values, at, end)
                if hit is None:
                    break
                at = hit.start() - hit.start() % value_size
            i = at // value_size
            yield raw_keys[i * key_size : (i + 1) * key_size], raw_values[at : at + value_size]
            at += value_size
        if done or attr.count == 0:
            return
        ctypes.memmove(token_in, token_out, len(token_out))
        first = False


# -- object info -----------------------------------------------------------------------------


class _InfoAttr(ctypes.Structure):
    _fields_ = (
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    )


def _info(fd: int, size: int) -> bytes:
    buf = ctypes.create_string_buffer(size)
    bpf(OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=size, info=ctypes.addressof(buf)))
    return buf.raw


@dataclass(frozen=True, slots=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


def map_info(fd: int) -> MapInfo:
    raw = _info(fd, 88)
    kind, map_id, key, value, entries, flags = struct.unpack_from("<6I", raw, 0)
    name = raw[24:40].split(b"\0", 1)[0].decode(errors="replace")
    return MapInfo(kind, map_id, key, value, entries, flags, name)


@dataclass(frozen=True, slots=True)
class ProgInfo:
    type: int
    id: int
    name: str
    run_time_ns: int
    run_cnt: int


def prog_info(fd: int) -> ProgInfo:
    # Offsets in struct bpf_prog_info (uapi, append-only): name at 64, run_time_ns at 192.
    raw = _info(fd, 224)
    kind, prog_id = struct.unpack_from("<II", raw, 0)
    run_time_ns, run_cnt = struct.unpack_from("<QQ", raw, 192)
    name = raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return ProgInfo(kind, prog_id, name, run_time_ns, run_cnt)


# -- programs and links ----------------------------------------------------------------------


class ProgLoadAttr(ctypes.Structure):
    # union bpf_attr for BPF_PROG_LOAD up to attach_prog_fd.
    _fields_ = (
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
        ("prog_btf_fd", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("func_info_cnt", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("line_info_cnt", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("attach_prog_fd", ctypes.c_uint32),
    )


_LOG_SIZE = 4 << 20


def _func_btf(name: str) -> bytes:
    """BTF naming one function `int name(void *ctx)` (static linkage, so the verifier checks
    nothing against it): with it, bpftool and bpf_prog_info show the whole name, not the 15
    bytes prog_name holds."""
    strings = b"\0int\0ctx\0" + name.encode() + b"\0"
    types = b"".join(
        (
            struct.pack("<IIII", 1, 1 << 24, 4, (1 << 24) | 32),  # [1] int
            struct.pack("<III", 0, 2 << 24, 0),  # [2] void *
            struct.pack("<III", 0, (13 << 24) | 1, 1) + struct.pack("<II", 5, 2),  # [3] proto
            struct.pack("<III", 9, 12 << 24, 3),  # [4] func, static
        )
    )
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def prog_load(
    prog_type: int,
    insns: bytes,
    *,
    name: str,
    license: bytes = b"GPL",
    attach_type: int = 0,
    attach_btf_id: int = 0,
) -> int:
    """Load instructions; the verifier runs without a log (a level-1 log makes big programs
    load seconds slower) and, on a refusal, once more with one to say why (in the OSError)."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license)
    attr = ProgLoadAttr(
        prog_type=prog_type,
        insn_cnt=len(insns) // INSN_LEN,
        insns=ctypes.addressof(code),
        license=ctypes.addressof(lic),
        prog_name=name.encode()[:15],
        expected_attach_type=attach_type,
        attach_btf_id=attach_btf_id,
    )
    func_info = (ctypes.c_uint32 * 2)(0, 4)  # instruction 0 is function [4]
    try:
        btf_fd = btf_load(_func_btf(name))
    except OSError:
        btf_fd = -1  # no BTF loading here: the name stays cut at 15 bytes
    if btf_fd >= 0:
        attr.prog_btf_fd = btf_fd
        attr.func_info_rec_size, attr.func_info_cnt = 8, 1
        attr.func_info = ctypes.addressof(func_info)
    try:
        return _load(attr)
    finally:
        if btf_fd >= 0:
            os.close(btf_fd)


def _load(attr: ProgLoadAttr) -> int:
    try:
        return bpf(PROG_LOAD, attr)
    except OSError as first:
        log = ctypes.create_string_buffer(_LOG_SIZE)
        attr.log_level, attr.log_size, attr.log_buf = 1, _LOG_SIZE, ctypes.addressof(log)
        try:
            return bpf(PROG_LOAD, attr)  # a transient refusal (EAGAIN, ENOMEM) may pass now
        except OSError as exc:
            lines = [s for s in log.value.decode(errors="replace").splitlines() if s.strip()]
            reasons = [s for s in lines if not s.startswith(("processed ", "verification time"))]
            why = f"; verifier: {reasons[-1].strip()}" if reasons else ""
            raise OSError(exc.errno, f"{os.strerror(exc.errno or first.errno or 0)}{why}") from exc


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("bpf_cookie", ctypes.c_uint64),
        ("_reserved", ctypes.c_uint64 * 4),
    )


def link_perf_event(prog_fd: int, perf_fd: int) -> int:
    """A BPF link from a tracepoint program to an opened perf event."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_fd=perf_fd, attach_type=ATTACH_PERF_EVENT)
    return bpf(LINK_CREATE, attr)


class _RawTracepointAttr(ctypes.Structure):
    _fields_ = (("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32))


def raw_tracepoint_open(prog_fd: int, name: str | None) -> int:
    """A link of a raw tracepoint program to `name`, or (name None) of a tracing program to the
    target it was loaded for (tp_btf)."""
    buf = ctypes.create_string_buffer(name.encode()) if name is not None else None
    attr = _RawTracepointAttr(name=0 if buf is None else ctypes.addressof(buf), prog_fd=prog_fd)
    return bpf(RAW_TRACEPOINT_OPEN, attr)


def prog_fd_by_id(prog_id: int) -> int:
    """An fd of the loaded program with this id (OSError ENOENT when it is gone)."""
    attr = (ctypes.c_uint32 * 3)(prog_id, 0, 0)
    return syscall(SYS_BPF, PROG_GET_FD_BY_ID, ctypes.byref(attr), ctypes.sizeof(attr))


def enable_stats() -> int:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): run_time_ns/run_cnt are kept while the fd is open
    (whatever the kernel.bpf_stats_enabled sysctl says)."""
    attr = ctypes.create_string_buffer(8)
    return bpf(ENABLE_STATS, attr)


class _BtfLoadAttr(ctypes.Structure):
    _fields_ = (
        ("btf", ctypes.c_uint64),
        ("btf_log_buf", ctypes.c_uint64),
        ("btf_size", ctypes.c_uint32),
        ("btf_log_size", ctypes.c_uint32),
        ("btf_log_level", ctypes.c_uint32),
    )


def btf_load(blob: bytes) -> int:
    data = ctypes.create_string_buffer(blob, len(blob))
    return bpf(BTF_LOAD, _BtfLoadAttr(btf=ctypes.addressof(data), btf_size=len(blob)))


def storage_btf(value_size: int) -> bytes:
    """The smallest BTF a task-storage map accepts: key `int`, value `char[value_size]` (the
    kernel requires BTF for local storage; it only checks the key is a 32-bit int and the value
    type's size)."""
    strings = b"\0int\0char\0"
    int_info, array_info = 1 << 24, 3 << 24  # BTF_KIND_INT, BTF_KIND_ARRAY
    types = b"".join(
        (
            struct.pack("<IIII", 1, int_info, 4, (1 << 24) | 32),  # [1] int: signed, 32 bits
            struct.pack("<IIII", 5, int_info, 1, 8),  # [2] char: 8 bits
            struct.pack("<IIIIII", 0, array_info, 0, 2, 1, value_size),  # [3] char[value_size]
        )
    )
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


STORAGE_KEY_TYPE, STORAGE_VALUE_TYPE = 1, 3
