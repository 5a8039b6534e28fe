"""Kernel audit records (Landlock, SYSCALL, seccomp, SELinux AVC) parsed into frozen values, and
the event (one serial) that holds them. Pure: no sockets, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final, NamedTuple, TypeVar

from auditd.model.text import kernel_text
from probes.syscalls import NAMES as _X86_64_SYSCALLS


class RecordType(IntEnum):
    """The record types this module models or needs (include/uapi/linux/audit.h)."""

    SYSCALL = 1300
    PATH = 1302
    CONFIG_CHANGE = 1305
    CWD = 1307
    EOE = 1320  # end of a multi-record event
    SECCOMP = 1326
    PROCTITLE = 1327
    REPLACE = 1329  # kernel → audit daemon ping; binary payload, not a record
    AVC = 1400
    LANDLOCK_ACCESS = 1423
    LANDLOCK_DOMAIN = 1424
    ANOM_ABEND = 1701


# Events holding none of these are not worth a consumer's time (counted as ignored).
RELEVANT_TYPES: Final = frozenset(
    {
        RecordType.LANDLOCK_ACCESS,
        RecordType.LANDLOCK_DOMAIN,
        RecordType.SECCOMP,
        RecordType.AVC,
    }
)

AUDIT_ARCH_X86_64: Final = 0xC000003E

Fields = tuple[tuple[str, str], ...]

# key=value with the value quoted ("…", or '…' in user-space messages) or bare; bare words else.
_TOKEN: Final = re.compile(r"""([^\s=]+)=("[^"]*"?|'[^']*'?|\S*)|(\S+)""")
_HEX: Final = re.compile(r"(?:[0-9A-F]{2})+")
_AVC: Final = re.compile(
    r"avc:\s+(denied|granted)\s+(?:\{([^}]*)\}|null)\s*(?:for\s)?\s*(.*)", re.S
)
# Fields the kernel writes with audit_log_untrustedstring(): quoted when clean, else uppercase
# hex of the raw bytes. Only these are hex-decoded: numbers like ino=1234 look like hex too.
_STRING_FIELDS: Final = frozenset(
    {
        "acct",
        "cmd",
        "comm",
        "cwd",
        "data",
        "dev",
        "exe",
        "key",
        "name",
        "ocomm",
        "path",
        "proctitle",
        "srawcon",
        "trawcon",
    }
)
_UNSET: Final = frozenset({"(null)", "(none)", "?"})

# Seccomp actions (SECCOMP_RET_ACTION_FULL of include/uapi/linux/seccomp.h) by name.
SECCOMP_ACTIONS: Final = {
    0x80000000: "kill_process",
    0x00000000: "kill_thread",
    0x00030000: "trap",
    0x00050000: "errno",
    0x7FC00000: "user_notif",
    0x7FF00000: "trace",
    0x7FFC0000: "log",
    0x7FFF0000: "allow",
}


