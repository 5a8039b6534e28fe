"""Namespace changes without a kernel: decoding records, owners of namespaces, totals, config."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from auditd.config import schema as config
from auditd.config.yamlfile import ConfigError
from auditd.kernel.cgroups import CgroupResolver
from auditd.model.labels import LabelCap
from auditd.signals.namespaces.decode import Decoded, change_of
from auditd.signals.namespaces.event import (
    LINKS,
    OPS,
    TYPES,
    NamespaceChange,
    NamespaceMove,
    NamespaceOp,
    NamespaceTarget,
    NamespaceType,
    types_of,
)
from auditd.signals.namespaces.identity import NamespaceIdentity, Owner
from auditd.signals.namespaces.repeats import RepeatAccountant
from auditd.signals.namespaces.totals import ChangeSeries, EscapeSeries, NamespaceTotals
from probes import namespaces as probe

PROBES = Path(__file__).resolve().parent.parent / "probes"
NET, UTS, PID, USER = NamespaceType.NET, NamespaceType.UTS, NamespaceType.PID, NamespaceType.USER
HOST = {t: 4026531830 + i for i, t in enumerate(TYPES)}


def bit(*types: NamespaceType) -> int:
    return sum(1 << TYPES.index(t) for t in types)


# -- the C and Python sides name the same things --------------------------------------------------


def test_type_and_op_numbering_follow_the_c() -> None:
    task_h = (PROBES / "include" / "task.h").read_text()
    enum = re.search(r"enum auditd_ns_type \{(.*?)\};", task_h, re.DOTALL)
    assert enum is not None
    names = re.findall(r"AUDITD_NS_(\w+)", enum.group(1))
    assert [n.lower() for n in names if n != "COUNT"] == [t.value for t in TYPES]
    source = (PROBES / probe.SOURCE).read_text()
    ops = dict(re.findall(r"#define NS_OP_(\w+) (\d+)", source))
    assert {int(v): k.lower() for k, v in ops.items()} == dict(enumerate(o.value for o in OPS))
    for name, value in re.findall(r"#define NS_FLAG_(\w+) (\d+)", source):
        assert getattr(probe, f"FLAG_{name}") == int(value)


def test_types_of_a_mask() -> None:
    assert types_of(0) == ()
    assert types_of(bit(NET, UTS)) == (NET, UTS)
    assert types_of((1 << len(TYPES)) - 1) == TYPES


# -- decoding -------------------------------------------------------------------------------------


def record(**fields: Any) -> probe.NamespaceRecord:
    r = probe.NamespaceRecord()
    r.pid = r.tid = 42
    r.comm = b"nsenter"
    r.cgroup_id = 7
    r.ktime_ns = 1_000
    for name, value in fields.items():
        if name in ("before", "after"):
            for t, inode in value.items():
                getattr(r, name)[TYPES.index(t)] = inode
        else:
            setattr(r, name, value)
    return r


def test_a_setns_into_the_host_network() -> None:
    r = record(
        op=0,
        flags=0x40000000,
        fd=3,
        types=bit(NET),
        escaped=bit(NET),
        before={NET: 4026532200},
        after={NET: HOST[NET]},
        target_ino=HOST[NET],
        target_magic=probe.NSFS_MAGIC,
    )
    e = change_of(r, mono_to_wall_ns=5_000)
    assert (e.op, e.result, e.time_ns, e.comm, e.fd) == (
        NamespaceOp.SETNS,
        "success",
        6_000,
        "nsenter",
        3,
    )
    assert e.moves == (NamespaceMove(NET, 4026532200, HOST[NET]),)
    assert e.escape
    assert e.escaped == (NET,)
    assert e.target == NamespaceTarget(HOST[NET], NET)  # owner not resolved yet
    assert (e.child_pid, e.pidfd, e.host_known, e.flags_known) == (None, False, True, True)


def test_refusals_unknown_inodes_pidfds_and_clone_children() -> None:
    refused = change_of(record(op=0, err=1, types=bit(NET), flags=0x40000000), 0)
    assert (refused.result, refused.errno) == ("EPERM", 1)
    assert refused.moves == (NamespaceMove(NET, None, None),)  # 0 in the kernel: unknown
    assert refused.target is None  # no file read (target_ino 0)

    pidfd = change_of(
        record(op=0, types=bit(NET, UTS), target_ino=9, target_magic=probe.PIDFS_MAGIC), 0
    )
    assert pidfd.pidfd
    assert pidfd.target is None

    no_child = record(op=3, child_pid=77, types=bit(NET))
    assert change_of(no_child, 0).child_pid is None  # without FLAG_CHILD it is not the child's
    child = record(op=3, child_pid=77, rflags=probe.FLAG_CHILD, types=bit(NET))
    assert change_of(child, 0).child_pid == 77
    assert change_of(child, 0).fd is None

    blind = record(op=3, rflags=probe.FLAG_HOST_UNKNOWN | probe.FLAG_FLAGS_UNREADABLE)
    assert not change_of(blind, 0).host_known
    assert not change_of(blind, 0).flags_known


def test_target_type_from_nstype_or_the_one_type_moved() -> None:
    nstype = record(
        op=0, flags=0x04000000, types=bit(UTS), target_ino=9, target_magic=probe.NSFS_MAGIC
    )
    assert change_of(nstype, 0).target == NamespaceTarget(9, UTS)
    moved = record(
        op=0, flags=0, types=bit(USER), before={USER: 1}, after={USER: 9}, target_ino=9,
        target_magic=probe.NSFS_MAGIC,
    )  # fmt: skip
    assert change_of(moved, 0).target == NamespaceTarget(9, USER)
    unknown = record(op=0, flags=0, err=1, target_ino=9, target_magic=probe.NSFS_MAGIC)
    assert change_of(unknown, 0).target == NamespaceTarget(9, None)


def test_bad_records_are_value_errors() -> None:
    with pytest.raises(ValueError, match="op 9"):
        change_of(record(op=9), 0)
    with pytest.raises(ValueError, match="too small"):
        probe.parse(bytes(10))
    assert change_of(probe.parse(bytes(record(op=1, comm=b"\xff\xfe"))), 0).comm == "\\xff\\xfe"


def test_log_fields_are_one_json_object() -> None:
    e = change_of(
        record(
            op=1,
            flags=0x44000000,
            types=bit(NET, UTS),
            before={NET: 1, UTS: 2},
            after={NET: 3, UTS: 4},
        ),
        0,
    )
    fields = json.loads(json.dumps(e.log_fields()))
    assert fields["op"] == "unshare"
    assert fields["types"] == ["net", "uts"]
    assert fields["namespaces"] == {
        "net": {"before": 1, "after": 3},
        "uts": {"before": 2, "after": 4},
    }
    assert (fields["flags"], fields["escape"], fields["target"]) == ("0x44000000", False, None)
    assert "event" not in fields  # the daemon's own key


# -- who owns a namespace -------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def proc_tree(root: Path, pids: Mapping[int, tuple[str, Mapping[NamespaceType, int]]]) -> Path:
    """A /proc look-alike: <pid>/ns/<link> symlinks reading like the kernel's, <pid>/cgroup."""
    for pid, (cgroup, inodes) in pids.items():
        ns = root / str(pid) / "ns"
        ns.mkdir(parents=True, exist_ok=True)
        for t, inode in inodes.items():
            for link in LINKS[t]:
                (ns / link).unlink(missing_ok=True)
                os.symlink(f"{t.value}:[{inode}]", ns / link)
        (root / str(pid) / "cgroup").write_text(f"0::{cgroup}\n")
    return root


