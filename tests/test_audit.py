"""Audit records: parsing recorded samples, grouping by serial, sharing the enabled flag; and the
real kernel's Landlock and seccomp records read through AuditSource, which never registers as
the audit daemon (Linux auditd beside it: tests/test_auditd_coexistence.py)."""

from __future__ import annotations

import asyncio
import errno
import os
import platform
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _audit_workload as work
import pytest

from auditd.audit.assembler import Assembler
from auditd.audit.lease import EnableLease
from auditd.audit.netlink import (
    AuditStatus,
    netlink_drops,
    open_socket,
    read_status,
    set_status,
)
from auditd.audit.records import (
    AuditEvent,
    AuditRecord,
    Avc,
    LandlockAccess,
    LandlockDomain,
    Seccomp,
    Syscall,
    parse_fields,
    parse_record,
    split_header,
)
from auditd.audit.source import AuditSource, AuditStats
from auditd.model.text import kernel_text as decode_text

# Recorded on this machine (Linux 6.18, Landlock ABI 7), as the netlink payloads arrived.
LANDLOCK_FS = (
    'audit(1795459609.551:3): domain=14c55c5b4 blockers=fs.read_file path="/tmp/audexp/f" '
    'dev="vda" ino=2146387'
)
LANDLOCK_DOMAIN = (
    "audit(1795459609.551:3): domain=14c55c5b4 status=allocated mode=enforcing pid=14839 uid=0 "
    'exe="/root/.pyenv/versions/3.11.7/bin/python3.11" comm="python3"'
)
SYSCALL = (
    "audit(1795459609.551:3): arch=c000003e syscall=257 success=no exit=-13 a0=ffffff9c "
    "a1=7f7946881490 a2=80000 a3=0 items=0 ppid=14796 pid=14839 auid=4294967295 uid=0 gid=0 "
    'euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="python3" '
    'exe="/root/.pyenv/versions/3.11.7/bin/python3.11" key=(null)'
)
PROCTITLE = (
    "audit(1795459609.551:3): proctitle=2F726F6F742F2E7079656E762F76657273696F6E732F332E31312E37"
    "2F62696E2F707974686F6E33006368696C645F6C6C2E7079006673002F746D702F6175646578702F66"
)
EOE = "audit(1795459609.551:3): "
LANDLOCK_NET = (
    "audit(1795459609.623:5): domain=14c55c5c3 blockers=net.connect_tcp daddr=127.0.0.1 dest=1"
)
DEALLOCATED = "audit(1795459609.607:4): domain=14c55c5b4 status=deallocated denials=1"
SECCOMP_KILL = (
    'audit(1795459652.539:9): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=16297 comm="python3" '
    'exe="/root/.pyenv/versions/3.11.7/bin/python3.11" sig=31 arch=c000003e syscall=110 compat=0 '
    "ip=0x7fcd7c0f34f7 code=0x80000000"
)
SECCOMP_ERRNO_LOGGED = (
    'audit(1795459652.643:11): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=16299 comm="python3" '
    'exe="/root/.pyenv/versions/3.11.7/bin/python3.11" sig=0 arch=c000003e syscall=110 compat=0 '
    "ip=0x7fc8254f34f7 code=0x50000"
)
# SELinux is not active here: AVC samples in the format of security/selinux/avc.c and
# security/lsm_audit.c ("avc:  denied  { perms } for  pid=… comm=… <target> scontext=…").
AVC_FILE = (
    'audit(1700000000.123:77): avc:  denied  { read } for  pid=1234 comm="cat" name="shadow" '
    'dev="vda1" ino=393222 scontext=system_u:system_r:httpd_t:s0 '
    "tcontext=system_u:object_r:shadow_t:s0 tclass=file permissive=0"
)
AVC_CAPABILITY = (
    'audit(1700000000.124:78): avc:  denied  { sys_admin } for  pid=99 comm="unshare" '
    "capability=21  scontext=unconfined_u:unconfined_r:container_t:s0:c1,c2 "
    "tcontext=unconfined_u:unconfined_r:container_t:s0:c1,c2 tclass=capability permissive=1"
)
AVC_CONNECT = (
    'audit(1700000000.125:79): avc:  denied  { name_connect } for  pid=2016 comm="httpd" '
    "dest=3306 scontext=system_u:system_r:httpd_t:s0 "
    "tcontext=system_u:object_r:mysqld_port_t:s0 tclass=tcp_socket permissive=0"
)
# A name with a space is hex-encoded, so is a comm with a quote; several permissions at once.
AVC_HEX = (
    "audit(1700000000.126:80): avc:  denied  { read write open } for  pid=7 comm=61222062 "
    'path=2F746D702F6120622F6576696C0A6E616D65 dev="tmpfs" ino=12 '
    "scontext=system_u:system_r:init_t:s0 tcontext=system_u:object_r:tmp_t:s0 tclass=file "
    "permissive=0"
)
AVC_GRANTED = (
    'audit(1700000000.127:81): avc:  granted  { setenforce } for  pid=1 comm="systemd" '
    "scontext=system_u:system_r:init_t:s0 tcontext=system_u:object_r:security_t:s0 "
    "tclass=security"
)


