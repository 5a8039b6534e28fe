"""Denial decoding and exact totals, without a kernel."""

from __future__ import annotations

import ctypes
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from auditd.config.schema import DenialProbeConfig
from auditd.kernel.cgroups import CgroupResolver
from auditd.model.event import Source
from auditd.model.labels import OTHER, LabelCap
from auditd.signals.denials import decode as decoding
from auditd.signals.denials.decode import decode
from auditd.signals.denials.event import Denial
from auditd.signals.denials.monitor import DenialMonitor, DenialSeries, DenialTotals
from auditd.signals.denials.repeats import RepeatAccountant
from probes import denials


def _record(comm: bytes, target: bytes, flags: int = 0, **fields: object) -> bytes:
    values: dict[str, object] = {
        "ktime_ns": 5,
        "cgroup_id": 42,
        "target_hash": 99,
        "seen": 1,
        "pid": 10,
        "tid": 11,
        "ppid": 9,
        "uid": 65534,
        "gid": 65534,
        "syscall": 257,
        "err": 13,
        "source": 0,
        "flags": flags,
        "target_kind": denials.TARGET_PATH,
        "cause_cap": denials.NO_CAP,
        "comm": comm,
        "target": target,
    }
    exe = fields.pop("exe", b"")
    values.update(fields)
    record = bytes(denials.DenialRecord(**values))
    # A char array takes bytes only up to their first NUL: the components go in raw.
    assert isinstance(exe, bytes)
    return record[: denials.RECORD_HEAD] + exe.ljust(len(record) - denials.RECORD_HEAD, b"\0")


def _decode(data: bytes, offset: int = 0) -> Denial:
    return decode(data, offset).denial


def test_decode_a_record() -> None:
    decoded = decode(_record(b"cat", b"/etc/shadow"), 1_000)
    event = decoded.denial
    assert (event.time_ns, event.pid, event.tid, event.ppid, event.cgroup_id) == (
        1_005,
        10,
        11,
        9,
        42,
    )
    assert (event.syscall, event.errno, event.errno_name, event.source, event.cause) == (
        "openat",
        13,
        "EACCES",
        Source.SYSCALL,
        "dac_or_other",
    )
    assert (event.comm, event.target, event.target_truncated) == ("cat", "/etc/shadow", False)
    assert (decoded.seen, decoded.key.target_hash, decoded.key.tgid) == (1, 99, 10)


@pytest.mark.parametrize(
    ("fields", "syscall", "target", "cause", "source"),
    [
        ({"target_kind": denials.TARGET_PID, "target_int": 1, "target_int2": 9, "syscall": 62},
         "kill", "pid=1 sig=9", "dac_or_other", Source.SYSCALL),
        ({"target_kind": denials.TARGET_SOCKADDR, "family": 2, "port": 80,
          "addr": (ctypes.c_uint8 * 16)(127, 0, 0, 1), "syscall": 42},
         "connect", "127.0.0.1:80", "dac_or_other", Source.SYSCALL),
        ({"target_kind": denials.TARGET_SOCKADDR, "family": 10, "port": 443,
          "addr": (ctypes.c_uint8 * 16)(*([0] * 15 + [1])), "syscall": 49},
         "bind", "[::1]:443", "dac_or_other", Source.SYSCALL),
        ({"target_kind": denials.TARGET_INT, "target_int": 0x40000000, "syscall": 272},
         "unshare", "flags=0x40000000", "dac_or_other", Source.SYSCALL),
        ({"target_kind": denials.TARGET_PATH, "cause_cap": 21, "source": 1, "syscall": 170},
         "sethostname", "/etc/shadow", "capability:CAP_SYS_ADMIN", Source.CAPABILITY),
        ({"target_kind": denials.TARGET_INT, "source": 4, "err": 1000, "syscall": 110},
         "getppid", "seccomp_data=0", "seccomp", Source.SECCOMP),
        ({"cause_cap": denials.CAUSE_SELINUX, "source": 3}, "openat", "/etc/shadow", "selinux",
         Source.SELINUX),
    ],
)  # fmt: skip
def test_targets_and_causes(
    fields: dict[str, object], syscall: str, target: str, cause: str, source: Source
) -> None:
    event = _decode(_record(b"x", b"/etc/shadow", **fields))
    assert (event.syscall, event.target, event.cause, event.source) == (
        syscall,
        target,
        cause,
        source,
    )


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
    event = _decode(_record(raw[:15], raw))
    assert event.target == text
    line = json.dumps(event.log_fields())
    assert "\n" not in line
    assert json.loads(line)["target"] == text


