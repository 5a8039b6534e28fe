"""The namespace probe in the real kernel: every change with the inodes /proc shows, escapes,
setns targets and their owners, clone children, refusals, and exact counts."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from _namespaces import (
    CLONE,
    CLONE_NEWNET,
    CLONE_NEWUTS,
    HOLD,
    NOBODY,
    PIDFD_SETNS,
    PYTHON,
    Collected,
    holding,
    inode,
    ns_path,
    refused_setns,
)
from _workload import scratch_cgroup

from auditd.config.schema import Config
from auditd.daemon.wiring import build_probe_set
from auditd.kernel.cgroups import CgroupResolver, service_of
from auditd.kernel.context import KernelContext
from auditd.kernel.offsets import resolve
from auditd.kernel.paths import KernelPaths
from auditd.model.labels import LabelCap
from auditd.signals.namespaces.event import TYPES, NamespaceChange, NamespaceOp, NamespaceType
from auditd.signals.namespaces.identity import NamespaceIdentity
from auditd.signals.namespaces.monitor import NamespaceMonitor
from probes import namespaces as probe
from probes.runtime import ProbeSet

pytestmark = [pytest.mark.needs_bpf, pytest.mark.needs_btf]

MNT, PID, NET, UTS, IPC, USER = (
    NamespaceType.MNT,
    NamespaceType.PID,
    NamespaceType.NET,
    NamespaceType.UTS,
    NamespaceType.IPC,
    NamespaceType.USER,
)
# Inodes of the initial namespaces (include/linux/proc_ns.h), fixed by the kernel.
INITIAL = {"ipc": 0xEFFFFFFF, "uts": 0xEFFFFFFE, "user": 0xEFFFFFFD, "pid": 0xEFFFFFFC}


@dataclass
class Loaded:
    monitor: NamespaceMonitor
    probes: ProbeSet
    collected: Collected

    def changes(self, pid: int, n: int = 1, **want: object) -> list[NamespaceChange]:
        def match(e: object) -> bool:
            return (
                isinstance(e, NamespaceChange)
                and e.pid == pid
                and all(getattr(e, k) == v for k, v in want.items())
            )

        return self.collected.wait(match, n)


def _monitor(window: float = 0.0) -> NamespaceMonitor:
    # No dedup window by default: these tests look at each call's own record.
    config = dataclasses.replace(Config().probes.namespaces, window=window)
    return NamespaceMonitor(config, CgroupResolver(None), LabelCap(100))


@pytest.fixture(scope="module")
def loaded() -> Iterator[Loaded]:
    monitor = _monitor()
    probes = build_probe_set(Config(), [monitor], KernelPaths(), structlog.get_logger())
    probes.cflags.append("-DAUDITD_LAYOUT_CHECK")
    try:
        probes.load()
        monitor.bind(probes)
        collected = Collected(monitor.identity.attribute)
        probes.start(collected.deliver, collected.failed)
        yield Loaded(monitor, probes, collected)
    finally:
        probes.stop()
        probes.close()


# -- the probe's own assumptions ---------------------------------------------------------------


def _layout(c_type: type[ctypes.Structure]) -> list[tuple[str, int]]:
    return [(n, getattr(c_type, n).offset) for n, *_ in c_type._fields_ if not n.startswith("_")]


def test_record_key_and_host_layouts_match_the_c_structs(loaded: Loaded) -> None:
    for c_side, py_side in (
        (loaded.probes.table("ns_record_layout").Leaf, probe.NamespaceRecord),
        (loaded.probes.table("ns_counts").Key, probe.NamespaceKey),
        (loaded.probes.table("ns_host_table").Leaf, probe.NamespaceHost),
        (loaded.probes.table("ns_recent").Key, probe.NamespaceRecentKey),
        (loaded.probes.table("ns_recent_layout").Leaf, probe.NamespaceRecent),
    ):
        assert ctypes.sizeof(c_side) == ctypes.sizeof(py_side)
        assert _layout(c_side) == _layout(py_side)


def test_syscall_tracepoint_records_are_where_the_probe_reads_them(tmp_path: Path) -> None:
    tracefs = next(p for p in KernelPaths().tracefs if (p / "events").is_dir())
    for _, tp in probe.tracepoints():
        assert probe.check_tracepoint(tracefs, tp) is None
    # A kernel laying the record out otherwise is refused, not misread.
    moved = tmp_path / "events" / "syscalls" / "sys_exit_setns"
    moved.mkdir(parents=True)
    text = (tracefs / "events" / "syscalls" / "sys_exit_setns" / "format").read_text()
    (moved / "format").write_text(text.replace("offset:16;", "offset:24;"))
    problem = probe.check_tracepoint(tmp_path, "syscalls:sys_exit_setns")
    assert problem is not None
    assert "ret" in problem


def test_host_namespaces_are_pid_1s(loaded: Loaded) -> None:
    host = loaded.monitor.identity.host
    assert set(host) == set(NamespaceType)
    from_proc = NamespaceIdentity().read_host()
    if from_proc:  # /proc/1/ns readable here: the kernel's reading must agree
        assert host == from_proc
    else:
        # PID 1 is outside this sandbox's reach; the test runs in the initial namespaces, whose
        # fixed inodes prove it, so PID 1's are ours.
        for name, number in INITIAL.items():
            assert inode(os.getpid(), NamespaceType(name)) == number
        assert host == {t: inode(os.getpid(), t) for t in NamespaceType}


# -- acceptance: unshare ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "types", "as_nobody"),
    [
        pytest.param(["unshare", "-n"], (NET,), False, id="unshare-n"),
        pytest.param(["unshare", "-m", "-u", "-i"], (MNT, UTS, IPC), False, id="unshare-m-u-i"),
        pytest.param(["unshare", "-p", "--fork"], (PID,), False, id="unshare-p-fork"),
        pytest.param(["unshare", "-U", "-r"], (USER,), True, id="unshare-U-r-as-nobody"),
    ],
)
def test_unshare_reports_the_inodes_proc_shows(
    loaded: Loaded, argv: list[str], types: tuple[NamespaceType, ...], as_nobody: bool
) -> None:
    if as_nobody:
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    me = os.getpid()
    with holding([*argv, PYTHON, "-c", HOLD]) as (pid, held):
        events = loaded.changes(pid, op=NamespaceOp.UNSHARE)
        assert len(events) == 1, events
        event = events[0]
        assert event.types == types
        assert event.errno == 0
        assert event.result == "success"
        for move in event.moves:
            assert move.before == inode(me, move.type)
            # The unsharing process holds the new namespace (pid: for its children) ...
            assert move.after == inode(pid, move.type)
            assert move.after != move.before
        # ... and the process running the command is in it.
        for move in event.moves:
            own = os.stat(ns_path(held, move.type)).st_ino
            assert own == move.after
    assert event.uid == (NOBODY if as_nobody else 0)
    assert (event.tid, event.comm, event.escaped) == (pid, "unshare", ())
    assert event.host_known
    assert event.flags_known
    if PID in types:
        assert held != pid  # --fork: the command is unshare's child, pid 1 of the new namespace


# -- acceptance: setns, escapes, owners ----------------------------------------------------------


def _host_net_path() -> str:
    """A file of the host's network namespace: PID 1's when readable, else ours (the test
    above proves ours is the host's)."""
    try:
        os.stat(ns_path(1, NET))
    except PermissionError:  # PID 1 outside this process's Landlock domain, or hidepid
        return ns_path(os.getpid(), NET)
    return ns_path(1, NET)


def test_joining_the_hosts_namespace_from_another_is_an_escape(loaded: Loaded) -> None:
    host_net = loaded.monitor.identity.host[NET]
    nsenter = (
        ["nsenter", "-t", "1", "-n"]
        if _host_net_path().startswith("/proc/1/")
        else [
            "nsenter",
            f"--net={_host_net_path()}",
        ]
    )
    with holding(["unshare", "-n", *nsenter, PYTHON, "-c", HOLD]) as (pid, _):
        (unshared,) = loaded.changes(pid, op=NamespaceOp.UNSHARE)
        (joined,) = loaded.changes(pid, op=NamespaceOp.SETNS)
        assert inode(pid, NET) == host_net
    private = unshared.moves[0].after
    assert private is not None
    assert private != host_net
    assert (joined.comm, joined.result, joined.types) == ("nsenter", "success", (NET,))
    assert [(m.before, m.after) for m in joined.moves] == [(private, host_net)]
    assert joined.escape
    assert joined.escaped == (NET,)
    assert joined.target is not None
    assert (joined.target.inode, joined.target.type, joined.target.host) == (host_net, NET, True)
    assert (joined.target.owner_pid, joined.target.owner_service) == (1, "host")
    assert not unshared.escape


def test_moving_between_two_other_namespaces_is_not_an_escape(loaded: Loaded) -> None:
    with (
        scratch_cgroup() as owner_cgroup,
        holding(["unshare", "-n", PYTHON, "-c", HOLD], owner_cgroup) as (owner, _),
    ):
        owned = inode(owner, NET)
        mover = ["unshare", "-n", "nsenter", f"--net={ns_path(owner, NET)}", PYTHON, "-c", HOLD]
        with holding(mover) as (pid, _):
            (joined,) = loaded.changes(pid, op=NamespaceOp.SETNS)
            assert inode(pid, NET) == owned
        assert joined.result == "success"
        assert joined.moves[0].after == owned
        assert joined.moves[0].before not in (owned, loaded.monitor.identity.host[NET])
        assert not joined.escape
        assert joined.target is not None
        assert (joined.target.inode, joined.target.host) == (owned, False)
        # Who owns it: the process that unshared it, and its service (its cgroup).
        assert joined.target.owner_pid == owner
        assert joined.target.owner_service == service_of("/" + owner_cgroup.name)


def test_refused_setns_is_reported_with_eperm_and_counted_exactly(loaded: Loaded) -> None:
    n = 5
    with scratch_cgroup() as cgroup:
        cgroup_id = os.stat(cgroup).st_ino
        pids = []
        for _ in range(n):
            pid, err = refused_setns(_host_net_path(), CLONE_NEWNET, cgroup)
            assert err == 1  # EPERM
            pids.append(pid)
        for pid in pids:
            (event,) = loaded.changes(pid, op=NamespaceOp.SETNS)
            assert (event.result, event.errno, event.uid) == ("EPERM", 1, NOBODY)
            host_net = loaded.monitor.identity.host[NET]
            assert [(m.type, m.before, m.after) for m in event.moves] == [(NET, host_net, host_net)]
            assert not event.escape
            assert event.target is not None
            assert event.target.host
            assert event.target.owner_pid == 1
        counters = probe.NamespaceCounters(
            loaded.probes.table("ns_counts"),
            loaded.probes.table("ns_overflow"),
            loaded.probes.table("ns_faults"),
        )
        ours = {
            (k.op, k.types, k.errno, k.escaped): c
            for k, c in counters.read().items()
            if k.cgroup_id == cgroup_id
        }
    net_bit = 1 << TYPES.index(NET)
    assert ours == {(0, net_bit, 1, 0): n}


def test_setns_through_a_pidfd_reports_where_it_went(loaded: Loaded) -> None:
    with holding(["unshare", "-n", "-u", PYTHON, "-c", HOLD]) as (owner, _):
        flags = str(CLONE_NEWNET | CLONE_NEWUTS)
        with holding([PYTHON, "-c", PIDFD_SETNS, str(owner), flags]) as (pid, _):
            (joined,) = loaded.changes(pid, op=NamespaceOp.SETNS)
            for move in joined.moves:
                assert move.after == inode(owner, move.type)
                assert move.before == inode(os.getpid(), move.type)
    assert (joined.types, joined.result, joined.pidfd, joined.target) == (
        (NET, UTS),
        "success",
        True,
        None,
    )


# -- acceptance: clone and clone3 -----------------------------------------------------------------


@pytest.mark.parametrize("op", [NamespaceOp.CLONE3, NamespaceOp.CLONE])
def test_clone_reports_the_child_and_its_new_inodes(loaded: Loaded, op: NamespaceOp) -> None:
    with holding([PYTHON, "-c", CLONE, op.value]) as (pid, child):
        (event,) = loaded.changes(pid, op=op)
        assert event.child_pid == child
        assert event.types == (NET, UTS)
        for move in event.moves:
            assert move.before == inode(pid, move.type)
            assert move.after == inode(child, move.type)
            assert move.after != move.before
    assert event.result == "success"
    assert not event.escape
    assert event.flags & CLONE_NEWNET


# Forks (fork, and posix_spawn's clone3) without new namespaces, then unshare(CLONE_NEWUTS) as
# a marker: records keep their order in the ring buffer, so once the marker is in, so would be
# any record of the forks.
FORKS_THEN_MARKER = r"""
import ctypes, os, subprocess
subprocess.run(["true"], check=True)
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
assert ctypes.CDLL(None, use_errno=True).unshare(0x04000000) == 0
"""


def test_forks_without_new_namespaces_are_not_reported(loaded: Loaded) -> None:
    with subprocess.Popen([PYTHON, "-c", FORKS_THEN_MARKER]) as proc:
        assert proc.wait(timeout=60) == 0
    (marker,) = loaded.changes(proc.pid, op=NamespaceOp.UNSHARE)
    assert marker.types == (UTS,)
    ours = [e for e in loaded.collected.events if getattr(e, "pid", None) == proc.pid]
    assert ours == [marker]


# -- degradation -----------------------------------------------------------------------------------


def _load_with(plan_btf: Path, *, headers_match: bool) -> tuple[NamespaceMonitor, ProbeSet]:
    plan = resolve(plan_btf, headers_match=headers_match)
    kernel = KernelContext(KernelPaths(), plan, time.time_ns() - time.monotonic_ns())
    monitor = _monitor()
    probes = ProbeSet(monitor.probe_specs(kernel), ["-DRINGBUF_PAGES=8", *plan.cflags])
    try:
        probes.load()
    except BaseException:
        probes.close()
        raise
    return monitor, probes


def test_without_struct_layouts_calls_are_still_reported_without_inodes() -> None:
    collected = Collected()
    with structlog.testing.capture_logs() as logs:
        monitor, probes = _load_with(Path("/nonexistent/vmlinux"), headers_match=False)
        try:
            monitor.bind(probes)
            probes.start(collected.deliver, collected.failed)
            with holding(["unshare", "-n", PYTHON, "-c", HOLD]) as (pid, _):
                events = collected.wait(lambda e: e.pid == pid)
        finally:
            probes.stop()
            probes.close()
    (event,) = events
    assert (event.op, event.types, event.result) == (NamespaceOp.UNSHARE, (NET,), "success")
    assert [(m.before, m.after) for m in event.moves] == [(None, None)]
    assert (event.escape, event.child_pid) == (False, None)
    said = {entry["event"] for entry in logs}
    assert "namespace_inodes_off" in said
    if not monitor.identity.host:  # nor could /proc/1/ns tell
        assert not event.host_known
        assert "namespace_escapes_off" in said


def test_compiles_with_the_kernels_own_headers_branch() -> None:
    # The headers here are another kernel's: values would be wrong, this only keeps the
    # offsetof() branch (LinuxKit's matching headers) compiling and loading.
    _, probes = _load_with(Path("/nonexistent/vmlinux"), headers_match=True)
    probes.close()
