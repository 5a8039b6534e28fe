"""How the allocation probes attach on this kernel: BTF-typed raw tracepoints (tp_btf: arguments
and the task read with plain loads) where the kernel takes them, raw tracepoints where its BTF
proves their argument types, classic tracepoints otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from auditd.kernel.btf import Btf, BtfError
from probes.allocations import CACHE_FIELDS, RAW_PROTOTYPES, UNTYPED_ONLY, raw_function


@dataclass(frozen=True, slots=True)
class AttachPlan:
    """tp_btf or raw tracepoints (cheap; need BTF to prove their arguments) or classic ones."""

    raw: bool
    cflags: tuple[str, ...]
    reason: str = ""  # why not the cheapest way, when it was wanted
    # (function, tracepoint, btf_trace typedef id) for tp_btf; empty otherwise.
    btf: tuple[tuple[str, str, int], ...] = ()

    @property
    def mode(self) -> str:
        return "btf" if self.btf else "raw" if self.raw else "classic"

    @property
    def raw_tracepoints(self) -> tuple[tuple[str, str], ...]:
        """(function, tracepoint) for raw attachment: all of them in raw mode, those tp_btf
        cannot take in btf mode, none in classic mode."""
        if not self.raw:
            return ()
        typed = {tp for _, tp, _ in self.btf}
        return tuple((raw_function(tp), tp) for tp in RAW_PROTOTYPES if tp not in typed)


def attach_plan(
    btf_path: Path, *, want_raw: bool = True, tp_btf: bool = False, tp_btf_off: str = ""
) -> AttachPlan:
    """`tp_btf`: the kernel loads tp_btf programs and plain loads on BTF pointers (else
    `tp_btf_off` says why not)."""
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
        type_ids = {
            tp: btf.tracepoint_type_id(tp) for tp in RAW_PROTOTYPES if tp not in UNTYPED_ONLY
        }
    except BtfError as exc:
        return AttachPlan(False, classic, f"{exc}: classic tracepoints (slower)")
    raw = ("-DALLOC_RAW=1", *(f"-D{m}={v}" for m, v in offsets.items()))
    if not tp_btf:
        why = tp_btf_off or "tp_btf not tried"
        return AttachPlan(True, (*raw, "-DALLOC_BTF=0"), f"{why}: raw tracepoints (slower)")
    btf_attach = tuple(
        (raw_function(tp), tp, type_id) for tp, type_id in type_ids.items() if type_id is not None
    )
    if len(btf_attach) != len(type_ids):
        missing = sorted(tp for tp, i in type_ids.items() if i is None)
        return AttachPlan(True, (*raw, "-DALLOC_BTF=0"), f"no btf_trace typedef for {missing}")
    return AttachPlan(True, (*raw, "-DALLOC_BTF=1"), btf=btf_attach)
