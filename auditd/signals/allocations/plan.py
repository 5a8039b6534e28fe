"""How the allocation probes attach on this kernel: raw tracepoints where the running kernel's BTF
proves their argument types (cheaper), classic tracepoints otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from auditd.kernel.btf import Btf, BtfError
from probes.allocations import CACHE_FIELDS, RAW_PROTOTYPES


@dataclass(frozen=True, slots=True)
class AttachPlan:
    """Raw tracepoints (cheap; need BTF to prove their arguments) or classic ones (any kernel)."""

    raw: bool
    cflags: tuple[str, ...]
    reason: str = ""  # why classic tracepoints, when raw ones were wanted

    @property
    def mode(self) -> str:
        return "raw" if self.raw else "classic"


def attach_plan(btf_path: Path, *, want_raw: bool = True) -> AttachPlan:
    classic = ("-DALLOC_RAW=0",)
    if not want_raw:
        return AttachPlan(False, classic)
    try:
        btf = Btf.load(btf_path)
        offsets = {macro: btf.offsetof("kmem_cache", f) for macro, f in CACHE_FIELDS.items()}
        for tracepoint, wanted in RAW_PROTOTYPES.items():
            got = btf.tracepoint_args(tracepoint)
            if got is None or got[: len(wanted)] != wanted:
                return AttachPlan(
                    False,
                    classic,
                    f"raw tracepoint {tracepoint} takes {got}, expected {wanted} first: "
                    "classic tracepoints (slower)",
                )
    except BtfError as exc:
        return AttachPlan(False, classic, f"{exc}: classic tracepoints (slower)")
    return AttachPlan(True, ("-DALLOC_RAW=1", *(f"-D{m}={v}" for m, v in offsets.items())))