def _body(text: str) -> str:
    split = split_header(text)
    assert split is not None
    return split[1]


# --- parsing ------------------------------------------------------------------------------------


def test_header() -> None:
    split = split_header(LANDLOCK_FS)
    assert split is not None
    stamp, body = split
    assert (stamp.sec, stamp.msec, stamp.serial) == (1795459609, 551, 3)
    assert stamp.time_ns == 1795459609_551_000_000
    assert body.startswith("domain=")
    assert split_header("type=1300 msg=nothing") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("audit(1.000:9):", ((1, 0, 9), "")),  # an EOE, however the trailing space went
        ("audit(1.000:9): ", ((1, 0, 9), "")),
        ("audit(1.002:9): a=b c=d", ((1, 2, 9), "a=b c=d")),
        ("audit(x.000:9): a=b", None),
        ("audit(1000:9): a=b", None),
        ("audit(1.000): a=b", None),
        ("audit(1.000:9 a=b", None),
    ],
)
def test_header_edges(text: str, expected: tuple[tuple[int, int, int], str] | None) -> None:
    assert split_header(text) == expected


def test_landlock_fs_access() -> None:
    record = parse_record(1423, _body(LANDLOCK_FS))
    assert record == LandlockAccess(
        domain=0x14C55C5B4,
        blockers=("fs.read_file",),
        path="/tmp/audexp/f",
        dev="vda",
        ino=2146387,
        address=None,
        port=None,
        fields=record.fields,
    )


def test_landlock_net_access() -> None:
    record = parse_record(1423, _body(LANDLOCK_NET))
    assert isinstance(record, LandlockAccess)
    assert (record.blockers, record.address, record.port, record.path) == (
        ("net.connect_tcp",),
        "127.0.0.1",
        1,
        None,
    )


def test_several_blockers_and_a_bind() -> None:
    record = parse_record(
        1423, "domain=1a blockers=fs.write_file,fs.truncate,net.bind_tcp saddr=::1 src=8080"
    )
    assert isinstance(record, LandlockAccess)
    assert record.blockers == ("fs.write_file", "fs.truncate", "net.bind_tcp")
    assert (record.address, record.port) == ("::1", 8080)


def test_landlock_domain_records() -> None:
    allocated = parse_record(1424, _body(LANDLOCK_DOMAIN))
    assert isinstance(allocated, LandlockDomain)
    assert (allocated.domain, allocated.status, allocated.mode) == (
        0x14C55C5B4,
        "allocated",
        "enforcing",
    )
    assert (allocated.pid, allocated.uid, allocated.comm) == (14839, 0, "python3")
    assert allocated.exe == "/root/.pyenv/versions/3.11.7/bin/python3.11"
    deallocated = parse_record(1424, _body(DEALLOCATED))
    assert isinstance(deallocated, LandlockDomain)
    assert (deallocated.status, deallocated.denials, deallocated.pid) == ("deallocated", 1, None)


def test_syscall_record() -> None:
    record = parse_record(1300, _body(SYSCALL))
    assert isinstance(record, Syscall)
    assert (record.arch, record.syscall, record.name) == (0xC000003E, 257, "openat")
    assert (record.success, record.exit) == (False, -13)
    assert (record.pid, record.ppid, record.uid, record.auid) == (14839, 14796, 0, 4294967295)
    assert (record.comm, record.key) == ("python3", None)  # key=(null)
    assert record.get("a0") == "ffffff9c"  # numbers stay as the kernel wrote them
    assert record.get("tty") is None  # tty=(none)


