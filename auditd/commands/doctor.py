"""``bpf-auditd doctor``: what this kernel offers the daemon, found by trying, and which features
are switched off or degraded because of it — each one named with its reason.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditd.audit.netlink import AuditNetlink, audit_netlink
from auditd.kernel.bpf_support import PROBE_NAMES, Probe, probe_all
from auditd.kernel.cgroups import Cgroup2, cgroup2_mount
from auditd.kernel.facts import (
    Bcc,
    Compile,
    Headers,
    Hz,
    Kallsyms,
    Landlock,
    Lsms,
    active_lsms,
    audit_boot_option,
    bcc_binding,
    bcc_compile,
    kallsyms,
    kernel_headers,
    kernel_hz,
    landlock,
)
from auditd.kernel.paths import KernelPaths, find_tracefs, present
from probes import ringbuf

JSON_VERSION = 2


@dataclass(frozen=True, slots=True)
class Report:
    """Everything ``doctor`` found out about one kernel."""

    release: str
    probes: tuple[Probe, ...]  # in PROBE_NAMES order
    btf: Path
    btf_present: bool
    headers: Headers
    bcc: Bcc
    bcc_compile: Compile | None  # None: not tried (switched off, or BCC not importable)
    tracefs: Path | None
    audit: AuditNetlink
    audit_boot: str | None  # `audit=` on the kernel command line
    landlock: Landlock
    cgroup2: Cgroup2
    kallsyms: Kallsyms
    lsms: Lsms
    libbpf: str | None  # why libbpf's ring buffers cannot be used; None when they can
    hz: Hz

    def probe(self, name: str) -> Probe:
        for probe in self.probes:
            if probe.name == name:
                return probe
        raise KeyError(f"no probe named {name!r}; valid names are {', '.join(PROBE_NAMES)}")

    @property
    def struct_reads(self) -> bool:
        """Kernel struct fields can be read: offsets from BTF, or from the kernel's own headers."""
        return self.btf_present or self.headers.matches


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the table."""

    name: str
    ok: bool | None  # None: skipped
    detail: str

    @property
    def status(self) -> str:
        return "skipped" if self.ok is None else "ok" if self.ok else "missing"


def collect(paths: KernelPaths, *, try_bcc_compile: bool = True) -> Report:
    """Ask the kernel: load and attach the feature probes, then read the plain facts."""
    bcc = bcc_binding()
    return Report(
        release=paths.release,
        probes=probe_all(paths),
        btf=paths.btf,
        btf_present=present(paths.btf),
        headers=kernel_headers(paths),
        bcc=bcc,
        bcc_compile=bcc_compile() if try_bcc_compile and bcc.importable else None,
        tracefs=find_tracefs(paths),
        audit=audit_netlink(),
        audit_boot=audit_boot_option(paths),
        landlock=landlock(),
        cgroup2=cgroup2_mount(paths),
        kallsyms=kallsyms(paths),
        lsms=active_lsms(paths),
        libbpf=ringbuf.available(),
        hz=kernel_hz(paths),
    )


def _headers_detail(headers: Headers) -> str:
    if headers.target is None:
        return f"nothing at {headers.build}"
    if headers.release is None:
        return f"{headers.build} -> {headers.target} does not say its release"
    where = f"{headers.build} -> {headers.target} is {headers.release}"
    return where if headers.matches else f"{where}, not the running {headers.running}"


def _struct_detail(report: Report) -> str:
    if report.btf_present:
        return f"from BTF ({report.btf})"
    if report.headers.matches:
        return "from the running kernel's own headers"
    return "off: no BTF and the headers are not the running kernel's"


def _compile_check(report: Report) -> Check:
    if report.bcc_compile is not None:
        return Check("bcc compile", report.bcc_compile.ok, report.bcc_compile.detail)
    why = "not tried" if report.bcc.importable else "BCC is not importable"
    return Check("bcc compile", None, why)


def checks(report: Report) -> tuple[Check, ...]:
    """The table's rows, in a fixed order."""
    headers, lsms = report.headers, report.lsms
    return (
        Check("kernel", True, report.release),
        *(Check(probe.name, probe.available, probe.detail) for probe in report.probes),
        Check(
            "btf", report.btf_present, str(report.btf) if report.btf_present else f"no {report.btf}"
        ),
        # Headers only need to exist for BCC to compile; a mismatch matters for struct layouts,
        # which the next row reports.
        Check("kernel headers", headers.target is not None, _headers_detail(headers)),
        Check("struct offsets", report.struct_reads, _struct_detail(report)),
        Check(
            "kheaders",
            headers.has_kheaders,
            str(headers.kheaders) if headers.has_kheaders else f"no {headers.kheaders}",
        ),
        Check("bcc", report.bcc.importable, report.bcc.detail),
        _compile_check(report),
        Check("libbpf", report.libbpf is None, report.libbpf or f"{ringbuf.LIBRARY} loads"),
        Check("kernel hz", report.hz.known, f"{report.hz.hz} ({report.hz.source})"),
        Check("tracefs", report.tracefs is not None, str(report.tracefs or "not mounted")),
        Check("audit netlink", report.audit.enabled is not None, report.audit.status_detail),
        Check("audit readlog", report.audit.readlog, report.audit.readlog_detail),
        Check("landlock", report.landlock.abi is not None, report.landlock.detail),
        Check("cgroup v2", report.cgroup2.path is not None, report.cgroup2.detail),
        Check("kallsyms", report.kallsyms.usable, report.kallsyms.detail),
        Check(
            "lsms",
            lsms.names is not None,
            f"{','.join(lsms.names)} (from {lsms.source})"
            if lsms.names is not None
            else lsms.source,
        ),
    )