def _value(key: str, raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    if key in _STRING_FIELDS and _HEX.fullmatch(raw):
        return kernel_text(bytes.fromhex(raw))
    return raw


def parse_fields(body: str) -> Fields:
    """``key=value`` pairs in order, values unquoted and hex strings decoded; bare words dropped."""
    # Fast path: the kernel quotes only values without spaces (others are hex), so splitting
    # on whitespace is exact unless a quote is left open ('…' from user space, or damage).
    pairs = []
    for token in body.split():
        key, sep, raw = token.partition("=")
        if not sep:
            continue
        first = raw[:1]
        if first in ('"', "'"):
            if len(raw) < 2 or raw[-1] != first:
                return _parse_fields_slowly(body)
            pairs.append((key, raw[1:-1]))
        elif key in _STRING_FIELDS and _HEX.fullmatch(raw):
            pairs.append((key, kernel_text(bytes.fromhex(raw))))
        else:
            pairs.append((key, raw))
    return tuple(pairs)


def _parse_fields_slowly(body: str) -> Fields:
    return tuple(
        (match[1], _value(match[1], match[2])) for match in _TOKEN.finditer(body) if match[1]
    )


Lookup = dict[str, str]


def _lookup(fields: Fields) -> Lookup:
    return dict(reversed(fields))  # the first of repeated keys wins, as in `get`


def _get(fields: Lookup, key: str) -> str | None:
    value = fields.get(key)
    return None if value is None or value in _UNSET else value


def _int(fields: Lookup, key: str, base: int = 10) -> int | None:
    value = fields.get(key)
    if value is None:
        return None
    try:
        return int(value, 0 if value.startswith(("0x", "0X")) else base)
    except ValueError:
        return None


def _first(fields: Fields, key: str) -> str | None:
    for name, value in fields:
        if name == key:
            return None if value in _UNSET else value
    return None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """Any record this module does not model: its type and fields."""

    type: int
    fields: Fields

    def get(self, key: str) -> str | None:
        return _first(self.fields, key)


@dataclass(frozen=True, slots=True)
class LandlockAccess:
    """1423: a Landlock domain refused an access. ``blockers`` are the missing rights."""

    type: ClassVar[int] = RecordType.LANDLOCK_ACCESS

    domain: int | None
    blockers: tuple[str, ...]  # e.g. ("fs.read_file",), ("net.connect_tcp",)
    path: str | None
    dev: str | None
    ino: int | None
    address: str | None  # daddr (connect) or saddr/laddr (bind)
    port: int | None  # dest (connect) or src/lport (bind)
    fields: Fields  # everything, including what is not modelled (e.g. opid/ocomm for scopes)

    def get(self, key: str) -> str | None:
        return _first(self.fields, key)

    @classmethod
    def parse(cls, fields: Fields) -> LandlockAccess:
        f = _lookup(fields)
        blockers = _get(f, "blockers")
        address = next(
            (v for k in ("daddr", "saddr", "laddr") if (v := _get(f, k)) is not None), None
        )
        port = next((p for k in ("dest", "src", "lport") if (p := _int(f, k)) is not None), None)
        return cls(
            domain=_int(f, "domain", 16),
            blockers=tuple(b for b in (blockers or "").split(",") if b),
            path=_get(f, "path"),
            dev=_get(f, "dev"),
            ino=_int(f, "ino"),
            address=address,
            port=port,
            fields=fields,
        )


@dataclass(frozen=True, slots=True)
class LandlockDomain:
    """1424: a Landlock domain, logged with its first denial (allocated: who created it) and
    when it goes away (deallocated: how many denials it logged)."""

    type: ClassVar[int] = RecordType.LANDLOCK_DOMAIN

    domain: int | None
    status: str | None  # "allocated" or "deallocated"
    mode: str | None  # "enforcing"
    pid: int | None  # the process that created the domain (not necessarily the one refused)
    uid: int | None
    exe: str | None
    comm: str | None
    denials: int | None  # deallocated only
    fields: Fields

    def get(self, key: str) -> str | None:
        return _first(self.fields, key)

    @classmethod
    def parse(cls, fields: Fields) -> LandlockDomain:
        f = _lookup(fields)
        return cls(
            domain=_int(f, "domain", 16),
            status=_get(f, "status"),
            mode=_get(f, "mode"),
            pid=_int(f, "pid"),
            uid=_int(f, "uid"),
            exe=_get(f, "exe"),
            comm=_get(f, "comm"),
            denials=_int(f, "denials"),
            fields=fields,
        )


@dataclass(frozen=True, slots=True)
class Syscall:
    """1300: the syscall during which the event's other records were written."""

    type: ClassVar[int] = RecordType.SYSCALL

    arch: int | None
    syscall: int | None
    success: bool | None  # None: the kernel logged no result
    exit: int | None  # return value: -13 is EACCES
    pid: int | None
    ppid: int | None
    uid: int | None
    gid: int | None
    euid: int | None
    auid: int | None
    comm: str | None
    exe: str | None
    key: str | None
    fields: Fields

    def get(self, key: str) -> str | None:
        return _first(self.fields, key)

    @property
    def name(self) -> str | None:
        """The syscall's name where the numbers are known (x86_64)."""
        if self.arch != AUDIT_ARCH_X86_64 or self.syscall is None:
            return None
        return _X86_64_SYSCALLS.get(self.syscall)

    @classmethod
    def parse(cls, fields: Fields) -> Syscall:
        f = _lookup(fields)
        success = _get(f, "success")
        return cls(
            arch=_int(f, "arch", 16),
            syscall=_int(f, "syscall"),
            success=None if success is None else success == "yes",
            exit=_int(f, "exit"),
            pid=_int(f, "pid"),
            ppid=_int(f, "ppid"),
            uid=_int(f, "uid"),
            gid=_int(f, "gid"),
            euid=_int(f, "euid"),
            auid=_int(f, "auid"),
            comm=_get(f, "comm"),
            exe=_get(f, "exe"),
            key=_get(f, "key"),
            fields=fields,
        )


@dataclass(frozen=True, slots=True)
class Seccomp:
    """1326: a seccomp action the kernel logs (kills always; errno/trap only with
    SECCOMP_FILTER_FLAG_LOG; see /proc/sys/kernel/seccomp/actions_logged)."""

    type: ClassVar[int] = RecordType.SECCOMP

    pid: int | None
    uid: int | None
    gid: int | None
    auid: int | None
    comm: str | None
    exe: str | None
    sig: int | None  # 31 (SIGSYS) for kills, 0 otherwise
    arch: int | None
    syscall: int | None
    code: int | None  # the filter's action, without its data (errno) part
    fields: Fields

    def get(self, key: str) -> str | None:
        return _first(self.fields, key)

    @property
    def action(self) -> str | None:
        return None if self.code is None else SECCOMP_ACTIONS.get(self.code, hex(self.code))

    @property
    def name(self) -> str | None:
        if self.arch != AUDIT_ARCH_X86_64 or self.syscall is None:
            return None
        return _X86_64_SYSCALLS.get(self.syscall)

    @classmethod
    def parse(cls, fields: Fields) -> Seccomp:
        f = _lookup(fields)
        return cls(
            pid=_int(f, "pid"),
            uid=_int(f, "uid"),
            gid=_int(f, "gid"),
            auid=_int(f, "auid"),
            comm=_get(f, "comm"),
            exe=_get(f, "exe"),
            sig=_int(f, "sig"),
            arch=_int(f, "arch", 16),
            syscall=_int(f, "syscall"),
            code=_int(f, "code", 16),
            fields=fields,
        )


@dataclass(frozen=True, slots=True)
class Avc:
    """1400: an SELinux access decision that policy says to audit (usually a denial)."""

    type: ClassVar[int] = RecordType.AVC

    denied: bool  # False: "granted" (auditallow)
    permissions: tuple[str, ...]  # e.g. ("read", "write")
    pid: int | None
    comm: str | None
    scontext: str | None
    tcontext: str | None
    tclass: str | None
    permissive: bool | None  # True: logged but allowed (permissive mode or domain)
    fields: Fields  # the target: name, path, dev, ino, capability, dest, …

    def get(self, key: str) -> str | None:
        return _first(self.fields, key)

    @property
    def target(self) -> str | None:
        """What was reached for, as precisely as the record says."""
        for key in ("path", "name", "capability", "dest", "src", "key"):
            if (value := self.get(key)) is not None:
                return value
        return None

    @classmethod
    def parse(cls, body: str) -> Avc | None:
        match = _AVC.match(body)
        if match is None:
            return None
        fields = parse_fields(match[3])
        f = _lookup(fields)
        permissive = _get(f, "permissive")
        return cls(
            denied=match[1] == "denied",
            permissions=tuple((match[2] or "").split()),
            pid=_int(f, "pid"),
            comm=_get(f, "comm"),
            scontext=_get(f, "scontext"),
            tcontext=_get(f, "tcontext"),
            tclass=_get(f, "tclass"),
            permissive=None if permissive is None else permissive == "1",
            fields=fields,
        )


Record = AuditRecord | LandlockAccess | LandlockDomain | Syscall | Seccomp | Avc

_PARSERS: Final[dict[int, Callable[[Fields], Record]]] = {
    RecordType.LANDLOCK_ACCESS: LandlockAccess.parse,
    RecordType.LANDLOCK_DOMAIN: LandlockDomain.parse,
    RecordType.SYSCALL: Syscall.parse,
    RecordType.SECCOMP: Seccomp.parse,
}


class Stamp(NamedTuple):
    """``audit(<sec>.<msec>:<serial>)``: every record of one event carries the same stamp."""

    sec: int
    msec: int
    serial: int

    @property
    def time_ns(self) -> int:
        return self.sec * 1_000_000_000 + self.msec * 1_000_000


def split_header(text: str) -> tuple[Stamp, str] | None:
    """The stamp and the body of one record's text; None when it has no audit(…) header."""
    # By hand rather than with a regex: this runs for every record, relevant or not.
    end = text.find("):", 6)
    if not text.startswith("audit(") or end < 0:
        return None
    seconds, dot, rest = text[6:end].partition(".")
    msec, colon, serial = rest.partition(":")
    if not (dot and colon):
        return None
    try:
        stamp = Stamp(int(seconds), int(msec), int(serial))
    except ValueError:
        return None
    body = text[end + 2 :]
    return stamp, body[1:] if body[:1] == " " else body


def parse_record(record_type: int, body: str) -> Record:
    """One record's body (after the stamp) as its typed value, or an AuditRecord."""
    if record_type == RecordType.AVC and (avc := Avc.parse(body)) is not None:
        return avc
    fields = parse_fields(body)
    parser = _PARSERS.get(record_type)
    return parser(fields) if parser is not None else AuditRecord(record_type, fields)


_R = TypeVar("_R", LandlockAccess, LandlockDomain, Syscall, Seccomp, Avc)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """The records of one audit event (one serial), in the order the kernel sent them."""

    time_ns: int  # wall clock at the start of the syscall (or of the record), ms resolution
    serial: int
    records: tuple[Record, ...]
    complete: bool  # an EOE ended it; False: flushed after a timeout (no EOE outside syscalls)

    def all(self, kind: type[_R]) -> tuple[_R, ...]:
        return tuple(record for record in self.records if isinstance(record, kind))

    def first(self, kind: type[_R]) -> _R | None:
        return next((record for record in self.records if isinstance(record, kind)), None)

    @property
    def syscall(self) -> Syscall | None:
        return self.first(Syscall)

    @property
    def pid(self) -> int | None:
        """The process the event is about (the syscall's, else the seccomp or AVC record's)."""
        for record in self.records:
            if isinstance(record, Syscall | Seccomp | Avc) and record.pid is not None:
                return record.pid
        return None
