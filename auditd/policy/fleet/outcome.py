"""What one policy update from the TUF repository did: values only, no TUF import (the daemon's
side reads them without loading python-tuf until a repository is configured)."""

from __future__ import annotations

from dataclasses import dataclass

from auditd.policy.language import Policy

# Why an update was refused: a closed set, the `reason` label of the refusal counter.
REASONS = (
    "bad_signature",  # a signature by an authorized key does not verify
    "threshold",  # too few valid signatures by authorized keys (missing, or by unknown keys)
    "expired",  # metadata past its expiry: a stale repository, or a freeze attack
    "rollback",  # a version below one already trusted
    "target_mismatch",  # the policy's length or hashes differ from what targets metadata says
    "unreachable",  # refused or failed connection, DNS, HTTP error, download deadline
    "invalid_metadata",  # metadata that does not parse, is too large, or differs from its hash
    "missing_target",  # the repository does not list the configured target
    "invalid_policy",  # TUF vouches for it, but it is not a valid policy (check-policy)
    "invalid_cache",  # at start: the saved policy no longer verifies against the pinned root
)


class CacheError(Exception):
    """The saved policy is unreadable or no longer verifies; the message says why."""


class NoCache(CacheError):
    """No policy saved for this target (first start, or the config names another target)."""


@dataclass(frozen=True, slots=True)
class Vouched:
    """The TUF metadata a policy was accepted under."""

    target: str
    sha256: str
    length: int
    targets_version: int
    root_version: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """One update. Refused: `reason` (one of REASONS) and `detail` (one line). Accepted:
    `vouched`, plus the checked `policy` when it differs from the one applied before."""

    reason: str | None = None
    detail: str = ""
    vouched: Vouched | None = None
    policy: Policy | None = None

    @property
    def refused(self) -> bool:
        return self.reason is not None


@dataclass(frozen=True, slots=True)
class Cached:
    """The last applied policy, verified again from the state directory (start-up)."""

    policy: Policy
    vouched: Vouched
    applied_at: str
    # Metadata past its expiry ("targets expired 2025-01-01T00:00:00Z"): reported, not refused.
    expired: tuple[str, ...] = ()