def render_table(report: Report) -> str:
    """An aligned table, one row per check: name, ok/missing/skipped, detail."""
    rows = [("check", "status", "detail"), *((c.name, c.status, c.detail) for c in checks(report))]
    name_width = max(len(row[0]) for row in rows)
    status_width = max(len(row[1]) for row in rows)
    return "\n".join(
        f"{name:<{name_width}}  {status:<{status_width}}  {detail}".rstrip()
        for name, status, detail in rows
    )


def minimum_missing(report: Report) -> str | None:
    """Why the daemon cannot run here, in one line; None when its minimum is met.

    The minimum is tracepoints and ring buffers (and libbpf, which reads them) — and BCC, which
    compiles every probe: a BCC that is not importable, or that was tried and could not compile
    a tracepoint program, is missing the minimum just as surely.
    """
    reasons: list[str] = []
    for name, label in (("tracepoint", "tracepoints"), ("ringbuf", "ring buffers")):
        probe = report.probe(name)
        if not probe.available:
            reasons.append(f"{label} unavailable: {probe.detail}")
    if report.libbpf is not None:
        reasons.append(f"ring buffers unreadable: {report.libbpf}")
    if not report.bcc.importable:
        reasons.append(f"BCC unavailable: {report.bcc.detail}")
    elif report.bcc_compile is not None and not report.bcc_compile.ok:
        reasons.append(f"BCC cannot compile a tracepoint program: {report.bcc_compile.detail}")
    if not reasons:
        return None
    return " ".join(f"minimum not met: {'; '.join(reasons)}".split())


