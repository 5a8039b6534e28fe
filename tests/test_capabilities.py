"""Least privilege: the capability set in the systemd unit is exactly what the daemon needs.

The real daemon runs under setpriv with the unit's set (as systemd would start it) and attaches
every probe; without any one of them it stops with one line naming the missing capability.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from _daemon import DaemonProcess
from _workload import denied_opens, scratch_cgroup, secret_file

from auditd.config.schema import Config
from auditd.kernel import privileges as capabilities
from auditd.kernel.paths import KernelPaths
from auditd.model.capabilities import NUMBERS

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "bpf-auditd.service"


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file, values of repeated keys in order."""
    settings: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def unit_capabilities(key: str) -> set[str]:
    return {cap for value in unit_settings()[key] for cap in value.split()}


def setpriv(caps: Iterable[str]) -> tuple[str, ...]:
    """Start a command the way the unit does: uid 0 whose capabilities are exactly `caps`
    (bounding, inheritable and ambient sets; SecureBits=noroot-locked; NoNewPrivileges=yes)."""
    names = "".join(f",+{cap.removeprefix('CAP_').lower()}" for cap in sorted(caps))
    return (
        "setpriv",
        "--securebits=+noroot,+noroot_locked",
        f"--bounding-set=-all{names}",
        f"--inh-caps=-all{names}",
        f"--ambient-caps=-all{names}",
        "--no-new-privs",
        "--",
    )


def _complaints(lines: list[dict[str, object]]) -> set[object]:
    """The warnings and errors a daemon logged, by event name."""
    return {e.get("event") for e in lines if e.get("level") in ("warning", "error")}


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text("metrics:\n  listen: '127.0.0.1:0'\n")
    return config


def _capabilities_of(pid: int) -> set[str]:
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line for line in status.splitlines() if line.startswith("CapEff:"))[7:], 16)
    return {name for name, bit in NUMBERS.items() if mask >> bit & 1}


# --- the unit file and the table agree ----------------------------------------------------------


def test_unit_grants_exactly_the_required_set() -> None:
    required = {need.name for need in capabilities.required(Config())}
    settings = unit_settings()

    assert unit_capabilities("CapabilityBoundingSet") == required
    assert unit_capabilities("AmbientCapabilities") == required
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["SecureBits"] == ["noroot-locked"]
    assert "User" not in settings, "uid 0 reads tracefs without CAP_DAC_READ_SEARCH"


# --- the check on fixture trees -----------------------------------------------------------------


def _proc(tmp_path: Path, caps: Iterable[str], last_cap: int | None = 40) -> KernelPaths:
    mask = sum(1 << NUMBERS[cap] for cap in caps)
    (tmp_path / "self").mkdir(parents=True)
    (tmp_path / "self" / "status").write_text(
        f"Name:\tbpf-auditd\nCapInh:\t{0:016x}\nCapEff:\t{mask:016x}\nCapBnd:\t{mask:016x}\n"
    )
    if last_cap is not None:
        (tmp_path / "sys" / "kernel").mkdir(parents=True)
        (tmp_path / "sys" / "kernel" / "cap_last_cap").write_text(f"{last_cap}\n")
    return KernelPaths(proc=tmp_path)


def _with(*, allocations: bool = True, audit: bool = True) -> Config:
    probes = Config().probes
    return dataclasses.replace(
        Config(),
        probes=dataclasses.replace(
            probes,
            allocations=dataclasses.replace(probes.allocations, enabled=allocations),
            denials=dataclasses.replace(probes.denials, audit=audit),
        ),
    )


MINIMAL = _with(allocations=False, audit=False)
AUDIT = ["CAP_AUDIT_CONTROL", "CAP_AUDIT_READ"]


@pytest.mark.parametrize(
    ("config", "names"),
    [
        (Config(), ["CAP_BPF", "CAP_PERFMON", "CAP_SYSLOG", *AUDIT]),
        (_with(allocations=False), ["CAP_BPF", "CAP_PERFMON", *AUDIT]),
        (_with(audit=False), ["CAP_BPF", "CAP_PERFMON", "CAP_SYSLOG"]),
        (MINIMAL, ["CAP_BPF", "CAP_PERFMON"]),
    ],
)
def test_required_follows_the_features_switched_on(config: Config, names: list[str]) -> None:
    assert [need.name for need in capabilities.required(config)] == names


@pytest.mark.parametrize(
    ("caps", "lacking"),
    [
        ({"CAP_BPF", "CAP_PERFMON"}, []),
        ({"CAP_SYS_ADMIN"}, []),  # the kernel accepts it for both
        ({"CAP_BPF"}, ["CAP_PERFMON"]),
        ({"CAP_PERFMON", "CAP_NET_ADMIN"}, ["CAP_BPF"]),
        (set(), ["CAP_BPF", "CAP_PERFMON"]),
    ],
)
def test_missing_names_what_is_lacking(tmp_path: Path, caps: set[str], lacking: list[str]) -> None:
    missing = capabilities.missing(capabilities.required(MINIMAL), _proc(tmp_path, caps))

    assert missing is not None
    assert [need.name for need in missing] == lacking


