"""Policy evaluation: events in, a bounded number of alerts out, every repeat accounted for.

A matching event goes through its rule's threshold (N events within a window, per key), then
dedup: the first firing for a dedup key alerts at once; later ones within the cooldown are folded
into one summary alert with their count, sent when the cooldown ends. A rate limit per rule and
service folds whatever exceeds it into one summary per period. Nothing is dropped: every folded
firing is in a later summary's count and in bpf_auditd_alerts_suppressed_total. Pure: the clock
is passed in.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from auditd.model.alert import Alert
from auditd.model.event import Event
from auditd.policy.conditions import (
    MISSING,
    AllOf,
    Condition,
    Equals,
    Field,
    Fields,
    any_of,
    lookup,
)
from auditd.policy.language import Policy, RateLimit, Rule
from exporters.families import Family, counter

SEVERAL_SERVICES = "(several)"

ALERTS = counter(
    "alerts", "Alerts raised, by rule and severity (summaries included).", "rule", "severity"
)
SUPPRESSED = counter(
    "alerts_suppressed",
    "Would-be alerts folded into a summary alert by dedup/cooldown or the rule's rate limit; "
    "the summary's count includes them.",
    "rule",
)
EVICTED = counter(
    "policy_keys_evicted",
    "Keys a rule stopped tracking because it tracked policy.max_keys of them: a dedup key sends "
    "its pending summary first; a threshold key loses its partial count.",
    "rule",
    "state",
)


class AlertCounters:
    """Alert metrics, kept across policy reloads (counters never go back)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.raised: Counter[tuple[str, str]] = Counter()
        self.suppressed: Counter[str] = Counter()
        self.evicted: Counter[tuple[str, str]] = Counter()

    def declared(self) -> list[Family]:
        return [ALERTS, SUPPRESSED, EVICTED]

    def families(self) -> list[Family]:
        with self._lock:
            return [
                ALERTS.with_samples({k: float(n) for k, n in self.raised.items()}),
                SUPPRESSED.with_samples({(k,): float(n) for k, n in self.suppressed.items()}),
                EVICTED.with_samples({k: float(n) for k, n in self.evicted.items()}),
            ]

    def count(self, table: Counter[Any], key: Any, n: int = 1) -> None:
        with self._lock:
            table[key] += n


@dataclass(slots=True)
class Firing:
    """One or more events that together fire a rule (a threshold firing stands for many)."""

    count: int
    first_ns: int
    last_ns: int
    service: str
    kind: str
    event: Fields
    services: set[str] = field(default_factory=set)

    def absorb(self, later: Firing) -> None:
        self.count += later.count
        self.first_ns = min(self.first_ns, later.first_ns)
        self.last_ns = max(self.last_ns, later.last_ns)
        self.kind, self.event = later.kind, later.event  # the summary shows the latest event
        if len(self.services) < 2:  # only "one or several" matters
            self.services.add(later.service)
        self.service = later.service


@dataclass(slots=True)
class _Window:
    entries: deque[tuple[int, float]] = field(default_factory=deque)
    total: float = 0.0


@dataclass(slots=True)
class _Limiter:
    start_ns: int
    sent: int = 0
    overflow: Firing | None = None


@dataclass(slots=True)
class _Dedup:
    until_ns: int
    pending: Firing | None = None


def _hashable(value: object) -> object:
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    return value


def _required_kind(match: Condition) -> str | None:
    """The event kind a condition insists on (`kind: denial` at its top level), if any."""
    for part in match.items if isinstance(match, AllOf) else (match,):
        if isinstance(part, Field) and part.name == "kind" and isinstance(part.value, Equals):
            expected = part.value.expected
            if isinstance(expected, str):
                return expected
    return None


def _key(view: Fields, names: tuple[str, ...]) -> tuple[object, ...]:
    values = (lookup(view, name) for name in names)
    return tuple(None if v is MISSING else _hashable(v) for v in values)


