"""Allocation monitor without a kernel: exact totals through cgroup removal, per-service window
statistics, call-site names from kallsyms, the allocation map, and the config section."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import structlog

from auditd.commands import allocmap, cli
from auditd.config import schema as config
from auditd.config.schema import AllocationProbeConfig
from auditd.config.yamlfile import ConfigError
from auditd.kernel.cgroups import CgroupResolver
from auditd.kernel.context import kernel_context
from auditd.kernel.paths import KernelPaths
from auditd.kernel.symbols import KernelSymbols
from auditd.model.labels import LabelCap
from auditd.signals.allocations.event import AllocationStats
from auditd.signals.allocations.monitor import AllocationMonitor, Window
from auditd.signals.allocations.plan import attach_plan
from probes import allocations as probe
from probes.allocations import KindUsage, Live, Site, Usage
from probes.runtime import PROBES_DIR


class FakeTables:
    """The kernel tables as plain dicts: slot -> owner, slot -> per-kind totals."""

    def __init__(self, slots: int = 8) -> None:
        self.slots = slots
        self.owner: dict[int, int] = {}
        self.totals: dict[int, KindUsage] = {}
        self.sites: list[Site] = []
        self.objects: list[Live] = []
        self.released: list[int] = []

    def allocate(self, slot: int, cgroup_id: int, kind: str, n: int, size: int) -> None:
        self.owner.setdefault(slot, cgroup_id)
        held = self.totals.setdefault(slot, {})
        held[kind] = held.get(kind, probe.ZERO) + Usage(n, n * size, n * size)

    def owners(self) -> dict[int, int]:
        return dict(self.owner)

    def read(self) -> tuple[dict[int, KindUsage], KindUsage]:
        per_cgroup: dict[int, KindUsage] = {}
        for slot, usage in self.totals.items():
            if slot == self.slots:
                continue
            probe.add_usage(per_cgroup.setdefault(self.owner[slot], {}), usage)
        return per_cgroup, self.totals.get(self.slots, {})

    def release(self, slot: int) -> KindUsage:
        self.released.append(slot)
        del self.owner[slot]
        return self.totals.pop(slot, {})

    def drain_sites(self) -> list[Site]:
        sites, self.sites = self.sites, []
        return sites

    def live(self) -> list[Live]:
        return list(self.objects)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, int]:
    """A fake cgroup2 tree: name -> cgroup id (the directory's inode, as in the kernel)."""
    ids = {"/": os.stat(tmp_path).st_ino}
    for name in ("web.service", "db.service"):
        (tmp_path / name).mkdir()
        ids[name] = os.stat(tmp_path / name).st_ino
    return ids


def _monitor(
    tmp_path: Path, tables: FakeTables, clock: Clock, **overrides: object
) -> AllocationMonitor:
    resolver = CgroupResolver(tmp_path)
    resolver.rescan()
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("ffffffff81000000 T _stext\nffffffff81200000 T alloc_pipe_info\n")
    monitor = AllocationMonitor(
        AllocationProbeConfig(**overrides),  # type: ignore[arg-type]
        resolver,
        LabelCap(10),
        symbols=KernelSymbols(kallsyms),
        clock=clock,
        wall_clock=lambda: 1_700_000_000_000_000_000,
    )
    monitor.attach_tables(tables)
    return monitor


def _series(monitor: AllocationMonitor) -> dict[tuple[str, str], int]:
    assert monitor.ledger is not None
    totals, _ = monitor.ledger.snapshot()
    return {(s.service, s.kind): u.count for s, u in totals.items()}


def test_totals_stay_exact_when_a_removed_cgroup_is_retired(
    tmp_path: Path, tree: dict[str, int]
) -> None:
    tables = FakeTables()
    tables.allocate(1, tree["web.service"], "slab", 10, 64)
    tables.allocate(2, tree["db.service"], "kmalloc", 5, 32)
    tables.allocate(3, tree["web.service"], "slab", 1, 64)  # a second slot of the same cgroup
    monitor = _monitor(tmp_path, tables, Clock())
    before = _series(monitor)
    assert before == {("web.service", "slab"): 11, ("db.service", "kmalloc"): 5}

    (tmp_path / "web.service").rmdir()
    monitor.window()  # housekeeping retires removed cgroups first
    assert sorted(tables.released) == [1, 3]
    assert _series(monitor) == before  # folded into `retired`, not lost, not doubled


def test_a_cgroup_gone_before_any_walk_frees_its_slot(tmp_path: Path, tree: dict[str, int]) -> None:
    # A short-lived cgroup's slot: its id was read from the kernel before the walk that does not
    # find it, so it is gone (ids are never reused). Its totals stay, under "unknown".
    tables = FakeTables()
    tables.allocate(1, 999_999_999, "slab", 1, 8)
    tables.allocate(2, tree["web.service"], "slab", 2, 8)
    monitor = _monitor(tmp_path, tables, Clock())
    before = _series(monitor)
    monitor.window()
    assert tables.released == [1]
    assert _series(monitor) == before == {("unknown", "slab"): 1, ("web.service", "slab"): 2}


def test_window_statistics_per_service(tmp_path: Path, tree: dict[str, int]) -> None:
    tables = FakeTables()
    clock = Clock()
    monitor = _monitor(tmp_path, tables, clock, track_outstanding=True, live_sample=16)
    web = tree["web.service"]
    tables.allocate(1, web, "slab", 100, 64)
    clock.now += 10
    first = monitor.housekeeping()
    assert [(e.service, e.allocations_per_s, e.bytes_per_s) for e in first] == [
        ("web.service", 10.0, 640.0)
    ]

    tables.allocate(1, web, "slab", 40, 64)
    tables.allocate(1, web, "kmalloc", 10, 128)
    tables.allocate(1, web, "page", 2, 4096)
    tables.sites = [Site(web, 0xFFFFFFFF81200010, 7, "kmalloc", Usage(3, 300, 384), "")]
    tables.objects = [Live(web, 0xFFFFFFFF81200010, 7, "kmalloc", 128)] * 3
    clock.now += 5
    [stats] = monitor.housekeeping()
    assert isinstance(stats, AllocationStats)
    assert stats.kind == "allocation_stats"
    assert stats.window == 5
    assert stats.allocations_per_s == 10.0  # 50 objects in 5 s; pages apart
    assert stats.bytes_per_s == (40 * 64 + 10 * 128) / 5
    assert stats.page_bytes_per_s == 2 * 4096 / 5
    assert stats.outstanding_bytes == 3 * 128 * 16  # sampled bytes x rate
    assert stats.top_call_site == "alloc_pipe_info+0x10"
    assert stats.cgroup_id == web
    fields = stats.log_fields()
    assert fields["service"] == "web.service"
    json.dumps(fields)

    clock.now += 5
    assert monitor.housekeeping() == []  # nothing allocated: nothing to say
    families = {f.name: f for f in monitor.families()}
    assert families["bpf_auditd_kernel_outstanding_bytes"].samples == {
        ("web.service",): 3 * 128 * 16
    }


def test_outstanding_is_none_when_not_tracked(tmp_path: Path, tree: dict[str, int]) -> None:
    tables = FakeTables()
    monitor = _monitor(tmp_path, tables, Clock())
    tables.allocate(1, tree["db.service"], "kmalloc", 1, 8)
    [stats] = monitor.housekeeping()
    assert stats.outstanding_bytes is None
    names = [f.name for f in monitor.declared()]
    assert "bpf_auditd_kernel_outstanding_bytes" not in names


def test_families_name_the_planned_metrics(tmp_path: Path, tree: dict[str, int]) -> None:
    tables = FakeTables()
    tables.allocate(1, tree["db.service"], "kmalloc", 3, 8)
    tables.owner[tables.slots] = 0
    tables.totals[tables.slots] = {"slab": Usage(7, 7, 7)}  # the overflow slot
    monitor = _monitor(tmp_path, tables, Clock(), track_outstanding=True)
    families = {f.name: f for f in monitor.families()}
    assert families["bpf_auditd_kernel_allocations"].samples[("db.service", "kmalloc")] == 3
    assert families["bpf_auditd_kernel_allocated_bytes"].samples[("db.service", "kmalloc")] == 24
    assert families["bpf_auditd_kernel_allocations_unattributed"].samples[("slab",)] == 7
    assert families["bpf_auditd_kernel_allocations"].labels == ("service", "kind")
    assert families["bpf_auditd_kernel_outstanding_bytes"].kind == "gauge"
    assert {f.name for f in monitor.declared()} == set(families)


def test_kallsyms_names_with_offsets_and_modules(tmp_path: Path) -> None:
    f = tmp_path / "kallsyms"
    f.write_text(
        "ffffffff81000000 T _stext\n"
        "ffffffff81001000 t alloc_pipe_info\n"
        "ffffffff81002000 D some_data\n"
        "ffffffffc0000000 t nf_hook [nf_tables]\n"
    )
    symbols = KernelSymbols(f)
    assert symbols.name(0xFFFFFFFF81001024) == "alloc_pipe_info+0x24"
    assert symbols.name(0xFFFFFFFF81002010) == "alloc_pipe_info+0x1010"  # data is not code
    assert symbols.name(0xFFFFFFFFC0000008) == "nf_hook+0x8 [nf_tables]"
    assert symbols.name(0x1000) == "0x1000"
    assert symbols.status() == str(f)


def test_kallsyms_hidden_by_kptr_restrict_degrades_to_addresses(tmp_path: Path) -> None:
    f = tmp_path / "kallsyms"
    f.write_text("0000000000000000 T _stext\n0000000000000000 t alloc_pipe_info\n")
    symbols = KernelSymbols(f)
    assert symbols.name(0xFFFFFFFF81001024) == "0xffffffff81001024"
    assert symbols.hidden
    assert "kptr_restrict" in symbols.status()
    missing = KernelSymbols(tmp_path / "absent")
    assert missing.name(0xFFFF) == "0xffff"
    assert "cannot read" in missing.status()


def test_allocation_map_scales_samples_and_sorts(tmp_path: Path) -> None:
    web, db = 11, 22
    window = Window(
        seconds=2.0,
        deltas={web: {"slab": Usage(100, 6400, 6400)}, db: {"kmalloc": Usage(10, 80, 80)}},
        sites=[
            Site(web, 0xA0, 5, "slab", Usage(2, 128, 128), "filp"),
            Site(web, 0xB0, 5, "slab", Usage(1, 64, 64), "dentry"),
            Site(web, 0, 5, "page", Usage(1, 4096, 4096), ""),
            Site(db, 0xA0, 9, "kmalloc", Usage(1, 8, 8), ""),
        ],
        live=[Live(web, 0xB0, 5, "slab", 64)],
    )
    rows = allocmap.build(
        window,
        service_of={web: "web.service", db: "db.service"}.__getitem__,
        cgroup_of=lambda cg: f"/x/{cg}",
        symbol=lambda a: f"fn_{a:x}",
        site_sample=64,
        live_sample=16,
        top=10,
    )
    assert [r.service for r in rows] == ["web.service", "db.service"]
    web_row = rows[0]
    assert web_row.allocations == {"slab": 100}
    assert web_row.outstanding_bytes == 64 * 16
    assert [(s.call_site, s.type, s.allocations, s.bytes) for s in web_row.sites] == [
        (allocmap.PAGE_SITE, "", 64, 4096 * 64),
        ("fn_a0", "filp", 128, 128 * 64),
        ("fn_b0", "dentry", 64, 64 * 64),
    ]
    assert web_row.sites[2].outstanding_bytes == 64 * 16
    assert web_row.sites[0].pids == (5,)
    m = allocmap.AllocationMap(2.0, "raw", 64, 16, "/proc/kallsyms", tuple(rows))
    text = allocmap.render(m)
    for word in ("web.service", "fn_a0", "filp"):
        assert word in text
    site = json.loads(json.dumps(m.document()))["services"][0]["sites"][1]
    assert (site["type"], site["address"]) == ("filp", "0xa0")


def test_allocation_map_top_limits_sites() -> None:
    window = Window(
        1.0,
        {1: {"slab": Usage(3, 3, 3)}},
        [Site(1, a, 1, "slab", Usage(1, a, a), "") for a in (1, 2, 3)],
        [],
    )
    rows = allocmap.build(
        window,
        service_of=lambda _: "s",
        cgroup_of=lambda _: None,
        symbol=hex,
        site_sample=1,
        live_sample=None,
        top=2,
    )
    assert [s.address for s in rows[0].sites] == [3, 2]
    assert rows[0].outstanding_bytes is None
    assert rows[0].cgroups == ("id:1",)


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ("slots: 1000", "probes.allocations.slots", "power of two"),
        ("site_sample: 3", "probes.allocations.site_sample", "power of two"),
        ("live_sample: 0", "probes.allocations.live_sample", "power of two"),
        ("attach: raw", "probes.allocations.attach", "expected one of auto, classic"),
        ("site_entries: 1", "probes.allocations.site_entries", "64..1048576"),
        ("track_outstanding: 1", "probes.allocations.track_outstanding", "true or false"),
    ],
)
def test_config_errors_name_the_key(text: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.loads(f"probes:\n  allocations:\n    {text}\n", "c.yaml")
    assert err.value.key == key
    assert err.value.line == 3
    assert says in err.value.message


def test_attach_plan_without_btf_uses_classic_tracepoints(tmp_path: Path) -> None:
    plan = attach_plan(tmp_path / "no-btf")
    assert not plan.raw
    assert plan.cflags == ("-DALLOC_RAW=0",)
    assert "classic tracepoints" in plan.reason
    assert attach_plan(tmp_path / "no-btf", want_raw=False).reason == ""


def test_the_allocation_probe_has_no_ring_buffer(tmp_path: Path) -> None:
    # All its data is aggregated in maps: no dummy ring buffer, no decoder that only raises.
    kernel = kernel_context(KernelPaths(btf=tmp_path / "no-btf"), structlog.get_logger())
    monitor = AllocationMonitor(AllocationProbeConfig(), CgroupResolver(None), LabelCap(4))
    (spec,) = monitor.probe_specs(kernel)
    assert (spec.ringbuf, spec.decode) == (None, None)
    assert "BPF_RINGBUF_OUTPUT" not in (PROBES_DIR / spec.source).read_text()


@pytest.mark.parametrize(
    ("text", "seconds"), [("5", 5.0), ("2.5", 2.5), ("10s", 10.0), ("1m", 60.0)]
)
def test_allocmap_duration_takes_seconds_as_a_number(text: str, seconds: float) -> None:
    # The error message promises "or seconds as a number": a bare number is seconds.
    args = cli.parser().parse_args(["allocmap", "--duration", text])
    assert args.duration == seconds


@pytest.mark.parametrize("args", [["--top", "0"], ["--duration", "soon"], ["--duration", "0"]])
def test_allocmap_rejects_bad_arguments(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = cli.main(["allocmap", *args])
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    assert code == cli.EXIT_USAGE
    assert capsys.readouterr().err.strip()
