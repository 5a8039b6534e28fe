"""The daemon's side of TUF policy delivery: an update every `interval` and on SIGHUP, in a
worker thread; a new policy applied on the loop; refusals counted, logged and alerted once per
reason per episode (until the next successful update); the saved policy applied at start.

Each update runs in a daemon thread of its own, not in asyncio's executor: a download stuck
until its deadline must not hold up the daemon's exit (the executor is joined at exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol, TypeVar

import structlog

from auditd.model.alert import Alert, Severity
from auditd.policy.fleet.outcome import REASONS, Cached, CacheError, NoCache, Outcome, Vouched
from auditd.policy.language import Policy
from exporters.families import Family, counter, gauge

RULE = "policy-update-refused"
RESULTS = ("applied", "unchanged", "refused", "failed")

UPDATES = counter(
    "policy_updates",
    "Policy updates from the TUF repository, by result: applied (a new policy in force), "
    "unchanged, refused (see policy_update_refusals_total), failed (an error of this host).",
    "result",
)
REFUSALS = counter(
    "policy_update_refusals",
    "Policy updates refused, by reason; the policy in force stays.",
    "reason",
)
TARGETS_VERSION = gauge(
    "policy_tuf_targets_version",
    "Version of the TUF targets metadata that vouched for the policy in force (0: none).",
)
ROOT_VERSION = gauge(
    "policy_tuf_root_version",
    "Version of the TUF root metadata the policy in force was verified with.",
)
LAST_SUCCESS = gauge(
    "policy_tuf_last_success_timestamp_seconds",
    "When the repository last answered with valid metadata (0: not since start). A freeze "
    "or an outage shows as this falling behind.",
)

_T = TypeVar("_T")


class Source(Protocol):
    """The TUF client (`client.TufPolicySource`), blocking."""

    url: str
    target: str

    def update(self, in_force: str | None) -> Outcome: ...
    def cached(self) -> Cached: ...
    def abort(self) -> None: ...


# Called on the loop with the new policy and where it came from ("tuf:<url> targets v7").
ApplyPolicy = Callable[[Policy, str], object]
RaiseAlert = Callable[[Alert], None]


class PolicyUpdates:
    """Runs `source` updates; `start_from_cache()` once before the daemon starts."""

    def __init__(
        self,
        source: Source,
        *,
        interval: float,
        host: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.interval = interval
        self.host = host
        self._clock = clock
        self._wake = asyncio.Event()
        self._lock = threading.Lock()
        self._results: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()
        self._in_force: Vouched | None = None
        self._last_success = 0.0
        # Reasons already logged and alerted in this episode (cleared by a success).
        self._episode: set[str] = set()
        self._pending: list[tuple[str, str]] = []  # refusals found before the loop runs
        self._stopping = False
        self.log = structlog.get_logger("bpf-auditd")

    # -- start ---------------------------------------------------------------------------------

    def start_from_cache(self, apply: ApplyPolicy) -> None:
        """Apply the saved policy if it still verifies from the pinned root (no network)."""
        try:
            cached = self.source.cached()
        except NoCache as exc:
            self.log.info(
                "policy_tuf_no_cache", url=self.source.url, target=self.source.target, why=str(exc)
            )
            return
        except CacheError as exc:  # refused like an update: alerted once the sinks run
            self._pending.append(("invalid_cache", str(exc)))
            return
        apply(cached.policy, self._origin(cached.vouched))
        self._in_force = cached.vouched
        self.log.info(
            "policy_tuf_cached",
            target=cached.vouched.target,
            targets_version=cached.vouched.targets_version,
            sha256=cached.vouched.sha256,
            applied_at=cached.applied_at,
            expired=list(cached.expired),
        )

    # -- running -------------------------------------------------------------------------------

    def refresh(self) -> None:
        """SIGHUP: update now."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self.source.abort()

    async def run(self, apply: ApplyPolicy, raise_alert: RaiseAlert) -> None:
        for reason, detail in self._pending:
            self._refused(reason, detail, raise_alert)
        self._pending.clear()
        while not self._stopping:
            self._wake.clear()
            in_force = self._in_force.sha256 if self._in_force is not None else None
            try:
                outcome = await _in_thread(functools.partial(self.source.update, in_force))
            except Exception as exc:  # our own state directory, or a bug: said, not fatal
                self._count(self._results, "failed")
                if "failed" not in self._episode:  # once until an update succeeds
                    self._episode.add("failed")
                    self.log.error("policy_update_failed", error=f"{type(exc).__name__}: {exc}")
            else:
                self._handle(outcome, apply, raise_alert)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    def _handle(self, outcome: Outcome, apply: ApplyPolicy, raise_alert: RaiseAlert) -> None:
        if outcome.reason is not None:
            self._refused(outcome.reason, outcome.detail, raise_alert)
            return
        vouched = outcome.vouched
        assert vouched is not None
        with self._lock:
            self._last_success = self._clock()
        if self._episode:
            self.log.info("policy_update_recovered", after=sorted(self._episode))
            self._episode.clear()
        if outcome.policy is None:
            self._count(self._results, "unchanged")
            with self._lock:
                self._in_force = vouched
            return
        apply(outcome.policy, self._origin(vouched))
        self._count(self._results, "applied")
        with self._lock:
            self._in_force = vouched
        self.log.info(
            "policy_update_applied",
            target=vouched.target,
            targets_version=vouched.targets_version,
            root_version=vouched.root_version,
            sha256=vouched.sha256,
            rules=len(outcome.policy.active_rules),
        )

    def _refused(self, reason: str, detail: str, raise_alert: RaiseAlert) -> None:
        self._count(self._results, "refused")
        self._count(self._refusals, reason)
        if reason in self._episode:
            return
        self._episode.add(reason)
        kept = self._in_force
        self.log.error(
            "policy_update_refused",
            reason=reason,
            detail=detail,
            url=self.source.url,
            target=self.source.target,
            kept_targets_version=kept.targets_version if kept else None,
        )
        raise_alert(self._alert(reason, detail, kept))

    def _alert(self, reason: str, detail: str, kept: Vouched | None) -> Alert:
        now = time.time_ns()
        in_force = (
            {"targets_version": kept.targets_version, "sha256": kept.sha256}
            if kept is not None
            else {"targets_version": 0, "sha256": ""}
        )
        return Alert(
            rule=RULE,
            severity=Severity.CRITICAL,
            service="bpf-auditd",
            description="A policy update from the TUF repository was refused; the policy in "
            "force stays.",
            event_kind="policy_update_refused",
            event={
                "reason": reason,
                "detail": detail,
                "url": self.source.url,
                "target": self.source.target,
                "in_force": in_force,
            },
            count=1,
            first_seen_ns=now,
            last_seen_ns=now,
            host=self.host,
            key={"reason": reason},
        )

    def _origin(self, vouched: Vouched) -> str:
        return f"tuf:{self.source.url} {vouched.target} targets v{vouched.targets_version}"

    def _count(self, table: Counter[str], key: str) -> None:
        with self._lock:
            table[key] += 1

    # -- metrics (scrape thread) ---------------------------------------------------------------

    def declared(self) -> list[Family]:
        return [UPDATES, REFUSALS, TARGETS_VERSION, ROOT_VERSION, LAST_SUCCESS]

    def families(self) -> list[Family]:
        with self._lock:
            results: dict[tuple[str, ...], float] = {(r,): self._results[r] for r in RESULTS}
            refusals: dict[tuple[str, ...], float] = {(r,): self._refusals[r] for r in REASONS}
            in_force, last = self._in_force, self._last_success
        return [
            UPDATES.with_samples(results),
            REFUSALS.with_samples(refusals),
            TARGETS_VERSION.with_samples({(): float(in_force.targets_version if in_force else 0)}),
            ROOT_VERSION.with_samples({(): float(in_force.root_version if in_force else 0)}),
            LAST_SUCCESS.with_samples({(): last}),
        ]


async def _in_thread(fn: Callable[[], _T]) -> _T:
    """`fn()` in a new daemon thread; its result (or exception) handed back to the loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def deliver(result: _T | None, error: BaseException | None) -> None:
        if future.done():  # cancelled: the daemon is stopping
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:  # handed to the loop, raised there
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(deliver, result, error)

    threading.Thread(target=work, name="tuf-update", daemon=True).start()
    return await future
