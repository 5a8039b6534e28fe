"""Learning a policy: watch what each service does, then write a policy that allows exactly
that and alerts on anything else, as commented YAML meant to be read and edited."""

from __future__ import annotations

import datetime
import math
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from auditd.model.event import Event
from auditd.policy.conditions import MISSING, lookup
from auditd.policy.language import Ignore

# Allowed numbers are the largest seen times this: rates and sizes wobble between runs.
HEADROOM = 2.0
# ... and at least these: small values are mostly noise (one window, sampled estimates).
FLOORS = {
    "allocations_per_s": 1000.0,
    "bytes_per_s": float(1 << 20),
    "page_bytes_per_s": float(1 << 20),
    "outstanding_bytes": float(4 << 20),
}
# Behaviours listed per service and kind; more are counted and named in the file, not listed.
MAX_BEHAVIOURS = 1000
# Services learned per event kind (cgroups are cheap to make: memory stays bounded).
MAX_SERVICES = 1024
# Fields that differ between two runs of the same behaviour: never part of its identity.
VOLATILE = frozenset(
    {
        "time_ns",
        "pid",
        "tid",
        "ppid",
        "uid",
        "gid",
        "comm",
        "exe",
        "cgroup",
        "cgroup_id",
        "service",
        "repeats",
        "summary",
        "count",
        "target_truncated",
        "detail",
    }
)


@dataclass(frozen=True, slots=True)
class Profile:
    """How one event kind becomes `unless` entries of one rule."""

    rule: str
    description: str
    identity: tuple[str, ...] = ()  # fields naming a behaviour, matched exactly
    # Numeric fields, allowed up to the largest seen * HEADROOM (at least FLOORS).
    envelope: tuple[str, ...] = ()
    dedup: tuple[str, ...] = ("service",)


PROFILES: dict[str, Profile] = {
    "denial": Profile(
        "new-denial",
        "A refusal that no service showed while the policy was learned.",
        identity=("source", "syscall", "errno", "target", "cause"),
        dedup=("service", "source", "syscall", "errno", "target"),
    ),
    "namespace_change": Profile(
        "new-namespace-change",
        "A namespace operation that no service showed while the policy was learned.",
        identity=("op", "types", "result", "escape", "target.owner_service"),
        dedup=("service", "op", "types"),
    ),
    "allocation_stats": Profile(
        "allocation-envelope",
        "A service made the kernel allocate beyond what it showed while the policy was learned.",
        envelope=("allocations_per_s", "bytes_per_s", "page_bytes_per_s", "outstanding_bytes"),
    ),
}

Behaviour = tuple[tuple[str, object], ...]


def _frozen(value: object) -> object:
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(sorted((_frozen(v) for v in value), key=repr))
    return value


def _generic_identity(fields: Mapping[str, object]) -> tuple[str, ...]:
    """For kinds without a profile: the text, flag and list fields, which name what happened
    (numbers are mostly ids, sizes and times)."""
    return tuple(
        sorted(
            name
            for name, value in fields.items()
            if name not in VOLATILE and isinstance(value, str | bool | list | tuple)
        )
    )


