"""The Linux capabilities the daemon needs, and which of them this process lacks (from CapEff in
/proc/self/status), so a missing one stops start-up with one line that names it.

The list is found by experiment (`setpriv`, see tests/test_capabilities.py) and is
the one systemd/bpf-auditd.service and linuxkit/bpf-auditd.yml grant; a feature that needs
another capability adds it to `required` (with the config that switches the feature on), and
the tests make both deployment files follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from auditd.config.schema import Config
from auditd.kernel.paths import KernelPaths

# Capability numbers, from include/uapi/linux/capability.h.
NUMBERS: Final = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}


@dataclass(frozen=True, slots=True)
class Need:
    """A capability and what for; ``instead`` also satisfies it (the kernel accepts either);
    ``unless`` is the config setting that makes it unneeded, for features one can do without."""

    name: str
    why: str
    instead: tuple[str, ...] = ()
    unless: str = ""

    def describe(self) -> str:
        return f"{self.name} (needed {self.why}{f'; or set {self.unless}' if self.unless else ''})"


# Since Linux 5.8, bpf_capable() and perfmon_capable() also accept CAP_SYS_ADMIN, and before
# 5.8 only CAP_SYS_ADMIN existed for both: it is the fallback, never what we ask for.
BPF: Final = Need("CAP_BPF", "to load BPF programs and create their maps", ("CAP_SYS_ADMIN",))
PERFMON: Final = Need(
    "CAP_PERFMON",
    "to attach tracepoints (perf_event_open) and read memory from BPF programs",
    ("CAP_SYS_ADMIN",),
)

# /proc/kallsyms shows addresses to readers with CAP_SYSLOG (kptr_restrict 1, or 0 with
# perf_event_paranoid > 1); at kptr_restrict 2 to nobody, which `doctor` reports.
SYSLOG: Final = Need(
    "CAP_SYSLOG",
    "to read kernel addresses in /proc/kallsyms (call-site symbols)",
    unless="probes.allocations.enabled: false",
)

# Audit records (Landlock, SELinux causes of denials) come from the read-only multicast group,
# which needs AUDIT_READ; AUDIT_GET (status, the kernel's lost count) and AUDIT_SET (switching
# audit on) need AUDIT_CONTROL. The daemon never registers as the audit daemon.
AUDIT_CONTROL: Final = Need(
    "CAP_AUDIT_CONTROL",
    "to read the audit status and switch audit on",
    unless="probes.denials.audit: false",
)
AUDIT_READ: Final = Need(
    "CAP_AUDIT_READ",
    "to receive audit records (the read-only multicast group)",
    unless="probes.denials.audit: false",
)


def required(config: Config) -> tuple[Need, ...]:
    """What the daemon needs with this config. Every probe needs BPF and PERFMON, allocation
    call sites SYSLOG, audit records AUDIT_CONTROL and AUDIT_READ; nothing else the daemon does
    needs a capability (cgroup walks, BTF, tracefs and kernel headers are readable by uid 0
    without CAP_DAC_*, and the metrics port is above 1024). A feature that needs more adds it
    here, conditioned on its config."""
    needs = [BPF, PERFMON]
    if config.probes.allocations.enabled:
        needs.append(SYSLOG)
    if config.probes.denials.enabled and config.probes.denials.audit:
        needs += [AUDIT_CONTROL, AUDIT_READ]
    return tuple(needs)


def effective(paths: KernelPaths) -> int | None:
    """This process's effective capability mask, or None when /proc does not say."""
    try:
        text = (paths.proc / "self" / "status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            try:
                return int(value.strip(), 16)
            except ValueError:
                return None
    return None


def last_cap(paths: KernelPaths) -> int | None:
    """The highest capability number this kernel knows (CAP_BPF and CAP_PERFMON came in 5.8)."""
    try:
        return int((paths.proc / "sys" / "kernel" / "cap_last_cap").read_text())
    except (OSError, ValueError):
        return None


def missing(needs: Sequence[Need], paths: KernelPaths) -> list[Need] | None:
    """The needs this process does not meet; None when its capabilities cannot be read."""
    mask = effective(paths)
    if mask is None:
        return None
    known = last_cap(paths)
    lacking: dict[str, Need] = {}
    for need in needs:
        if any(mask >> NUMBERS[name] & 1 for name in (need.name, *need.instead)):
            continue
        ask = need
        if known is not None and NUMBERS[need.name] > known and need.instead:
            # A kernel older than the capability: ask for the one it does have.
            ask = Need(need.instead[0], f"{need.why}; this kernel predates {need.name}")
        if ask.name in lacking:  # two needs met by one capability: one entry, both reasons
            ask = Need(ask.name, f"{lacking[ask.name].why} and {ask.why}", unless=ask.unless)
        lacking[ask.name] = ask
    return list(lacking.values())


def describe(lacking: Sequence[Need]) -> str:
    """One line: ``missing capability CAP_BPF (needed to …)``."""
    noun = "capability" if len(lacking) == 1 else "capabilities"
    return f"missing {noun} " + ", ".join(need.describe() for need in lacking)