def unshared(pid: int, before: int, after: int, ns_type: NamespaceType = NET) -> NamespaceChange:
    return change_of(
        record(op=1, pid=pid, types=bit(ns_type), before={ns_type: before}, after={ns_type: after}),
        0,
    )


def test_host_from_proc_1(tmp_path: Path) -> None:
    proc = proc_tree(tmp_path, {1: ("/init.scope", HOST)})
    identity = NamespaceIdentity(proc)
    assert identity.read_host() == HOST
    assert NamespaceIdentity(tmp_path / "empty").read_host() == {}
    identity.set_host(HOST)
    # The host's namespaces belong to PID 1 and the host, whatever PID 1's cgroup is called.
    assert identity.owner(HOST[NET]) == (NET, Owner(1, "host"))


def test_creators_own_what_they_unshared_until_they_leave(tmp_path: Path) -> None:
    proc = proc_tree(
        tmp_path,
        {
            1: ("/", HOST),
            30: ("/system.slice/web.service", {**HOST, NET: 555}),
            40: ("/system.slice/db.service", {**HOST, NET: 555}),
        },
    )
    clock = FakeClock()
    identity = NamespaceIdentity(proc, clock=clock)
    identity.set_host(HOST)
    identity.learn(unshared(40, HOST[NET], 555))
    # The creator wins over the lowest pid, and is checked against /proc.
    assert identity.owner(555) == (NET, Owner(40, "db.service"))
    assert identity.scans == 0
    # It left: the cache notices, and a scan finds the lowest pid still inside.
    proc_tree(proc, {40: ("/system.slice/db.service", HOST)})
    assert identity.owner(555) == (NET, Owner(30, "web.service"))
    assert identity.scans == 1
    # Refusals and setns create nothing.
    identity.learn(change_of(record(op=1, err=1, types=bit(UTS), after={UTS: 777}), 0))
    assert identity.owner(777) == (None, None)


