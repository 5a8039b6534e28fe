"""The Prometheus exporter over real HTTP, with families the test controls."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.request

import pytest
from _daemon import samples, value

from exporters.families import Family, counter, gauge
from exporters.prometheus import MetricsServer

HITS = counter("test_hits", "Hits.", "service")
LEVEL = gauge("test_level", "Level.")


def _scrape(families: object, declared: list[Family]) -> str:
    async def go() -> str:
        async with MetricsServer("127.0.0.1", 0, families, declared) as server:  # type: ignore[arg-type]
            url = f"http://{server.address}/metrics"
            return await asyncio.to_thread(
                lambda: urllib.request.urlopen(url, timeout=10).read().decode()
            )

    return asyncio.run(go())


def test_families_become_prometheus_text() -> None:
    text = _scrape(
        lambda: [
            HITS.with_samples({('a "quoted"\nname',): 3, ("b",): 4}),
            LEVEL.with_samples({(): 1.5}),
        ],
        [HITS, LEVEL],
    )
    assert value(text, "bpf_auditd_test_hits_total", service="b") == 4
    assert "# TYPE bpf_auditd_test_hits_total counter" in text
    assert value(text, "bpf_auditd_test_level") == 1.5
    assert value(text, "bpf_auditd_scrape_errors_total") == 0
    assert samples(text, "bpf_auditd_build_info")
    assert samples(text, "process_resident_memory_bytes")


def test_a_failing_read_is_counted_not_fatal() -> None:
    def broken() -> list[Family]:
        raise OSError("map gone")

    text = _scrape(broken, [HITS])
    assert value(text, "bpf_auditd_scrape_errors_total") == 1
    assert samples(text, "process_resident_memory_bytes")


@pytest.mark.needs_prometheus
def test_promtool_finds_no_problems() -> None:
    text = _scrape(
        lambda: [HITS.with_samples({("a",): 1}), LEVEL.with_samples({(): 2})], [HITS, LEVEL]
    )
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).strip() == ""
