"""Where the daemon looks at the kernel: every /proc, /sys and tracefs path, in one value.

Tests point these at fixture trees; nothing else in the code spells out a kernel path.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class KernelPaths:
    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    btf: Path = Path("/sys/kernel/btf/vmlinux")
    kallsyms: Path = Path("/proc/kallsyms")
    modules: Path = Path("/lib/modules")
    boot: Path = Path("/boot")  # config-<release>: the kernel's build configuration
    # BCC looks in the first of these that holds an events/ directory.
    tracefs: tuple[Path, ...] = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
    # cgroup v2 may be the only hierarchy (/sys/fs/cgroup) or sit beside v1 (…/unified);
    # None means "find it in /proc/self/mountinfo".
    cgroup2: Path | None = None
    release: str = field(default_factory=lambda: os.uname().release)

    @property
    def kernel_build(self) -> Path:
        """The headers directory BCC compiles against."""
        return self.modules / self.release / "build"


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