def test_seccomp_records() -> None:
    kill = parse_record(1326, _body(SECCOMP_KILL))
    assert isinstance(kill, Seccomp)
    assert (kill.sig, kill.syscall, kill.name, kill.action) == (31, 110, "getppid", "kill_process")
    assert (kill.pid, kill.comm, kill.code) == (16297, "python3", 0x80000000)
    logged = parse_record(1326, _body(SECCOMP_ERRNO_LOGGED))
    assert isinstance(logged, Seccomp)
    assert (logged.sig, logged.action) == (0, "errno")


def test_proctitle_is_hex_decoded_with_its_nuls() -> None:
    record = parse_record(1327, _body(PROCTITLE))
    assert isinstance(record, AuditRecord)
    assert record.get("proctitle") == (
        "/root/.pyenv/versions/3.11.7/bin/python3\0child_ll.py\0fs\0/tmp/audexp/f"
    )


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (
            AVC_FILE,
            (True, ("read",), 1234, "cat", "file", False, "shadow"),
        ),
        (
            AVC_CAPABILITY,
            (True, ("sys_admin",), 99, "unshare", "capability", True, "21"),
        ),
        (
            AVC_CONNECT,
            (True, ("name_connect",), 2016, "httpd", "tcp_socket", False, "3306"),
        ),
        (
            AVC_HEX,
            (True, ("read", "write", "open"), 7, 'a" b', "file", False, "/tmp/a b/evil\nname"),
        ),
        (
            AVC_GRANTED,
            (False, ("setenforce",), 1, "systemd", "security", None, None),
        ),
    ],
)
def test_avc_records(sample: str, expected: tuple[object, ...]) -> None:
    record = parse_record(1400, _body(sample))
    assert isinstance(record, Avc)
    got = (
        record.denied,
        record.permissions,
        record.pid,
        record.comm,
        record.tclass,
        record.permissive,
        record.target,
    )
    assert got == expected


def test_avc_contexts() -> None:
    record = parse_record(1400, _body(AVC_CAPABILITY))
    assert isinstance(record, Avc)
    assert record.scontext == "unconfined_u:unconfined_r:container_t:s0:c1,c2"
    assert record.tcontext == record.scontext
    file = parse_record(1400, _body(AVC_FILE))
    assert isinstance(file, Avc)
    assert (file.get("dev"), file.get("ino")) == ("vda1", "393222")


def test_an_unrecognised_avc_text_stays_a_plain_record() -> None:
    record = parse_record(1400, "avc:  received setenforce notice (enforcing=1)")
    assert isinstance(record, AuditRecord)


def test_hex_encoded_hostile_path_survives() -> None:
    # What the kernel writes for a path with a quote, spaces, a newline and a non-UTF-8 byte:
    # the whole string as uppercase hex, unquoted. The injected text must stay inside the path.
    hostile = b'/tmp/evil" blockers=net.bind_tcp path="/etc/passwd\n\xff'
    body = f'domain=2b blockers=fs.read_file path={hostile.hex().upper()} dev="vda" ino=5'
    record = parse_record(1423, body)
    assert isinstance(record, LandlockAccess)
    assert record.blockers == ("fs.read_file",)
    assert record.path == decode_text(hostile)
    assert record.path == '/tmp/evil" blockers=net.bind_tcp path="/etc/passwd\n\\xff'
    assert (record.dev, record.ino) == ("vda", 5)


@pytest.mark.parametrize(
    ("body", "key", "value"),
    [
        ("ino=12345678", "ino", "12345678"),  # digits look like hex: not a string field
        ("comm=41", "comm", "A"),  # a string field: hex
        ('comm="41"', "comm", "41"),  # quoted: literal
        ("path=(null)", "path", "(null)"),  # not hex: literal
        ("name=abcd", "name", "abcd"),  # the kernel's hex is uppercase
        ('path="unterminated', "path", '"unterminated'),
        ("msg='op=login res=1'", "msg", "op=login res=1"),
    ],
)
def test_field_values(body: str, key: str, value: str) -> None:
    assert dict(parse_fields(body))[key] == value


# --- grouping -----------------------------------------------------------------------------------


def _feed(
    assembler: Assembler, records: list[tuple[int, str]], now: float = 0.0
) -> list[AuditEvent]:
    events: list[AuditEvent] = []
    for record_type, text in records:
        events += [raw.parse() for raw in assembler.add(record_type, text, now)]
    return events


