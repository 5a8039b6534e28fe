"""Errno numbers as the kernel's names: one answer for metric labels, logs and `doctor`."""

from __future__ import annotations

import errno as _errno
import os

# Stand-ins in denial records: a failed capability check whose outcome the kernel did not report
# (it may have allowed the operation by another route), and a seccomp kill.
ERR_UNKNOWN = 0
ERR_KILLED = 1000

# Kernel-internal errnos that leak to user space and that Python's errno module does not name,
# and the kernel's own word where Python prefers another name for the same number.
_KERNEL_NAMES = {512: "ERESTARTSYS", 524: "ENOTSUPP", _errno.EOPNOTSUPP: "EOPNOTSUPP"}


def errno_name(number: int) -> str:
    """`EACCES` for 13; `unknown` and `SIGSYS` for the stand-ins; `E<n>` when nothing names it."""
    if number == ERR_UNKNOWN:
        return "unknown"
    if number == ERR_KILLED:
        return "SIGSYS"
    return _KERNEL_NAMES.get(number) or _errno.errorcode.get(number, f"E{number}")


def errno_text(number: int | None) -> str:
    """`EPERM (Operation not permitted)` for 1: the name for grepping, the text for reading."""
    if not number:
        return "unknown error"
    return f"{errno_name(number)} ({os.strerror(number)})"


def errno_number(name: str) -> int | None:
    """The number of an errno name (`EACCES` → 13); None when no errno has that name."""
    for number, text in _errno.errorcode.items():
        if text == name:
            return number
    return next((n for n, text in _KERNEL_NAMES.items() if text == name), None)
