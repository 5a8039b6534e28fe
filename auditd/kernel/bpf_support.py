"""Which BPF program and map types this kernel offers, found by trying: trivial programs loaded and
attached through bpf(2) and perf_event_open(2) directly (no BCC, no headers), for ``doctor``.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import struct
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from auditd.kernel.btf import Btf, BtfError
from auditd.kernel.paths import KernelPaths, find_tracefs, present
from auditd.model.errnos import errno_text
from probes import bpfsys
from probes.perf import PERF_TYPE_TRACEPOINT, perf_event_open, tracepoint_dir, tracepoint_id

# From include/uapi/linux/bpf.h: what probes.bpfsys (the daemon's own bpf(2) layer) has no use
# for; the rest is its.
_PROG_KPROBE: Final = 2
_PROG_LSM: Final = 29
_ATTACH_TRACE_FENTRY: Final = 24
_HELPER_GET_CURRENT_TASK_BTF: Final = 158
_ATTACH_LSM_MAC: Final = 27

# From include/uapi/linux/perf_event.h.
_PERF_EVENT_IOC_SET_BPF: Final = 0x40042408  # _IOW('$', 8, __u32)


# r0 = 0; exit — every program type accepts it, so a refusal is about the type, not the code.
_RETURN_ZERO: Final = struct.pack("<BBhiBBhi", 0xB7, 0, 0, 0, 0x95, 0, 0, 0)
_VERIFIER_LOG_SIZE: Final = 64 * 1024
_PROG_NAME: Final = b"auditd_doctor"
# Functions stable across kernels (the getppid wrapper is x86_64's syscall entry point).
_TARGET_FUNCTIONS: Final = ("__x64_sys_getppid", "do_nanosleep")
_LSM_HOOK: Final = "bpf_lsm_file_open"
_TRACEPOINT: Final = ("syscalls", "sys_enter_getppid")
_RAW_TRACEPOINT: Final = "sys_enter"
_RINGBUF_PAGES: Final = 4


@dataclass(frozen=True, slots=True)
class Probe:
    """Whether one kind of BPF program could be loaded and attached here, and what happened."""

    name: str
    available: bool
    detail: str


# --- probes -------------------------------------------------------------------------------------


class _Unavailable(Exception):
    """A probe step could not be done; the message is the probe's detail (one line)."""


def _refused(step: str, exc: OSError, log: str = "") -> _Unavailable:
    detail = f"{step} refused: {errno_text(exc.errno)}"
    # The verifier's reason is its last line before the "processed N insns" statistics.
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith("processed ")]
    if reasons:
        detail += f"; verifier: {reasons[-1]}"
    return _Unavailable(detail)


def _keep(fds: ExitStack, fd: int) -> int:
    fds.callback(os.close, fd)
    return fd


def _run(name: str, attempt: Callable[[ExitStack], str]) -> Probe:
    # Every fd a step opens is registered on the stack, so success and failure both close them.
    with ExitStack() as fds:
        try:
            return Probe(name, True, attempt(fds))
        except _Unavailable as exc:
            return Probe(name, False, str(exc))


def _version_code(release: str) -> int:
    # Only kernels before 5.0 check kern_version (for kprobes); later ones ignore it.
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if match is None:
        return 0
    major, minor, patch = (int(part or 0) for part in match.groups())
    return (major << 16) | (minor << 8) | min(patch, 255)


def _load(
    fds: ExitStack,
    prog_type: int,
    *,
    attach_type: int = 0,
    attach_btf_id: int = 0,
    kern_version: int = 0,
    code: bytes = _RETURN_ZERO,
) -> int:
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(_VERIFIER_LOG_SIZE)
    attr = bpfsys.ProgLoadAttr(
        prog_type=prog_type,
        insn_cnt=len(code) // 8,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license_),
        log_level=1,
        log_size=_VERIFIER_LOG_SIZE,
        log_buf=ctypes.addressof(log),
        kern_version=kern_version,
        prog_name=_PROG_NAME,
        expected_attach_type=attach_type,
        attach_btf_id=attach_btf_id,
    )
    try:
        return _keep(fds, bpfsys.bpf(bpfsys.PROG_LOAD, attr))
    except OSError as exc:
        raise _refused("load", exc, log.value.decode(errors="replace")) from exc


def _raw_tracepoint_open(fds: ExitStack, name: str | None, prog_fd: int) -> int:
    # With name NULL the kernel attaches a tracing/LSM program to the target it was loaded for.
    try:
        return _keep(fds, bpfsys.raw_tracepoint_open(prog_fd, name))
    except OSError as exc:
        raise _refused("attach", exc) from exc


def _perf_event_open(fds: ExitStack, pmu_type: int, config: int, config1: int = 0) -> int:
    try:
        return _keep(fds, perf_event_open(pmu_type, config, config1))
    except OSError as exc:
        raise _refused("perf_event_open", exc) from exc


def _set_bpf(event_fd: int, prog_fd: int) -> None:
    try:
        fcntl.ioctl(event_fd, _PERF_EVENT_IOC_SET_BPF, prog_fd)
    except OSError as exc:
        raise _refused("attach (PERF_EVENT_IOC_SET_BPF)", exc) from exc