def test_one_event_per_serial_completed_by_eoe() -> None:
    assembler = Assembler(flush_after=1.0)
    events = _feed(
        assembler,
        [(1423, LANDLOCK_FS), (1424, LANDLOCK_DOMAIN), (1300, SYSCALL), (1327, PROCTITLE)],
    )
    assert events == []
    (raw,) = assembler.add(1320, EOE, 0.1)
    event = raw.parse()
    assert (event.serial, event.time_ns, event.complete) == (3, 1795459609_551_000_000, True)
    assert [type(r) for r in event.records] == [
        LandlockAccess,
        LandlockDomain,
        Syscall,
        AuditRecord,
    ]
    assert event.pid == 14839
    assert event.syscall is not None
    assert event.syscall.exit == -13
    assert event.all(LandlockAccess)[0].blockers == ("fs.read_file",)
    assert assembler.next_deadline() is None


def test_interleaved_serials_stay_apart() -> None:
    assembler = Assembler(flush_after=1.0)
    other = LANDLOCK_NET.replace(":5)", ":4)")
    events = _feed(
        assembler,
        [(1423, LANDLOCK_FS), (1423, other), (1300, SYSCALL), (1320, EOE)],
    )
    assert [(e.serial, len(e.records)) for e in events] == [(3, 2)]
    (late,) = [raw.parse() for raw in assembler.flush()]
    assert (late.serial, late.complete) == (4, False)


def test_records_without_eoe_flush_after_the_timeout() -> None:
    # Seccomp kills and domain deallocations are written outside a syscall: no EOE follows.
    assembler = Assembler(flush_after=0.5)
    assert assembler.add(1326, SECCOMP_KILL, 10.0) == []
    assert assembler.next_deadline() == 10.5
    assert assembler.expire(10.4) == []
    (raw,) = assembler.expire(10.5)
    event = raw.parse()
    assert event.complete is False
    seccomp = event.first(Seccomp)
    assert seccomp is not None
    assert seccomp.sig == 31
    assert event.pid == 16297
    assert assembler.add(1320, "audit(1795459652.539:9): ", 11.0) == []  # a late EOE: nothing


def test_irrelevant_events_and_malformed_records_are_counted() -> None:
    assembler = Assembler(flush_after=1.0)
    bpf = "audit(1795459652.823:13): prog-id=777 op=UNLOAD"
    syscall = SYSCALL.replace(":3)", ":13)")
    assert (
        _feed(assembler, [(1334, bpf), (1300, syscall), (1320, "audit(1795459652.823:13): ")]) == []
    )
    assert assembler.ignored == 1
    assert assembler.add(1423, "no stamp here", 0.0) == []
    assert assembler.malformed == 1


def test_every_type_when_relevant_is_none() -> None:
    assembler = Assembler(flush_after=1.0, relevant=None)
    (event,) = _feed(
        assembler, [(1305, "audit(1.000:9): op=set audit_pid=0"), (1320, "audit(1.000:9): ")]
    )
    assert isinstance(event.records[0], AuditRecord)


def test_too_many_pending_events_push_the_oldest_out() -> None:
    assembler = Assembler(flush_after=60.0, max_pending=2)
    events = _feed(
        assembler,
        [(1326, SECCOMP_KILL.replace(":9)", f":{serial})")) for serial in (1, 2, 3)],
    )
    assert [(e.serial, e.complete) for e in events] == [(1, False)]
    assert [raw.stamp.serial for raw in assembler.flush()] == [2, 3]


# --- the enabled flag, shared -------------------------------------------------------------------


class _Flag:
    def __init__(self, value: int) -> None:
        self.value = value
        self.sets: list[int] = []
        self.daemon_pid = 0  # the registered audit daemon

    def daemon(self) -> int:
        return self.daemon_pid

    def get(self) -> int:
        return self.value

    def set(self, value: int) -> None:
        self.value = value
        self.sets.append(value)


def test_lease_first_enables_last_restores(tmp_path: Path) -> None:
    flag = _Flag(0)
    first, second = EnableLease(tmp_path), EnableLease(tmp_path)
    start = first.acquire(flag.get, flag.set)
    assert (start.prior, start.enabled_by_us, start.recovered, flag.value) == (0, True, False, 1)
    again = second.acquire(flag.get, flag.set)
    assert (again.prior, again.enabled_by_us) == (0, False)
    # The second still needs audit.
    assert first.release(flag.get, flag.set, daemon=flag.daemon) is None
    assert flag.value == 1
    assert second.release(flag.get, flag.set, daemon=flag.daemon) == 0
    assert (flag.value, flag.sets) == (0, [1, 0])


