"""Shared test plumbing: what each marker needs, and skips that CI turns into failures.

A test marked ``needs_bpf`` (or ``needs_root``, ``needs_broker``, ``needs_prometheus``) is skipped
with the reason when the machine lacks it. With ``BPF_AUDITD_REQUIRE_ALL=1`` (set by ``.ci/run``)
the same condition fails the test instead, so CI can never pass by skipping the kernel tests.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REQUIRE_ALL = os.environ.get("BPF_AUDITD_REQUIRE_ALL") == "1"


def _missing_root() -> str | None:
    return None if os.geteuid() == 0 else "needs root (uid 0)"


def _missing_bpf() -> str | None:
    if reason := _missing_root():
        return reason
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "needs the BCC Python binding (Debian python3-bpfcc) in this interpreter"
    if not any(
        Path(p, "events").is_dir() for p in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
    ):
        return "needs tracefs mounted (/sys/kernel/tracing)"
    if not Path(f"/lib/modules/{os.uname().release}/build").exists():
        return "needs kernel headers for BCC at /lib/modules/$(uname -r)/build"
    return None


def _missing_binary(*names: str) -> str | None:
    for name in names:
        if shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            return f"needs {name} installed"
    return None


def _missing_btf() -> str | None:
    btf = Path("/sys/kernel/btf/vmlinux")
    return None if btf.is_file() else f"needs kernel BTF at {btf}"


REQUIREMENTS = {
    "needs_root": _missing_root,
    "needs_btf": _missing_btf,
    "needs_bpf": _missing_bpf,
    "needs_broker": lambda: _missing_binary("mosquitto", "mosquitto_passwd", "openssl"),
    "needs_prometheus": lambda: _missing_binary("prometheus", "promtool"),
    "needs_containers": lambda: _missing_binary("runc", "mmdebstrap", "systemd-nspawn", "nsenter"),
    "needs_auditd": lambda: _missing_root() or _missing_binary("auditd", "auditctl"),
}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, check in REQUIREMENTS.items():
        if item.get_closest_marker(marker) is None:
            continue
        reason = check()
        if reason is None:
            continue
        if REQUIRE_ALL:
            pytest.fail(f"{marker}: {reason} (BPF_AUDITD_REQUIRE_ALL=1 forbids skipping)")
        pytest.skip(f"{marker}: {reason}")
