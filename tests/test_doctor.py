"""doctor and the kernel facts it reports: the real kernel here, fixture trees for the rest."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from auditd.audit import netlink
from auditd.commands import doctor
from auditd.kernel import bpf_support as features
from auditd.kernel import facts
from auditd.kernel.cgroups import cgroup2_mount
from auditd.kernel.paths import KernelPaths
from auditd.model.errnos import errno_text

RELEASE = "6.18.44-test"
FOREIGN = "6.1.0-56-amd64"
DOCUMENTED_KEYS = {
    "version", "kernel", "probes", "btf", "headers", "bcc", "tracefs", "audit", "landlock",
    "cgroup2", "kallsyms", "lsms", "struct_reads", "libbpf", "hz", "checks", "minimum_missing",
    "degradations",
}  # fmt: skip
MOUNTINFO = (
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "41 31 0:38 / /sys/fs/cgroup/uni\\040fied rw,relatime shared:5 - cgroup2 cgroup2 rw\n"
)


def _kernel_tree(
    root: Path,
    *,
    btf: bool = False,
    headers: str | None = FOREIGN,
    headers_file: str = "include/generated/utsrelease.h",
    kallsyms: str = "ffffffff81000000 T _stext\nffffffff81000010 T _text\n",
    lsms: str | None = "lockdown,capability,landlock,bpf",
    mountinfo: str = MOUNTINFO,
) -> KernelPaths:
    """A /proc, /sys and /lib/modules laid out like the real ones, with no tracefs."""
    proc, sys_ = root / "proc", root / "sys"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    (proc / "sys" / "kernel").mkdir(parents=True)
    (proc / "sys" / "kernel" / "kptr_restrict").write_text("2\n")
    (proc / "kallsyms").write_text(kallsyms)
    (sys_ / "bus" / "event_source" / "devices" / "tracepoint").mkdir(parents=True)
    (sys_ / "kernel" / "btf").mkdir(parents=True)
    if btf:
        (sys_ / "kernel" / "btf" / "vmlinux").write_bytes(b"\x9f\xeb")
    if lsms is not None:
        (sys_ / "kernel" / "security").mkdir(parents=True)
        (sys_ / "kernel" / "security" / "lsm").write_text(lsms)
    modules = root / "lib" / "modules"
    (modules / RELEASE).mkdir(parents=True)
    if headers is not None:
        tree = root / "usr" / "src" / f"linux-headers-{headers}"
        (tree / headers_file).parent.mkdir(parents=True)
        text = f'#define UTS_RELEASE "{headers}"\n' if headers_file.endswith(".h") else headers
        (tree / headers_file).write_text(text + "\n")
        (modules / RELEASE / "build").symlink_to(tree)
    return KernelPaths(
        proc=proc,
        sys=sys_,
        btf=sys_ / "kernel" / "btf" / "vmlinux",
        kallsyms=proc / "kallsyms",
        modules=modules,
        tracefs=(sys_ / "kernel" / "tracing", sys_ / "kernel" / "debug" / "tracing"),
        release=RELEASE,
    )


def _collect(paths: KernelPaths) -> doctor.Report:
    # Path-based facts come from the fixture; the syscall probes (root or not) only add rows.
    return doctor.collect(paths, try_bcc_compile=False)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- the real kernel -----------------------------------------------------------------------------


@pytest.mark.needs_bpf
def test_this_machine_has_the_minimum_and_no_fentry_or_lsm() -> None:
    report = doctor.collect(KernelPaths())

    available = {probe.name: probe.available for probe in report.probes}
    assert available["tracepoint"], report.probe("tracepoint").detail
    assert available["raw_tracepoint"], report.probe("raw_tracepoint").detail
    assert available["ringbuf"], report.probe("ringbuf").detail
    assert not available["fentry"]
    assert not available["bpf_lsm"]
    assert doctor.minimum_missing(report) is None
    data = json.loads(json.dumps(doctor.as_json(report)))
    assert set(data) == DOCUMENTED_KEYS
    assert set(data["probes"]) == set(features.PROBE_NAMES)
    assert data["bcc"]["compile"]["ok"], data["bcc"]["compile"]["detail"]
    assert any(
        "fentry/fexit unavailable: using tracepoints" in line for line in data["degradations"]
    )


@pytest.mark.needs_root
def test_probes_close_every_fd_they_open() -> None:
    paths = KernelPaths()
    before = _open_fds()
    for _ in range(3):
        features.probe_all(paths)
        netlink.audit_netlink()
        facts.landlock()
        facts.active_lsms(paths)
    assert _open_fds() == before


@pytest.mark.needs_root
def test_a_failed_attach_closes_the_loaded_program(tmp_path: Path) -> None:
    # A tracepoint id no kernel has: the program loads, perf_event_open refuses; the fd must go.
    events = tmp_path / "tracing" / "events" / "syscalls" / "sys_enter_getppid"
    events.mkdir(parents=True)
    (events / "id").write_text("999999999\n")
    paths = KernelPaths(tracefs=(tmp_path / "tracing",))
    before = _open_fds()

    probe = features.probe_tracepoint(paths)

    assert not probe.available
    assert probe.detail.startswith(("perf_event_open refused: ", "load refused: "))
    assert _open_fds() == before


# --- fixture trees -------------------------------------------------------------------------------


def test_no_tracefs_means_no_tracepoints_and_a_one_line_reason(tmp_path: Path) -> None:
    paths = _kernel_tree(tmp_path)

    probe = features.probe_tracepoint(paths)
    report = _collect(paths)
    reason = doctor.minimum_missing(report)

    assert not probe.available
    assert probe.detail.startswith("tracefs not mounted: none of ")
    assert str(paths.tracefs[0] / "events") in probe.detail
    assert report.tracefs is None
    assert reason is not None
    assert "\n" not in reason
    assert reason.startswith("minimum not met: tracepoints unavailable: tracefs not mounted")


def test_missing_tracepoint_is_named(tmp_path: Path) -> None:
    (tmp_path / "tracing" / "events").mkdir(parents=True)
    paths = KernelPaths(tracefs=(tmp_path / "tracing",))

    probe = features.probe_tracepoint(paths)

    assert not probe.available
    assert probe.detail.startswith("no tracepoint syscalls:sys_enter_getppid")


def test_no_btf_and_foreign_headers_switch_struct_reads_off(tmp_path: Path) -> None:
    paths = _kernel_tree(tmp_path)

    report = _collect(paths)
    lines = [line for line in doctor.degradations(report) if line.startswith("struct reads off")]

    assert not report.struct_reads
    assert report.headers.release == FOREIGN
    assert not report.headers.matches
    assert lines == [
        f"struct reads off (namespace inodes, ppid): no BTF at {paths.btf} and headers at "
        f"{report.headers.target} are {FOREIGN}, not the running {RELEASE}"
    ]
    assert doctor.as_json(report)["headers"]["matches_running"] is False


def test_no_btf_and_no_headers_says_so(tmp_path: Path) -> None:
    paths = _kernel_tree(tmp_path, headers=None)

    lines = doctor.degradations(_collect(paths))

    assert f"no kernel headers at {paths.kernel_build}" in next(
        line for line in lines if line.startswith("struct reads off")
    )


@pytest.mark.parametrize(
    ("btf", "headers", "headers_file"),
    [
        (True, FOREIGN, "include/generated/utsrelease.h"),  # offsets come from BTF
        (False, RELEASE, "include/generated/utsrelease.h"),  # the kernel's own headers
        (False, RELEASE, "include/config/kernel.release"),  # older trees have only this
    ],
)
def test_struct_reads_on_with_btf_or_matching_headers(
    tmp_path: Path, btf: bool, headers: str, headers_file: str
) -> None:
    paths = _kernel_tree(tmp_path, btf=btf, headers=headers, headers_file=headers_file)

    report = _collect(paths)

    assert report.struct_reads
    assert not any(line.startswith("struct reads") for line in doctor.degradations(report))


def test_zeroed_kallsyms_switches_call_site_symbols_off(tmp_path: Path) -> None:
    zeros = "".join(f"0000000000000000 T sym_{i}\n" for i in range(500))
    paths = _kernel_tree(tmp_path, kallsyms=zeros)

    report = _collect(paths)

    assert report.kallsyms.hidden
    assert "kptr_restrict=2" in report.kallsyms.detail
    assert any(
        line.startswith("kernel call-site symbols off: kptr_restrict hides ")
        and str(paths.kallsyms) in line
        for line in doctor.degradations(report)
    )


def test_visible_kallsyms_keeps_call_site_symbols(tmp_path: Path) -> None:
    report = _collect(_kernel_tree(tmp_path))

    assert report.kallsyms.usable
    assert not any("call-site symbols" in line for line in doctor.degradations(report))


def test_unreadable_kallsyms_is_named(tmp_path: Path) -> None:
    paths = _kernel_tree(tmp_path)
    paths.kallsyms.unlink()

    found = facts.kallsyms(paths)

    assert not found.readable
    assert "ENOENT" in found.detail


@pytest.mark.parametrize(
    ("lsms", "line"),
    [
        ("lockdown,capability,landlock,bpf", "SELinux AVC denials off: SELinux is not active"),
        ("capability,selinux,bpf", None),
    ],
)
def test_selinux_line_follows_the_active_lsms(tmp_path: Path, lsms: str, line: str | None) -> None:
    report = _collect(_kernel_tree(tmp_path, lsms=lsms))

    found = [entry for entry in doctor.degradations(report) if entry.startswith("SELinux")]

    assert report.lsms.names == tuple(lsms.split(","))
    assert report.lsms.source.endswith("security/lsm")
    assert [entry.split(" (")[0] for entry in found] == ([line] if line else [])


@pytest.mark.parametrize(
    ("pid", "boot", "lines"),
    [
        (0, None, ["also reach the kernel log"]),
        (0, "1", ["also reach the kernel log", "booted with audit=1"]),
        (0, "0", ["also reach the kernel log"]),
        (4242, "1", []),  # a registered daemon (Linux auditd) takes the records
    ],
)
def test_the_kernel_log_cost_of_never_registering_is_named(
    tmp_path: Path, pid: int, boot: str | None, lines: list[str]
) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cmdline").write_text(
        "root=/dev/vda quiet" + (f" audit={boot}" if boot else "") + "\n"
    )
    assert facts.audit_boot_option(KernelPaths(proc=tmp_path / "proc")) == boot
    report = dataclasses.replace(
        _collect(_kernel_tree(tmp_path / "tree")),
        audit=netlink.AuditNetlink(1, pid, "audit enabled", True, "joined"),
        audit_boot=boot,
    )
    found = [line for line in doctor.degradations(report) if line.startswith(("audit", "booted"))]
    assert [next((w for w in lines if w in line), line) for line in found] == lines


def test_cgroup2_mount_point_comes_from_mountinfo(tmp_path: Path) -> None:
    paths = _kernel_tree(tmp_path)

    assert cgroup2_mount(paths).path == Path("/sys/fs/cgroup/uni fied")


def test_no_cgroup2_mount_switches_service_attribution_off(tmp_path: Path) -> None:
    paths = _kernel_tree(tmp_path, mountinfo=MOUNTINFO.splitlines(keepends=True)[0])

    report = _collect(paths)

    assert report.cgroup2.path is None
    assert any(line.startswith("service attribution off") for line in doctor.degradations(report))


def test_no_kprobe_pmu_is_named_without_touching_the_kernel(tmp_path: Path) -> None:
    paths = _kernel_tree(tmp_path)

    probe = features.probe_kprobe(paths)

    assert not probe.available
    assert str(paths.sys / "bus" / "event_source" / "devices" / "kprobe" / "type") in probe.detail


@pytest.mark.parametrize("probe", [features.probe_fentry, features.probe_bpf_lsm])
def test_btf_probes_without_btf_say_so(
    tmp_path: Path, probe: Callable[[KernelPaths], features.Probe]
) -> None:
    paths = _kernel_tree(tmp_path)

    result = probe(paths)

    assert not result.available
    assert result.detail == f"no BTF at {paths.btf}"


def test_json_keys_are_the_documented_ones(tmp_path: Path) -> None:
    report = _collect(_kernel_tree(tmp_path))

    data = json.loads(json.dumps(doctor.as_json(report)))

    assert set(data) == DOCUMENTED_KEYS
    assert doctor.as_json.__doc__ is not None
    for key in DOCUMENTED_KEYS:
        assert f"``{key}``" in doctor.as_json.__doc__, key
    assert data["bcc"]["compile"] is None
    names = [check["name"] for check in data["checks"]]
    assert names[1 : 1 + len(features.PROBE_NAMES)] == list(features.PROBE_NAMES)


def test_table_is_aligned_one_row_per_check(tmp_path: Path) -> None:
    report = _collect(_kernel_tree(tmp_path))

    rows = doctor.render_table(report).splitlines()

    assert len(rows) == 1 + len(doctor.checks(report))
    status_column = rows[0].index("status")
    detail_column = rows[0].index("detail")
    for row, check in zip(rows[1:], doctor.checks(report), strict=True):
        assert row.startswith(check.name)
        assert row[status_column:].startswith(check.status)
        assert row[detail_column:] == check.detail


def test_main_reports_the_missing_minimum_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _kernel_tree(tmp_path)

    code = doctor.main(paths, as_json=True)

    out, err = capsys.readouterr()
    assert code == 1
    assert json.loads(out)["minimum_missing"] == err.strip()
    assert err.count("\n") == 1
    assert err.startswith("minimum not met: tracepoints unavailable")


@pytest.mark.parametrize(
    ("number", "text"),
    [(1, "EPERM (Operation not permitted)"), (95, "EOPNOTSUPP (Operation not supported)")],
)
def test_errno_text_names_the_errno(number: int, text: str) -> None:
    assert errno_text(number) == text


def test_kernel_hz_from_the_config_then_the_timer_list(tmp_path: Path) -> None:
    import gzip

    proc, boot = tmp_path / "proc", tmp_path / "boot"
    proc.mkdir()
    boot.mkdir()
    paths = KernelPaths(proc=proc, boot=boot, release=RELEASE)
    assert not facts.kernel_hz(paths).known  # nothing to read: assumed, and said why
    assert "timer_list" in facts.kernel_hz(paths).detail
    (boot / f"config-{RELEASE}").write_bytes(b"CONFIG_X=y\nCONFIG_HZ=300\n")
    assert facts.kernel_hz(paths) == facts.Hz(300, str(boot / f"config-{RELEASE}"))
    with gzip.open(proc / "config.gz", "wb") as f:
        f.write(b"CONFIG_HZ_100=y\nCONFIG_HZ=100\n")
    assert facts.kernel_hz(paths).hz == 100  # the running kernel's own config comes first


@pytest.mark.needs_root
def test_kernel_hz_measured_from_jiffies_agrees_with_the_config(tmp_path: Path) -> None:
    real = facts.kernel_hz(KernelPaths())
    if not real.known or "timer_list" in real.source:
        pytest.skip(f"no kernel config to compare with here ({real.source})")
    (tmp_path / "timer_list").symlink_to("/proc/timer_list")  # and nothing else
    measured = facts.kernel_hz(KernelPaths(proc=tmp_path, boot=tmp_path))
    assert measured.source.startswith(str(tmp_path / "timer_list")), measured
    assert measured.hz == real.hz
