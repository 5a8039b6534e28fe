"""x86_64 syscall numbers of the syscalls the probes hook, and their names."""

from __future__ import annotations

# Keep in step with the DENIAL_NR_* constants in denials.bpf.c.
NAMES: dict[int, str] = {
    257: "openat",
}


def name(number: int) -> str:
    return NAMES.get(number, f"syscall_{number}")
