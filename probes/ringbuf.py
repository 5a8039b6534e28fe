"""BPF ring buffers read through libbpf's ring_buffer API (Debian's libbpf1), by map fd.

libbpf's consumer follows the kernel's memory-ordering protocol (acquire/release on the
producer and consumer positions) on every architecture; a reader written here in Python could
only rely on x86's ordering.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from typing import Any

LIBRARY = "libbpf.so.1"

_SampleFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class RingBufferError(Exception):
    """libbpf is missing, or refused a ring buffer."""


@functools.cache
def _lib() -> Any:
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError as exc:
        raise RingBufferError(
            f"{LIBRARY} cannot be loaded (Debian package libbpf1): {exc}"
        ) from exc
    lib.ring_buffer__new.restype = ctypes.c_void_p
    lib.ring_buffer__new.argtypes = (ctypes.c_int, _SampleFn, ctypes.c_void_p, ctypes.c_void_p)
    lib.ring_buffer__add.restype = ctypes.c_int
    lib.ring_buffer__add.argtypes = (ctypes.c_void_p, ctypes.c_int, _SampleFn, ctypes.c_void_p)
    lib.ring_buffer__poll.restype = ctypes.c_int
    lib.ring_buffer__poll.argtypes = (ctypes.c_void_p, ctypes.c_int)
    lib.ring_buffer__consume.restype = ctypes.c_int
    lib.ring_buffer__consume.argtypes = (ctypes.c_void_p,)
    lib.ring_buffer__free.restype = None
    lib.ring_buffer__free.argtypes = (ctypes.c_void_p,)
    return lib


def available() -> str | None:
    """None when libbpf's ring buffer API can be used, else why not."""
    try:
        _lib()
    except RingBufferError as exc:
        return str(exc)
    return None


class RingBuffers:
    """Several ring buffers polled together; `on_record(bytes)` runs on the polling thread."""

    def __init__(self) -> None:
        self._handle: int | None = None
        self._callbacks: list[Any] = []  # the C callbacks must outlive the manager

    def add(self, map_fd: int, on_record: Callable[[bytes], None]) -> None:
        def sample(_ctx: int | None, data: int | None, size: int) -> int:
            on_record(ctypes.string_at(data, size) if data else b"")
            return 0

        callback = _SampleFn(sample)
        self._callbacks.append(callback)
        lib = _lib()
        if self._handle is None:
            handle = lib.ring_buffer__new(map_fd, callback, None, None)
            if not handle:
                err = ctypes.get_errno()
                raise RingBufferError(f"ring_buffer__new: {os.strerror(err)}")
            self._handle = handle
        elif lib.ring_buffer__add(self._handle, map_fd, callback, None) < 0:
            err = ctypes.get_errno()
            raise RingBufferError(f"ring_buffer__add: {os.strerror(err)}")

    def poll(self, timeout_ms: int) -> int:
        """Wait up to `timeout_ms` for records and hand each over; returns how many."""
        if self._handle is None:
            return 0
        n = int(_lib().ring_buffer__poll(self._handle, timeout_ms))
        if n < 0 and -n != 4:  # EINTR: a signal, not an error
            raise RingBufferError(f"ring_buffer__poll: {os.strerror(-n)}")
        return max(n, 0)

    def consume(self) -> int:
        """Hand over whatever is in the rings now, without waiting."""
        if self._handle is None:
            return 0
        return max(int(_lib().ring_buffer__consume(self._handle)), 0)

    def close(self) -> None:
        if self._handle is not None:
            _lib().ring_buffer__free(self._handle)
            self._handle = None