def test_lease_leaves_a_flag_that_was_already_on(tmp_path: Path) -> None:
    flag = _Flag(1)
    lease = EnableLease(tmp_path)
    assert lease.acquire(flag.get, flag.set).enabled_by_us is False
    assert lease.release(flag.get, flag.set, daemon=flag.daemon) is None
    assert flag.sets == []


def test_lease_does_not_undo_someone_elses_change(tmp_path: Path) -> None:
    flag = _Flag(0)
    lease = EnableLease(tmp_path)
    lease.acquire(flag.get, flag.set)
    flag.value = 2  # an administrator locked audit on meanwhile
    assert lease.release(flag.get, flag.set, daemon=flag.daemon) is None
    assert flag.value == 2


def test_lease_recovers_from_a_holder_that_died(tmp_path: Path) -> None:
    flag = _Flag(0)
    crashed = EnableLease(tmp_path)
    crashed.acquire(flag.get, flag.set)
    assert crashed._users is not None
    os.close(crashed._users)  # what process death does: its locks go, its saved value stays
    crashed._users = None
    successor = EnableLease(tmp_path)
    start = successor.acquire(flag.get, flag.set)
    assert (start.prior, start.recovered, start.enabled_by_us) == (0, True, False)
    assert successor.release(flag.get, flag.set, daemon=flag.daemon) == 0
    assert flag.value == 0


def test_lease_leaves_audit_on_under_a_registered_audit_daemon(tmp_path: Path) -> None:
    flag = _Flag(0)
    lease = EnableLease(tmp_path)
    lease.acquire(flag.get, flag.set)
    flag.daemon_pid = 4242  # Linux auditd started meanwhile: it needs audit on
    assert lease.release(flag.get, flag.set, daemon=flag.daemon) is None
    assert (flag.value, flag.sets) == (1, [1])


def test_lease_kept_by_one_holder_is_kept_by_the_last(tmp_path: Path) -> None:
    # The first holder saw another process assert the flag (auditd, started and already gone):
    # the last one out must not switch it off either.
    flag = _Flag(0)
    first, second = EnableLease(tmp_path), EnableLease(tmp_path)
    first.acquire(flag.get, flag.set)
    second.acquire(flag.get, flag.set)
    assert first.release(flag.get, flag.set, keep=True, daemon=flag.daemon) is None
    assert second.release(flag.get, flag.set, daemon=flag.daemon) is None
    assert (flag.value, flag.sets) == (1, [1])
    # And the next holder starts afresh: it finds audit on and leaves it so.
    third = EnableLease(tmp_path)
    assert third.acquire(flag.get, flag.set).enabled_by_us is False
    assert third.release(flag.get, flag.set, daemon=flag.daemon) is None


def test_netlink_drops_reads_the_socket_row(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "netlink").write_text(
        "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n"
        "00000000c06bdf2b 9   4242       00000001 0        0        0     2        17       99\n"
    )
    assert netlink_drops(99, tmp_path) == 17
    assert netlink_drops(98, tmp_path) is None


# --- the real kernel ----------------------------------------------------------------------------


def _other_lease_holders() -> set[int]:
    """Processes other than this one holding an enable lease now (a daemon, another test run),
    read from /proc/locks: trying the lock ourselves could make a leaving holder think it is not
    the last one."""
    try:
        info = Path("/run/bpf-auditd/audit.users").stat()
    except FileNotFoundError:
        return set()
    file_id = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()  # 1: FLOCK  ADVISORY  READ 1234 fd:01:5678 0 EOF
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == file_id:
            holders.add(int(fields[4]))
    return holders - {os.getpid()}


async def _until(audit: AuditSource, found: Callable[[AuditEvent], bool]) -> list[AuditEvent]:
    """Events up to and including the first `found` one (a generous bound against hangs; on
    timeout the message says whether records were lost, e.g. to another tool's flood)."""
    seen: list[AuditEvent] = []
    try:
        async with asyncio.timeout(30):
            async for event in audit:
                seen.append(event)
                if found(event):
                    return seen
    except TimeoutError:
        raise AssertionError(f"no such event in 30 s; {audit.stats()}") from None
    raise AssertionError(f"the source closed after {len(seen)} events")