def _weight(fields: Fields, name: str | None) -> float:
    if name is None:
        return 1.0
    value = lookup(fields, name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return 1.0  # an event without the field stands for itself


class _RuleState:
    def __init__(
        self, rule: Rule, policy: Policy, max_keys: int, host: str, counters: AlertCounters
    ) -> None:
        d = policy.defaults
        self.rule = rule
        self.kind = _required_kind(rule.match)
        self.unless = any_of(rule.unless)  # learned allowlists hold thousands: indexed
        self.severity = rule.severity or d.severity
        self.cooldown_ns = int((d.cooldown if rule.cooldown is None else rule.cooldown) * 1e9)
        self.dedup = d.dedup if rule.dedup is None else rule.dedup
        limit: RateLimit = rule.rate_limit or d.rate_limit
        self.limit_alerts = limit.alerts
        self.limit_period_ns = int(limit.per * 1e9)
        self.max_keys = max_keys
        self.host = host
        self.counters = counters
        self.windows: OrderedDict[tuple[object, ...], _Window] = OrderedDict()
        self.keys: OrderedDict[tuple[object, ...], _Dedup] = OrderedDict()
        self.limiters: OrderedDict[str, _Limiter] = OrderedDict()  # per service

    def matches(self, view: Fields) -> bool:
        return self.rule.match.matches(view) and not (
            self.rule.unless and self.unless.matches(view)
        )

    # -- threshold -------------------------------------------------------------------------

    def threshold(self, view: Fields, fields: Fields, kind: str, t: int) -> Firing | None:
        """`view` is what rules see (the fields plus `kind`); `fields` what the alert shows."""
        service = str(fields.get("service") or "unknown")
        th = self.rule.threshold
        if th is None:
            return Firing(1, t, t, service, kind, fields, {service})
        weight = _weight(view, th.weight)
        if weight <= 0:
            return None
        key = _key(view, th.by)
        window = self.windows.get(key)
        if window is None:
            if len(self.windows) >= self.max_keys:
                self.windows.popitem(last=False)
                self.counters.count(self.counters.evicted, (self.rule.name, "threshold"))
            window = self.windows[key] = _Window()
        else:
            self.windows.move_to_end(key)
        entries = window.entries
        # In time order, whatever the arrival order (a refusal held for its LSM record, or a
        # summary, arrives after later events): the window and first/last seen follow time.
        if not entries or t >= entries[-1][0]:
            entries.append((t, weight))
        else:
            entries.insert(bisect.bisect_right(entries, t, key=lambda e: e[0]), (t, weight))
        window.total += weight
        horizon = entries[-1][0] - int(th.window * 1e9)
        while entries and entries[0][0] <= horizon:
            window.total -= entries.popleft()[1]
        # Only the newest entries that reach `count` matter: this bounds memory under floods.
        while len(entries) > 1 and window.total - entries[0][1] >= th.count:
            window.total -= entries.popleft()[1]
        if window.total < th.count:
            return None
        first, last = entries[0][0], entries[-1][0]
        firing = Firing(int(window.total), first, last, service, kind, fields, {service})
        del self.windows[key]  # the next firing needs `count` new events
        return firing

    # -- dedup and cooldown ----------------------------------------------------------------

    def fire(self, firing: Firing, view: Fields, now: int) -> list[Alert]:
        key = _key(view, self.dedup)
        state = self.keys.get(key)
        if state is not None:
            self.keys.move_to_end(key)
            if now < state.until_ns:
                self._fold_into_pending(state, firing)
                return []
            if state.pending is not None:  # cooldown over, summary not yet sent: send it now
                summary, state.pending = state.pending, None
                summary.absorb(firing)
                state.until_ns = now + self.cooldown_ns
                return self.send(summary, key, now, summary=True)
            state.until_ns = now + self.cooldown_ns
            return self.send(firing, key, now, summary=False)
        out: list[Alert] = []
        if len(self.keys) >= self.max_keys:
            old_key, old = self.keys.popitem(last=False)
            self.counters.count(self.counters.evicted, (self.rule.name, "dedup"))
            if old.pending is not None:
                out += self.send(old.pending, old_key, now, summary=True)
        self.keys[key] = _Dedup(now + self.cooldown_ns)
        return out + self.send(firing, key, now, summary=False)

    def _fold_into_pending(self, state: _Dedup, firing: Firing) -> None:
        self.counters.count(self.counters.suppressed, self.rule.name)
        if state.pending is None:
            state.pending = firing
        else:
            state.pending.absorb(firing)

    # -- rate limit (per service: one service's flood never delays another's alerts) -----

    def send(
        self, firing: Firing, key: tuple[object, ...], now: int, *, summary: bool
    ) -> list[Alert]:
        out: list[Alert] = []
        limiter = self.limiters.get(firing.service)
        if limiter is None:
            if len(self.limiters) >= self.max_keys:
                _, old = self.limiters.popitem(last=False)
                self.counters.count(self.counters.evicted, (self.rule.name, "rate_limit"))
                if old.overflow is not None:
                    out.append(self.alert(old.overflow, None, summary=True))
            limiter = self.limiters[firing.service] = _Limiter(now)
        else:
            self.limiters.move_to_end(firing.service)
            out += self._roll_period(limiter, now)
        if limiter.sent < self.limit_alerts:
            limiter.sent += 1
            return [*out, self.alert(firing, key, summary=summary)]
        self.counters.count(self.counters.suppressed, self.rule.name)
        if limiter.overflow is None:
            limiter.overflow = firing
        else:
            limiter.overflow.absorb(firing)
        return out

    def _roll_period(self, limiter: _Limiter, now: int) -> list[Alert]:
        """Start a new period when the current one is over; the last period's overflow
        summary goes out first, outside the limit (one per period)."""
        if now < limiter.start_ns + self.limit_period_ns:
            return []
        out = []
        if limiter.overflow is not None:
            out.append(self.alert(limiter.overflow, None, summary=True))
        limiter.start_ns, limiter.sent, limiter.overflow = now, 0, None
        return out

    # -- time and shutdown -----------------------------------------------------------------

    def tick(self, now: int) -> list[Alert]:
        out: list[Alert] = []
        for key, state in list(self.keys.items()):
            if now < state.until_ns:
                continue
            if state.pending is None:
                del self.keys[key]
                continue
            summary, state.pending = state.pending, None
            state.until_ns = now + self.cooldown_ns  # a flood keeps yielding one per cooldown
            out += self.send(summary, key, now, summary=True)
        for service, limiter in list(self.limiters.items()):
            if now < limiter.start_ns + self.limit_period_ns:
                continue
            if limiter.overflow is None:
                del self.limiters[service]  # idle for a whole period: forget it
            else:
                out += self._roll_period(limiter, now)
        return out

    def flush(self, now: int) -> list[Alert]:
        """Every pending summary, now (shutdown, policy replaced)."""
        out: list[Alert] = []
        for key, state in self.keys.items():
            if state.pending is not None:
                out.append(self.alert(state.pending, key, summary=True))
                state.pending = None
        for limiter in self.limiters.values():
            if limiter.overflow is not None:
                out.append(self.alert(limiter.overflow, None, summary=True))
                limiter.overflow = None
        return out

    def alert(self, firing: Firing, key: tuple[object, ...] | None, *, summary: bool) -> Alert:
        service = firing.service if len(firing.services) <= 1 else SEVERAL_SERVICES
        self.counters.count(self.counters.raised, (self.rule.name, self.severity.value))
        return Alert(
            rule=self.rule.name,
            severity=self.severity,
            service=service,
            description=self.rule.description,
            event_kind=firing.kind,
            event=dict(firing.event),
            count=firing.count,
            first_seen_ns=firing.first_ns,
            last_seen_ns=firing.last_ns,
            host=self.host,
            summary=summary,
            key={} if key is None else dict(zip(self.dedup, _plain(key), strict=True)),
        )


def _plain(key: tuple[object, ...]) -> list[object]:
    return [list(v) if isinstance(v, tuple) else v for v in key]


class PolicyEngine:
    """Evaluates events against one policy. Call `tick()` about once a second for summaries
    whose cooldown ended, and `flush()` before dropping the engine."""

    def __init__(
        self,
        policy: Policy,
        *,
        max_keys: int = 4096,
        clock: Callable[[], int] = time.time_ns,
        host: str,
        counters: AlertCounters | None = None,
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.counters = counters or AlertCounters()
        self._rules = [
            _RuleState(rule, policy, max_keys, host, self.counters) for rule in policy.active_rules
        ]
        # Rules that can match each kind, in policy order: most rules name their kind.
        self._for_kind: dict[str, list[_RuleState]] = {}

    def sizes(self) -> dict[str, int]:
        """The most keys any rule tracks, per kind of state (each at most `max_keys`)."""
        return {
            "windows": max((len(s.windows) for s in self._rules), default=0),
            "keys": max((len(s.keys) for s in self._rules), default=0),
            "limiters": max((len(s.limiters) for s in self._rules), default=0),
        }

    def evaluate(self, event: Event) -> list[Alert]:
        return self.evaluate_fields(event.kind, event.log_fields())

    def evaluate_fields(self, kind: str, fields: Mapping[str, object]) -> list[Alert]:
        view = {**fields, "kind": kind}
        now = self.clock()
        raw_t = fields.get("time_ns")
        t = raw_t if isinstance(raw_t, int) and not isinstance(raw_t, bool) else now
        out: list[Alert] = []
        states = self._for_kind.get(kind)
        if states is None:
            if len(self._for_kind) > 1024:  # kinds come from code, but stay bounded anyway
                self._for_kind.clear()
            states = self._for_kind[kind] = [s for s in self._rules if s.kind in (None, kind)]
        for state in states:
            if not state.matches(view):
                continue
            firing = state.threshold(view, fields, kind, t)
            if firing is not None:
                out += state.fire(firing, view, now)
        return out

    def tick(self) -> list[Alert]:
        now = self.clock()
        return [a for state in self._rules for a in state.tick(now)]

    def flush(self) -> list[Alert]:
        now = self.clock()
        return [a for state in self._rules for a in state.flush(now)]
