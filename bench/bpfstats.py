"""Per-program cost from the kernel's own accounting: run_cnt and run_time_ns of each BPF program
(BPF_ENABLE_STATS, held only while measuring, so other users of kernel.bpf_stats_enabled are not
disturbed), found through the /proc fdinfo of the process that holds them.

Every ns/run includes the accounting itself and the dispatch to the program (two clock reads:
~50 ns on the machines this was written on): measure an empty program next to it
(`bench/report.py` does) before reading anything into small differences.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probes import bpfsys

_PROG_ID = re.compile(r"^prog_id:\s*(\d+)$", re.MULTILINE)


def program_ids(pid: int) -> set[int]:
    """Ids of the BPF programs process `pid` holds (programs and links both say prog_id)."""
    ids: set[int] = set()
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            ids.update(int(m) for m in _PROG_ID.findall(fdinfo.read_text()))
    return ids


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    runs: int
    ns: int


def sample(ids: set[int]) -> dict[int, Sample]:
    out = {}
    for prog_id in ids:
        try:
            fd = bpfsys.prog_fd_by_id(prog_id)
        except OSError:
            continue  # unloaded meanwhile
        try:
            info = bpfsys.prog_info(fd)
        finally:
            os.close(fd)
        out[prog_id] = Sample(info.name, info.run_cnt, info.run_time_ns)
    return out


@dataclass(frozen=True, slots=True)
class Cost:
    name: str
    runs: int
    ns_per_run: float


def full_names(ids: set[int]) -> dict[int, str]:
    """Program names beyond the 15 bytes the kernel keeps, from their BTF (through bpftool;
    without it, the short names)."""
    names: dict[int, str] = {}
    for prog_id in ids:
        with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
            out = subprocess.run(
                ["bpftool", "-j", "prog", "show", "id", str(prog_id)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            names[prog_id] = str(json.loads(out.stdout)["name"])
    return names


def delta(
    before: dict[int, Sample], after: dict[int, Sample], names: dict[int, str] | None = None
) -> dict[str, Cost]:
    """Runs and ns/run between two samples, by program name (programs of one name summed)."""
    runs: dict[str, int] = {}
    ns: dict[str, int] = {}
    for prog_id, a in after.items():
        b = before.get(prog_id, Sample(a.name, 0, 0))
        name = (names or {}).get(prog_id, a.name)
        runs[name] = runs.get(name, 0) + a.runs - b.runs
        ns[name] = ns.get(name, 0) + a.ns - b.ns
    return {n: Cost(n, runs[n], ns[n] / runs[n] if runs[n] else float("nan")) for n in runs}


@contextlib.contextmanager
def stats_enabled() -> Iterator[None]:
    fd = bpfsys.enable_stats()
    try:
        yield
    finally:
        os.close(fd)
