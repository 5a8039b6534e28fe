"""Where probes get kernel struct layouts: the running kernel's BTF, its own headers, or nowhere.

The result is a plan of ``-D`` cflags for ``probes/include/task.h``; a missing layout is reported,
never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

from auditd.kernel.btf import Btf, BtfError

# Macro name -> (struct, member path), each read with bpf_probe_read_kernel at ptr + offset.
FIELDS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType(
    {
        "OFF_TASK_TGID": ("task_struct", "tgid"),
        "OFF_TASK_PID": ("task_struct", "pid"),
        "OFF_TASK_REAL_PARENT": ("task_struct", "real_parent"),
        "OFF_TASK_REAL_CRED": ("task_struct", "real_cred"),
        "OFF_TASK_NSPROXY": ("task_struct", "nsproxy"),
        "OFF_TASK_THREAD_PID": ("task_struct", "thread_pid"),
        # A process's identity beside its pid (pids are reused): its leader's start time.
        "OFF_TASK_GROUP_LEADER": ("task_struct", "group_leader"),
        "OFF_TASK_START_TIME": ("task_struct", "start_time"),
        "OFF_TASK_COMM": ("task_struct", "comm"),
        "OFF_CRED_UID": ("cred", "uid.val"),
        "OFF_CRED_USER_NS": ("cred", "user_ns"),
        "OFF_NSPROXY_UTS_NS": ("nsproxy", "uts_ns"),
        "OFF_NSPROXY_IPC_NS": ("nsproxy", "ipc_ns"),
        "OFF_NSPROXY_MNT_NS": ("nsproxy", "mnt_ns"),
        "OFF_NSPROXY_PID_NS_FOR_CHILDREN": ("nsproxy", "pid_ns_for_children"),
        "OFF_NSPROXY_NET_NS": ("nsproxy", "net_ns"),
        "OFF_NSPROXY_TIME_NS": ("nsproxy", "time_ns"),
        "OFF_NSPROXY_TIME_NS_FOR_CHILDREN": ("nsproxy", "time_ns_for_children"),
        "OFF_NSPROXY_CGROUP_NS": ("nsproxy", "cgroup_ns"),
        # The active pid namespace (what /proc/PID/ns/pid shows) is thread_pid->numbers[level].ns.
        "OFF_PID_LEVEL": ("pid", "level"),
        "OFF_PID_NUMBERS": ("pid", "numbers"),
        "OFF_UPID_NS": ("upid", "ns"),
        "OFF_NS_COMMON_INUM": ("ns_common", "inum"),
        # Every namespace embeds `struct ns_common ns`; its inum is the /proc/PID/ns/* inode number.
        "OFF_UTS_NS_COMMON": ("uts_namespace", "ns"),
        "OFF_IPC_NS_COMMON": ("ipc_namespace", "ns"),
        "OFF_MNT_NS_COMMON": ("mnt_namespace", "ns"),
        "OFF_PID_NS_COMMON": ("pid_namespace", "ns"),
        "OFF_NET_NS_COMMON": ("net", "ns"),
        "OFF_TIME_NS_COMMON": ("time_namespace", "ns"),
        "OFF_CGROUP_NS_COMMON": ("cgroup_namespace", "ns"),
        "OFF_USER_NS_COMMON": ("user_namespace", "ns"),
        # The same, combined, so a probe reads an inode in one step from the namespace pointer.
        "OFF_UTS_NS_INUM": ("uts_namespace", "ns.inum"),
        "OFF_IPC_NS_INUM": ("ipc_namespace", "ns.inum"),
        "OFF_MNT_NS_INUM": ("mnt_namespace", "ns.inum"),
        "OFF_PID_NS_INUM": ("pid_namespace", "ns.inum"),
        "OFF_NET_NS_INUM": ("net", "ns.inum"),
        "OFF_TIME_NS_INUM": ("time_namespace", "ns.inum"),
        "OFF_CGROUP_NS_INUM": ("cgroup_namespace", "ns.inum"),
        "OFF_USER_NS_INUM": ("user_namespace", "ns.inum"),
    }
)
# x86_64 user registers holding syscall arguments 1-6, read at sys_exit through
# bpf_task_pt_regs() on the BTF task pointer: BTF-only, and optional (probes fall back to saving
# arguments at sys_enter when it is off).
PT_REGS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "OFF_PT_REGS_DI": "di",
        "OFF_PT_REGS_SI": "si",
        "OFF_PT_REGS_DX": "dx",
        "OFF_PT_REGS_R10": "r10",
        "OFF_PT_REGS_R8": "r8",
        "OFF_PT_REGS_R9": "r9",
        # The syscall number, for hooks outside syscall tracepoints (capability checks, signals).
        "OFF_PT_REGS_ORIG_AX": "orig_ax",
    }
)
# Optional fields, grouped by switch: each found one adds its OFF_* constant, the switch is
# `-D<switch>=1` when every field of its group is found (else 0), and only the feature that
# needs it degrades when a kernel lacks it.
OPTIONAL: Final[Mapping[str, tuple[str, str, str]]] = MappingProxyType(
    {
        # Whether a task runs under a seccomp filter (mode 2): tells seccomp refusals apart.
        "OFF_TASK_SECCOMP_MODE": ("task_struct", "seccomp.mode", "AUDITD_HAVE_SECCOMP_MODE"),
        # The inode behind a file descriptor (task->files->fdt->fd[n]->f_inode): setns targets.
        "OFF_TASK_FILES": ("task_struct", "files", "AUDITD_HAVE_FILE_READS"),
        "OFF_FILES_FDT": ("files_struct", "fdt", "AUDITD_HAVE_FILE_READS"),
        "OFF_FDTABLE_MAX_FDS": ("fdtable", "max_fds", "AUDITD_HAVE_FILE_READS"),
        "OFF_FDTABLE_FD": ("fdtable", "fd", "AUDITD_HAVE_FILE_READS"),
        "OFF_FILE_INODE": ("file", "f_inode", "AUDITD_HAVE_FILE_READS"),
        "OFF_INODE_INO": ("inode", "i_ino", "AUDITD_HAVE_FILE_READS"),
        "OFF_INODE_SB": ("inode", "i_sb", "AUDITD_HAVE_FILE_READS"),
        "OFF_SB_MAGIC": ("super_block", "s_magic", "AUDITD_HAVE_FILE_READS"),
        # The cgroup id as bpf_get_current_cgroup_id() finds it (task->cgroups->dfl_cgrp->kn
        # ->id), read with plain loads where the verifier types them (AUDITD_BTF_LOADS).
        "OFF_TASK_CGROUPS": ("task_struct", "cgroups", "AUDITD_HAVE_CGROUP_LOADS"),
        "OFF_CSS_SET_DFL_CGRP": ("css_set", "dfl_cgrp", "AUDITD_HAVE_CGROUP_LOADS"),
        "OFF_CGROUP_KN": ("cgroup", "kn", "AUDITD_HAVE_CGROUP_LOADS"),
        "OFF_KERNFS_NODE_ID": ("kernfs_node", "id", "AUDITD_HAVE_CGROUP_LOADS"),
        # The path of a process's executable: mm->exe_file's dentries up to the task's root,
        # across mounts (denials' `exe`).
        "OFF_TASK_MM": ("task_struct", "mm", "AUDITD_HAVE_EXE_WALK"),
        "OFF_TASK_FS": ("task_struct", "fs", "AUDITD_HAVE_EXE_WALK"),
        "OFF_MM_EXE_FILE": ("mm_struct", "exe_file", "AUDITD_HAVE_EXE_WALK"),
        "OFF_FS_ROOT": ("fs_struct", "root", "AUDITD_HAVE_EXE_WALK"),
        "OFF_FILE_PATH": ("file", "f_path", "AUDITD_HAVE_EXE_WALK"),
        "OFF_PATH_MNT": ("path", "mnt", "AUDITD_HAVE_EXE_WALK"),
        "OFF_PATH_DENTRY": ("path", "dentry", "AUDITD_HAVE_EXE_WALK"),
        "OFF_DENTRY_PARENT": ("dentry", "d_parent", "AUDITD_HAVE_EXE_WALK"),
        "OFF_DENTRY_NAME": ("dentry", "d_name.name", "AUDITD_HAVE_EXE_WALK"),
        "OFF_VFSMOUNT_ROOT": ("vfsmount", "mnt_root", "AUDITD_HAVE_EXE_WALK"),
        "OFF_MOUNT_MNT": ("mount", "mnt", "AUDITD_HAVE_EXE_WALK"),
        "OFF_MOUNT_PARENT": ("mount", "mnt_parent", "AUDITD_HAVE_EXE_WALK"),
        "OFF_MOUNT_MOUNTPOINT": ("mount", "mnt_mountpoint", "AUDITD_HAVE_EXE_WALK"),
    }
)
# Macro name -> struct whose size is needed (array strides).
SIZES: Final[Mapping[str, str]] = MappingProxyType({"SIZEOF_UPID": "upid"})

# fs/mount.h is private to the kernel source and absent from every headers package, so with
# headers alone nobody can know where mnt_namespace keeps its inode.
_HEADERS_GAP: Final = (
    "struct mnt_namespace is private to the kernel source (fs/mount.h), not in the headers: "
    "mount namespace inodes read as 0"
)

Source = Literal["btf", "headers", "none"]


@dataclass(frozen=True, slots=True)
class OffsetPlan:
    """How probes read kernel structs: ``cflags`` go to ``BPF(cflags=...)`` as they are."""

    source: Source
    offsets: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    cflags: tuple[str, ...] = ()
    reason: str = ""  # why struct reads are (partly) off; empty when everything is available

    @property
    def struct_reads(self) -> bool:
        return self.source != "none"


def resolve(btf_path: Path, *, headers_match: bool) -> OffsetPlan:
    """Plan struct reads: BTF when it exists, headers only when they are this kernel's own.

    ``headers_match`` says the headers BCC compiles against belong to the running kernel (the
    caller knows how it installed them); mismatched headers give wrong layouts, so they are
    never used.
    """
    btf_problem = ""
    if btf_path.exists():
        try:
            return _from_btf(Btf.load(btf_path))
        except BtfError as exc:
            btf_problem = str(exc)
    else:
        btf_problem = f"no kernel BTF at {btf_path}"
    if headers_match:
        return OffsetPlan(
            source="headers",
            cflags=("-DAUDITD_STRUCT_READS=1", "-DAUDITD_OFFSETS_FROM_HEADERS"),
            reason=_HEADERS_GAP,
        )
    return _none(f"{btf_problem}, and the kernel headers are not the running kernel's own")


def _from_btf(btf: Btf) -> OffsetPlan:
    offsets: dict[str, int] = {}
    try:
        for macro, (struct_name, member_path) in FIELDS.items():
            offsets[macro] = btf.offsetof(struct_name, member_path)
        for macro, struct_name in SIZES.items():
            offsets[macro] = btf.sizeof(struct_name)
    except BtfError as exc:
        # A kernel that renamed or dropped a field: switch reads off rather than read garbage.
        return _none(f"kernel BTF lacks a field probes read ({exc})")
    try:
        regs = {macro: btf.offsetof("pt_regs", reg) for macro, reg in PT_REGS.items()}
    except BtfError:  # another architecture's pt_regs: probes save arguments at entry instead
        regs = {}
    offsets.update(regs)
    found: dict[str, bool] = {}
    for macro, (struct_name, member_path, switch) in OPTIONAL.items():
        try:
            offsets[macro] = btf.offsetof(struct_name, member_path)
            found.setdefault(switch, True)
        except BtfError:
            found[switch] = False
    switches = [f"-D{switch}={int(ok)}" for switch, ok in found.items()]
    cflags = (
        *(f"-D{macro}={value}" for macro, value in offsets.items()),
        "-DAUDITD_STRUCT_READS=1",
        f"-DAUDITD_HAVE_TASK_PT_REGS={1 if regs else 0}",
        *switches,
    )
    return OffsetPlan(source="btf", offsets=MappingProxyType(offsets), cflags=cflags)


def _none(why: str) -> OffsetPlan:
    return OffsetPlan(
        source="none",
        cflags=("-DAUDITD_STRUCT_READS=0",),
        reason=f"{why}: namespace, parent and credential fields are switched off",
    )
