"""The struct layouts `advise` walks paths with (task → fs, files, mm; file → path → dentry →
parent … → mount), from the running kernel's BTF as ``-DADV_OFF_*`` cflags.

Only `advise` reads these: the daemon's own plan (`offsets`) stays as it is. Without BTF, or
with a kernel that renamed a field, file tracking is off and `reason` says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from auditd.kernel.btf import Btf, BtfError

# Macro → (struct, member path), each read with bpf_probe_read_kernel at pointer + offset.
FIELDS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType(
    {
        "ADV_OFF_TASK_FS": ("task_struct", "fs"),
        "ADV_OFF_TASK_FILES": ("task_struct", "files"),
        "ADV_OFF_TASK_MM": ("task_struct", "mm"),
        "ADV_OFF_FS_ROOT": ("fs_struct", "root"),
        "ADV_OFF_FS_PWD": ("fs_struct", "pwd"),
        "ADV_OFF_PATH_MNT": ("path", "mnt"),
        "ADV_OFF_PATH_DENTRY": ("path", "dentry"),
        "ADV_OFF_FILES_FDT": ("files_struct", "fdt"),
        "ADV_OFF_FDT_MAX_FDS": ("fdtable", "max_fds"),
        "ADV_OFF_FDT_FD": ("fdtable", "fd"),
        "ADV_OFF_FILE_PATH": ("file", "f_path"),
        "ADV_OFF_FILE_MODE": ("file", "f_mode"),
        "ADV_OFF_FILE_FLAGS": ("file", "f_flags"),
        "ADV_OFF_DENTRY_PARENT": ("dentry", "d_parent"),
        "ADV_OFF_DENTRY_NAME": ("dentry", "d_name.name"),
        "ADV_OFF_DENTRY_INODE": ("dentry", "d_inode"),
        "ADV_OFF_INODE_MODE": ("inode", "i_mode"),
        "ADV_OFF_VFSMOUNT_ROOT": ("vfsmount", "mnt_root"),
        # struct mount embeds the vfsmount a path points to: mount = mnt - offsetof(mnt).
        "ADV_OFF_MOUNT_MNT": ("mount", "mnt"),
        "ADV_OFF_MOUNT_PARENT": ("mount", "mnt_parent"),
        "ADV_OFF_MOUNT_MOUNTPOINT": ("mount", "mnt_mountpoint"),
        "ADV_OFF_MM_EXE_FILE": ("mm_struct", "exe_file"),
    }
)
# Optional, each alone: thread_info.status (TS_COMPAT: a 32-bit syscall is running, when
# thread_info sits in the task), and the credentials an exec ends with (uid, ambient set).
OPTIONAL: Final[Mapping[str, tuple[str, str]]] = MappingProxyType(
    {
        "ADV_OFF_THREAD_STATUS": ("task_struct", "thread_info.status"),
        "ADV_OFF_TASK_CRED": ("task_struct", "cred"),
        "ADV_OFF_CRED_UID": ("cred", "uid.val"),
        "ADV_OFF_CRED_CAP_AMBIENT": ("cred", "cap_ambient"),
    }
)


@dataclass(frozen=True, slots=True)
class FsLayout:
    cflags: tuple[str, ...]
    files: bool  # every field of FIELDS found: file and port tracking can run
    compat: bool  # 32-bit syscalls can be told apart
    creds: bool  # the uid and ambient capabilities after each exec are read
    reason: str = ""  # why files are off


def resolve(btf_path: Path) -> FsLayout:
    """Offsets for the path walk (and the optional reads) from the BTF at `btf_path`."""
    try:
        btf = Btf.load(btf_path)
    except BtfError as exc:
        return FsLayout(
            (), files=False, compat=False, creds=False, reason=f"no file tracking: {exc}"
        )
    flags: list[str] = []
    found = set()
    for macro, (struct_name, member) in OPTIONAL.items():
        try:
            flags.append(f"-D{macro}={btf.offsetof(struct_name, member)}")
            found.add(macro)
        except BtfError:
            continue
    compat = "ADV_OFF_THREAD_STATUS" in found
    creds = {"ADV_OFF_TASK_CRED", "ADV_OFF_CRED_UID", "ADV_OFF_CRED_CAP_AMBIENT"} <= found
    if creds:
        flags.append("-DADV_HAVE_CREDS=1")
    try:
        offsets = {macro: btf.offsetof(s, m) for macro, (s, m) in FIELDS.items()}
    except BtfError as exc:
        return FsLayout(
            tuple(flags),
            files=False,
            compat=compat,
            creds=creds,
            reason=f"no file tracking: kernel BTF lacks a field the path walk reads ({exc})",
        )
    flags.extend(f"-D{macro}={value}" for macro, value in offsets.items())
    return FsLayout(tuple(flags), files=True, compat=compat, creds=creds)