def _landlock_ready() -> None:
    if work.landlock_abi() < 7:
        pytest.skip(f"needs Landlock ABI 7 (audit logging); this kernel has {work.landlock_abi()}")


def _x86_64() -> None:
    if platform.machine() != "x86_64":
        pytest.skip("the seccomp filter matches x86_64 syscall numbers")


@pytest.mark.needs_root
def test_enables_audit_never_registers_and_restores() -> None:
    before = read_status()

    async def run() -> tuple[AuditSource, AuditStatus]:
        async with AuditSource() as audit:
            return audit, read_status()

    audit, inside = asyncio.run(run())
    after = read_status()
    assert inside.enabled in (1, 2)
    assert inside.pid != os.getpid()
    assert after.pid != os.getpid()
    if before.enabled == 0:
        # Restored by the last bpf-auditd to leave: us, unless another held a lease then (it
        # may also have enabled audit again since we restored it, and be gone already).
        settled = after.enabled == 0 or _other_lease_holders() or read_status().enabled == 0
        if audit.restored is not None:
            assert audit.restored == 0
        assert settled


@pytest.mark.needs_root
def test_two_sources_do_not_switch_audit_off_under_each_other() -> None:
    async def run() -> tuple[AuditSource, AuditSource, int, int]:
        async with AuditSource() as outer:
            async with AuditSource() as inner:
                registered = read_status().pid
            between = read_status().enabled
        return outer, inner, between, registered

    before = read_status()
    outer, inner, between, registered = asyncio.run(run())
    assert registered != os.getpid()
    assert between in (1, 2)
    assert inner.restored is None  # the outer one still needed audit
    if before.enabled == 0 and outer.restored is not None:
        assert outer.restored == 0
        assert read_status().enabled == 0 or _other_lease_holders()


@pytest.mark.needs_root
def test_never_takes_the_place_of_an_audit_daemon_that_leaves() -> None:
    """The records that once made the source register itself: a daemon unregistering
    (`audit_pid=0 old=<pid> res=1`), and a refused start that unregisters nothing
    (`audit_pid=0 old=0 res=1`, what an aborting Linux auditd sends). Neither may."""
    with work.stand_in_audit_daemon() as daemon:
        if daemon is None:
            pytest.skip("no audit daemon to watch leave: a stand-in could not register")

        async def run() -> list[int]:
            async with AuditSource(relevant=None) as audit:
                seen = []
                daemon.terminate()  # it unregisters
                await asyncio.to_thread(daemon.wait, 30)
                await _config_change(audit, f"audit_pid=0 old={daemon.pid} ")
                seen.append(read_status().pid)
                with open_socket() as sock:  # not registered: changes nothing, says res=1
                    set_status(sock, pid=0)
                await _config_change(audit, "audit_pid=0 old=0 ")
                await asyncio.sleep(0.2)  # time enough for a take-over to happen
                seen.append(read_status().pid)
                return seen

        seen = asyncio.run(run())
    assert os.getpid() not in seen


async def _config_change(audit: AuditSource, text: str) -> None:
    async with asyncio.timeout(30):
        async for event in audit:
            if text in _text(event):
                return


@pytest.mark.needs_root
def test_landlock_read_denial_with_a_hostile_path() -> None:
    _landlock_ready()
    with tempfile.TemporaryDirectory(prefix="bpf-auditd-audit-") as tmp:
        path = os.fsencode(tmp) + b'/evil" blockers=net.bind_tcp path="passwd\n\xff x'
        Path(os.fsdecode(path)).write_text("secret\n")
        inode = os.stat(path).st_ino

        async def run() -> tuple[work.Outcome, list[AuditEvent]]:
            async with AuditSource() as audit:
                outcome = await asyncio.to_thread(work.landlock_read, path)
                assert (outcome.returncode, outcome.stdout) == (0, f"{errno.EACCES}\n")
                events = await _until(
                    audit, lambda e: e.pid == outcome.pid and bool(e.all(LandlockAccess))
                )
                return outcome, events

        outcome, events = asyncio.run(run())
    event = events[-1]
    (access,) = event.all(LandlockAccess)
    assert "fs.read_file" in access.blockers
    assert access.path == decode_text(path)
    assert access.ino == inode
    syscall = event.syscall
    assert syscall is not None
    assert (syscall.pid, syscall.exit, syscall.success, syscall.name) == (
        outcome.pid,
        -errno.EACCES,
        False,
        "openat",
    )
    domain = event.first(LandlockDomain)
    assert domain is not None  # the domain's first denial also describes the domain
    assert (domain.domain, domain.status, domain.pid) == (access.domain, "allocated", outcome.pid)
    assert event.complete


