"""denials.bpf.c records → `Denial` events, and its counter keys → metric series names. Pure."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from auditd.model.capabilities import capability_name
from auditd.model.errnos import ERR_KILLED
from auditd.model.event import Source
from auditd.model.text import kernel_text
from auditd.signals.denials.event import Denial
from probes import denials as probe
from probes import syscalls
from probes.denials import DedupKey, DenialRecord

# Numbering of `source` in the kernel records.
_SOURCES = {
    probe.SOURCE_SYSCALL: Source.SYSCALL,
    probe.SOURCE_CAPABILITY: Source.CAPABILITY,
    probe.SOURCE_SELINUX: Source.SELINUX,
    probe.SOURCE_SECCOMP: Source.SECCOMP,
}
SOURCE_NUMBERS = {v: k for k, v in _SOURCES.items()}


def source_of(number: int) -> Source:
    return _SOURCES.get(number, Source.SYSCALL)


def syscall_of(number: int) -> str:
    return syscalls.name(number) if number != probe.NO_CAP else "none"


def _sockaddr(r: DenialRecord) -> str:
    if r.family == 2:
        return f"{ipaddress.IPv4Address(bytes(r.addr[:4]))}:{r.port}"
    if r.family == 10:
        return f"[{ipaddress.IPv6Address(bytes(r.addr))}]:{r.port}"
    if r.family == 1:
        return f"unix:{kernel_text(r.target)}"
    return f"family={r.family}"


def _target(r: DenialRecord, syscall: str) -> str:
    if r.flags & probe.FLAG_TARGET_UNREADABLE:
        return ""
    kind = r.target_kind
    if kind == probe.TARGET_PATH:
        return kernel_text(r.target)
    if kind == probe.TARGET_SOCKADDR:
        return _sockaddr(r)
    if kind == probe.TARGET_PID:
        if syscall in ("kill", "tkill"):
            return f"pid={r.target_int} sig={r.target_int2}"
        if syscall == "tgkill":
            return f"pid={r.target_int} tid={r.target_int2}"
        return f"pid={r.target_int}"
    if kind == probe.TARGET_INT:
        if r.source == probe.SOURCE_SECCOMP and r.err == ERR_KILLED:
            return f"seccomp_data={r.target_int}"
        if syscall in ("unshare", "clone"):
            return f"flags={r.target_int:#x}"
        if syscall == "setns":
            return f"fd={r.target_int} nstype={r.target_int2:#x}"
        return f"arg={r.target_int}"
    return ""


def _cause(r: DenialRecord, source: Source) -> str:
    if r.cause_cap == probe.CAUSE_SELINUX:
        return "selinux"
    if r.cause_cap != probe.NO_CAP:
        return f"capability:{capability_name(r.cause_cap)}"
    if source is Source.SECCOMP:
        return "seccomp"
    return "dac_or_other"


@dataclass(frozen=True, slots=True)
class Decoded:
    denial: Denial  # `repeats` still 0: the accountant fills it
    key: DedupKey
    seen: int  # refusals of this combination so far, this one included


def decode(data: bytes, mono_to_wall_ns: int) -> Decoded:
    """One ring-buffer record; its monotonic timestamp shifted by `mono_to_wall_ns`.
    ValueError when the bytes are shorter than the record."""
    r = probe.parse(data)
    source = source_of(r.source)
    syscall = syscall_of(r.syscall)
    detail: tuple[tuple[str, str], ...] = ()
    if r.cause_cap not in (probe.NO_CAP, probe.CAUSE_SELINUX):
        detail = (
            ("capability", capability_name(r.cause_cap)),
            ("init_user_ns", "true" if r.flags & probe.FLAG_CAP_INIT_NS else "false"),
        )
    denial = Denial(
        time_ns=r.ktime_ns + mono_to_wall_ns,
        pid=r.pid,
        tid=r.tid,
        ppid=r.ppid,
        uid=r.uid,
        gid=r.gid,
        comm=kernel_text(r.comm),
        cgroup_id=r.cgroup_id,
        source=source,
        syscall=syscall,
        errno=r.err,
        target=_target(r, syscall),
        target_truncated=bool(r.flags & probe.FLAG_TARGET_TRUNCATED),
        cause=_cause(r, source),
        detail=detail,
        exe=probe.exe_path(r),
    )
    key = DedupKey(r.target_hash, r.start_time, r.pid, r.syscall, r.err, r.source)
    return Decoded(denial, key, r.seen)
