"""Empty programs attached exactly where the daemon attaches its own (same tracepoints, same kind
of attachment: classic, raw or tp_btf): what the attach points cost before any program does
anything. bench/report.py compares the daemon with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import harness  # noqa: F401 - puts the checkout on sys.path
import structlog

from auditd.config.schema import Config
from auditd.daemon.wiring import build_monitors, build_probe_set
from auditd.kernel.btf import Btf
from auditd.kernel.cgroups import CgroupResolver
from auditd.kernel.paths import KernelPaths
from auditd.model.labels import LabelCap
from probes.cache import ImageCache, KeyInputs
from probes.compiler import bcc_version
from probes.runtime import Attachment, Compiler, ProbeSet, ProbeSpec


def daemon_attachments(state_dir: Path) -> list[Attachment]:
    """Where the daemon (default config) attaches, found by loading its probes as it does."""
    paths = KernelPaths()
    config = Config()
    monitors = build_monitors(config, CgroupResolver(None), LabelCap(1 << 20))
    probes = build_probe_set(config, monitors, paths, structlog.get_logger())
    inputs = KeyInputs(bcc_version(), paths.btf, probes.tracefs, paths.kernel_build)
    probes.compiler = Compiler(
        in_child=True, cache=ImageCache(state_dir / "probe-cache"), key_inputs=inputs
    )
    probes.load()
    try:
        for monitor in monitors:
            monitor.bind(probes)
        return probes.attachments()
    finally:
        probes.close()


@contextlib.contextmanager
def empty_programs(attachments: list[Attachment], workdir: Path) -> Iterator[ProbeSet]:
    btf = Btf.load(KernelPaths().btf)
    # One function per attachment of a target: the kernel refuses a program attached twice to
    # one tracepoint (the daemon attaches two of its own to some).
    seen: dict[tuple[str, str], int] = {}
    functions: list[str] = []
    classic, raw, typed = [], [], []
    for a in attachments:
        k = seen[a.kind, a.target] = seen.get((a.kind, a.target), -1) + 1
        where = a.target.split(":")[-1] + (f"_{k}" if k else "")
        fn = f"empty_{'btf_' if a.kind == 'tp_btf' else ''}{where}"
        if fn not in functions:
            functions.append(fn)
        if a.kind == "tracepoint":
            classic.append((fn, a.target))
        elif a.kind == "raw_tracepoint":
            raw.append((fn, a.target))
        else:
            type_id = btf.tracepoint_type_id(a.target)
            assert type_id is not None, a
            typed.append((fn, a.target, type_id))
    source = workdir / "empty.bpf.c"
    source.write_text(
        "BPF_PERCPU_ARRAY(empty_drops, u64, 8);\n"
        + "".join(f"int {fn}(void *ctx) {{ return 0; }}\n" for fn in functions)
    )
    spec = ProbeSpec(
        name="empty",
        source=str(source),
        drops="empty_drops",
        tracepoints=tuple(classic),
        raw_tracepoints=tuple(raw),
        btf_tracepoints=tuple(typed),
    )
    probes = ProbeSet([spec], [])
    probes.load()
    try:
        yield probes
    finally:
        probes.close()