def test_every_default_need_is_checked(tmp_path: Path) -> None:
    needs = capabilities.required(Config())
    everything = {need.name for need in needs}
    for need in needs:
        missing = capabilities.missing(needs, _proc(tmp_path / need.name, everything - {need.name}))
        assert missing is not None
        assert [m.name for m in missing] == [need.name]


def test_one_line_names_the_capability_and_why(tmp_path: Path) -> None:
    missing = capabilities.missing(capabilities.required(MINIMAL), _proc(tmp_path, {"CAP_BPF"}))
    assert missing is not None

    assert capabilities.describe(missing) == (
        "missing capability CAP_PERFMON (needed to attach tracepoints (perf_event_open) and "
        "read memory from BPF programs)"
    )
    two = capabilities.describe(capabilities.required(MINIMAL))
    assert two.startswith("missing capabilities CAP_BPF (needed to load BPF programs")
    assert "\n" not in two


def test_a_kernel_before_cap_bpf_is_asked_for_sys_admin_once(tmp_path: Path) -> None:
    missing = capabilities.missing(capabilities.required(MINIMAL), _proc(tmp_path, (), 37))

    assert missing is not None
    assert [need.name for need in missing] == ["CAP_SYS_ADMIN"]
    assert "this kernel predates CAP_BPF" in missing[0].why
    assert "this kernel predates CAP_PERFMON" in missing[0].why


def test_unreadable_status_skips_the_check(tmp_path: Path) -> None:
    assert capabilities.missing(capabilities.required(Config()), KernelPaths(proc=tmp_path)) is None


# --- the real daemon under setpriv --------------------------------------------------------------


@pytest.mark.needs_bpf
def test_the_units_set_attaches_every_probe_and_reads_what_they_read(tmp_path: Path) -> None:
    caps = unit_capabilities("CapabilityBoundingSet")
    config = _config(tmp_path)
    full = DaemonProcess(config)
    try:
        everything = full.ready()["probes"]
    finally:
        full.stop()
    full_complaints = _complaints(full.lines)

    d = DaemonProcess(config, wrapper=setpriv(caps))
    try:
        ready = d.ready()
        held = _capabilities_of(d.proc.pid)
        # A refusal still reaches the log with its path: user-memory reads work with this set.
        with scratch_cgroup() as cgroup, secret_file() as secret:
            pid, refused = denied_opens(secret, 1, cgroup)
            deadline = time.monotonic() + 30
            ours: list[dict[str, object]] = []
            while not ours and time.monotonic() < deadline:
                ours = [e for e in d.lines if e.get("event") == "denial" and e.get("pid") == pid]
                time.sleep(0.1)
    finally:
        code = d.stop()

    assert held == caps, "setpriv did not give the daemon exactly the unit's set"
    assert ready["probes"] == everything
    # Nothing degrades for want of a capability: no warning the full-privilege run did not have.
    assert _complaints(d.lines) <= full_complaints
    assert refused == 1
    assert ours, "no denial logged under the unit's capability set"
    assert ours[0]["target"] == str(secret)
    assert code == 0


@pytest.mark.needs_root
@pytest.mark.parametrize("removed", sorted(unit_capabilities("CapabilityBoundingSet")))
def test_without_one_listed_capability_start_up_fails_naming_it(
    tmp_path: Path, removed: str
) -> None:
    caps = unit_capabilities("CapabilityBoundingSet") - {removed}

    d = DaemonProcess(_config(tmp_path), wrapper=setpriv(caps))
    code = d.proc.wait(timeout=120)
    d.stop()

    assert code == 1
    lines = d.stderr.strip().splitlines()
    assert len(lines) == 1, d.stderr
    assert lines[0].startswith(f"bpf-auditd: missing capability {removed} (needed to ")


@pytest.mark.parametrize(
    ("removed", "setting"),
    [
        ("CAP_SYSLOG", "probes.allocations.enabled: false"),
        ("CAP_AUDIT_CONTROL", "probes.denials.audit: false"),
        ("CAP_AUDIT_READ", "probes.denials.audit: false"),
    ],
)
def test_a_feature_one_can_do_without_says_how(tmp_path: Path, removed: str, setting: str) -> None:
    needs = capabilities.required(Config())
    held = {need.name for need in needs} - {removed}

    missing = capabilities.missing(needs, _proc(tmp_path, held))

    assert missing is not None
    assert capabilities.describe(missing).endswith(f"; or set {setting})")
