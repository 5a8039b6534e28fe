"""What monitors may know about the kernel when they choose their probes: where its files are,
how to read its structs (offsets from BTF, its own headers, or none; plain BTF-typed loads or
helper reads), whether BTF-typed tracepoints load, its tick rate and its clock offset."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditd.kernel import offsets
from auditd.kernel.bpf_support import probe_btf_loads, probe_tp_btf
from auditd.kernel.btf import Btf, BtfError
from auditd.kernel.facts import Hz, kernel_headers, kernel_hz
from auditd.kernel.offsets import OffsetPlan
from auditd.kernel.paths import KernelPaths, find_tracefs

ASSUMED_HZ = Hz(1000, "assumed")  # for contexts built without asking (tests)
# The tracepoint tp_btf support is tried on (its typedef exists wherever tp_btf does).
TP_BTF_PROBE = "sys_enter"


@dataclass(frozen=True, slots=True)
class KernelContext:
    paths: KernelPaths
    plan: OffsetPlan  # struct offsets: from BTF, own headers, or off (plan.reason says why)
    mono_to_wall_ns: int  # add to bpf_ktime_get_ns() for wall-clock nanoseconds
    hz: Hz = ASSUMED_HZ
    # Why plain BTF-typed loads (AUDITD_BTF_LOADS) or tp_btf programs are off ("" when on).
    btf_loads_off: str = "no BTF"
    tp_btf_off: str = "no BTF"

    @property
    def tracefs(self) -> Path | None:
        return find_tracefs(self.paths)

    @property
    def btf_loads(self) -> bool:
        return not self.btf_loads_off

    @property
    def tp_btf(self) -> bool:
        return not self.tp_btf_off

    def btf(self) -> Btf | None:
        """The running kernel's BTF (read once per process), None without it."""
        if self.plan.source != "btf":
            return None
        try:
            return Btf.load(self.paths.btf)
        except BtfError:
            return None

    def jiffies(self, seconds: float) -> int:
        """`seconds` in this kernel's jiffies, rounded up."""
        return int(-(-seconds * self.hz.hz // 1))


def kernel_context(paths: KernelPaths, log: Any) -> KernelContext:
    """Struct offsets for this kernel (BTF, own headers, or none), whether the verifier takes
    plain loads on BTF pointers and tp_btf programs, the tick rate and the clock offset."""
    plan = offsets.resolve(paths.btf, headers_match=kernel_headers(paths).matches)
    if plan.reason:
        log.warning("struct_reads_degraded", source=plan.source, reason=plan.reason)
    loads_off = tp_off = "no BTF" if plan.source != "btf" else ""
    if plan.source == "btf":
        loads = probe_btf_loads(plan.offsets["OFF_TASK_TGID"])
        loads_off = "" if loads.available else loads.detail
        try:
            type_id = Btf.load(paths.btf).tracepoint_type_id(TP_BTF_PROBE)
        except BtfError:
            type_id = None
        tp = probe_tp_btf(TP_BTF_PROBE, type_id, attach=False)  # start-up must not wait
        tp_off = "" if tp.available else tp.detail
    if loads_off == "":
        plan = dataclasses.replace(plan, cflags=(*plan.cflags, "-DAUDITD_BTF_LOADS=1"))
    elif plan.source == "btf":
        log.warning("btf_loads_off", reason=loads_off)
    hz = kernel_hz(paths)
    if not hz.known:
        log.warning("kernel_hz_unknown", assumed=hz.hz, reason=hz.detail)
    return KernelContext(
        paths,
        plan,
        time.time_ns() - time.monotonic_ns(),
        hz=hz,
        btf_loads_off=loads_off,
        tp_btf_off=tp_off,
    )