def _tracepoint_id(paths: KernelPaths, category: str, event: str) -> int:
    tracefs = find_tracefs(paths)
    if tracefs is None:
        searched = ", ".join(str(path / "events") for path in paths.tracefs)
        raise _Unavailable(f"tracefs not mounted: none of {searched} exists")
    id_file = tracepoint_dir(tracefs, category, event) / "id"
    try:
        return tracepoint_id(tracefs, category, event)
    except FileNotFoundError as exc:
        raise _Unavailable(f"no tracepoint {category}:{event} ({id_file} missing)") from exc
    except OSError as exc:
        raise _Unavailable(f"cannot read {id_file}: {errno_text(exc.errno)}") from exc
    except ValueError as exc:
        raise _Unavailable(f"{id_file} does not hold a number") from exc


def probe_tracepoint(paths: KernelPaths) -> Probe:
    """BPF_PROG_TYPE_TRACEPOINT on syscalls:sys_enter_getppid via perf_event_open + SET_BPF."""

    def attempt(fds: ExitStack) -> str:
        category, event = _TRACEPOINT
        tp_id = _tracepoint_id(paths, category, event)
        prog = _load(fds, bpfsys.PROG_TRACEPOINT)
        _set_bpf(_perf_event_open(fds, PERF_TYPE_TRACEPOINT, tp_id), prog)
        return f"attached to {category}:{event} (id {tp_id}) through perf_event_open"

    return _run("tracepoint", attempt)


def probe_raw_tracepoint() -> Probe:
    """BPF_PROG_TYPE_RAW_TRACEPOINT attached with BPF_RAW_TRACEPOINT_OPEN to sys_enter."""

    def attempt(fds: ExitStack) -> str:
        _raw_tracepoint_open(fds, _RAW_TRACEPOINT, _load(fds, bpfsys.PROG_RAW_TRACEPOINT))
        return f"attached to raw tracepoint {_RAW_TRACEPOINT}"

    return _run("raw_tracepoint", attempt)


def probe_ringbuf() -> Probe:
    """A BPF_MAP_TYPE_RINGBUF map (size a power-of-two multiple of the page size)."""

    def attempt(fds: ExitStack) -> str:
        size = os.sysconf("SC_PAGE_SIZE") * _RINGBUF_PAGES
        attr = bpfsys.MapCreateAttr(map_type=bpfsys.MAP_RINGBUF, max_entries=size)
        try:
            _keep(fds, bpfsys.bpf(bpfsys.MAP_CREATE, attr))
        except OSError as exc:
            raise _refused("map create", exc) from exc
        return f"created a {size}-byte ring buffer map"

    return _run("ringbuf", attempt)


def probe_kprobe(paths: KernelPaths) -> Probe:
    """BPF_PROG_TYPE_KPROBE attached through the kprobe PMU to the getppid syscall entry."""

    def attempt(fds: ExitStack) -> str:
        pmu = paths.sys / "bus" / "event_source" / "devices" / "kprobe" / "type"
        try:
            pmu_type = int(pmu.read_text())
        except FileNotFoundError as exc:
            raise _Unavailable(f"no kprobe PMU ({pmu} missing){_legacy_kprobes(paths)}") from exc
        except (OSError, ValueError) as exc:
            raise _Unavailable(f"cannot read {pmu}: {exc}") from exc
        function = _TARGET_FUNCTIONS[0]
        name = ctypes.create_string_buffer(function.encode())
        prog = _load(fds, _PROG_KPROBE, kern_version=_version_code(paths.release))
        _set_bpf(_perf_event_open(fds, pmu_type, 0, ctypes.addressof(name)), prog)
        return f"attached to {function} through the kprobe PMU (type {pmu_type})"

    return _run("kprobe", attempt)


def _legacy_kprobes(paths: KernelPaths) -> str:
    # BCC falls back to tracefs kprobe_events without the PMU: say whether that exists too.
    tracefs = find_tracefs(paths)
    if tracefs is None:
        return ", and no tracefs"
    legacy = tracefs / "kprobe_events"
    try:
        legacy.stat()
    except FileNotFoundError:
        return ", and no kprobe_events in tracefs"
    except OSError as exc:
        return f"; {legacy}: {errno_text(exc.errno)}"
    return f"; {legacy} exists (legacy kprobes only)"


