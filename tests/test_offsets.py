"""auditd.offsets: choosing where layouts come from, and task.h reading right values in-kernel."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from auditd.kernel import offsets
from auditd.kernel.btf import Btf
from auditd.kernel.offsets import FIELDS, OPTIONAL, PT_REGS, SIZES, resolve

VMLINUX = Path("/sys/kernel/btf/vmlinux")
INCLUDE = Path(__file__).resolve().parent.parent / "probes" / "include"

# Order of enum auditd_ns_type in task.h, by their names under /proc/PID/ns/.
NAMESPACES = ("mnt", "pid", "net", "uts", "ipc", "user", "cgroup", "time")
LABELS = (*NAMESPACES, "ppid", "tgid", "uid", "hits")

PROGRAM = r"""
#include "task.h"

BPF_ARRAY(target, u32, 1);
BPF_ARRAY(results, u64, AUDITD_NS_COUNT + 4);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
	u32 key = 0;
	u32 *want = target.lookup(&key);
	void *task = (void *)bpf_get_current_task();
	u64 value;

	if (!want || *want != (u32)(bpf_get_current_pid_tgid() >> 32))
		return 0;
#pragma unroll
	for (int type = 0; type < AUDITD_NS_COUNT; type++) {
		key = type;
		value = auditd_task_ns_inum(task, type);
		results.update(&key, &value);
	}
	key = AUDITD_NS_COUNT;
	value = auditd_task_ppid(task);
	results.update(&key, &value);
	key++;
	value = auditd_task_tgid(task);
	results.update(&key, &value);
	key++;
	value = auditd_task_uid(task);
	results.update(&key, &value);
	key++;
	results.increment(key);
	return 0;
}
"""


# -- choosing the source (pure) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers_match", "source", "cflags"),
    [
        (True, "headers", ("-DAUDITD_STRUCT_READS=1", "-DAUDITD_OFFSETS_FROM_HEADERS")),
        (False, "none", ("-DAUDITD_STRUCT_READS=0",)),
    ],
)
def test_without_btf(tmp_path: Path, headers_match: bool, source: str, cflags: tuple[str]) -> None:
    plan = resolve(tmp_path / "vmlinux", headers_match=headers_match)
    assert (plan.source, plan.cflags, dict(plan.offsets)) == (source, cflags, {})
    assert plan.struct_reads is (source != "none")
    # Either way something is missing, and the plan says what instead of guessing.
    assert plan.reason
    if source == "none":
        assert str(tmp_path / "vmlinux") in plan.reason
        assert "not the running kernel's own" in plan.reason
    else:
        assert "mnt_namespace" in plan.reason


@pytest.mark.parametrize("headers_match", [True, False])
def test_unreadable_btf_is_treated_as_missing(tmp_path: Path, headers_match: bool) -> None:
    bad = tmp_path / "vmlinux"
    bad.write_bytes(b"not btf at all, and long enough for a header")
    plan = resolve(bad, headers_match=headers_match)
    assert plan.source == ("headers" if headers_match else "none")
    if not headers_match:
        assert "not BTF" in plan.reason


def test_plan_is_frozen(tmp_path: Path) -> None:
    plan = resolve(tmp_path / "vmlinux", headers_match=False)
    with pytest.raises(AttributeError):
        plan.source = "btf"  # type: ignore[misc]


@pytest.mark.needs_btf
@pytest.mark.parametrize("headers_match", [True, False])
def test_btf_wins_over_headers(headers_match: bool) -> None:
    plan = resolve(VMLINUX, headers_match=headers_match)
    btf = Btf.load(VMLINUX)
    assert (plan.source, plan.reason) == ("btf", "")
    assert set(plan.offsets) == set(FIELDS) | set(SIZES) | set(PT_REGS) | set(OPTIONAL)
    assert plan.offsets["OFF_PT_REGS_SI"] == btf.offsetof("pt_regs", "si")
    assert "-DAUDITD_HAVE_TASK_PT_REGS=1" in plan.cflags
    assert plan.offsets["OFF_TASK_NSPROXY"] == btf.offsetof("task_struct", "nsproxy")
    assert plan.offsets["OFF_NET_NS_INUM"] == (
        btf.offsetof("net", "ns") + btf.offsetof("ns_common", "inum")
    )
    assert plan.offsets["SIZEOF_UPID"] == btf.sizeof("upid")
    assert f"-DOFF_TASK_NSPROXY={plan.offsets['OFF_TASK_NSPROXY']}" in plan.cflags
    assert "-DAUDITD_STRUCT_READS=1" in plan.cflags
    assert "-DAUDITD_OFFSETS_FROM_HEADERS" not in plan.cflags


@pytest.mark.needs_btf
def test_missing_member_switches_reads_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stands in for a future kernel that renamed a field the probes read.
    monkeypatch.setattr(
        offsets, "FIELDS", {**FIELDS, "OFF_TASK_GONE": ("task_struct", "auditd_gone")}
    )
    plan = resolve(VMLINUX, headers_match=True)
    assert (plan.source, plan.cflags, dict(plan.offsets)) == (
        "none",
        ("-DAUDITD_STRUCT_READS=0",),
        {},
    )
    assert "task_struct" in plan.reason
    assert "auditd_gone" in plan.reason


# -- reading in the kernel (needs BPF) ---------------------------------------------------------


def _compile(cflags: tuple[str, ...]) -> Any:
    from bcc import BPF

    return BPF(text=PROGRAM.encode(), cflags=[*cflags, f"-I{INCLUDE}"])


@pytest.fixture(scope="module")
def btf_probe() -> Iterator[Any]:
    plan = resolve(VMLINUX, headers_match=False)
    assert plan.source == "btf", plan.reason
    bpf = _compile(plan.cflags)
    try:
        yield bpf
    finally:
        bpf.cleanup()


def _trigger(bpf: Any, tgid: int, getppid: Callable[[], object]) -> dict[str, int]:
    """Aim the probe at *tgid*, make it call getppid(), and return what the probe read."""
    results = bpf[b"results"]
    for key in range(len(LABELS)):
        results[results.Key(key)] = results.Leaf(0)
    bpf[b"target"][ctypes.c_int(0)] = ctypes.c_uint32(tgid)
    getppid()
    bpf[b"target"][ctypes.c_int(0)] = ctypes.c_uint32(0)
    return {label: results[results.Key(key)].value for key, label in enumerate(LABELS)}


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {field}")


def _expected(pid: int) -> dict[str, int]:
    """What /proc says, for one getppid() call of *pid* (as the host sees pids and uids)."""
    inodes = [os.stat(f"/proc/{pid}/ns/{ns}").st_ino for ns in NAMESPACES]
    values = [*inodes, _status(pid, "PPid"), pid, _status(pid, "Uid"), 1]
    return dict(zip(LABELS, values, strict=True))


# The child reports its pid as the host sees it: /proc here is still the host's mount, whose
# pid namespace is the host's, even when the child is pid 1 of a new one. It drops to uid 65534
# (when it has no user namespace of its own, where that uid would be unmapped) so uid is tested
# with a value other than 0.
CHILD = """
import os, sys
if sys.argv[1] == "drop":
    os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
