"""The denial probe in the real kernel: every source, exact counts, dedup, no loss."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from _workload import (
    NOBODY,
    SECCOMP,
    denied_opens,
    run_as_nobody,
    scratch_cgroup,
    secret_file,
)

from auditd.config.schema import Config, DenialProbeConfig, ProbesConfig
from auditd.daemon.wiring import build_monitors, build_probe_set
from auditd.kernel.cgroups import CgroupResolver
from auditd.kernel.paths import KernelPaths
from auditd.model.event import Source
from auditd.model.labels import LabelCap
from auditd.signals.denials.decode import source_of, syscall_of
from auditd.signals.denials.event import Denial
from auditd.signals.denials.monitor import DenialMonitor
from probes import denials

pytestmark = pytest.mark.needs_bpf

N = 200


class Loaded:
    """The denial monitor loaded and attached, with the events it delivers collected."""

    def __init__(self, window: float, *extra_cflags: str) -> None:
        config = Config(probes=ProbesConfig(denials=DenialProbeConfig(window=window)))
        monitors = build_monitors(config, CgroupResolver(None), LabelCap(10))
        self.monitor = next(m for m in monitors if isinstance(m, DenialMonitor))
        self.probes = build_probe_set(config, [self.monitor], KernelPaths(), structlog.get_logger())
        self.probes.cflags.extend(extra_cflags)
        self.events: list[Denial] = []
        self._lock = threading.Lock()
        self.probes.load()
        try:
            self.monitor.bind(self.probes)
            self.probes.start(self._deliver, self._failed)
        except BaseException:
            self.probes.close()
            raise

    def _deliver(self, batch: list[Any]) -> None:
        with self._lock:
            self.events.extend(batch)

    def _failed(self, exc: BaseException) -> None:
        raise AssertionError(f"reader failed: {exc}")

    def of(self, cgroup: Path, want: int = 1, timeout: float = 10.0) -> list[Denial]:
        """The events from `cgroup`, once at least `want` arrived (or the timeout passed)."""
        cgroup_id = os.stat(cgroup).st_ino
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [e for e in self.events if e.cgroup_id == cgroup_id]
            if len(found) >= want or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def counts(self, cgroup: Path) -> dict[tuple[str, int, Source], int]:
        cgroup_id = os.stat(cgroup).st_ino
        assert self.monitor.totals is not None
        counters = denials.DenialCounters(
            self.probes.table("denial_count_owner"),
            self.probes.table("denial_count_vals"),
            self.probes.table("denial_cap_counts"),
        )
        return {
            (syscall_of(k.syscall_nr), k.errno, source_of(k.source_nr)): n
            for k, n in counters.read().items()
            if k.cgroup_id == cgroup_id
        }

    def close(self) -> None:
        self.probes.stop()
        self.probes.close()


@pytest.fixture(scope="module")
def loaded() -> Iterator[Loaded]:
    probes = Loaded(10.0, "-DAUDITD_LAYOUT_CHECK")
    try:
        yield probes
    finally:
        probes.close()


def test_layouts_match_the_c_structs(loaded: Loaded) -> None:
    for c_side, py_side in (
        (loaded.probes.table("denial_record_layout").Leaf, denials.DenialRecord),
        (loaded.probes.table("denial_recent_layout").Leaf, denials.DenialRecent),
        (loaded.probes.table("denial_cached_layout").Leaf, denials.DenialCached),
        (loaded.probes.table("denial_recent").Key, denials.DenialRecentKey),
        (loaded.probes.table("denial_count_owner").Leaf, denials.DenialSlot),
        (loaded.probes.table("denial_cap_counts").Key, denials.DenialCapKey),
    ):
        assert ctypes.sizeof(c_side) == ctypes.sizeof(py_side)
        c_fields = [(name, getattr(c_side, name).offset) for name, *_ in c_side._fields_]
        py_fields = [(name, getattr(py_side, name).offset) for name, *_ in py_side._fields_]
        # BCC may name padding differently; the named fields must agree in order and place.
        assert [f for f in c_fields if not f[0].startswith("_")] == [
            f for f in py_fields if not f[0].startswith("_")
        ]


def test_refusals_counted_exactly_and_repeats_deduplicated(loaded: Loaded) -> None:
    with scratch_cgroup() as cgroup, secret_file() as secret:
        pid, refused = denied_opens(secret, N, cgroup)
        assert refused == N
        assert loaded.counts(cgroup) == {("openat", 13, Source.SYSCALL): N}
        records = loaded.of(cgroup)
        time.sleep(0.3)  # nothing else may come: the other N-1 are repeats inside the window
        records = loaded.of(cgroup)
    assert len(records) == 1
    e = records[0]
    assert (e.pid, e.tid, e.uid, e.gid, e.syscall, e.errno, e.target) == (
        pid,
        pid,
        NOBODY,
        NOBODY,
        "openat",
        13,
        str(secret),
    )
    assert (e.source, e.cause, e.repeats, e.summary) == (Source.SYSCALL, "dac_or_other", 0, False)
    assert e.ppid == os.getpid()
    # From the kernel, at the refusal: the child is long gone when the record is read.
    assert e.exe == os.path.realpath(sys.executable)
    assert e.comm.startswith("python")


def test_distinct_targets_are_each_reported(loaded: Loaded) -> None:
    """A flood of one path must not hide another: dedup keys on the whole target."""
    code = (
        "import sys\n"
        "for p in sys.argv[1:]:\n"
        "    for _ in range(50):\n"
        "        try: open(p)\n"
        "        except PermissionError: pass\n"
    )
    with scratch_cgroup() as cgroup, secret_file() as a, secret_file() as b:
        twin = a.parent / ("x" * 200)  # long, same prefix length class
        twin.write_text("")
        twin.chmod(0o600)
        run_as_nobody(code, cgroup, str(a), str(b), str(twin))
        records = loaded.of(cgroup, want=3)
        assert loaded.counts(cgroup) == {("openat", 13, Source.SYSCALL): 150}
    assert sorted(e.target for e in records) == sorted([str(a), str(b), str(twin)])


def test_repeats_are_reported_with_the_next_record_and_in_summaries() -> None:
    probes = Loaded(0.3)
    try:
        with scratch_cgroup() as cgroup, secret_file() as secret:
            code = (
                "import sys, time\n"
                "def burst(n):\n"
                "    for _ in range(n):\n"
                "        try: open(sys.argv[1])\n"
                "        except PermissionError: pass\n"
                "burst(10); time.sleep(0.5); burst(5)\n"
            )
            run_as_nobody(code, cgroup, str(secret))
            first, second = probes.of(cgroup, want=2)
            assert (first.repeats, second.repeats) == (0, 9)  # the 9 repeats of the 1st burst
            time.sleep(0.4)  # the window closes on the second burst's 4 repeats
            summaries = [
                dataclasses.replace(e, cgroup="x")
                for e in probes.monitor.housekeeping()
                if isinstance(e, Denial) and e.cgroup_id == os.stat(cgroup).st_ino
            ]
            assert [(s.summary, s.repeats, s.target) for s in summaries] == [(True, 4, str(secret))]
            assert probes.counts(cgroup) == {("openat", 13, Source.SYSCALL): 15}
    finally:
        probes.close()


def test_capability_failure_is_the_cause(loaded: Loaded) -> None:
    code = (
        "import socket\n"
        "try: socket.sethostname('bpf-auditd-test')\n"
        "except PermissionError: print('refused')\n"
    )
    with scratch_cgroup() as cgroup:
        _, out = run_as_nobody(code, cgroup)
        assert out.strip() == "refused"
        (e,) = loaded.of(cgroup)
        assert loaded.counts(cgroup) == {("sethostname", 1, Source.CAPABILITY): 1}
    assert (e.syscall, e.errno_name, e.source) == ("sethostname", "EPERM", Source.CAPABILITY)
    assert e.cause == "capability:CAP_SYS_ADMIN"
    assert dict(e.detail) == {"capability": "CAP_SYS_ADMIN", "init_user_ns": "true"}
    assert e.target == "bpf-auditd-test"


def test_kill_of_a_root_process_names_the_target(loaded: Loaded) -> None:
    victim = subprocess.Popen(["sleep", "60"])
    try:
        code = (
            "import os, sys\n"
            "try: os.kill(int(sys.argv[1]), 15)\n"
            "except PermissionError: print('refused')\n"
        )
        with scratch_cgroup() as cgroup:
            _, out = run_as_nobody(code, cgroup, str(victim.pid))
            assert out.strip() == "refused"
            (e,) = loaded.of(cgroup)
    finally:
        victim.kill()
        victim.wait()
    # The kernel lets a different uid signal only with CAP_KILL: that check is the cause.
    assert (e.syscall, e.errno_name, e.source, e.cause) == (
        "kill",
        "EPERM",
        Source.CAPABILITY,
        "capability:CAP_KILL",
    )
    assert e.target == f"pid={victim.pid} sig=15"


def test_connect_target_is_address_and_port(loaded: Loaded) -> None:
    """UDP connect to the broadcast address without SO_BROADCAST: EACCES from the kernel."""
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "try: s.connect(('255.255.255.255', 4242))\n"
        "except PermissionError: print('refused')\n"
    )
    with scratch_cgroup() as cgroup:
        _, out = run_as_nobody(code, cgroup)
        assert out.strip() == "refused"
        (e,) = loaded.of(cgroup)
    assert (e.syscall, e.errno_name, e.target) == ("connect", "EACCES", "255.255.255.255:4242")


def test_seccomp_errno_is_told_apart_and_kills_are_reported(loaded: Loaded) -> None:
    nr_mkdir = 83
    errno_code = (
        SECCOMP
        + f"seccomp({nr_mkdir}, SECCOMP_RET_ERRNO | 1)\n"
        + "import os\n"
        + "try: os.mkdir('/tmp/bpf-auditd-seccomp-test')\n"
        + "except PermissionError: print('refused')\n"
    )
    kill_code = SECCOMP + "import os\nseccomp(110, SECCOMP_RET_KILL_PROCESS)\nos.getppid()\n"
    with scratch_cgroup() as cgroup:
        _, out = run_as_nobody(errno_code, cgroup)
        assert out.strip() == "refused"
        (refusal,) = loaded.of(cgroup)
        proc_pid, _ = run_as_nobody(kill_code, cgroup, check=False)
        events = loaded.of(cgroup, want=2)
        counts = loaded.counts(cgroup)
    assert (refusal.syscall, refusal.errno_name, refusal.source, refusal.cause) == (
        "mkdir",
        "EPERM",
        Source.SECCOMP,
        "seccomp",
    )
    assert refusal.target == "/tmp/bpf-auditd-seccomp-test"
    (kill,) = [e for e in events if e.pid == proc_pid]
    assert (kill.syscall, kill.errno_name, kill.source, kill.cause) == (
        "getppid",
        "SIGSYS",
        Source.SECCOMP,
        "seccomp",
    )
    assert counts == {("mkdir", 1, Source.SECCOMP): 1, ("getppid", 1000, Source.SECCOMP): 1}


def test_without_btf_task_targets_are_saved_at_entry() -> None:
    """The fallback for kernels without BTF: arguments saved at sys_enter."""
    probes = Loaded(10.0, "-UAUDITD_HAVE_TASK_PT_REGS", "-DAUDITD_HAVE_TASK_PT_REGS=0")
    try:
        with scratch_cgroup() as cgroup, secret_file() as secret:
            pid, _ = denied_opens(secret, N, cgroup)
            (e,) = probes.of(cgroup)
            assert probes.counts(cgroup) == {("openat", 13, Source.SYSCALL): N}
        assert (e.pid, e.target, e.syscall) == (pid, str(secret), "openat")
    finally:
        probes.close()


def test_selinux_cause_attaches_where_selinux_runs() -> None:
    """The avc:selinux_audited hook compiles and attaches (the tracepoint exists whether or not
    SELinux enforces); triggering an AVC denial needs SELinux active, which it is not here."""
    from auditd.kernel.facts import active_lsms

    probes = Loaded(10.0, "-DDENIAL_SELINUX")
    try:
        attached = [a.target for a in probes.probes.attachments()]
    finally:
        probes.close()
    assert any("selinux_audited" in tp for tp in attached), attached
    lsms = active_lsms(KernelPaths()).names or ()
    if "selinux" not in lsms:
        pytest.skip(f"SELinux is not an active LSM here ({','.join(lsms) or 'unknown'})")


def test_exe_is_the_program_running_after_an_exec(loaded: Loaded, tmp_path: Path) -> None:
    """The executable a process runs when it is refused, not the one it started as."""
    tool = shutil.which("cat")
    assert tool is not None
    with scratch_cgroup() as cgroup, secret_file() as secret:
        code = f"import os, sys\nos.execv({tool!r}, ['cat', sys.argv[1]])\n"
        run_as_nobody(code, cgroup, str(secret), check=False)
        (e,) = loaded.of(cgroup)
    assert (e.comm, e.target) == ("cat", str(secret))
    assert e.exe == os.path.realpath(tool)


def test_a_reused_pid_is_another_process(loaded: Loaded) -> None:
    """Two processes with one pid refusing the same target within the window: two records (the
    dedup key holds the process's start time)."""
    last_pid = Path("/proc/sys/kernel/ns_last_pid")
    with scratch_cgroup() as cgroup, secret_file() as secret:
        first, _ = denied_opens(secret, 3, cgroup)
        for _ in range(50):  # other processes may take the pid first: try again
            last_pid.write_text(str(first - 1))
            second, _ = denied_opens(secret, 3, cgroup)
            if second == first:
                break
        else:
            pytest.skip("could not get the same pid twice (a busy machine took it)")
        records = [e for e in loaded.of(cgroup, want=2) if e.pid == first]
    assert len(records) == 2, records
    assert [e.repeats for e in records] == [0, 0]


def test_the_dedup_hash_is_keyed_per_start(loaded: Loaded) -> None:
    """The same target hashes differently in another load: a path crafted to collide with a
    flooded one in one daemon does not in the next."""
    other = Loaded(10.0)

    def hashes(probes: Loaded, pid: int) -> set[int]:
        recent = denials.read_recent(
            probes.probes.table("denial_recent"), probes.probes.table("denial_cache")
        )
        return {k.target_hash for k in recent if k.tgid == pid}

    try:
        with scratch_cgroup() as cgroup, secret_file() as secret:
            pid, _ = denied_opens(secret, 1, cgroup)
            loaded.of(cgroup)
            other.of(cgroup)
            ours, theirs = hashes(loaded, pid), hashes(other, pid)
    finally:
        other.close()
    assert len(ours) == len(theirs) == 1
    assert ours != theirs


def test_repeats_on_two_cpus_add_up_exactly() -> None:
    """Threads of one process refusing one target on both CPUs: the per-CPU caches hold their
    repeats; records and summaries together report every refusal once."""
    probes = Loaded(0.3)
    n = 2000
    code = (
        "import os, sys, threading\n"
        "def burst(cpu):\n"
        "    os.sched_setaffinity(0, {cpu % os.cpu_count()})\n"
        "    for _ in range(int(sys.argv[2])):\n"
        "        try: open(sys.argv[1])\n"
        "        except PermissionError: pass\n"
        "ts = [threading.Thread(target=burst, args=(c,)) for c in (0, 1)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
    )
    try:
        with scratch_cgroup() as cgroup, secret_file() as secret:
            run_as_nobody(code, cgroup, str(secret), str(n))
            records = probes.of(cgroup)
            time.sleep(0.5)  # the window closes
            summaries = [
                e
                for e in probes.monitor.housekeeping()
                if isinstance(e, Denial) and e.cgroup_id == os.stat(cgroup).st_ino
            ]
            assert probes.counts(cgroup) == {("openat", 13, Source.SYSCALL): 2 * n}
    finally:
        probes.close()
    reported = sum(1 + e.repeats for e in records) + sum(e.repeats for e in summaries)
    assert reported == 2 * n, (records, summaries)
