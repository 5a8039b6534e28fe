"""`bpf-auditd confine`: run a command under advice, no daemon needed — the capability
bounding set, then a Landlock ruleset and an OCI seccomp profile, then exec.

Everything the launcher needs from the file system is read and loaded first (the files, the
libseccomp binding, the filter built in memory): once Landlock restricts it, it could not.
Order: parse, build the seccomp filter, drop capabilities from the bounding set,
PR_SET_NO_NEW_PRIVS, Landlock, load the seccomp filter, execvp. The command's own exit status is
what the caller sees; a launcher failure is one line and exit 1 (refused) or 2 (bad input).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditd.kernel import landlock
from auditd.model import landlock as rights
from auditd.model.capabilities import NUMBERS as CAPABILITIES
from probes.syscalls import NUMBERS as SYSCALLS

_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_libc = ctypes.CDLL(None, use_errno=True)


class ConfineError(Exception):
    """A launcher failure; `usage` says it is the caller's input (exit 2) rather than the
    kernel refusing (exit 1)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True, slots=True)
class Ruleset:
    paths: tuple[landlock.PathRule, ...]
    ports: tuple[landlock.PortRule, ...]
    min_abi: int


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ConfineError(f"{path}: {exc.strerror}", usage=True) from None
    except json.JSONDecodeError as exc:
        raise ConfineError(f"{path}:{exc.lineno}: not JSON: {exc.msg}", usage=True) from None


def load_ruleset(path: Path) -> Ruleset:
    """A Landlock ruleset as `advise --format landlock` writes it."""
    doc = _json(path)
    try:
        paths = tuple(
            landlock.PathRule(str(r["path"]), _rights(r["access"], rights.FS_RIGHTS))
            for r in doc.get("fs", [])
        )
        ports = tuple(
            landlock.PortRule(int(r["port"]), _rights(r["access"], rights.NET_RIGHTS))
            for r in doc.get("net", [])
        )
        needs = int(doc.get("min_abi", 1))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfineError(f"{path}: not a Landlock ruleset: {exc}", usage=True) from None
    found = {r for p in paths for r in p.access} | {r for p in ports for r in p.access}
    return Ruleset(paths, ports, max(needs, rights.min_abi(found)))


def _rights(names: object, known: Sequence[str]) -> frozenset[str]:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"access must be a list of rights, got {names!r}")
    unknown = set(names) - set(known)
    if unknown:
        raise ValueError(f"unknown access right {sorted(unknown)[0]!r}")
    return frozenset(names)


def build_filter(path: Path) -> Any:
    """An OCI seccomp profile as a libseccomp filter (Debian's python3-seccomp), not loaded.
    Names this libseccomp does not know are taken from bpf-auditd's own syscall table."""
    profile = _json(path)
    try:
        import seccomp
    except ImportError:
        raise ConfineError(
            "--seccomp needs libseccomp's Python binding (Debian: python3-seccomp)"
        ) from None
    default = profile.get("defaultAction")
    if default != "SCMP_ACT_ERRNO":
        raise ConfineError(
            f"{path}: defaultAction must be SCMP_ACT_ERRNO, got {default!r}", usage=True
        )
    arches = profile.get("architectures", ["SCMP_ARCH_X86_64"])
    if arches != ["SCMP_ARCH_X86_64"]:
        raise ConfineError(f"{path}: only SCMP_ARCH_X86_64 is supported, got {arches}", usage=True)
    rules = seccomp.SyscallFilter(seccomp.ERRNO(int(profile.get("defaultErrnoRet", errno.EPERM))))
    for group in profile.get("syscalls", []):
        action = group.get("action")
        if group.get("args"):
            raise ConfineError(f"{path}: argument conditions are not supported", usage=True)
        if action == "SCMP_ACT_ALLOW":
            verdict = seccomp.ALLOW
        elif action == "SCMP_ACT_ERRNO":
            verdict = seccomp.ERRNO(int(group.get("errnoRet", errno.EPERM)))
        else:
            raise ConfineError(f"{path}: unsupported action {action!r}", usage=True)
        for name in group.get("names", []):
            rules.add_rule(verdict, _syscall(seccomp, name, path))
    return rules


def _syscall(seccomp: Any, name: str, path: Path) -> int | str:
    try:
        if int(seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)) >= 0:
            return name
    except (ValueError, RuntimeError):
        pass
    if name in SYSCALLS:
        return SYSCALLS[name]
    raise ConfineError(f"{path}: unknown syscall {name!r}", usage=True)


def capability_numbers(names: Sequence[str]) -> set[int]:
    found = set()
    for name in names:
        full = name.strip().upper()
        full = full if full.startswith("CAP_") else f"CAP_{full}"
        if full not in CAPABILITIES:
            raise ConfineError(f"unknown capability {name!r}", usage=True)
        found.add(CAPABILITIES[full])
    return found


def drop_bounding_set(keep: set[int], last_cap: int) -> None:
    """Drop every capability but `keep` from the bounding set: what root gets at exec."""
    for cap in range(last_cap + 1):
        if cap in keep or _libc.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) != 1:
            continue
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            reason = os.strerror(ctypes.get_errno())
            raise ConfineError(f"cannot drop capability {cap} from the bounding set: {reason}")


def confine(
    command: Sequence[str],
    *,
    ruleset: Path | None,
    profile: Path | None,
    capabilities: Sequence[str] | None,
    last_cap: int,
) -> None:
    """Restrict this process, then exec `command`; returns only by raising ConfineError."""
    if not command:
        raise ConfineError("no command given (confine [options] -- COMMAND...)", usage=True)
    rules = load_ruleset(ruleset) if ruleset else None
    seccomp_filter = build_filter(profile) if profile else None
    keep = capability_numbers(capabilities) if capabilities is not None else None
    if keep is not None:
        drop_bounding_set(keep, last_cap)
    try:
        landlock.no_new_privs()
        if rules is not None:
            for skipped in landlock.restrict(rules.paths, rules.ports, needs=rules.min_abi):
                print(f"bpf-auditd: confine: rule skipped: {skipped}", file=sys.stderr)
    except landlock.LandlockError as exc:
        raise ConfineError(str(exc)) from None
    if seccomp_filter is not None:
        seccomp_filter.load()
    try:
        os.execvp(command[0], list(command))
    except OSError as exc:
        if seccomp_filter is None:
            raise ConfineError(f"{command[0]}: {exc.strerror}") from None
        # Under the filter an orderly interpreter exit may need refused syscalls: leave now.
        with contextlib.suppress(OSError):
            os.write(2, f"bpf-auditd: confine: {command[0]}: {exc.strerror}\n".encode())
        os._exit(1)