def test_misses_rescan_at_most_once_per_interval(tmp_path: Path) -> None:
    proc = proc_tree(tmp_path, {1: ("/", HOST)})
    clock = FakeClock()
    identity = NamespaceIdentity(proc, rescan_interval=1.0, clock=clock)
    assert identity.owner(999) == (None, None)
    assert identity.owner(999) == (None, None)
    assert identity.scans == 1
    proc_tree(proc, {50: ("/worker", {NET: 999})})
    assert identity.owner(999) == (None, None)  # not yet: rate limited
    clock.now += 1.0
    assert identity.owner(999) == (NET, Owner(50, "worker"))
    assert identity.scans == 2


def test_attribute_resolves_the_target_and_forget_dead(tmp_path: Path) -> None:
    proc = proc_tree(tmp_path, {1: ("/", HOST), 60: ("/a", {PID: 4242})})
    identity = NamespaceIdentity(proc)
    identity.set_host(HOST)
    joined = change_of(
        record(op=0, flags=0, types=bit(PID), target_ino=HOST[PID], target_magic=probe.NSFS_MAGIC),
        0,
    )
    assert identity.attribute(joined).target == NamespaceTarget(HOST[PID], PID, 1, "host", True)
    clone = change_of(
        record(
            op=3, pid=59, child_pid=60, rflags=probe.FLAG_CHILD, types=bit(PID),
            before={PID: HOST[PID]}, after={PID: 4242},
        ),
        0,
    )  # fmt: skip
    assert identity.attribute(clone) == clone  # no target; learns the child as the owner
    other = change_of(
        record(
            op=0, flags=0x20000000, types=bit(PID), target_ino=4242, target_magic=probe.NSFS_MAGIC
        ),
        0,
    )
    assert identity.attribute(other).target == NamespaceTarget(4242, PID, 60, "a", False)
    assert identity.forget_dead() == 0
    (proc / "60" / "ns" / "pid_for_children").unlink()
    (proc / "60" / "ns" / "pid").unlink()
    assert identity.forget_dead() == 1


