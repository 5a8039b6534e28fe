"""Every cache, table and map mirror in user space stays within its bound under churn: thousands of
short-lived cgroups, processes and namespaces, each one refused, through the real daemon (run
in this process, so its structures can be looked at).

Bounds are set small here so that the churn goes well past them; what is asserted is the size
of each structure, not the process's RSS (which depends on the allocator and the machine).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from _workload import cgroup2_root, secret_file

from auditd.config import schema as config_mod
from auditd.daemon import wiring
from auditd.daemon.daemon import Daemon
from auditd.kernel.paths import KernelPaths
from auditd.signals.allocations.monitor import AllocationMonitor
from auditd.signals.denials.monitor import DenialMonitor
from auditd.signals.namespaces.monitor import NamespaceMonitor
from probes.runtime import DropKind

pytestmark = [pytest.mark.needs_bpf, pytest.mark.needs_btf]

CHURN = 1500

# argv: parent cgroup directory, iterations, secret file. Each iteration: a new cgroup, a child
# in it that unshares a UTS namespace (a new one each time), drops to uid 65534 and is refused
# the secret file, then exits; the cgroup is removed.
_CHURN = r"""
import ctypes, os, sys
parent, n, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
libc = ctypes.CDLL(None, use_errno=True)
for i in range(n):
    cgroup = os.path.join(parent, f"churn-{i}.service")
    os.mkdir(cgroup)
    pid = os.fork()
    if pid == 0:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        libc.unshare(0x04000000)
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
        try:
            os.open(secret, os.O_RDONLY)
        except OSError:
            pass
        os._exit(0)
    os.waitpid(pid, 0)
    os.rmdir(cgroup)
"""


def _config(tmp_path: Path) -> config_mod.Config:
    path = tmp_path / "config.yaml"
    path.write_text(
        "metrics:\n  listen: '127.0.0.1:0'\n  max_services: 8\n"
        "housekeeping_interval: 0.5\n"
        "policy:\n  max_keys: 64\n"
        "probes:\n  denials:\n    recent_entries: 64\n  namespaces:\n    recent_entries: 64\n"
    )
    return config_mod.load(path)


def test_churn_keeps_every_structure_within_its_bound(tmp_path: Path) -> None:
    config = _config(tmp_path)
    paths = KernelPaths()
    parts = wiring.build(config, None, paths)
    # Small bounds, so the churn goes far past them.
    parts.resolver.max_removed = 64
    parts.resolver.max_missed = 64
    parts.services.remember = 32
    parts.enricher.exe.max_entries = 64
    identity = parts.enricher.namespaces
    assert identity is not None
    identity.max_entries = 64
    daemon = Daemon(config, None, paths, parts)
    allocations = next(m for m in parts.monitors if isinstance(m, AllocationMonitor))
    parent = cgroup2_root() / f"bpf-auditd-churn-{tmp_path.name[-8:]}"
    parent.mkdir()

    kernel: dict[str, int] = {}

    async def run() -> None:
        task = asyncio.create_task(daemon.run())
        while daemon.probes is None:  # loaded and attached
            if task.done():
                await task
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        with secret_file() as secret:
            churn = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", _CHURN, str(parent), str(CHURN), str(secret)],
                check=False,
                timeout=600,
            )
        assert churn.returncode == 0
        await asyncio.sleep(3)  # housekeeping passes: rescans, retirements, summaries
        assert daemon.probes is not None
        assert allocations.ledger is not None
        kernel["slots owned"] = len(allocations.ledger.tables.owners())
        kernel["slot drops"] = sum(
            n for (probe, kind), n in daemon.probes.kernel_drops().items()
            if probe == "allocations" and kind is DropKind.COUNTER_FULL
        )  # fmt: skip
        daemon.request_stop()
        await task

    try:
        asyncio.run(run())
    finally:
        parent.rmdir()

    denials = next(m for m in parts.monitors if isinstance(m, DenialMonitor))
    namespaces = next(m for m in parts.monitors if isinstance(m, NamespaceMonitor))
    sizes = {
        "resolver": parts.resolver.sizes(),
        "services": parts.services.sizes(),
        "identity": identity.sizes(),
        # None where the kernel walks the executable's path (BTF): no table at all then.
        "exe": 0 if parts.enricher.exe is None else len(parts.enricher.exe),
        "denial repeats": len(denials._accountant),
        "namespace repeats": len(namespaces.accountant),
        "lsm": parts.lsm.sizes() if parts.lsm is not None else {},
        "policy": parts.alerting.engine.sizes(),
        "kernel": kernel,
    }
    print(f"\nafter {CHURN} cgroups: {sizes}")
    # The churn really went past the bounds ...
    assert parts.services.overflowed > 32
    assert sizes["resolver"]["removed"] == 64
    # ... and nothing grew beyond them.
    assert sizes["resolver"]["missed"] <= 64
    assert sizes["resolver"]["dead"] <= 64
    assert sizes["services"] == {"admitted": 8, "folded": 32}
    assert sizes["identity"]["created"] <= 64
    assert sizes["identity"]["scanned"] <= 64 + 16  # stops after the pid that reached it
    assert sizes["exe"] <= 64
    assert sizes["denial repeats"] <= 2 * 64
    assert sizes["namespace repeats"] <= 2 * 64
    assert all(n <= 4096 for n in sizes["lsm"].values())
    assert all(n <= 64 for n in sizes["policy"].values())
    # Kernel slots keyed by cgroup do not fill with dead ones (most never seen by a walk):
    # once the churn is over, only the live cgroups hold one. (Drops may still happen during
    # it: a cgroup whose hashed slots are all taken at that moment; they are counted.)
    assert kernel["slots owned"] < 128
