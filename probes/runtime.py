"""Probe runtime: compile the enabled probes into one image, load it, attach its programs through
BPF links, poll its ring buffers, count every loss.

All probes go into one image (one compile, one clang start-up). Compiling happens in this
process or in a short-lived child (`Compiler.in_child`: the daemon, which must not carry
BCC's LLVM), or not at all when a cached image of the very same inputs is at hand. Loading,
attaching and reading use bpf(2) and libbpf's ring buffer only. One reader thread polls every
ring buffer and hands decoded events over in batches, so the asyncio loop never blocks on the
kernel.
"""

from __future__ import annotations

import ctypes
import enum
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from probes import perf
from probes.cache import CacheUnsafe, ImageCache, KeyInputs, cache_key
from probes.compiler import CompileError, compile_image, compile_in_child
from probes.image import Image
from probes.loader import RAW_TRACEPOINT, TRACEPOINT, LoadedImage, LoadError, tp_btf
from probes.ringbuf import RingBufferError, RingBuffers
from probes.table import Table

PROBES_DIR = Path(__file__).resolve().parent
INCLUDE_DIR = PROBES_DIR / "include"

log = structlog.get_logger("bpf-auditd.probes")
_TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


class ProbeError(Exception):
    """A probe that could not be compiled, loaded or attached."""


class DropKind(enum.IntEnum):
    """Mirror of `enum auditd_drop_kind` in include/common.h."""

    RINGBUF = 0
    COUNTER_FULL = 1
    PENDING_FULL = 2
    SITE_FULL = 3
    LIVE_FULL = 4


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One probe: its C source and what the runtime reads of it. A probe that only counts in
    maps (allocations) has no ring buffer and no decoder."""

    name: str
    source: str  # file under probes/
    drops: str  # per-CPU array indexed by DropKind
    ringbuf: str | None = None  # BPF_RINGBUF_OUTPUT map name
    # Ring-buffer bytes → the value handed over (ValueError: undecodable, counted).
    decode: Callable[[bytes], object] | None = None
    cflags: tuple[str, ...] = ()
    # (function, "category:event") attached at load, for functions that are not
    # TRACEPOINT_PROBEs (those attach by their names): several tracepoints, one function.
    tracepoints: tuple[tuple[str, str], ...] = ()
    # (function, raw tracepoint) attached as raw tracepoints.
    raw_tracepoints: tuple[tuple[str, str], ...] = ()
    # (function, tracepoint, type id of its btf_trace_<tracepoint> typedef): BTF-typed raw
    # tracepoints (tp_btf), whose arguments are read with plain loads the verifier checks.
    btf_tracepoints: tuple[tuple[str, str, int], ...] = ()


@dataclass(slots=True)
class ProbeStats:
    """User-space side of a probe's accounting (written by the reader thread only)."""

    received: int = 0
    undecodable: int = 0


@dataclass(frozen=True, slots=True)
class Compiler:
    """Where the image comes from: a compiler in this process or in a child, and a cache of
    earlier images in front of it (`key_inputs` says what else an image depends on)."""

    in_child: bool = False
    cache: ImageCache | None = None
    key_inputs: KeyInputs | None = None


@dataclass(frozen=True, slots=True)
class Attachment:
    kind: str  # "tracepoint", "raw_tracepoint", "tp_btf"
    target: str
    function: str


@dataclass(slots=True)
class BuildReport:
    """How the last load went, for the ready log line and `bench/`."""

    image: str = ""  # "cache" or "compiled"
    compile_s: float = 0.0
    load_s: float = 0.0
    cache_note: str = ""  # why the cache was not used or written, when it was not
    attachments: int = 0
    extra: dict[str, object] = field(default_factory=dict)


Deliver = Callable[[list[object]], None]


def program_text(specs: Sequence[ProbeSpec]) -> str:
    """The C handed to the compiler: the enabled probes' sources one after the other, unmodified.

    Not `#include`d: BCC generates tracepoint argument structs only for TRACEPOINT_PROBEs it
    sees in the main text. `#line` keeps compiler messages pointing at the real file.
    """
    return "".join(
        f'#line 1 "{spec.source}"\n{(PROBES_DIR / spec.source).read_text()}\n' for spec in specs
    )


def compile_flags(specs: Sequence[ProbeSpec], base: Sequence[str]) -> list[str]:
    flags = [f"-I{PROBES_DIR}", f"-I{INCLUDE_DIR}", *base]
    for spec in specs:
        flags.extend(spec.cflags)
    return flags


