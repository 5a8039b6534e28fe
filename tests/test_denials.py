"""Denial decoding and exact totals, without a kernel."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterable
from dataclasses import dataclass

import pytest

from auditd.cgroups import CgroupResolver
from auditd.config import DenialProbeConfig
from auditd.denials import DenialMonitor, DenialSeries, DenialTotals
from auditd.events import Source
from auditd.telemetry import OTHER, LabelCap
from probes import denials


def _record(comm: bytes, target: bytes, flags: int = 0) -> bytes:
    r = denials.DenialRecord(
        ktime_ns=5,
        cgroup_id=42,
        pid=10,
        tid=11,
        uid=65534,
        gid=65534,
        syscall=257,
        err=13,
        source=0,
        flags=flags,
        comm=comm,
        target=target,
    )
    return bytes(r)


def test_decode_a_record() -> None:
    event = denials.decoder(1_000)(_record(b"cat", b"/etc/shadow"))
    assert (event.time_ns, event.pid, event.tid, event.cgroup_id) == (1_005, 10, 11, 42)
    assert (event.syscall, event.errno, event.errno_name, event.source) == (
        "openat",
        13,
        "EACCES",
        Source.SYSCALL,
    )
    assert (event.comm, event.target, event.target_truncated) == ("cat", "/etc/shadow", False)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b'a"b\\c', 'a"b\\c'),
        (b"\xff\xfe/x", "\\xff\\xfe/x"),
        (b"line\nbreak", "line\nbreak"),
        (b"a/+/#", "a/+/#"),
    ],
)
def test_hostile_names_survive_as_json(raw: bytes, text: str) -> None:
    event = denials.decoder(0)(_record(raw[:15], raw))
    assert event.target == text
    line = json.dumps(event.log_fields())
    assert "\n" not in line
    assert json.loads(line)["target"] == text


def test_truncated_and_unreadable_targets_are_flagged() -> None:
    decode = denials.decoder(0)
    long = decode(_record(b"x", b"a" * 255, flags=denials.FLAG_TARGET_TRUNCATED))
    assert long.target_truncated
    gone = decode(_record(b"x", b"", flags=denials.FLAG_TARGET_UNREADABLE))
    assert gone.target == ""


def test_short_record_is_rejected() -> None:
    with pytest.raises(ValueError, match="Buffer size too small"):
        denials.decoder(0)(b"\0" * 10)


@dataclass(frozen=True)
class Key:
    cgroup_id: int
    source: Source = Source.SYSCALL
    syscall: str = "openat"
    errno: int = 13


class FakeCounters:
    """Stands in for the kernel map (tested for real in test_denials_probe.py)."""

    def __init__(self) -> None:
        self.counts: dict[Key, int] = {}

    def read(self) -> dict[Key, int]:
        return dict(self.counts)

    def delete(self, keys: Iterable[Key]) -> None:
        for k in keys:
            self.counts.pop(k, None)

    def unattributed(self) -> int:
        return 3


class Resolver(CgroupResolver):
    def __init__(self, paths: dict[int, str], alive: set[int]) -> None:
        super().__init__(None)
        self._paths.update(paths)
        self._alive = alive

    def alive(self, cgroup_id: int) -> bool:
        return cgroup_id in self._alive


def test_totals_stay_exact_when_removed_cgroups_are_retired() -> None:
    source = FakeCounters()
    resolver = Resolver({1: "/", 2: "/a.service", 3: "/b.service"}, alive={1, 2})
    totals = DenialTotals(source, resolver, LabelCap(10))
    source.counts = {Key(1): 5, Key(2): 7, Key(3): 11, Key(99): 1}
    before = totals.snapshot()
    assert totals.retire_removed() == 1  # only b.service: 99 was never seen, so not known dead
    assert Key(3) not in source.counts
    assert totals.snapshot() == before
    source.counts[Key(2)] += 1
    assert totals.snapshot()[DenialSeries("a.service", "syscall", "openat", "EACCES")] == 8
    assert totals.snapshot()[DenialSeries("b.service", "syscall", "openat", "EACCES")] == 11
    assert totals.snapshot()[DenialSeries("unknown", "syscall", "openat", "EACCES")] == 1


def test_service_label_is_capped_and_overflow_counted() -> None:
    cap = LabelCap(2)
    assert [cap(v) for v in ("a", "b", "c", "a", "d", "c")] == ["a", "b", OTHER, "a", OTHER, OTHER]
    assert cap.overflowed == 2


def test_monitor_declares_what_it_yields() -> None:
    monitor = DenialMonitor(DenialProbeConfig(), CgroupResolver(None), LabelCap(1))
    assert [f.name for f in monitor.families()] == [f.name for f in monitor.declared()]
    assert all(not f.samples for f in monitor.declared())
    assert ctypes.sizeof(denials.DenialRecord) == 64 + denials.TARGET_LEN