class BtfFunctions:
    """The running kernel's BTF function ids, read on first use and only once (126k types)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._btf: Btf | None = None
        self._error: str | None = None

    def btf(self) -> Btf:
        """The BTF itself (_Unavailable when it cannot be read)."""
        return self._load()

    def first(self, names: Sequence[str]) -> tuple[str, int]:
        """The first of *names* that BTF describes as a FUNC, with its type id."""
        btf = self._load()
        for name in names:
            if (type_id := btf.func_id(name)) is not None:
                return name, type_id
        raise _Unavailable(f"none of {', '.join(names)} is a FUNC in the BTF at {self.path}")

    def _load(self) -> Btf:
        if self._btf is None and self._error is None:
            if not present(self.path):
                self._error = f"no BTF at {self.path}"
            else:
                try:
                    self._btf = Btf.load(self.path)
                except BtfError as exc:
                    self._error = str(exc)
        if self._btf is None:
            raise _Unavailable(self._error or f"no BTF at {self.path}")
        return self._btf


def _probe_btf_attach(
    name: str, btf: BtfFunctions, prog_type: int, attach_type: int, targets: Sequence[str]
) -> Probe:
    def attempt(fds: ExitStack) -> str:
        function, type_id = btf.first(targets)
        target = f"{function} (BTF id {type_id})"
        try:
            prog = _load(fds, prog_type, attach_type=attach_type, attach_btf_id=type_id)
            _raw_tracepoint_open(fds, None, prog)
        except _Unavailable as exc:
            raise _Unavailable(f"{target}: {exc}") from exc
        return f"attached to {target}"

    return _run(name, attempt)


def probe_fentry(paths: KernelPaths, btf: BtfFunctions | None = None) -> Probe:
    """BPF_PROG_TYPE_TRACING / BPF_TRACE_FENTRY on a stable function found in BTF."""
    btf = btf or BtfFunctions(paths.btf)
    return _probe_btf_attach(
        "fentry", btf, bpfsys.PROG_TRACING, _ATTACH_TRACE_FENTRY, _TARGET_FUNCTIONS
    )


def probe_bpf_lsm(paths: KernelPaths, btf: BtfFunctions | None = None) -> Probe:
    """BPF_PROG_TYPE_LSM / BPF_LSM_MAC on the file_open hook (returns 0: allow)."""
    btf = btf or BtfFunctions(paths.btf)
    return _probe_btf_attach("bpf_lsm", btf, _PROG_LSM, _ATTACH_LSM_MAC, (_LSM_HOOK,))


def probe_btf_loads(task_tgid_offset: int | BtfFunctions) -> Probe:
    """Plain loads through a BTF-typed pointer in a tracepoint program: the current task from
    bpf_get_current_task_btf(), then its tgid at `task_tgid_offset` (from BTF). The verifier
    checks the load against BTF; refused on kernels before 5.11 or without BTF."""

    def attempt(fds: ExitStack) -> str:
        offset = task_tgid_offset
        if isinstance(offset, BtfFunctions):
            try:
                offset = offset.btf().offsetof("task_struct", "tgid")
            except BtfError as exc:
                raise _Unavailable(str(exc)) from exc
        code = b"".join(
            (
                struct.pack("<BBhi", 0x85, 0, 0, _HELPER_GET_CURRENT_TASK_BTF),  # call
                struct.pack("<BBhi", 0x61, 0x00, offset, 0),  # r0 = *(u32 *)(r0 + offset)
                _RETURN_ZERO,
            )
        )
        _load(fds, bpfsys.PROG_TRACEPOINT, code=code)
        return "a tracepoint program read task_struct.tgid with a plain load"

    return _run("btf_loads", attempt)


def probe_tp_btf(
    tracepoint: str, type_id: int | BtfFunctions | None, *, attach: bool = True
) -> Probe:
    """BPF_PROG_TYPE_TRACING / BPF_TRACE_RAW_TP (tp_btf) on `tracepoint`, by the type id of its
    btf_trace_<tracepoint> typedef (None: the kernel's BTF has none). Without `attach`, only
    loaded (the verifier checks the target): no tracepoint registration, nothing to wait for."""

    def attempt(fds: ExitStack) -> str:
        nonlocal type_id
        if isinstance(type_id, BtfFunctions):
            type_id = type_id.btf().tracepoint_type_id(tracepoint)
        if type_id is None:
            raise _Unavailable(f"no btf_trace_{tracepoint} in the kernel's BTF")
        prog = _load(
            fds, bpfsys.PROG_TRACING, attach_type=bpfsys.ATTACH_TRACE_RAW_TP, attach_btf_id=type_id
        )
        if not attach:
            return f"loaded for tp_btf/{tracepoint} (BTF id {type_id})"
        _raw_tracepoint_open(fds, None, prog)
        return f"attached to tp_btf/{tracepoint} (BTF id {type_id})"

    return _run("tp_btf", attempt)


PROBE_NAMES: Final = (
    "tracepoint",
    "raw_tracepoint",
    "ringbuf",
    "kprobe",
    "fentry",
    "bpf_lsm",
    "tp_btf",
    "btf_loads",
)


def probe_all(paths: KernelPaths) -> tuple[Probe, ...]:
    """Every probe, in ``PROBE_NAMES`` order, sharing one read of BTF."""
    btf = BtfFunctions(paths.btf)
    return (
        probe_tracepoint(paths),
        probe_raw_tracepoint(),
        probe_ringbuf(),
        probe_kprobe(paths),
        probe_fentry(paths, btf),
        probe_bpf_lsm(paths, btf),
        probe_tp_btf("sys_enter", btf),
        probe_btf_loads(btf),
    )