@pytest.mark.needs_root
def test_landlock_connect_denial() -> None:
    _landlock_ready()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        async def run() -> list[AuditEvent]:
            async with AuditSource() as audit:
                outcome = await asyncio.to_thread(work.landlock_connect, port)
                assert (outcome.returncode, outcome.stdout) == (0, f"{errno.EACCES}\n")
                return await _until(
                    audit, lambda e: e.pid == outcome.pid and bool(e.all(LandlockAccess))
                )

        events = asyncio.run(run())
    event = events[-1]
    (access,) = event.all(LandlockAccess)
    assert access.blockers == ("net.connect_tcp",)
    assert (access.address, access.port) == ("127.0.0.1", port)
    assert event.syscall is not None
    assert (event.syscall.name, event.syscall.exit) == ("connect", -errno.EACCES)


@pytest.mark.needs_root
def test_seccomp_kill_is_audited_and_errno_only_when_asked() -> None:
    _x86_64()
    logged = Path("/proc/sys/kernel/seccomp/actions_logged").read_text().split()
    assert "errno" in logged  # so a silent errno below is the filter's choice, not the sysctl's

    async def run() -> tuple[list[work.Outcome], list[AuditEvent]]:
        async with AuditSource() as audit:
            quiet = await asyncio.to_thread(work.seccomp_getppid, work.SECCOMP_RET_ERRNO | 1)
            loud = await asyncio.to_thread(
                work.seccomp_getppid, work.SECCOMP_RET_ERRNO | 1, work.SECCOMP_FILTER_FLAG_LOG
            )
            killed = await asyncio.to_thread(work.seccomp_getppid, work.SECCOMP_RET_KILL_PROCESS)
            # The kernel queues records in order: the kill's comes after any of the others'.
            events = await _until(audit, lambda e: e.pid == killed.pid)
            return [quiet, loud, killed], events

    (quiet, loud, killed), events = asyncio.run(run())
    assert (quiet.returncode, loud.returncode, killed.returncode) == (0, 0, -31)
    by_pid = {e.pid: e for e in events if e.first(Seccomp) is not None}
    assert quiet.pid not in by_pid  # SECCOMP_RET_ERRNO without SECCOMP_FILTER_FLAG_LOG: silent
    noted = by_pid[loud.pid].first(Seccomp)
    assert noted is not None
    assert (noted.action, noted.sig, noted.name) == ("errno", 0, "getppid")
    kill = by_pid[killed.pid].first(Seccomp)
    assert kill is not None
    assert (kill.sig, kill.syscall, kill.name, kill.action) == (
        31,
        work.NR_GETPPID,
        "getppid",
        "kill_process",
    )


@pytest.mark.needs_root
def test_reads_beside_another_audit_daemon() -> None:
    _landlock_ready()
    before = read_status().enabled
    with (
        tempfile.NamedTemporaryFile(prefix="bpf-auditd-audit-") as secret,
        work.some_audit_daemon() as daemon,
    ):
        if daemon is None:
            pytest.skip("no audit daemon to stand back for: a stand-in could not register")

        async def run() -> tuple[AuditSource, int, list[AuditEvent], list[str]]:
            with work.KernelLog() as kernel_log:
                async with AuditSource() as audit:
                    registered = read_status().pid
                    outcome = await asyncio.to_thread(work.landlock_read, os.fsencode(secret.name))
                    events = await _until(
                        audit, lambda e: e.pid == outcome.pid and bool(e.all(LandlockAccess))
                    )
                    return audit, registered, events, kernel_log.lines()

        audit, registered, events, kernel_lines = asyncio.run(run())
        assert registered == daemon  # we neither replaced nor released the daemon
        status = read_status()
        assert status.pid == daemon
        # Audit that we switched on stays on while a daemon is registered: it is its now.
        assert audit.restored is None
        assert status.enabled in (1, 2)
        serial = events[-1].serial
        # The daemon got the record too: the kernel printed nothing.
        assert not [line for line in kernel_lines if f":{serial}):" in line]
    assert read_status().pid != os.getpid()
    if before == 0 and read_status().enabled == 1 and not _other_lease_holders():
        with open_socket() as sock:  # put back what this test found (the stand-in is gone)
            set_status(sock, enabled=0)