def degradations(report: Report) -> list[str]:
    """One line per feature switched off or degraded here, and why (some are informational)."""
    lines: list[str] = []
    headers = report.headers
    if not report.struct_reads:
        if headers.target is None:
            have = f"no kernel headers at {headers.build}"
        elif headers.release is None:
            have = f"headers at {headers.target} do not say their release"
        else:
            have = (
                f"headers at {headers.target} are {headers.release}, "
                f"not the running {headers.running}"
            )
        lines.append(
            f"struct reads off (namespace inodes, ppid): no BTF at {report.btf} and {have}"
        )

    kallsyms = report.kallsyms
    if kallsyms.hidden:
        lines.append(
            "kernel call-site symbols off: kptr_restrict hides "
            f"{kallsyms.path} addresses ({kallsyms.detail}); they show with "
            "kernel.kptr_restrict<=1 to a reader holding CAP_SYSLOG"
        )
    elif not kallsyms.readable:
        lines.append(f"kernel call-site symbols off: {kallsyms.detail}")

    audit = report.audit
    if audit.enabled is None:
        lines.append(f"audit records off (Landlock, seccomp, AVC): {audit.status_detail}")
    elif not audit.readlog:
        lines.append(f"audit records off (Landlock, seccomp, AVC): {audit.readlog_detail}")
    if report.landlock.abi is None:
        lines.append(f"Landlock denials off: {report.landlock.detail}")
    elif audit.enabled == 0:
        lines.append(
            "Landlock denials off until audit is enabled: it is disabled (enabled=0) and "
            "Landlock writes its records only while audit is enabled (the daemon switches it "
            "on with probes.denials.enable_audit, the default; or auditctl -e 1)"
        )
    if audit.enabled is not None and audit.readlog and not audit.daemon_pid:
        # Informational: the price of never registering as the audit daemon.
        lines.append(
            "audit records also reach the kernel log: no audit daemon is registered (bpf-auditd "
            "never registers), so while audit is enabled the kernel prints them too, "
            "rate-limited (printk_ratelimit, about 10 lines per 5 s); a running Linux auditd "
            "takes them instead"
        )
        if report.audit_boot not in (None, "0"):
            lines.append(
                f"booted with audit={report.audit_boot}: while no audit daemon is registered "
                "the kernel holds records for one, up to its backlog_limit, and counts the rest "
                'as lost (bpf_auditd_events_dropped_total{probe="audit",stage="kernel"})'
            )

    lsms = report.lsms
    if lsms.names is None:
        lines.append(f"SELinux AVC denials may be off: active LSMs {lsms.source}")
    elif "selinux" not in lsms.names:
        lines.append(
            f"SELinux AVC denials off: SELinux is not active (LSMs: {','.join(lsms.names)})"
        )

    if report.cgroup2.path is None:
        lines.append(f"service attribution off (cgroup -> service): {report.cgroup2.detail}")

    tp_btf, loads = report.probe("tp_btf"), report.probe("btf_loads")
    if not tp_btf.available:
        lines.append(
            "tp_btf unavailable: cap_capable builds a trace record on every capability check "
            f"and the allocation hooks are raw tracepoints with helper reads ({tp_btf.detail})"
        )
    if not loads.available:
        lines.append(
            "BTF-typed loads unavailable: the refusal and allocation hooks read kernel structs "
            "with helper calls (slower), and a refusing process's executable is read from "
            "/proc/PID/exe (wrong after an exec, missing once the process is gone or without "
            f"CAP_SYS_PTRACE) ({loads.detail})"
        )
    if not report.hz.known:
        lines.append(
            f"kernel tick rate unknown: assumed HZ={report.hz.hz}, so dedup windows and cause "
            f"ages may be shorter than configured ({report.hz.detail})"
        )

    # Informational: each has a tracepoint fallback, so nothing is lost.
    fallbacks = {
        "raw_tracepoint": "raw tracepoints unavailable: using perf tracepoints",
        "kprobe": "kprobes unavailable: using tracepoints",
        "fentry": "fentry/fexit unavailable: using tracepoints",
        "bpf_lsm": "BPF-LSM unavailable: denials come from tracepoints and audit records",
    }
    for name, line in fallbacks.items():
        probe = report.probe(name)
        if not probe.available:
            lines.append(f"{line} ({probe.detail})")
    return lines


