"""Processes the kernel's audit reports on: Landlock-restricted reads and connects, seccomp
filters that kill or refuse; plus a stand-in audit daemon and a reader of the kernel log."""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from auditd.audit.netlink import HEADER, open_socket, read_status
from auditd.kernel.facts import landlock

# Runs as the child: restrict itself with a Landlock ruleset that handles one right and grants
# nothing, then try it (argv[3] times) in the same process (no exec: Landlock logs denials of
# the exec that restricted itself by default). Prints the last errno (0: allowed).
_LANDLOCK = r"""
import ctypes, os, socket, sys
READ_FILE, CONNECT_TCP = 1 << 2, 1 << 1
class Attr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
kind, target, times = sys.argv[1], os.fsencode(sys.argv[2]), int(sys.argv[3])
attr = Attr(fs=READ_FILE if kind == "read" else 0, net=CONNECT_TCP if kind == "connect" else 0)
fd = libc.syscall(ctypes.c_long(444), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                  ctypes.c_uint32(0))
if fd < 0 or libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    sys.exit(f"ruleset: errno {ctypes.get_errno()}")
if libc.syscall(ctypes.c_long(446), ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
    sys.exit(f"restrict_self: errno {ctypes.get_errno()}")
sock = socket.socket()
for _ in range(times):
    try:
        if kind == "read":
            os.close(os.open(target, os.O_RDONLY))
        else:
            sock.connect(("127.0.0.1", int(target)))
        result = 0
    except OSError as exc:
        result = exc.errno
os.write(1, b"%d\n" % result)
"""

# Runs as the child: a seccomp filter whose action (argv[1]) applies to getppid only, installed
# with the given filter flags (argv[2]); then calls getppid. No core dump from a kill.
_SECCOMP = r"""
import ctypes, os, resource, struct, sys
action, flags = int(sys.argv[1], 0), int(sys.argv[2])
AUDIT_ARCH_X86_64, NR_GETPPID, RET_ALLOW = 0xC000003E, 110, 0x7FFF0000
program = [
    (0x20, 0, 0, 4),                  # A = seccomp_data.arch
    (0x15, 0, 3, AUDIT_ARCH_X86_64),  # if A != x86_64 goto allow
    (0x20, 0, 0, 0),                  # A = seccomp_data.nr
    (0x15, 0, 1, NR_GETPPID),         # if A != getppid goto allow
    (0x06, 0, 0, action),
    (0x06, 0, 0, RET_ALLOW),
]
code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in program))
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(program), ctypes.addressof(code))
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.syscall(
    ctypes.c_long(317), ctypes.c_uint(1), ctypes.c_uint(flags), ctypes.byref(prog)
) != 0:  # PR_SET_NO_NEW_PRIVS; seccomp(SECCOMP_SET_MODE_FILTER)
    sys.exit(f"seccomp: errno {ctypes.get_errno()}")
os.getppid()
os.write(1, b"survived\n")
"""

# Registers itself as the audit daemon, retrying for 3 s while another is registered; prints
# "registered" or the errno; reads and discards records; unregisters on SIGTERM.
_FAKE_DAEMON = r"""
import errno, os, signal, sys, time
from auditd.audit.netlink import open_socket, set_status
sock = open_socket(timeout=None)
for attempt in range(300):
    try:
        set_status(sock, pid=os.getpid())
        break
    except OSError as exc:
        if exc.errno != errno.EEXIST or attempt == 299:
            print(exc.errno, flush=True)
            sys.exit(0)
        time.sleep(0.01)
def stop(*_):
    set_status(sock, pid=0)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("registered", flush=True)
while True:
    sock.recv(65536)
"""

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_FILTER_FLAG_LOG = 2
NR_GETPPID = 110


def landlock_abi() -> int:
    return landlock().abi or 0


@dataclass(frozen=True, slots=True)
class Outcome:
    pid: int
    returncode: int
    stdout: str


def _run(script: str, *args: str | bytes) -> Outcome:
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=60)
    return Outcome(proc.pid, proc.returncode, out.decode())


def landlock_read(path: bytes, times: int = 1) -> Outcome:
    """Open `path` from a process whose Landlock domain handles fs.read_file and allows none."""
    return _run(_LANDLOCK, "read", path, str(times))


def landlock_connect(port: int) -> Outcome:
    """TCP connect to 127.0.0.1:`port` from a domain handling net.connect_tcp, allowing none."""
    return _run(_LANDLOCK, "connect", str(port), "1")


def seccomp_getppid(action: int, flags: int = 0) -> Outcome:
    """Call getppid under a seccomp filter returning `action` for it."""
    return _run(_SECCOMP, hex(action), str(flags))


@contextlib.contextmanager
def some_audit_daemon() -> Iterator[int | None]:
    """The pid of a registered audit daemon other than us: one already there (e.g. Linux
    auditd), else a stand-in started here that unregisters when done; None if neither."""
    current = read_status().pid
    if current and current != os.getpid() and _alive(current):
        yield current
        return
    with stand_in_audit_daemon() as proc:
        yield None if proc is None else proc.pid


@contextlib.contextmanager
def stand_in_audit_daemon() -> Iterator[subprocess.Popen[str] | None]:
    """A process registered as the audit daemon (it reads and discards records, unregisters on
    SIGTERM), started here; None when it could not register (another daemon held on)."""
    proc = subprocess.Popen([sys.executable, "-c", _FAKE_DAEMON], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        answer = proc.stdout.readline().strip()
        yield proc if answer == "registered" else None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def user_messages(texts: list[str]) -> None:
    """One AUDIT_USER record (1005) per text, sent as any audit-aware program sends them
    (needs CAP_AUDIT_WRITE); each waits for the kernel's ack."""
    with open_socket(timeout=10) as sock:
        for seq, text in enumerate(texts, 1):
            payload = text.encode() + b"\0"
            sock.send(HEADER.pack(HEADER.size + len(payload), 1005, 0x5, seq, 0) + payload)
            while True:  # NLMSG_ERROR with error 0 is the ack
                reply = sock.recv(8192)
                _length, kind, _, got, _ = HEADER.unpack_from(reply)
                if kind == 2 and got == seq:
                    (err,) = struct.unpack_from("=i", reply, HEADER.size)
                    if err:
                        raise OSError(-err, os.strerror(-err))
                    break


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class KernelLog:
    """Lines the kernel log gains from now on (/dev/kmsg), up to a marker written on demand."""

    def __init__(self) -> None:
        self._fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self._fd, 0, os.SEEK_END)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> KernelLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lines(self) -> list[str]:
        """Every message logged since opening, read up to a marker written now (so what the
        kernel printed before this call is all there)."""
        marker = f"bpf-auditd test marker {uuid.uuid4().hex}"
        with open("/dev/kmsg", "w") as kmsg:
            kmsg.write(marker + "\n")
        messages: list[str] = []
        for _ in range(10_000):
            try:
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            except BrokenPipeError:  # overwritten before we read it: carry on
                continue
            message = record.decode(errors="replace").partition(";")[2].rstrip("\n")
            if message == marker:
                return messages
            messages.append(message)
        raise AssertionError("kernel log marker never came back")
