"""A LinuxKit-like kernel simulated on this one: no BTF (`--btf /missing`) and kptr_restrict=2
(`--kallsyms` on a file of zero addresses). `doctor` names each loss in one line; the daemon
still starts, and denials take the path that needs no BTF.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _daemon import DaemonProcess
from _workload import denied_opens, scratch_cgroup, secret_file

pytestmark = pytest.mark.needs_bpf

MISSING_BTF = "/missing/vmlinux"


def _doctor(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "auditd", "doctor", "--json", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr  # the minimum (tracepoints, ring buffers) is met
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def _features(lines: list[str]) -> dict[str, str]:
    """Degradation lines by the feature they name (the words before the first colon)."""
    return {line.split(":", 1)[0]: line for line in lines}


@pytest.fixture(scope="module")
def baseline() -> dict[str, str]:
    return _features(_doctor()["degradations"])


@pytest.fixture
def zeroed_kallsyms(tmp_path: Path) -> Path:
    # What kptr_restrict=2 shows even to root: every symbol, every address zero.
    real = Path("/proc/kallsyms").read_text().splitlines()[:2000]
    path = tmp_path / "kallsyms"
    path.write_text("".join(f"{'0' * 16} {line.split(' ', 1)[1]}\n" for line in real))
    return path


def test_doctor_without_btf_names_struct_reads_in_one_line(baseline: dict[str, str]) -> None:
    data = _doctor("--btf", MISSING_BTF)
    lines = _features(data["degradations"])

    # Lines that name the missing file: struct reads (new: off because of it), and the two
    # informational fallbacks, which now say why in BTF's terms. Other lines (audit, Landlock)
    # follow the machine's live state, which other processes may change meanwhile.
    naming = {feature for feature, line in lines.items() if MISSING_BTF in line}
    assert naming == {
        "struct reads off (namespace inodes, ppid)",
        "fentry/fexit unavailable",
        "BPF-LSM unavailable",
        "tp_btf unavailable",
        "BTF-typed loads unavailable",
    }
    assert "struct reads off (namespace inodes, ppid)" not in baseline
    line = lines["struct reads off (namespace inodes, ppid)"]
    assert f"no BTF at {MISSING_BTF}" in line
    assert "\n" not in line
    assert data["btf"] == {"path": MISSING_BTF, "present": False}
    assert data["struct_reads"] is False
    assert lines["fentry/fexit unavailable"].endswith(f"(no BTF at {MISSING_BTF})")
    # The refusal path's losses without BTF: named with what they cost.
    assert "/proc/PID/exe" in lines["BTF-typed loads unavailable"]
    assert "cap_capable" in lines["tp_btf unavailable"]


def test_doctor_with_kptr_restrict_names_call_site_symbols_in_one_line(
    baseline: dict[str, str], zeroed_kallsyms: Path
) -> None:
    data = _doctor("--kallsyms", str(zeroed_kallsyms))
    lines = _features(data["degradations"])

    naming = {feature for feature, line in lines.items() if str(zeroed_kallsyms) in line}
    assert naming == {"kernel call-site symbols off"}
    assert "kernel call-site symbols off" not in baseline
    line = lines["kernel call-site symbols off"]
    assert line.startswith(f"kernel call-site symbols off: kptr_restrict hides {zeroed_kallsyms}")
    assert "kptr_restrict=" in line  # the sysctl's value as this kernel has it
    assert "kernel.kptr_restrict<=1" in line  # and what to do about it
    assert "\n" not in line
    assert data["kallsyms"]["hidden"] is True
    check = next(c for c in data["checks"] if c["name"] == "kallsyms")
    assert check["status"] == "missing"


def test_dump_bpf_without_btf_uses_the_sys_enter_fallback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "auditd", "dump-bpf", "--btf", MISSING_BTF],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    cflags = proc.stdout.splitlines()[0]

    assert cflags.startswith("// cflags: ")
    assert "-DAUDITD_STRUCT_READS=0" in cflags.split()
    # bpf_task_pt_regs needs the BTF task pointer: without BTF, arguments saved at sys_enter.
    assert "-DAUDITD_HAVE_TASK_PT_REGS=1" not in cflags.split()


def test_daemon_starts_without_btf_and_still_reads_denied_paths(
    tmp_path: Path, zeroed_kallsyms: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("metrics:\n  listen: '127.0.0.1:0'\n")
    d = DaemonProcess(config, "--btf", MISSING_BTF, "--kallsyms", str(zeroed_kallsyms))
    try:
        ready = d.ready()
        degraded = d.wait_for("struct_reads_degraded")
        with scratch_cgroup() as cgroup, secret_file() as secret:
            pid, refused = denied_opens(secret, 3, cgroup)
            deadline = time.monotonic() + 30
            ours: list[dict[str, Any]] = []
            while len(ours) < 1 and time.monotonic() < deadline:
                ours = [e for e in d.lines if e.get("event") == "denial" and e.get("pid") == pid]
                time.sleep(0.1)
    finally:
        code = d.stop()

    assert "denials" in ready["probes"]
    assert degraded["source"] == "none"
    assert MISSING_BTF in degraded["reason"]
    assert refused == 3
    assert ours, "no denial logged without BTF"
    assert ours[0]["target"] == str(secret)  # read from the pointer saved at sys_enter
    assert code == 0