def _report_json(report: Report) -> dict[str, Any]:
    headers, audit = report.headers, report.audit
    compiled = report.bcc_compile
    return {
        "version": JSON_VERSION,
        "kernel": report.release,
        "probes": {p.name: {"available": p.available, "detail": p.detail} for p in report.probes},
        "btf": {"path": str(report.btf), "present": report.btf_present},
        "headers": {
            "path": str(headers.build),
            "target": None if headers.target is None else str(headers.target),
            "release": headers.release,
            "matches_running": headers.matches,
            "kheaders": headers.has_kheaders,
        },
        "bcc": {
            "version": report.bcc.version,
            "detail": report.bcc.detail,
            "compile": None if compiled is None else {"ok": compiled.ok, "detail": compiled.detail},
        },
        "tracefs": None if report.tracefs is None else str(report.tracefs),
        "audit": {
            "enabled": audit.enabled,
            "daemon_pid": audit.daemon_pid,
            "detail": audit.status_detail,
            "readlog": audit.readlog,
            "readlog_detail": audit.readlog_detail,
        },
        "landlock": {"abi": report.landlock.abi, "detail": report.landlock.detail},
        "cgroup2": None if report.cgroup2.path is None else str(report.cgroup2.path),
        "kallsyms": {
            "readable": report.kallsyms.readable,
            "hidden": report.kallsyms.hidden,
            "detail": report.kallsyms.detail,
        },
        "lsms": {
            "active": None if report.lsms.names is None else list(report.lsms.names),
            "source": report.lsms.source,
        },
        "struct_reads": report.struct_reads,
        "libbpf": {"available": report.libbpf is None, "detail": report.libbpf or ""},
        "hz": {"hz": report.hz.hz, "source": report.hz.source},
        "checks": [
            {"name": c.name, "status": c.status, "detail": c.detail} for c in checks(report)
        ],
        "minimum_missing": minimum_missing(report),
        "degradations": degradations(report),
    }


def as_json(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data. Keys are stable; new ones only come with a new ``version``.

    - ``version``: 2
    - ``kernel``: running release
    - ``probes``: {tracepoint, raw_tracepoint, ringbuf, kprobe, fentry, bpf_lsm, tp_btf,
      btf_loads} -> {``available``: bool, ``detail``: str}
    - ``btf``: {``path``, ``present``}
    - ``headers``: {``path`` (modules/<release>/build), ``target`` (resolved, or null),
      ``release`` (the headers' own, or null), ``matches_running``, ``kheaders`` (bool)}
    - ``bcc``: {``version`` (null: not importable), ``detail``,
      ``compile``: {``ok``, ``detail``} or null when not tried}
    - ``tracefs``: path or null
    - ``audit``: {``enabled`` (0/1/2, null: no answer), ``daemon_pid``, ``detail``,
      ``readlog`` (bool), ``readlog_detail``}
    - ``landlock``: {``abi`` (null: unavailable), ``detail``}
    - ``cgroup2``: mount point or null
    - ``kallsyms``: {``readable``, ``hidden`` (kptr_restrict zeroes), ``detail``}
    - ``lsms``: {``active``: [names] or null when unknown, ``source``}
    - ``struct_reads``: bool
    - ``libbpf``: {``available``, ``detail``} (libbpf1's ring buffer API, which reads records)
    - ``hz``: {``hz``, ``source``} (the kernel's tick rate; source "assumed" when unknown)
    - ``checks``: [{``name``, ``status`` (ok/missing/skipped), ``detail``}] — the table's rows
    - ``minimum_missing``: str or null
    - ``degradations``: [str]
    """
    return _report_json(report)


def main(paths: KernelPaths, *, as_json: bool) -> int:
    """Print the table and degradations (or the JSON); 1 when the daemon's minimum is missing."""
    report = collect(paths)
    if as_json:
        print(json.dumps(_report_json(report), indent=2))
    else:
        print(render_table(report))
        lines = degradations(report)
        if lines:
            print("\nswitched off or degraded:")
            print("\n".join(f"  - {line}" for line in lines))
    reason = minimum_missing(report)
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    return 0
