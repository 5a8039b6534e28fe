"""An observed service → the least privilege it worked with: capability bounding set, syscall
allowlist, namespaces, Landlock ruleset, with the evidence behind each. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from auditd.model.landlock import min_abi
from auditd.policy.advice.landlock import Limits, Ruleset, build
from auditd.signals.advice.capabilities import CapabilityCheck, Certainty
from auditd.signals.advice.observation import Evidence, Observation, ServiceObservation, SyscallUse

# Syscalls the C library makes on its own and copes without (measured with glibc 2.36: the
# workload ran with each refused alone). Advised like the others, marked so they can go.
OPTIONAL: Final = MappingProxyType(
    {
        "rseq": "glibc registers restartable sequences per thread; runs without them",
        "set_robust_list": "glibc's robust futex list; needed only by robust mutexes",
        "set_tid_address": "glibc start-up; the returned tid is not needed",
        "prlimit64": "glibc start-up stack limit query; a refusal is tolerated",
        "getrandom": "malloc's heap randomisation at start-up; a refusal is tolerated",
        "brk": "malloc falls back to mmap when brk fails",
        "access": "the dynamic loader's /etc/ld.so.preload check; a refusal means none",
        "close_range": "callers fall back to closing descriptors one by one",
        "clone3": "glibc falls back to clone on ENOSYS (only on ENOSYS)",
        "faccessat2": "glibc falls back to faccessat on ENOSYS (only on ENOSYS)",
        "statx": "callers fall back to newfstatat on ENOSYS (only on ENOSYS)",
    }
)
# Newer syscalls glibc replaces by an older one when they fail with ENOSYS, and only then: a
# profile refusing them with EPERM breaks the fallback (the first thread a service creates
# after advising would fail), so the OCI profile answers these with ENOSYS when not seen.
FALLBACK: Final = ("clone3", "faccessat2", "statx", "close_range")

COVERAGE: Final = (
    "only what the service did while observed is covered: rare paths not exercised while "
    "advising (error handling, reloads, log rotation, first-run set-up) are not"
)


@dataclass(frozen=True, slots=True)
class CapabilityAdvice:
    capability: str
    certainty: Certainty  # the strongest of its checks: certain > unknown > probe
    checks: tuple[CapabilityCheck, ...]


@dataclass(frozen=True, slots=True)
class Advice:
    service: str
    cgroups: tuple[str, ...]
    started_ns: int
    ended_ns: int
    capabilities: tuple[CapabilityAdvice, ...]
    bounding_set: tuple[str, ...]  # certain and unknown: what the service keeps
    ambient: tuple[str, ...]  # of those, the ones its processes had as ambient capabilities
    root: bool  # it ran as uid 0 (bounding set) rather than with ambient capabilities
    syscalls: tuple[SyscallUse, ...]
    allow: tuple[str, ...]  # every syscall seen
    optional: tuple[str, ...]  # of those, the C library's own (OPTIONAL)
    enosys: tuple[str, ...]  # FALLBACK syscalls not seen: refuse them with ENOSYS
    namespaces: tuple[str, ...]  # types created or joined
    namespaces_created: tuple[tuple[str, int], ...]
    namespaces_joined: tuple[tuple[str, int], ...]
    setns_any: int  # setns(fd, 0) calls: RestrictNamespaces= would refuse them
    ruleset: Ruleset | None  # None when files were not observed
    files: tuple[tuple[str, str, Evidence], ...]  # (path, right, evidence)
    ports: tuple[tuple[int, str, Evidence], ...]
    unresolved: int
    problems: tuple[str, ...]

    def certain(self, which: Certainty) -> tuple[str, ...]:
        return tuple(c.capability for c in self.capabilities if c.certainty is which)

    @property
    def seconds(self) -> float:
        return (self.ended_ns - self.started_ns) / 1e9

    @property
    def min_abi(self) -> int:
        rights = {r for rule in self.ruleset.rules for r in rule.rights} if self.ruleset else set()
        rights |= {
            r
            for _, port_rights in (self.ruleset.ports if self.ruleset else ())
            for r in port_rights
        }
        return min_abi(rights)


_RANK = {Certainty.CERTAIN: 2, Certainty.UNKNOWN: 1, Certainty.PROBE: 0}


def _capabilities(seen: ServiceObservation) -> tuple[CapabilityAdvice, ...]:
    by_name: dict[str, list[CapabilityCheck]] = {}
    for check in seen.capabilities:
        by_name.setdefault(check.capability, []).append(check)
    return tuple(
        CapabilityAdvice(
            name,
            max((c.certainty for c in checks), key=_RANK.__getitem__),
            tuple(sorted(checks, key=lambda c: (-_RANK[c.certainty], -c.count))),
        )
        for name, checks in sorted(by_name.items())
    )


def advise(
    seen: ServiceObservation, observation: Observation, limits: Limits | None = None
) -> Advice:
    caps = _capabilities(seen)
    keep = tuple(c.capability for c in caps if c.certainty is not Certainty.PROBE)
    # execve is allowed even when not seen (a service started before advising): a runtime
    # installs the filter, then executes the service.
    used = sorted({name for name, use in seen.syscalls.items() if use.calls} | {"execve"})
    ruleset = None
    if "files" in observation.parts:
        accesses = {key: (e.count, e.uncertain) for key, e in seen.files.items()}
        ruleset = build(accesses, seen.created, list(seen.ports), limits or Limits())
    return Advice(
        service=seen.service,
        cgroups=tuple(sorted(seen.cgroups)),
        started_ns=observation.started_ns,
        ended_ns=observation.ended_ns,
        capabilities=caps,
        bounding_set=keep,
        ambient=tuple(c for c in keep if c in seen.ambient),
        root=seen.execs_root > 0 or not seen.execs_user,
        syscalls=tuple(sorted(seen.syscalls.values(), key=lambda u: u.name)),
        allow=tuple(used),
        optional=tuple(s for s in used if s in OPTIONAL),
        enosys=tuple(s for s in FALLBACK if s not in used),
        namespaces=tuple(sorted(set(seen.namespaces_created) | set(seen.namespaces_joined))),
        namespaces_created=tuple(sorted(seen.namespaces_created.items())),
        namespaces_joined=tuple(sorted(seen.namespaces_joined.items())),
        setns_any=seen.setns_any,
        ruleset=ruleset,
        files=tuple((p, r, e) for (p, r), e in sorted(seen.files.items())),
        ports=tuple((p, r, e) for (p, r), e in sorted(seen.ports.items())),
        unresolved=seen.unresolved,
        problems=observation.problems,
    )