class ProbeSet:
    """The loaded probes. `load()` and `close()` block (call them off the event loop)."""

    def __init__(
        self,
        specs: Sequence[ProbeSpec],
        cflags: Sequence[str],
        *,
        tracefs: Path | None = None,
        batch_max: int = 4096,
        poll_timeout_ms: int = 100,
        compiler: Compiler | None = None,
    ) -> None:
        if not specs:
            raise ProbeError("no probe is enabled")
        self.specs = tuple(specs)
        self.text = program_text(self.specs)
        self.cflags = compile_flags(self.specs, cflags)
        self.stats = {spec.name: ProbeStats() for spec in self.specs}
        # Where classic tracepoints are looked up (the usual places when not given).
        self.tracefs = tracefs or next((p for p in _TRACEFS if (p / "events").is_dir()), None)
        self.compiler = compiler or Compiler()
        self.report = BuildReport()
        self._batch_max = batch_max
        self._poll_timeout_ms = poll_timeout_ms
        self._loaded: LoadedImage | None = None
        self._links: list[int] = []
        self._held = perf.PerfHolder()
        self._attached: list[Attachment] = []
        self._rings: RingBuffers | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._batch: list[object] = []
        self._deliver: Deliver | None = None
        self._on_failure: Callable[[BaseException], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def _compile(self) -> Image:
        started = time.monotonic()
        build = compile_in_child if self.compiler.in_child else compile_image
        try:
            image = build(self.text, self.cflags)
        except CompileError as exc:
            raise ProbeError(f"loading {', '.join(s.name for s in self.specs)}: {exc}") from exc
        self.report.compile_s = time.monotonic() - started
        self.report.image = "compiled"
        return image

    def _cached(self) -> tuple[Image | None, str]:
        """(image from the cache or None, its key or "" without a usable cache)."""
        cache, inputs = self.compiler.cache, self.compiler.key_inputs
        if cache is None or inputs is None:
            return None, ""
        key = cache_key(self.text, self.cflags, inputs)
        try:
            image = cache.get(key)
        except CacheUnsafe as exc:
            self.report.cache_note = f"cache not used: {exc}"
            return None, ""
        if image is not None:
            self.report.image = "cache"
        return image, key

    def _store(self, key: str, image: Image) -> None:
        cache = self.compiler.cache
        if not key or cache is None:
            return
        try:
            cache.put(key, image)
        except (CacheUnsafe, OSError) as exc:
            self.report.cache_note = f"cache not written: {exc}"

    def load(self) -> None:
        """Compile (or take from the cache), load and attach every probe; raises ProbeError
        with the kernel's or the compiler's reason."""
        self.report = BuildReport()
        image, key = self._cached()
        if image is not None:
            try:
                self._load_image(image)
                return
            except ProbeError as exc:  # any doubt: compile afresh
                self.report.cache_note = f"cached image refused ({exc}): compiled afresh"
                self._release()
        image = self._compile()
        self._store(key, image)
        self._load_image(image)

    def _load_image(self, image: Image) -> None:
        started = time.monotonic()
        try:
            self._loaded = LoadedImage(image)
            for fn in image.functions:
                if fn.name.startswith("tracepoint__"):
                    category, _, event = fn.name[len("tracepoint__") :].partition("__")
                    self.attach_tracepoint(f"{category}:{event}", fn.name)
                elif fn.name.startswith("raw_tracepoint__"):
                    self._attach_raw(fn.name[len("raw_tracepoint__") :], fn.name)
            for spec in self.specs:
                for fn_name, tp in spec.tracepoints:
                    self.attach_tracepoint(tp, fn_name)
                for fn_name, tp in spec.raw_tracepoints:
                    self._attach_raw(tp, fn_name)
                for fn_name, tp, type_id in spec.btf_tracepoints:
                    self._attach_btf(tp, fn_name, type_id)
                if spec.ringbuf is not None:
                    self._open_ring(spec)
                self.table(spec.drops)
        except (LoadError, RingBufferError, OSError) as exc:
            self._release()
            raise ProbeError(f"loading {', '.join(s.name for s in self.specs)}: {exc}") from exc
        except ProbeError:
            self._release()
            raise
        self.report.load_s = time.monotonic() - started
        self.report.attachments = len(self._links)

    def start(self, deliver: Deliver, on_failure: Callable[[BaseException], None]) -> None:
        """Start the reader thread; `deliver` is called with batches from that thread. Without
        any ring buffer there is nothing to read, and no thread."""
        self._deliver = deliver
        if self._rings is None:
            return
        self._on_failure = on_failure
        self._thread = threading.Thread(target=self._poll_loop, name="bpf-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling, then hand over what was already read: nothing read is left behind."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._rings is not None and self._deliver is not None:
            self._rings.consume()  # records already in the rings
            self._flush()

    def _loaded_image(self) -> LoadedImage:
        if self._loaded is None:
            raise ProbeError("probes are not loaded")
        return self._loaded

    def attach_tracepoint(self, tracepoint: str, function: str) -> None:
        """Attach a function to one more classic tracepoint ("category:event") through a BPF
        link: one program serves many tracepoints of the same record layout."""
        loaded = self._loaded_image()
        category, _, event = tracepoint.partition(":")
        try:
            if self.tracefs is None:
                raise OSError("tracefs is not mounted")
            fd = loaded.program(function, TRACEPOINT)
            self._links.append(perf.attach(self.tracefs, category, event, fd, self._held))
        except (LoadError, OSError) as exc:
            raise ProbeError(f"attaching {function} to {tracepoint}: {exc}") from exc
        self._attached.append(Attachment("tracepoint", tracepoint, function))

    def _attach_raw(self, tracepoint: str, function: str) -> None:
        try:
            fd = self._loaded_image().program(function, RAW_TRACEPOINT)
            self._links.append(perf.attach_raw(tracepoint, fd))
        except (LoadError, OSError) as exc:
            raise ProbeError(f"attaching {function} to raw tracepoint {tracepoint}: {exc}") from exc
        self._attached.append(Attachment("raw_tracepoint", tracepoint, function))

    def _attach_btf(self, tracepoint: str, function: str, type_id: int) -> None:
        try:
            fd = self._loaded_image().program(function, tp_btf(type_id))
            self._links.append(perf.attach_btf(fd))
        except (LoadError, OSError) as exc:
            raise ProbeError(f"attaching {function} to tp_btf/{tracepoint}: {exc}") from exc
        self._attached.append(Attachment("tp_btf", tracepoint, function))

    def tail_call(self, table: str, index: int, function: str) -> None:
        """Load `function` as a tracepoint program and put it at `index` of the program array
        `table`, for the probes' tail calls."""
        try:
            fd = self._loaded_image().program(function, TRACEPOINT)
            self.table(table)[ctypes.c_uint32(index)] = ctypes.c_int(fd)
        except (LoadError, OSError) as exc:
            raise ProbeError(f"loading {function} for {table}[{index}]: {exc}") from exc

    def attachments(self) -> list[Attachment]:
        return list(self._attached)

    def programs(self) -> dict[str, int]:
        """Loaded programs by function name: fds (for run-time statistics)."""
        return self._loaded.programs() if self._loaded is not None else {}

    def _release(self) -> None:
        perf.close_all(self._links)  # detaches the programs
        self._links.clear()
        self._held.close()  # the perf events: released by the kernel, after us
        self._attached.clear()
        if self._rings is not None:
            self._rings.close()
            self._rings = None
        if self._loaded is not None:
            self._loaded.close()
            self._loaded = None

    def close(self) -> None:
        """Detach and unload every program and map (links closed in parallel)."""
        if self._thread is not None:
            self.stop()
        self._release()

    # -- kernel state ----------------------------------------------------------------------

    def table(self, name: str) -> Table:
        """A map of the loaded image (map reads are safe from any thread)."""
        try:
            return self._loaded_image().table(name)
        except LoadError as exc:
            raise ProbeError(str(exc)) from exc

    def kernel_drops(self) -> dict[tuple[str, DropKind], int]:
        """Records each probe could not send or count, summed over CPUs."""
        drops: dict[tuple[str, DropKind], int] = {}
        for spec in self.specs:
            table = self.table(spec.drops)
            for kind in DropKind:
                drops[spec.name, kind] = sum(table[ctypes.c_uint32(kind)])
        return drops

    # -- reader thread ---------------------------------------------------------------------

    def _open_ring(self, spec: ProbeSpec) -> None:
        stats = self.stats[spec.name]
        decode = spec.decode
        if decode is None:
            raise ProbeError(f"probe {spec.name} has a ring buffer but no decoder")
        assert spec.ringbuf is not None

        def on_record(data: bytes) -> None:
            try:
                event = decode(data)
            except ValueError:  # a record shorter than its struct: count it, keep going
                stats.undecodable += 1
                return
            stats.received += 1
            self._batch.append(event)
            # Bound the work per hand-over: under a flood the ring never empties.
            if len(self._batch) >= self._batch_max:
                self._flush()

        if self._rings is None:
            self._rings = RingBuffers()
        self._rings.add(self._loaded_image().map_fds[spec.ringbuf], on_record)

    def _flush(self) -> None:
        if self._batch and self._deliver is not None:
            batch, self._batch = self._batch, []
            self._deliver(batch)

    def _poll_loop(self) -> None:
        rings = self._rings
        assert rings is not None
        try:
            while not self._stopping.is_set():
                rings.poll(self._poll_timeout_ms)
                self._flush()
        except BaseException as exc:
            log.error("probe_reader_failed", error=str(exc))
            if self._on_failure is not None:
                self._on_failure(exc)
