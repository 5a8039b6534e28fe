"""`bpf-auditd allocmap`: which kernel call sites each service drives, with counts, bytes and
outstanding bytes, from the allocation probes attached on their own for a few seconds."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from auditd.config.schema import AllocationProbeConfig, Config
from auditd.kernel.cgroups import CgroupResolver, cgroup2_path
from auditd.kernel.context import kernel_context
from auditd.kernel.paths import KernelPaths
from auditd.model.labels import LabelCap
from auditd.signals.allocations.monitor import AllocationMonitor, Window
from probes.allocations import KINDS, ZERO, Usage

PAGE_SITE = "(page allocator)"  # mm_page_alloc carries no call site


@dataclass(frozen=True, slots=True)
class SiteRow:
    """One kernel call site a service drove. Counts are estimates (samples x rate)."""

    call_site: str
    address: int
    kind: str
    type: str  # slab cache name, the object type ("" for kmalloc and pages)
    allocations: int
    bytes: int
    outstanding_bytes: int | None
    pids: tuple[int, ...]  # processes seen allocating here, busiest first


@dataclass(frozen=True, slots=True)
class ServiceRow:
    service: str
    cgroups: tuple[str, ...]
    allocations: dict[str, int]  # kind -> exact count
    bytes: dict[str, int]  # kind -> exact allocated bytes
    outstanding_bytes: int | None  # estimated
    sites: tuple[SiteRow, ...]

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


@dataclass(frozen=True, slots=True)
class AllocationMap:
    duration: float
    attach: str
    site_sample: int
    live_sample: int
    symbols: str  # where call-site names come from, or why they are raw addresses
    services: tuple[ServiceRow, ...]

    def document(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        for service in doc["services"]:
            for site in service["sites"]:
                # Kernel addresses exceed 2^53: as JSON numbers, JavaScript tools would round them.
                site["address"] = f"0x{site['address']:x}"
        return doc


def build(
    window: Window,
    *,
    service_of: Callable[[int], str],
    cgroup_of: Callable[[int], str | None],
    symbol: Callable[[int], str],
    site_sample: int,
    live_sample: int | None,
    top: int,
) -> list[ServiceRow]:
    """Services sorted by allocated bytes, each with its `top` call sites by bytes."""
    totals: dict[str, dict[str, Usage]] = {}
    cgroups: dict[str, set[str]] = {}
    for cgroup_id, usage in window.deltas.items():
        service = service_of(cgroup_id)
        per_kind = totals.setdefault(service, {})
        for kind, u in usage.items():
            per_kind[kind] = per_kind.get(kind, ZERO) + u
        cgroups.setdefault(service, set()).add(cgroup_of(cgroup_id) or f"id:{cgroup_id}")

    SiteKey = tuple[str, int, str]  # (service, call site, kind)
    sampled: dict[SiteKey, Usage] = {}
    types: dict[SiteKey, str] = {}
    pids: dict[SiteKey, Counter[int]] = {}
    for site in window.sites:
        key = (service_of(site.cgroup_id), site.call_site, site.kind)
        sampled[key] = sampled.get(key, ZERO) + site.usage
        if site.type:
            types[key] = site.type
        pids.setdefault(key, Counter())[site.tgid] += site.usage.count
    outstanding: Counter[SiteKey] = Counter()
    service_outstanding: Counter[str] = Counter()
    for obj in window.live:
        service = service_of(obj.cgroup_id)
        outstanding[service, obj.call_site, obj.kind] += obj.bytes * (live_sample or 1)
        service_outstanding[service] += obj.bytes * (live_sample or 1)
        totals.setdefault(service, {})

    rows = []
    for service, per_kind in totals.items():
        keys = {k for k in (*sampled, *outstanding) if k[0] == service}
        sites = sorted(
            (
                SiteRow(
                    call_site=symbol(address) if address else PAGE_SITE,
                    address=address,
                    kind=kind,
                    type=types.get((service, address, kind), ""),
                    allocations=sampled.get((service, address, kind), ZERO).count * site_sample,
                    bytes=sampled.get((service, address, kind), ZERO).allocated * site_sample,
                    outstanding_bytes=outstanding[service, address, kind] if live_sample else None,
                    pids=tuple(
                        p for p, _ in pids.get((service, address, kind), Counter()).most_common(5)
                    ),
                )
                for (_, address, kind) in keys
            ),
            key=lambda r: (-r.bytes, -(r.outstanding_bytes or 0), r.call_site),
        )
        rows.append(
            ServiceRow(
                service=service,
                cgroups=tuple(sorted(cgroups.get(service, ()))),
                allocations={k: per_kind[k].count for k in KINDS if k in per_kind},
                bytes={k: per_kind[k].allocated for k in KINDS if k in per_kind},
                outstanding_bytes=service_outstanding[service] if live_sample else None,
                sites=tuple(sites[:top]),
            )
        )
    rows.sort(key=lambda r: (-r.total_bytes, -(r.outstanding_bytes or 0), r.service))
    return rows


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    if abs(n) < 1024:
        return f"{n} B"
    scaled = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        scaled /= 1024
        if abs(scaled) < 1024 or unit == "GiB":
            break
    return f"{scaled:.1f} {unit}"


def render(m: AllocationMap) -> str:
    """The map as a terminal table: a line per service, its call sites indented below."""
    lines = [
        f"allocations over {m.duration:.1f} s ({m.attach} tracepoints); call sites sampled 1 in "
        f"{m.site_sample}, outstanding from 1 address in {m.live_sample}; symbols: {m.symbols}",
        "",
        f"{'SERVICE / CALL SITE':<48} {'KIND':<8} {'TYPE':<22} {'ALLOCS':>10} {'BYTES':>11} "
        f"{'OUTSTANDING':>11}",
    ]
    for s in m.services:
        allocs = sum(s.allocations.values())
        lines.append(
            f"{s.service[:48]:<48} {'all':<8} {'':<22} {allocs:>10} {_size(s.total_bytes):>11} "
            f"{_size(s.outstanding_bytes):>11}"
        )
        for r in s.sites:
            lines.append(
                f"  {r.call_site[:46]:<46} {r.kind:<8} {r.type[:22]:<22} {r.allocations:>10} "
                f"{_size(r.bytes):>11} {_size(r.outstanding_bytes):>11}"
            )
    if not m.services:
        lines.append("(no allocations seen)")
    return "\n".join(lines)


def collect(
    config: Config,
    paths: KernelPaths,
    duration: float,
    *,
    service: str | None = None,
    top: int = 10,
    sleep: Callable[[float], None] = time.sleep,
) -> AllocationMap:
    """Attach the allocation probes alone (outstanding tracking on), wait, read, detach."""
    from probes.runtime import ProbeSet

    log = structlog.get_logger("bpf-auditd")
    alloc_config: AllocationProbeConfig = dataclasses.replace(
        config.probes.allocations, track_outstanding=True
    )
    resolver = CgroupResolver(cgroup2_path(paths))
    resolver.rescan()
    monitor = AllocationMonitor(alloc_config, resolver, LabelCap(1 << 30))
    kernel = kernel_context(paths, log)
    probes = ProbeSet(
        monitor.probe_specs(kernel),
        [f"-DRINGBUF_PAGES={config.probes.ringbuf_pages}", *kernel.plan.cflags],
        tracefs=kernel.tracefs,
    )
    probes.load()
    try:
        monitor.bind(probes)
        sleep(duration)
        resolver.rescan()
        window = monitor.window()
    finally:
        probes.close()
    rows = build(
        window,
        service_of=resolver.service,
        cgroup_of=resolver.cached,
        symbol=monitor.symbol,
        site_sample=alloc_config.site_sample,
        live_sample=alloc_config.live_sample,
        top=top,
    )
    if service is not None:
        rows = [r for r in rows if fnmatch.fnmatchcase(r.service, service)]
    symbols = monitor.symbols_status()
    return AllocationMap(
        duration=window.seconds,
        attach=monitor.plan.mode if monitor.plan else "unknown",
        site_sample=alloc_config.site_sample,
        live_sample=alloc_config.live_sample,
        symbols=symbols,
        services=tuple(rows),
    )


def main(
    config: Config,
    paths: KernelPaths,
    *,
    duration: float,
    service: str | None,
    as_json: bool,
    top: int,
) -> int:
    m = collect(config, paths, duration, service=service, top=top)
    print(json.dumps(m.document(), indent=2) if as_json else render(m))
    return 0
