"""Advice → files: a systemd drop-in, a LinuxKit `capabilities:` list, an OCI seccomp profile,
a Landlock ruleset (the format `bpf-auditd confine` applies) and YAML with all of it and the
evidence. Each states its observation window and what it does not cover. Pure."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Final

import yaml

from auditd.policy.advice.advice import COVERAGE, OPTIONAL, Advice
from auditd.signals.advice.capabilities import Certainty
from auditd.signals.advice.observation import Evidence

FORMATS: Final = ("systemd", "linuxkit", "oci-seccomp", "landlock", "yaml")
LANDLOCK_FORMAT: Final = "bpf-auditd/landlock-ruleset/v1"
ENOSYS: Final = 38
# RestrictNamespaces= names (systemd.exec(5)); "time" is accepted by systemd 252 too.
SYSTEMD_NAMESPACES: Final = frozenset({"cgroup", "ipc", "net", "mnt", "pid", "user", "uts", "time"})


def when(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9)) if ns else "-"


def window(a: Advice) -> str:
    return f"observed {when(a.started_ns)} to {when(a.ended_ns)} ({a.seconds:.1f} s)"


def file_names(service: str) -> dict[str, str]:
    """Where each format goes under --output, per service (a systemd drop-in directory)."""
    safe = service.replace("/", "_")
    return {
        "systemd": f"{safe}.d/50-bpf-auditd-advice.conf",
        "linuxkit": f"{safe}.linuxkit.yml",
        "oci-seccomp": f"{safe}.seccomp.json",
        "landlock": f"{safe}.landlock.json",
        "yaml": f"{safe}.advice.yaml",
    }


def _comment(lines: list[str]) -> str:
    return "".join(f"# {line}\n" if line else "#\n" for line in lines)


def _header(a: Advice) -> list[str]:
    lines = [
        f"bpf-auditd advice for {a.service} ({', '.join(a.cgroups)})",
        f"{window(a)}: {COVERAGE}.",
    ]
    lines += [f"warning: {p}" for p in a.problems]
    return lines


def _wrap(prefix: str, words: list[str], width: int = 96) -> list[str]:
    lines, line = [], prefix
    for word in words:
        if len(line) + len(word) + 1 > width and line != prefix:
            lines.append(line)
            line = prefix
        line += ("" if line == prefix else " ") + word
    return [*lines, line]


def systemd(a: Advice, known: Callable[[str], bool] | None = None) -> str:
    """A drop-in for the service's unit. `known` says whether this host's libseccomp (through
    which systemd reads names) knows a syscall: unknown ones would be ignored with a warning."""
    notes = _header(a)
    probes = a.certain(Certainty.PROBE)
    unknown = a.certain(Certainty.UNKNOWN)
    if probes:
        notes.append(f"Seen only as no-audit probes, not kept: {' '.join(probes)}")
    if unknown:
        notes.append(f"Checks by callers not known, kept (may be probes): {' '.join(unknown)}")
    allow = [s for s in a.allow if known is None or known(s)]
    if len(allow) < len(a.allow):
        missing = sorted(set(a.allow) - set(allow))
        notes.append(f"Not known to this host's libseccomp, left out: {' '.join(missing)}")
    if a.optional:
        notes.append(f"Made by the C library on its own, optional: {' '.join(a.optional)}")
    if a.enosys:
        notes.append(
            f"Not seen, so refused with EPERM: {' '.join(a.enosys)}; glibc falls back to older "
            "syscalls only on ENOSYS, add them if the service later fails there"
        )
    lines = ["[Service]", "CapabilityBoundingSet="]
    if a.bounding_set:
        lines.append(f"CapabilityBoundingSet={' '.join(a.bounding_set)}")
    if a.ambient:
        lines += ["AmbientCapabilities=", f"AmbientCapabilities={' '.join(a.ambient)}"]
    lines.append("SystemCallFilter=")
    lines += _wrap("SystemCallFilter=", allow)
    lines.append("SystemCallErrorNumber=EPERM")
    restrict = [n for n in a.namespaces if n in SYSTEMD_NAMESPACES]
    if a.setns_any:
        notes.append(
            f"setns(fd, 0) seen {a.setns_any} times: RestrictNamespaces= would refuse it, so "
            "namespaces are not restricted"
        )
    else:
        lines += ["RestrictNamespaces=", f"RestrictNamespaces={' '.join(restrict) or 'yes'}"]
    return _comment(notes) + "\n".join(lines) + "\n"


def linuxkit(a: Advice) -> str:
    """The `capabilities:` (and `ambient:`) keys of a LinuxKit service."""
    doc: dict[str, list[str]] = {"capabilities": list(a.bounding_set)}
    if a.ambient:
        doc["ambient"] = list(a.ambient)
    text = yaml.safe_dump(doc, default_flow_style=False, sort_keys=False)
    return _comment(_header(a)) + text


def oci_seccomp(a: Advice) -> dict[str, Any]:
    """An OCI runtime-spec seccomp profile: refuse with EPERM what was not seen."""
    own = [s for s in a.allow if s not in a.optional]
    groups: list[dict[str, Any]] = [
        {"names": own, "action": "SCMP_ACT_ALLOW", "comment": "seen while advising"}
    ]
    if a.optional:
        groups.append(
            {
                "names": list(a.optional),
                "action": "SCMP_ACT_ALLOW",
                "comment": "made by the C library on its own; it runs without them",
            }
        )
    if a.enosys:
        groups.append(
            {
                "names": list(a.enosys),
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": ENOSYS,
                "comment": "not seen; ENOSYS, not EPERM, so glibc falls back to older syscalls",
            }
        )
    return {
        "comment": " ".join(_header(a)),
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": groups,
    }


def landlock(a: Advice) -> dict[str, Any]:
    """The Landlock ruleset `bpf-auditd confine --ruleset` applies (format in the README)."""
    ruleset = a.ruleset
    doc: dict[str, Any] = {
        "format": LANDLOCK_FORMAT,
        "service": a.service,
        "observed": {
            "start": when(a.started_ns),
            "end": when(a.ended_ns),
            "seconds": round(a.seconds, 1),
        },
        "coverage": COVERAGE,
        "min_abi": a.min_abi,
        "fs": [],
        "net": [],
        "notes": [],
    }
    if ruleset is None:
        doc["notes"].append("files were not observed: this ruleset allows nothing")
        return doc
    for rule in ruleset.rules:
        entry: dict[str, Any] = {"path": rule.path, "access": sorted(rule.rights)}
        if rule.uncertain:
            entry["uncertain"] = sorted(rule.uncertain)
        if rule.widened_from:
            entry["widened_from"] = rule.widened_from[:16]
        doc["fs"].append(entry)
    doc["net"] = [{"port": port, "access": list(rights)} for port, rights in ruleset.ports]
    doc["notes"] = list(ruleset.notes)
    if a.unresolved:
        doc["notes"].append(f"{a.unresolved} accesses whose path could not be resolved")
    return doc


def _evidence(e: Evidence) -> dict[str, Any]:
    return {"count": e.count, "first_seen": when(e.first_ns), "last_seen": when(e.last_ns)}


def document(a: Advice) -> dict[str, Any]:
    """Everything, with the evidence: counts, first and last seen."""
    return {
        "service": a.service,
        "cgroups": list(a.cgroups),
        "observed": {
            "start": when(a.started_ns),
            "end": when(a.ended_ns),
            "seconds": round(a.seconds, 1),
        },
        "coverage": COVERAGE,
        "problems": list(a.problems),
        "capabilities": {
            "bounding_set": list(a.bounding_set),
            "ambient": list(a.ambient),
            "ran_as_root": a.root,
            "certain": list(a.certain(Certainty.CERTAIN)),
            "may_be_probes": list(a.certain(Certainty.UNKNOWN)),
            "probes_only": list(a.certain(Certainty.PROBE)),
            "evidence": [
                {
                    "capability": c.capability,
                    "certainty": str(c.certainty),
                    "via": c.via,
                    "call_site": c.call_site,
                    "count": c.count,
                    "first_seen": when(c.first_ns),
                    "last_seen": when(c.last_ns),
                }
                for cap in a.capabilities
                for c in cap.checks
            ],
        },
        "syscalls": {
            "allow": list(a.allow),
            "optional": {s: OPTIONAL[s] for s in a.optional},
            "enosys": list(a.enosys),
            "refused": {u.name: u.refused for u in a.syscalls if u.refused},
            "evidence": {
                u.name: {
                    "calls": u.calls,
                    "refused": u.refused,
                    "first_seen": when(u.first_ns),
                    "last_seen": when(u.last_ns),
                }
                for u in a.syscalls
            },
        },
        "namespaces": {
            "restrict_to": list(a.namespaces),
            "created": dict(a.namespaces_created),
            "joined": dict(a.namespaces_joined),
            "setns_any": a.setns_any,
        },
        "landlock": landlock(a),
        "files": [
            {"path": p, "access": r, **_evidence(e), "why": sorted(e.why)} for p, r, e in a.files
        ],
        "ports": [{"port": p, "access": r, **_evidence(e)} for p, r, e in a.ports],
    }


def render(a: Advice, fmt: str, known: Callable[[str], bool] | None = None) -> str:
    if fmt == "systemd":
        return systemd(a, known)
    if fmt == "linuxkit":
        return linuxkit(a)
    if fmt == "oci-seccomp":
        return json.dumps(oci_seccomp(a), indent=2) + "\n"
    if fmt == "landlock":
        return json.dumps(landlock(a), indent=2) + "\n"
    if fmt == "yaml":
        header = _comment(_header(a))
        return header + yaml.safe_dump(document(a), default_flow_style=False, sort_keys=False)
    raise ValueError(f"unknown format {fmt!r}")