@pytest.mark.needs_root
def test_a_slow_consumer_loses_events_counted() -> None:
    _landlock_ready()

    async def run() -> tuple[list[work.Outcome], AuditEvent, AuditStats]:
        async with AuditSource(queue_size=1) as audit:
            outcomes = [
                await asyncio.to_thread(work.landlock_read, b"/etc/hostname") for _ in range(3)
            ]
            # Nobody consumes: the first event waits in the queue, later ones are dropped.
            async with asyncio.timeout(30):
                while audit.stats().events_dropped < 2:
                    await asyncio.sleep(0.01)
            stats = audit.stats()
            return outcomes, await anext(audit), stats

    outcomes, kept, stats = asyncio.run(run())
    assert kept.pid == outcomes[0].pid or kept.pid not in {o.pid for o in outcomes}
    assert stats.events_dropped >= 2
    assert stats.records_dropped >= 2 * stats.events_dropped  # 1423 and its SYSCALL at least
    assert stats.events == 1


@pytest.mark.needs_root
def test_multicast_overruns_are_counted() -> None:
    _landlock_ready()
    denials = 300

    async def run() -> tuple[work.Outcome, list[AuditEvent], AuditStats]:
        # A receive buffer of a few records, and a loop that does not read while the process
        # is refused 300 times: the kernel drops most copies for us, and counts them. (With
        # the default backlog of 64 it also loses some before anyone gets them.)
        async with AuditSource(rcvbuf=4096, flush_after=0.05) as audit:
            outcome = work.landlock_read(b"/etc/hostname", times=denials)  # blocks the loop
            async with asyncio.timeout(30):
                while read_status().backlog:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0)  # let the reader run once more
        events = [event async for event in audit]
        return outcome, events, audit.stats()

    outcome, events, stats = asyncio.run(run())
    assert outcome.stdout == f"{errno.EACCES}\n"
    seen = sum(len(e.all(LandlockAccess)) for e in events if e.pid == outcome.pid or e.pid is None)
    assert seen < denials
    assert stats.socket_drops > 0
    assert stats.socket_drops + stats.kernel_lost >= denials - seen  # each missing one counted


@pytest.mark.needs_root
def test_with_no_audit_daemon_every_record_arrives_and_the_kernel_log_is_rate_limited() -> None:
    """The one cost of never registering: with no audit daemon at all, the kernel also prints
    records, through printk_ratelimit (10 lines per 5 s by default, shared by the kernel)."""
    if read_status().pid:
        pytest.skip(f"an audit daemon is registered (pid {read_status().pid}): not the case here")
    tag = f"bpf-auditd-ratelimit-{os.getpid()}"
    count = 1000

    async def run() -> tuple[list[AuditEvent], AuditStats, list[str], float]:
        with work.KernelLog() as kernel_log:
            async with AuditSource(relevant=None) as audit:
                started = time.monotonic()
                await asyncio.to_thread(work.user_messages, [f"{tag}-{i}" for i in range(count)])
                seen: list[AuditEvent] = []
                async with asyncio.timeout(30):
                    async for event in audit:
                        seen.append(event)
                        if ("msg", f"{tag}-{count - 1}") in _fields(event):
                            break
                took = time.monotonic() - started
                return seen, audit.stats(), kernel_log.lines(), took

    events, stats, lines, took = asyncio.run(run())
    ours = sum(1 for e in events if tag in _text(e))
    printed = [line for line in lines if tag in line]
    assert ours + stats.kernel_lost + stats.socket_drops >= count
    assert ours >= count - stats.kernel_lost - stats.socket_drops
    windows = 1 + int(took // 5) + 1  # the run may straddle a window boundary
    assert len(printed) <= 10 * windows, (len(printed), took)


def _fields(event: AuditEvent) -> list[tuple[str, str]]:
    return [field for record in event.records for field in record.fields]


def _text(event: AuditEvent) -> str:
    return " ".join(f"{k}={v}" for k, v in _fields(event))