print(os.readlink("/proc/self"), flush=True)
sys.stdin.readline()
os.getppid()
print("done", flush=True)
sys.stdin.readline()
"""


@contextmanager
def _unshared_child(flags: list[str], drop: bool) -> Iterator[tuple[int, Callable[[], None]]]:
    """A Python child in new namespaces; yields (its host pid, a function making it getppid)."""
    argv = ["unshare", *flags, sys.executable, "-c", CHILD, "drop" if drop else "keep"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout

        def getppid() -> None:
            stdin.write("go\n")
            stdin.flush()
            assert stdout.readline() == "done\n"

        try:
            yield int(stdout.readline()), getppid
        finally:
            stdin.close()  # the child's last readline() returns, and it exits
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise


@pytest.mark.needs_bpf
@pytest.mark.needs_btf
def test_reads_own_namespaces(btf_probe: Any) -> None:
    got = _trigger(btf_probe, os.getpid(), os.getppid)
    assert got == _expected(os.getpid())
    assert got["ppid"] == os.getppid()


@pytest.mark.needs_bpf
@pytest.mark.needs_btf
@pytest.mark.parametrize(
    ("flags", "unshared"),
    [
        pytest.param(
            ["-m", "-u", "-i", "-n", "-C"],
            {"mnt", "uts", "ipc", "net", "cgroup"},
            id="mnt-uts-ipc-net-cgroup",
        ),
        # pid and time namespaces apply to children, hence -f (the child is unshare's child,
        # and pid 1 at level 1 of its pid namespace: numbers[level] is really exercised).
        pytest.param(
            ["-m", "-u", "-i", "-n", "-C", "-U", "-p", "-T", "-f", "--kill-child"],
            set(NAMESPACES),
            id="all-eight",
        ),
    ],
)
def test_reads_namespaces_of_an_unshared_child(
    btf_probe: Any, flags: list[str], unshared: set[str]
) -> None:
    with _unshared_child(flags, drop="-U" not in flags) as (pid, getppid):
        got = _trigger(btf_probe, pid, getppid)
        expected = _expected(pid)
    assert got == expected
    host = _expected(os.getpid())
    # Without new namespaces, a probe reading the host's values would pass by accident.
    assert {ns for ns in NAMESPACES if got[ns] != host[ns]} == unshared


@pytest.mark.needs_bpf
def test_without_layouts_every_read_is_zero() -> None:
    bpf = _compile(resolve(Path("/nonexistent/vmlinux"), headers_match=False).cflags)
    try:
        got = _trigger(bpf, os.getpid(), os.getppid)
    finally:
        bpf.cleanup()
    assert got == {label: int(label == "hits") for label in LABELS}


@pytest.mark.needs_bpf
def test_headers_mode_compiles() -> None:
    # The headers here are another kernel's, so the values read are wrong by design; this only
    # keeps task.h's offsetof() branch (used with LinuxKit's own headers) compiling.
    bpf = _compile(resolve(Path("/nonexistent/vmlinux"), headers_match=True).cflags)
    try:
        assert _trigger(bpf, os.getpid(), os.getppid)["hits"] == 1
    finally:
        bpf.cleanup()
