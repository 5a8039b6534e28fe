"""Landlock access rights (include/uapi/linux/landlock.h): names, bits and the ABI that added
each. Names are the UAPI's, lower case without the prefix: `read_file` is
LANDLOCK_ACCESS_FS_READ_FILE (as the kernel's audit records spell them: `fs.read_file`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

# Index = bit number.
FS_RIGHTS: Final = (
    "execute", "write_file", "read_file", "read_dir", "remove_dir", "remove_file",
    "make_char", "make_dir", "make_reg", "make_sock", "make_fifo", "make_block", "make_sym",
    "refer", "truncate", "ioctl_dev",
)  # fmt: skip
NET_RIGHTS: Final = ("bind_tcp", "connect_tcp")

# Rights a rule on a file (not a directory) may carry; others make landlock_add_rule fail.
FILE_RIGHTS: Final = frozenset({"execute", "write_file", "read_file", "truncate", "ioctl_dev"})
# Rights that only let a service look, not change anything.
READ_RIGHTS: Final = frozenset({"execute", "read_file", "read_dir"})

# The first ABI version with each right (ABI 1 has the rest).
MIN_ABI: Final[Mapping[str, int]] = {
    "refer": 2,
    "truncate": 3,
    "bind_tcp": 4,
    "connect_tcp": 4,
    "ioctl_dev": 5,
}


def fs_bit(right: str) -> int:
    return 1 << FS_RIGHTS.index(right)


def net_bit(right: str) -> int:
    return 1 << NET_RIGHTS.index(right)


def fs_handled(abi: int) -> int:
    """Every filesystem right an ABI version knows: what a ruleset handles (denies by default)."""
    return sum(fs_bit(r) for r in FS_RIGHTS if MIN_ABI.get(r, 1) <= abi)


def net_handled(abi: int) -> int:
    return sum(net_bit(r) for r in NET_RIGHTS if MIN_ABI[r] <= abi)


def min_abi(rights: set[str] | frozenset[str]) -> int:
    return max((MIN_ABI.get(r, 1) for r in rights), default=1)