def test_truncated_and_unreadable_targets_are_flagged() -> None:
    long = _decode(_record(b"x", b"a" * 255, flags=denials.FLAG_TARGET_TRUNCATED))
    assert long.target_truncated
    gone = _decode(_record(b"x", b"", flags=denials.FLAG_TARGET_UNREADABLE))
    assert gone.target == ""


def test_short_record_is_rejected() -> None:
    with pytest.raises(ValueError, match="Buffer size too small"):
        decode(b"\0" * 10, 0)


def test_repeats_and_summaries_account_for_every_refusal() -> None:
    accountant = RepeatAccountant(limit=16)
    first = accountant.on_record(decode(_record(b"x", b"/a", seen=1), 0))
    later = accountant.on_record(decode(_record(b"x", b"/a", seen=7), 0))
    assert (first.repeats, later.repeats) == (0, 5)
    key = denials.DedupKey(99, 0, 10, 257, 13, 0)  # start_time 0, as the records have it
    assert accountant.summaries({key: (7, 0)}, 20_000_000_000, 10_000_000_000) == []
    (summary,) = accountant.summaries({key: (12, 0)}, 20_000_000_000, 10_000_000_000)
    assert (summary.repeats, summary.summary, summary.log_fields()["count"]) == (5, True, 5)
    assert later.log_fields()["count"] == 6
    assert accountant.summaries({key: (12, 0)}, 30_000_000_000, 10_000_000_000) == []


@dataclass(frozen=True)
class Key:
    """A denial_counts key as the kernel has it: numbers (257 is openat, source 0 syscall)."""

    cgroup_id: int
    syscall_nr: int = 257
    errno: int = 13
    source_nr: int = denials.SOURCE_SYSCALL


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
        self._live = dict(paths)
        self._alive = alive

    def alive(self, cgroup_id: int) -> bool:
        return cgroup_id in self._alive

    def gone(self, cgroup_ids: Iterable[int]) -> set[int]:
        return {i for i in cgroup_ids if i not in self._alive}


def test_totals_stay_exact_when_removed_cgroups_are_retired() -> None:
    source = FakeCounters()
    resolver = Resolver({1: "/", 2: "/a.service", 3: "/b.service"}, alive={1, 2})
    totals = DenialTotals(source, resolver, LabelCap(10))
    source.counts = {Key(1): 5, Key(2): 7, Key(3): 11, Key(99): 1}
    before = totals.snapshot()
    # b.service, and 99: never seen by a walk, but gone all the same (a short-lived cgroup).
    assert totals.retire_removed() == 2
    assert Key(3) not in source.counts
    assert Key(99) not in source.counts
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


def test_the_readme_lists_exactly_the_sources_the_denials_metric_can_have() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `bpf_auditd_denials_"))
    listed = set(re.findall(r"`(\w+)`", row.partition("source, as the tracepoints tell it:")[2]))
    possible = {decoding.source_of(n).value for n in decoding.SOURCE_NUMBERS.values()}
    assert listed == possible
    assert Source.LANDLOCK.value not in possible  # the kernel cannot tell: README says so


def _components(*names: bytes) -> bytes:
    return b"".join(name.ljust(denials.EXE_NAME, b"\0") for name in names)


def test_exe_comes_from_the_kernels_path_components() -> None:
    read = denials.FLAG_EXE_READ
    walked = _record(
        b"cat", b"/x", flags=read, exe_count=3, exe=_components(b"cat", b"bin", b"usr")
    )
    assert _decode(walked).exe == "/usr/bin/cat"
    # Too deep: the components nearest the root are missing, and the path says so.
    cut = read | denials.FLAG_EXE_TRUNCATED
    deep = _record(b"cat", b"/x", flags=cut, exe_count=2, exe=_components(b"cat", b"bin"))
    assert _decode(deep).exe == ".../bin/cat"
    # Not walked (no BTF: user space reads /proc), or no executable (a kernel thread).
    assert _decode(_record(b"cat", b"/x")).exe is None
    assert _decode(_record(b"kworker", b"/x", flags=read, exe_count=0)).exe is None


def test_records_arrive_without_the_unused_end_of_exe() -> None:
    full = _record(b"cat", b"/x", flags=denials.FLAG_EXE_READ, exe_count=1, exe=_components(b"cat"))
    sent = full[: denials.RECORD_HEAD + denials.EXE_NAME]
    assert _decode(sent).exe == "/cat"
    with pytest.raises(ValueError, match="too small"):
        decode(full[: denials.RECORD_HEAD - 1], 0)
