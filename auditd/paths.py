"""Where the daemon looks at the kernel: every /proc, /sys and tracefs path, in one value.

Tests point these at fixture trees; nothing else in the code spells out a kernel path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class KernelPaths:
    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    btf: Path = Path("/sys/kernel/btf/vmlinux")
    kallsyms: Path = Path("/proc/kallsyms")
    modules: Path = Path("/lib/modules")
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
