"""Plain facts about the running kernel that ``doctor`` reports and the daemon plans with: kernel
headers, the BCC binding, Landlock, kallsyms, the active LSMs."""

from __future__ import annotations

import ctypes
import errno
import importlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from auditd.kernel.paths import KernelPaths, present
from auditd.model.errnos import errno_text
from probes.perf import syscall as _syscall

# x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
_SYS_LANDLOCK_CREATE_RULESET: Final = 444
_SYS_LSM_LIST_MODULES: Final = 461
# From include/uapi/linux/landlock.h and lsm.h.
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


def audit_boot_option(paths: KernelPaths) -> str | None:
    """The value of `audit=` on the kernel command line (the last one counts), None without one.
    With audit=1 the kernel holds records for an audit daemon while none is registered."""
    try:
        words = (paths.proc / "cmdline").read_text().split()
    except OSError:
        return None
    values = [w.partition("=")[2] for w in words if w.startswith("audit=")]
    return values[-1] if values else None


@dataclass(frozen=True, slots=True)
class Hz:
    """The kernel's tick rate (CONFIG_HZ): jiffies per second, which probes measure time in on
    their hot paths (bpf_jiffies64 is an inlined load; bpf_ktime_get_ns a clock read)."""

    hz: int
    source: str  # where it was found; "assumed" when nowhere
    detail: str = ""

    @property
    def known(self) -> bool:
        return self.source != "assumed"


_HZ_CHOICES: Final = (100, 250, 300, 1000)
_ASSUMED_HZ: Final = 1000  # the highest: windows and cause ages can only come out shorter
_CONFIG_HZ: Final = re.compile(rb"^CONFIG_HZ=(\d+)$", re.MULTILINE)


def kernel_hz(paths: KernelPaths, *, calibrate_s: float = 0.2) -> Hz:
    """CONFIG_HZ from the kernel's own config (/proc/config.gz, /boot/config-<release>), else
    measured from /proc/timer_list's jiffies against the monotonic clock, else assumed."""
    import gzip

    tried: list[str] = []
    for path, opener in (
        (paths.proc / "config.gz", gzip.open),
        (paths.boot / f"config-{paths.release}", open),
    ):
        try:
            with opener(path, "rb") as f:
                text = f.read()
        except OSError as exc:
            tried.append(f"{path}: {errno_text(exc.errno)}")
            continue
        if match := _CONFIG_HZ.search(text):
            return Hz(int(match.group(1)), str(path))
        tried.append(f"{path}: no CONFIG_HZ")
    timer_list = paths.proc / "timer_list"
    try:
        first = _jiffies(timer_list)
        time.sleep(calibrate_s)
        second = _jiffies(timer_list)
    except (OSError, ValueError) as exc:
        tried.append(f"{timer_list}: {exc}")
    else:
        rate = (second[0] - first[0]) / max(second[1] - first[1], 1e-9)
        hz = min(_HZ_CHOICES, key=lambda c: abs(c - rate))
        if abs(hz - rate) <= 0.2 * hz:
            return Hz(hz, f"{timer_list} (measured {rate:.0f}/s)")
        tried.append(f"{timer_list}: measured {rate:.0f} jiffies/s, no usual HZ")
    return Hz(_ASSUMED_HZ, "assumed", "; ".join(tried))


def _jiffies(timer_list: Path) -> tuple[int, float]:
    with open(timer_list, "rb") as f:
        for line in f:
            if line.startswith(b"jiffies:"):
                return int(line.split()[1]), time.monotonic()
    raise ValueError("no jiffies line")
