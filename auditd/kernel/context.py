"""What monitors may know about the kernel when they choose their probes: where its files are,
how to read its structs (offsets from BTF, its own headers, or none), and its clock offset."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditd.kernel import offsets
from auditd.kernel.facts import kernel_headers
from auditd.kernel.offsets import OffsetPlan
from auditd.kernel.paths import KernelPaths, find_tracefs


@dataclass(frozen=True, slots=True)
class KernelContext:
    paths: KernelPaths
    plan: OffsetPlan  # struct offsets: from BTF, own headers, or off (plan.reason says why)
    mono_to_wall_ns: int  # add to bpf_ktime_get_ns() for wall-clock nanoseconds

    @property
    def tracefs(self) -> Path | None:
        return find_tracefs(self.paths)


def kernel_context(paths: KernelPaths, log: Any) -> KernelContext:
    """Struct offsets for this kernel (BTF, own headers, or none) and the clock offset."""
    plan = offsets.resolve(paths.btf, headers_match=kernel_headers(paths).matches)
    if plan.reason:
        log.warning("struct_reads_degraded", source=plan.source, reason=plan.reason)
    return KernelContext(paths, plan, time.time_ns() - time.monotonic_ns())