class Learner:
    """Plugs into `Daemon.evaluate`: records every event's behaviour, raises no alert."""

    def __init__(self) -> None:
        self.events = 0
        self.behaviours: dict[tuple[str, str], Counter[Behaviour]] = defaultdict(Counter)
        self.unlisted: Counter[tuple[str, str]] = Counter()
        self.envelopes: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        self._services_of: Counter[str] = Counter()  # services learned, per kind
        self.unlearned = 0  # events of services beyond MAX_SERVICES of their kind

    def observe(self, event: Event) -> tuple[()]:
        self.observe_fields(event.kind, event.log_fields())
        return ()

    def observe_fields(self, kind: str, fields: Mapping[str, object]) -> None:
        self.events += 1
        slot = (kind, str(fields.get("service") or "unknown"))
        if slot not in self.behaviours and slot not in self.envelopes:
            if self._services_of[kind] >= MAX_SERVICES:
                self.unlearned += 1
                return
            self._services_of[kind] += 1
        profile = PROFILES.get(kind)
        if profile is not None and profile.envelope:
            envelope = self.envelopes[slot]
            for name in profile.envelope:
                value = fields.get(name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    envelope[name] = max(envelope.get(name, 0.0), float(value))
            return
        present = [(n, lookup(fields, n)) for n in (profile.identity if profile else ())]
        behaviour = tuple((n, _frozen(v)) for n, v in present if v is not MISSING) or tuple(
            (n, _frozen(fields[n])) for n in _generic_identity(fields)
        )
        seen = self.behaviours[slot]
        if behaviour in seen or len(seen) < MAX_BEHAVIOURS:
            seen[behaviour] += 1
        else:
            self.unlisted[slot] += 1

    @property
    def services(self) -> set[str]:
        return {s for _, s in [*self.behaviours, *self.envelopes]}

    @property
    def behaviour_count(self) -> int:
        return sum(len(b) for b in self.behaviours.values()) + len(self.envelopes)

    # -- the policy file -------------------------------------------------------------------

    def render(self, *, ignore: Ignore, started_ns: int, ended_ns: int, host: str) -> str:
        start = _iso(started_ns)
        end = _iso(ended_ns)
        kinds = sorted({k for k, _ in [*self.behaviours, *self.envelopes]} | set(PROFILES))
        lines = [
            f"# bpf-auditd policy learned on {_quote(host)} by `bpf-auditd learn`.",
            f"# Observed {start} to {end}: {self.events} events from "
            f"{len(self.services)} services, {self.behaviour_count} behaviours.",
            *(
                [
                    f"# {self.unlearned} events of services beyond the first {MAX_SERVICES} of "
                    "their kind were not learned: they will alert."
                ]
                if self.unlearned
                else []
            ),
            "#",
            "# Each `new-*` rule alerts on events of its kind that no `unless` entry allows; an",
            "# entry is one behaviour a service showed while learning. To allow more, widen an",
            "# entry (a value -> a list of values, `glob:`, `prefix:`, a larger `le:`); to be told",
            "# again, delete it. Check edits with `bpf-auditd check-policy FILE`; use the file",
            "# with `bpf-auditd run --policy FILE` or the config's `policy.file`.",
            "version: 1",
            "",
            "defaults:",
            "  severity: warning",
            "  cooldown: 10m        # repeats of one alert within this are folded into a summary",
            "  dedup: [service]",
            "  rate_limit: {alerts: 30, per: 60s}",
            "",
            "# Copied from the policy in force while learning: these events were not observed.",
            f"ignore: {_ignore(ignore)}",
            "",
            "rules:",
            "  # Not learned: joining the host's namespaces is never a container's normal work.",
            "  - name: host-namespace-join",
            "    description: A contained process joined a namespace of the host.",
            "    severity: critical",
            "    match: {kind: namespace_change, escape: true}",
            "    dedup: [service, op, types]",
        ]
        for kind in kinds:
            lines += ["", *self._rule(kind)]
        return "\n".join(lines) + "\n"

    def _rule(self, kind: str) -> list[str]:
        profile = PROFILES.get(kind) or Profile(
            f"new-{kind.replace('_', '-')}",
            f"A {kind} event that no service showed while the policy was learned.",
        )
        lines = [
            f"  - name: {profile.rule}",
            f"    description: {_quote(profile.description)}",
            f"    match: {{kind: {_quote(kind)}}}",
            f"    dedup: [{', '.join(profile.dedup)}]",
        ]
        entries: list[str] = []
        if profile.envelope:
            for (k, service), envelope in sorted(self.envelopes.items()):
                if k != kind:
                    continue
                allowed = {
                    n: math.ceil(max(v * HEADROOM, FLOORS.get(n, 0.0)))
                    for n, v in sorted(envelope.items())
                }
                seen = ", ".join(f"{n} {_number(v)}" for n, v in sorted(envelope.items()))
                entries.append(f"      # service {_quote(service)}: largest seen {seen or '-'}")
                # `not gt` rather than `le`: a value the event leaves null (e.g. outstanding
                # bytes while untracked) is within the envelope.
                tests = "".join(f", {n}: {{not: {{gt: {v}}}}}" for n, v in allowed.items())
                entries.append(f"      - {{service: {_quote(service)}{tests}}}")
        for (k, service), seen_behaviours in sorted(self.behaviours.items()):
            if k != kind:
                continue
            total = sum(seen_behaviours.values())
            entries.append(
                f"      # service {_quote(service)}: {_count(len(seen_behaviours), 'behaviour')}, "
                f"{_count(total, 'event')}"
            )
            if self.unlisted[k, service]:
                entries.append(
                    f"      # ... and {self.unlisted[k, service]} events of behaviours not "
                    f"listed (learning keeps {MAX_BEHAVIOURS} per service): they will alert"
                )
            for behaviour in sorted(seen_behaviours, key=repr):
                tests = "".join(f", {n}: {_test(v)}" for n, v in behaviour)
                entries.append(f"      - {{service: {_quote(service)}{tests}}}")
        if entries:
            lines += ["    unless:", *entries]
        else:
            lines.append("    unless: []   # nothing seen: every such event alerts")
        return lines


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:.3f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _test(value: object) -> str:
    """An exact test for a learned value: a list-valued field wants exactly that set."""
    if isinstance(value, tuple):
        return "{eq: [" + ", ".join(_scalar(v) for v in value) + "]}"
    return _scalar(value)


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return _quote(str(value))


def _quote(text: str) -> str:
    """A YAML double-quoted scalar that reads back as exactly `text` (paths and names come from
    processes: anything can be in them)."""
    out = ['"']
    for ch in text:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= o <= 0x7E or 0xA0 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD or o >= 0x10000:
            out.append(ch)  # printable for YAML
        elif o <= 0xFF:
            out.append(f"\\x{o:02x}")
        else:
            out.append(f"\\u{o:04x}")
    out.append('"')
    return "".join(out)


def _ignore(ignore: Ignore) -> str:
    parts = []
    for name in ("services", "cgroups", "syscalls", "errnos", "sources"):
        values: Iterable[str] = getattr(ignore, name)
        if values:
            parts.append(f"{name}: [{', '.join(_quote(str(v)) for v in values)}]")
    return "{" + ", ".join(parts) + "}"


def _iso(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).isoformat(timespec="seconds")


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one step: a reader never sees half a policy."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
