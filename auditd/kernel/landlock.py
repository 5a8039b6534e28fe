"""Landlock, the kernel's unprivileged access control (Documentation/userspace-api/landlock.rst):
which ABI this kernel offers, and restricting the calling process to a set of rules.

The ruleset handles every right the kernel's ABI knows, so whatever no rule allows is refused;
a path rule covers the path and everything beneath it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from auditd.model import landlock as rights

_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2
_RESTRICT_SELF_LOG_NEW_EXEC_ON = 1 << 1  # ABI 7: denials after execve are still audited
_PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class LandlockError(Exception):
    """Landlock is missing, too old for a ruleset, or refused it."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # struct landlock_path_beneath_attr is packed: 12 bytes
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _NetPort(ctypes.Structure):
    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


def _call(number: int, *args: object) -> int:
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def abi() -> int:
    """This kernel's Landlock ABI version; 0 when Landlock is not built in or not enabled."""
    try:
        return _call(
            _SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)
        )
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise


@dataclass(frozen=True, slots=True)
class PathRule:
    path: str
    access: frozenset[str]


@dataclass(frozen=True, slots=True)
class PortRule:
    port: int
    access: frozenset[str]


def no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: needed to restrict oneself without CAP_SYS_ADMIN (and by seccomp)."""
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise LandlockError(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(code)}")


def restrict(paths: Sequence[PathRule], ports: Sequence[PortRule], *, needs: int) -> list[str]:
    """Restrict this process (and what it executes) to the rules. Returns what was skipped (a
    rule's path missing now). Call no_new_privs() first."""
    version = abi()
    if version == 0:
        raise LandlockError("Landlock is not available on this kernel (not built in, or disabled)")
    if version < needs:
        raise LandlockError(f"the ruleset needs Landlock ABI {needs}, this kernel has {version}")
    handled_fs = rights.fs_handled(version)
    handled_net = rights.net_handled(version)
    attr = _RulesetAttr(handled_fs, handled_net, 0)
    size = 8 if version < 4 else 16 if version < 6 else 24  # older kernels refuse larger structs
    skipped: list[str] = []
    try:
        ruleset = _call(
            _SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)
        )
    except OSError as exc:
        raise LandlockError(f"landlock_create_ruleset: {exc.strerror}") from None
    try:
        for rule in paths:
            _add_path(ruleset, rule, handled_fs, skipped)
        for port_rule in ports:
            access = sum(rights.net_bit(r) for r in port_rule.access) & handled_net
            if access:
                attr_port = _NetPort(access, port_rule.port)
                _add(ruleset, _RULE_NET_PORT, ctypes.byref(attr_port), f"port {port_rule.port}")
        flags = _RESTRICT_SELF_LOG_NEW_EXEC_ON if version >= 7 else 0
        try:
            _call(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(flags))
        except OSError as exc:
            raise LandlockError(f"landlock_restrict_self: {exc.strerror}") from None
    finally:
        os.close(ruleset)
    return skipped


def _add(ruleset: int, kind: int, attr: object, what: str) -> None:
    try:
        _call(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(kind), attr, ctypes.c_uint32(0))
    except OSError as exc:
        raise LandlockError(f"landlock_add_rule for {what}: {exc.strerror}") from None


def _add_path(ruleset: int, rule: PathRule, handled: int, skipped: list[str]) -> None:
    try:
        fd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        skipped.append(f"{rule.path}: {exc.strerror}")
        return
    try:
        access = sum(rights.fs_bit(r) for r in rule.access) & handled
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= sum(rights.fs_bit(r) for r in rights.FILE_RIGHTS)
        if access:
            attr = _PathBeneath(access, fd)
            _add(ruleset, _RULE_PATH_BENEATH, ctypes.byref(attr), rule.path)
    finally:
        os.close(fd)
