"""What this kernel offers, found by trying: trivial BPF programs loaded and attached through bpf(2)
and perf_event_open(2) directly (no BCC, no headers), plus the plain facts ``doctor`` reports.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import importlib
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from auditd.paths import KernelPaths
from probes.perf import PerfEventAttr as _PerfEventAttr
from probes.perf import syscall as _syscall

if TYPE_CHECKING:
    from auditd.btf import Btf

# x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
_SYS_PERF_EVENT_OPEN: Final = 298
_SYS_BPF: Final = 321
_SYS_LANDLOCK_CREATE_RULESET: Final = 444
_SYS_LSM_LIST_MODULES: Final = 461

# From include/uapi/linux/bpf.h.
_BPF_MAP_CREATE: Final = 0
_BPF_PROG_LOAD: Final = 5
_BPF_RAW_TRACEPOINT_OPEN: Final = 17
_PROG_KPROBE: Final = 2
_PROG_TRACEPOINT: Final = 5
_PROG_RAW_TRACEPOINT: Final = 17
_PROG_TRACING: Final = 26
_PROG_LSM: Final = 29
_ATTACH_TRACE_FENTRY: Final = 24
_ATTACH_LSM_MAC: Final = 27
_MAP_RINGBUF: Final = 27

# From include/uapi/linux/perf_event.h.
_PERF_TYPE_TRACEPOINT: Final = 2
_PERF_SAMPLE_RAW: Final = 1 << 10
_PERF_FLAG_FD_CLOEXEC: Final = 1 << 3
_PERF_EVENT_IOC_SET_BPF: Final = 0x40042408  # _IOW('$', 8, __u32)

# From include/uapi/linux/netlink.h, audit.h, landlock.h, lsm.h.
_LANDLOCK_CREATE_RULESET_VERSION: Final = 1
_LSM_NAMES: Final = {
    100: "capability",
    101: "selinux",
    102: "smack",
    103: "tomoyo",
    104: "apparmor",
    105: "yama",
    106: "loadpin",
    107: "safesetid",
    108: "lockdown",
    109: "bpf",
    110: "landlock",
    111: "ima",
    112: "evm",
    113: "ipe",
}

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

# Kernel-internal errnos that leak to user space and that Python's errno module does not name.
_KERNEL_ERRNOS: Final = {512: "ERESTARTSYS", 524: "ENOTSUPP"}


@dataclass(frozen=True, slots=True)
class Probe:
    """Whether one kind of BPF program could be loaded and attached here, and what happened."""

    name: str
    available: bool
    detail: str


def errno_text(err: int | None) -> str:
    """``EPERM (Operation not permitted)`` for 1: the name for grepping, the text for reading."""
    if not err:
        return "unknown error"
    name = _KERNEL_ERRNOS.get(err) or errno.errorcode.get(err, f"errno {err}")
    if name == "ENOTSUP":  # same number; the kernel and its docs say EOPNOTSUPP
        name = "EOPNOTSUPP"
    return f"{name} ({os.strerror(err)})"


# --- raw syscalls -------------------------------------------------------------------------------


class _ProgLoadAttr(ctypes.Structure):
    # union bpf_attr for BPF_PROG_LOAD up to attach_prog_fd; the kernel zero-fills the rest.
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


class _MapCreateAttr(ctypes.Structure):
    _fields_ = (
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
    )


class _RawTracepointAttr(ctypes.Structure):
    _fields_ = (("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32))


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    return _syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))


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
) -> int:
    insns = ctypes.create_string_buffer(_RETURN_ZERO, len(_RETURN_ZERO))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(_VERIFIER_LOG_SIZE)
    attr = _ProgLoadAttr(
        prog_type=prog_type,
        insn_cnt=len(_RETURN_ZERO) // 8,
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
        return _keep(fds, _bpf(_BPF_PROG_LOAD, attr))
    except OSError as exc:
        raise _refused("load", exc, log.value.decode(errors="replace")) from exc


def _raw_tracepoint_open(fds: ExitStack, name: str | None, prog_fd: int) -> int:
    # With name NULL the kernel attaches a tracing/LSM program to the target it was loaded for.
    buf = ctypes.create_string_buffer(name.encode()) if name is not None else None
    attr = _RawTracepointAttr(name=ctypes.addressof(buf) if buf is not None else 0, prog_fd=prog_fd)
    try:
        return _keep(fds, _bpf(_BPF_RAW_TRACEPOINT_OPEN, attr))
    except OSError as exc:
        raise _refused("attach", exc) from exc


def _perf_event_open(fds: ExitStack, pmu_type: int, config: int, config1: int = 0) -> int:
    attr = _PerfEventAttr(
        type=pmu_type,
        size=ctypes.sizeof(_PerfEventAttr),
        config=config,
        sample_period=1,
        sample_type=_PERF_SAMPLE_RAW,
        wakeup_events=1,
        config1=config1,
    )
    try:
        # pid -1, cpu 0, no group: what BCC does; the program runs on every CPU regardless.
        fd = _syscall(_SYS_PERF_EVENT_OPEN, ctypes.byref(attr), -1, 0, -1, _PERF_FLAG_FD_CLOEXEC)
    except OSError as exc:
        raise _refused("perf_event_open", exc) from exc
    return _keep(fds, fd)


def _set_bpf(event_fd: int, prog_fd: int) -> None:
    try:
        fcntl.ioctl(event_fd, _PERF_EVENT_IOC_SET_BPF, prog_fd)
    except OSError as exc:
        raise _refused("attach (PERF_EVENT_IOC_SET_BPF)", exc) from exc


def present(path: Path, *, directory: bool = False) -> bool:
    """Path.is_file/is_dir that never raises. Out of reach (EACCES) counts as there: whoever
    reads it next reports the refusal with its errno, rather than a wrong "missing"."""
    try:
        mode = path.stat().st_mode
    except PermissionError:
        return True
    except OSError:
        return False
    return stat.S_ISDIR(mode) if directory else stat.S_ISREG(mode)


def find_tracefs(paths: KernelPaths) -> Path | None:
    """The first of ``paths.tracefs`` holding an ``events/`` directory, as BCC picks it."""
    return next((path for path in paths.tracefs if present(path / "events", directory=True)), None)


def _tracepoint_id(paths: KernelPaths, category: str, event: str) -> int:
    tracefs = find_tracefs(paths)
    if tracefs is None:
        searched = ", ".join(str(path / "events") for path in paths.tracefs)
        raise _Unavailable(f"tracefs not mounted: none of {searched} exists")
    id_file = tracefs / "events" / category / event / "id"
    try:
        return int(id_file.read_text())
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
        prog = _load(fds, _PROG_TRACEPOINT)
        _set_bpf(_perf_event_open(fds, _PERF_TYPE_TRACEPOINT, tp_id), prog)
        return f"attached to {category}:{event} (id {tp_id}) through perf_event_open"

    return _run("tracepoint", attempt)


def probe_raw_tracepoint() -> Probe:
    """BPF_PROG_TYPE_RAW_TRACEPOINT attached with BPF_RAW_TRACEPOINT_OPEN to sys_enter."""

    def attempt(fds: ExitStack) -> str:
        _raw_tracepoint_open(fds, _RAW_TRACEPOINT, _load(fds, _PROG_RAW_TRACEPOINT))
        return f"attached to raw tracepoint {_RAW_TRACEPOINT}"

    return _run("raw_tracepoint", attempt)


def probe_ringbuf() -> Probe:
    """A BPF_MAP_TYPE_RINGBUF map (size a power-of-two multiple of the page size)."""

    def attempt(fds: ExitStack) -> str:
        size = os.sysconf("SC_PAGE_SIZE") * _RINGBUF_PAGES
        attr = _MapCreateAttr(map_type=_MAP_RINGBUF, max_entries=size)
        try:
            _keep(fds, _bpf(_BPF_MAP_CREATE, attr))
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

    def first(self, names: Sequence[str]) -> tuple[str, int]:
        """The first of *names* that BTF describes as a FUNC, with its type id."""
        btf = self._load()
        for name in names:
            if (type_id := btf.func_id(name)) is not None:
                return name, type_id
        raise _Unavailable(f"none of {', '.join(names)} is a FUNC in the BTF at {self.path}")

    def _load(self) -> Btf:
        if self._btf is None and self._error is None:
            from auditd.btf import Btf, BtfError  # the reader costs a second: only when asked

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
    return _probe_btf_attach("fentry", btf, _PROG_TRACING, _ATTACH_TRACE_FENTRY, _TARGET_FUNCTIONS)


def probe_bpf_lsm(paths: KernelPaths, btf: BtfFunctions | None = None) -> Probe:
    """BPF_PROG_TYPE_LSM / BPF_LSM_MAC on the file_open hook (returns 0: allow)."""
    btf = btf or BtfFunctions(paths.btf)
    return _probe_btf_attach("bpf_lsm", btf, _PROG_LSM, _ATTACH_LSM_MAC, (_LSM_HOOK,))


PROBE_NAMES: Final = ("tracepoint", "raw_tracepoint", "ringbuf", "kprobe", "fentry", "bpf_lsm")


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
    )


# --- plain facts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Headers:
    """The kernel headers BCC compiles against, and whose kernel they describe."""

    build: Path  # <modules>/<release>/build
    target: Path | None  # where that resolves; None when nothing is there
    release: str | None  # the headers' own release; None when they do not say
    running: str
    kheaders: Path  # <sys>/kernel/kheaders.tar.xz: the kernel's own headers (CONFIG_IKHEADERS)
    has_kheaders: bool

    @property
    def matches(self) -> bool:
        return self.release is not None and self.release == self.running


def kernel_headers(paths: KernelPaths) -> Headers:
    build = paths.kernel_build
    kheaders = paths.sys / "kernel" / "kheaders.tar.xz"
    if not present(build, directory=True):
        return Headers(build, None, None, paths.release, kheaders, present(kheaders))
    target = build.resolve()
    release = _headers_release(target)
    return Headers(build, target, release, paths.release, kheaders, present(kheaders))


def _headers_release(tree: Path) -> str | None:
    # utsrelease.h is what the headers' kernel reports as uname -r; kernel.release can differ
    # (Debian's says the upstream version, 6.1.192, where utsrelease.h says 6.1.0-56-amd64).
    try:
        text = (tree / "include" / "generated" / "utsrelease.h").read_text()
    except OSError:
        pass
    else:
        if match := re.search(r'#define\s+UTS_RELEASE\s+"([^"]*)"', text):
            return match.group(1)
    try:
        return (tree / "include" / "config" / "kernel.release").read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class Bcc:
    """The BCC Python binding in this interpreter: version when importable, else why not."""

    version: str | None
    detail: str

    @property
    def importable(self) -> bool:
        return self.version is not None


def bcc_binding() -> Bcc:
    try:
        module = importlib.import_module("bcc")
    except (ImportError, OSError) as exc:  # OSError: the module is there but libbcc.so is not
        return Bcc(None, f"import bcc failed: {exc}")
    version = str(getattr(module, "__version__", "unknown"))
    return Bcc(version, f"{version} ({Path(module.__file__ or '?').parent})")


@dataclass(frozen=True, slots=True)
class Compile:
    """Whether BCC compiled, loaded and attached a tiny tracepoint program here."""

    ok: bool
    detail: str


# No kernel #include: the tracepoint's argument struct comes from tracefs, so only BCC's own
# helpers touch the headers. Run in a child so BCC's 130 MB, its stderr and its programs go away.
_COMPILE_SCRIPT: Final = """
import bcc
b = bcc.BPF(text="TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }")
b.cleanup()
"""


def bcc_compile(timeout: float = 120.0) -> Compile:
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", _COMPILE_SCRIPT],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Compile(False, f"no answer from BCC within {timeout:.0f} s")
    except OSError as exc:
        return Compile(False, f"cannot start {sys.executable}: {errno_text(exc.errno)}")
    elapsed = time.monotonic() - started
    if done.returncode == 0:
        return Compile(True, f"TRACEPOINT_PROBE compiled, loaded and attached in {elapsed:.1f} s")
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    first_error = next((line for line in lines if "error" in line.lower()), None)
    return Compile(False, first_error or (lines[-1] if lines else f"exit {done.returncode}"))


@dataclass(frozen=True, slots=True)
class AuditNetlink:
    """What the audit netlink socket answers: AUDIT_GET status and the read-only log group."""

    enabled: int | None  # 0 off, 1 on, 2 locked; None when AUDIT_GET got no answer
    daemon_pid: int | None  # the registered audit daemon, 0 for none
    status_detail: str
    readlog: bool  # binding AUDIT_NLGRP_READLOG worked (needs CAP_AUDIT_READ)
    readlog_detail: str


def audit_netlink(timeout: float = 1.0) -> AuditNetlink:
    from auditd.audit import AUDIT_NLGRP_READLOG, NETLINK_AUDIT, read_status  # imports us

    enabled: int | None = None
    pid: int | None = None
    try:
        status = read_status(timeout=timeout)
        enabled, pid = status.enabled, status.pid
        state = {0: "disabled", 1: "enabled", 2: "enabled and locked"}.get(enabled, "unknown")
        daemon = f"audit daemon pid {pid}" if pid else "no audit daemon registered"
        status_detail = f"audit {state} (enabled={enabled}), {daemon}"
    except TimeoutError:
        status_detail = f"AUDIT_GET: no answer within {timeout:g} s"
    except OSError as exc:
        status_detail = f"AUDIT_GET failed: {errno_text(exc.errno)}"
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT) as sock:
            sock.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
        readlog, readlog_detail = True, "joined multicast group AUDIT_NLGRP_READLOG"
    except OSError as exc:
        readlog, readlog_detail = False, f"AUDIT_NLGRP_READLOG bind: {errno_text(exc.errno)}"
    return AuditNetlink(enabled, pid, status_detail, readlog, readlog_detail)


@dataclass(frozen=True, slots=True)
class Landlock:
    abi: int | None  # None: not available
    detail: str


def landlock() -> Landlock:
    try:
        abi = _syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    except OSError as exc:
        # Both meanings are documented in landlock_create_ruleset(2).
        why = {
            errno.EOPNOTSUPP: "built in but not enabled at boot",
            errno.ENOSYS: "not built into this kernel",
        }.get(exc.errno or 0, "unexpected error")
        return Landlock(None, f"landlock_create_ruleset: {errno_text(exc.errno)}: {why}")
    return Landlock(abi, f"ABI {abi}")


@dataclass(frozen=True, slots=True)
class Cgroup2:
    path: Path | None
    detail: str


def _unescape_mount(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def cgroup2_mount(paths: KernelPaths) -> Cgroup2:
    if paths.cgroup2 is not None:
        return Cgroup2(paths.cgroup2, f"{paths.cgroup2} (configured)")
    mountinfo = paths.proc / "self" / "mountinfo"
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError as exc:
        return Cgroup2(None, f"cannot read {mountinfo}: {errno_text(exc.errno)}")
    for line in lines:
        # The optional fields end at " - "; the filesystem type follows it.
        mount, separator, filesystem = line.partition(" - ")
        if separator and filesystem.split()[:1] == ["cgroup2"] and len(mount.split()) > 4:
            path = Path(_unescape_mount(mount.split()[4]))
            return Cgroup2(path, f"{path} (from {mountinfo})")
    return Cgroup2(None, f"no cgroup2 mount in {mountinfo}")


@dataclass(frozen=True, slots=True)
class Kallsyms:
    """Whether kernel symbol addresses can be read (call sites are resolved through them)."""

    path: Path
    readable: bool
    hidden: bool  # readable, but kptr_restrict shows every address as zero
    detail: str

    @property
    def usable(self) -> bool:
        return self.readable and not self.hidden


def kallsyms(paths: KernelPaths) -> Kallsyms:
    path = paths.kallsyms
    # Whether addresses show depends on both sysctls and on this process's CAP_SYSLOG.
    settings = []
    for sysctl in ("kptr_restrict", "perf_event_paranoid"):
        try:
            value = (paths.proc / "sys" / "kernel" / sysctl).read_text().strip()
        except OSError:
            value = "unknown"
        settings.append(f"{sysctl}={value}")
    setting = ", ".join(settings)
    symbols = 0
    try:
        with path.open() as lines:
            for line in lines:
                address = line.partition(" ")[0]
                if not address.strip():
                    continue
                symbols += 1
                if address.strip("0"):
                    return Kallsyms(path, True, False, f"addresses visible ({setting})")
    except OSError as exc:
        return Kallsyms(path, False, False, f"cannot read {path}: {errno_text(exc.errno)}")
    if symbols == 0:
        return Kallsyms(path, False, False, f"{path} lists no symbols")
    return Kallsyms(path, True, True, f"all {symbols} addresses read as zero here ({setting})")


@dataclass(frozen=True, slots=True)
class Lsms:
    names: tuple[str, ...] | None  # None: unknown
    source: str  # where the list came from, or why it is unknown


def active_lsms(paths: KernelPaths) -> Lsms:
    path = paths.sys / "kernel" / "security" / "lsm"
    try:
        return Lsms(tuple(name for name in path.read_text().strip().split(",") if name), str(path))
    except OSError as exc:
        file_error = f"{path}: {errno_text(exc.errno)} (securityfs not mounted?)"
    # lsm_list_modules(2) (Linux 6.8) answers without securityfs.
    ids = (ctypes.c_uint64 * 64)()
    size = ctypes.c_uint32(ctypes.sizeof(ids))
    try:
        count = _syscall(_SYS_LSM_LIST_MODULES, ctypes.byref(ids), ctypes.byref(size), 0)
    except OSError as exc:
        return Lsms(None, f"unknown: {file_error}; lsm_list_modules: {errno_text(exc.errno)}")
    names = tuple(_LSM_NAMES.get(lsm_id, f"lsm#{lsm_id}") for lsm_id in ids[:count])
    return Lsms(names, "lsm_list_modules(2)")