# -- totals ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    cgroup_id: int
    op: int
    types: int
    errno: int
    escaped: int


class MapSource:
    """A dict standing in for the kernel map (the map itself is tested in the probe tests)."""

    def __init__(self, counts: dict[Key, int]) -> None:
        self.counts = counts

    def read(self) -> dict[Key, int]:
        return dict(self.counts)

    def delete(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self.counts.pop(key, None)

    def unattributed(self) -> int:
        return 3


def test_totals_per_type_result_and_escape_survive_cgroup_removal(tmp_path: Path) -> None:
    (tmp_path / "web.service").mkdir()
    resolver = CgroupResolver(tmp_path)
    web = os.stat(tmp_path / "web.service").st_ino
    root = os.stat(tmp_path).st_ino
    source = MapSource(
        {
            Key(web, 1, bit(NET, UTS), 0, 0): 2,
            Key(web, 0, bit(NET), 0, bit(NET)): 1,
            Key(root, 0, 0, 1, 0): 4,
        }
    )
    totals = NamespaceTotals(source, resolver, LabelCap(10))
    changes, escapes = totals.snapshot()
    assert changes == {
        ChangeSeries("web.service", "unshare", "net", "success"): 2,
        ChangeSeries("web.service", "unshare", "uts", "success"): 2,
        ChangeSeries("web.service", "setns", "net", "success"): 1,
        ChangeSeries("host", "setns", "unknown", "EPERM"): 4,
    }
    assert escapes == {EscapeSeries("web.service", "net"): 1}
    assert totals.unattributed() == 3
    (tmp_path / "web.service").rmdir()
    assert totals.retire_removed() == 2
    assert set(source.counts) == {Key(root, 0, 0, 1, 0)}
    assert totals.snapshot() == (changes, escapes)  # retired, not lost


# -- config ---------------------------------------------------------------------------------------


def test_config_defaults_and_errors(tmp_path: Path) -> None:
    ns = config.loads("").probes.namespaces
    assert (ns.enabled, ns.counter_entries, ns.pending_entries) == (True, 4096, 10240)
    f = tmp_path / "c.yaml"
    f.write_text("probes:\n  namespaces:\n    pending_entries: 10\n")
    with pytest.raises(ConfigError) as err:
        config.load(f)
    assert str(err.value) == (
        f"{f}:3: probes.namespaces.pending_entries: expected 64..1048576, got 10"
    )
    off = config.loads("probes:\n  namespaces:\n    enabled: false\n").probes.namespaces
    assert not off.enabled


def test_repeats_and_summaries_account_for_every_call() -> None:
    accountant = RepeatAccountant(limit=2)
    r = record(op=1, types=bit(UTS), after={UTS: 5})
    key = probe.DedupKey.of(r)
    first = accountant.on_record(Decoded(change_of(r, 0), key, seen=1))
    assert (first.repeats, first.log_fields()["count"]) == (0, 1)
    # 9 more calls inside the window, then a record after it: it carries them.
    later = accountant.on_record(Decoded(change_of(r, 0), key, seen=11))
    assert (later.repeats, later.log_fields()["count"]) == (9, 10)
    # 5 more, then the flood stops: once idle for a window, a summary reports them.
    window = 10
    assert accountant.summaries({key: (16, 100)}, now_mono_ns=105, window_ns=window) == []
    (summary,) = accountant.summaries({key: (16, 100)}, now_mono_ns=110, window_ns=window)
    assert (summary.summary, summary.repeats, summary.log_fields()["count"]) == (True, 5, 5)
    assert accountant.summaries({key: (16, 100)}, now_mono_ns=200, window_ns=window) == []
    # Bounded: the least recently recorded keys are forgotten.
    for n in range(5):
        other = record(op=1, types=bit(UTS), cgroup_id=1000 + n)
        accountant.on_record(Decoded(change_of(other, 0), probe.DedupKey.of(other), seen=1))
    assert len(accountant) == 2
