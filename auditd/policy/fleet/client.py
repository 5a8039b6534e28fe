"""The TUF client of one policy target: refresh the repository's metadata, download the target
when it changed, check it as `check-policy` does, and save it with its proof (`cache`).

Blocking (python-tuf is synchronous): the daemon calls `update()` in a worker thread, one at a
time. Nothing here changes the policy in force; the caller applies what `update()` returns.

State under `<state_dir>/tuf/`: `metadata/` is python-tuf's cache (root history, the last
trusted timestamp, snapshot and targets: what rollback protection compares against),
`applied.json` the policy applied and its proof.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import tuf
from tuf.api import exceptions
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.ngclient import Updater, UpdaterConfig

from auditd.config.yamlfile import ConfigError
from auditd.policy import language
from auditd.policy.fleet.cache import AppliedPolicy
from auditd.policy.fleet.fetcher import DeadlineFetcher
from auditd.policy.fleet.outcome import Cached, CacheError, Outcome, Vouched
from auditd.policy.fleet.refusals import classify, describe
from auditd.policy.language import Policy

# A policy larger than this is refused before it is downloaded (learned policies of busy hosts
# are ~100 KB; the limit only keeps a signed mistake from filling memory).
MAX_POLICY_BYTES = 8 << 20
# Our metadata is a few KB; python-tuf's defaults allow 512 KB roots and 5 MB targets.
_LIMITS = UpdaterConfig(
    max_root_rotations=32,
    max_delegations=1,
    root_max_length=256 << 10,
    timestamp_max_length=16 << 10,
    snapshot_max_length=64 << 10,
    targets_max_length=1 << 20,
    app_user_agent="bpf-auditd",
)

# Text of a policy → the checked policy; raises ConfigError (check-policy's one-line error).
Check = Callable[[bytes, str], Policy]


def check_policy(data: bytes, name: str) -> Policy:
    """What `check-policy` checks, on a target's bytes (`name` locates its errors)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(name, None, "", "not UTF-8 text") from exc
    policy, _notes = language.checked(text, name)
    return policy


def read_pinned_root(path: Path, key: str = "policy.tuf.root") -> bytes:
    """The pinned root metadata's bytes, checked to be a root signed by its own keys; raises
    ConfigError naming `path`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), None, key, f"cannot read: {exc.strerror}") from exc
    try:
        md = Metadata[Root].from_bytes(data)
        md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    except exceptions.RepositoryError as exc:
        raise ConfigError(
            str(path), None, key, f"not a TUF root signed by its own keys ({exc})"
        ) from exc
    return data


class TufPolicySource:
    """One repository, one target, one state directory."""

    def __init__(
        self,
        url: str,
        pinned_root: bytes,
        target: str,
        state_dir: Path,
        *,
        timeout: float,
        check: Check = check_policy,
    ) -> None:
        self.url = url.rstrip("/")
        self.target = target
        self._pinned_root = pinned_root
        self._check = check
        base = state_dir / "tuf"
        self._metadata_dir = base / "metadata"
        self._metadata_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._base = base
        self.applied = AppliedPolicy(base)
        self._fetcher = DeadlineFetcher(
            timeout, user_agent=f"bpf-auditd python-tuf/{tuf.__version__}"
        )

    def abort(self) -> None:
        """Cut the update in progress short (shutdown); later updates fail at once."""
        self._fetcher.abort()

    def cached(self) -> Cached:
        """The last applied policy, verified offline; raises CacheError."""
        saved = self.applied.verified(self._pinned_root, self.target)
        try:
            policy = self._check(saved.policy, self._name(saved.vouched.targets_version))
        except ConfigError as exc:  # a daemon with a stricter checker than the one that saved it
            raise CacheError(str(exc)) from exc
        return Cached(policy, saved.vouched, saved.applied_at, saved.expired)

    def update(self, in_force: str | None) -> Outcome:
        """Refresh, and fetch the target unless its sha256 is `in_force`'s (the policy the
        caller has in force, None if none from here). Refusals are outcomes; an error of our
        own (the state directory) is raised."""
        phase = "metadata"
        try:
            updater = Updater(
                metadata_dir=str(self._metadata_dir),
                metadata_base_url=f"{self.url}/metadata/",
                target_base_url=f"{self.url}/targets/",
                fetcher=self._fetcher,
                config=_LIMITS,
                bootstrap=self._pinned_root,
            )
            updater.refresh()
            info = updater.get_targetinfo(self.target)
            if info is None:
                return Outcome("missing_target", f"the repository lists no {self.target!r}")
            sha256 = info.hashes.get("sha256")
            if sha256 is None:
                return Outcome("invalid_metadata", f"{self.target!r} has no sha256 hash")
            targets, roots = self._trusted()
            vouched = Vouched(
                self.target, sha256, info.length, targets.signed.version, self._root_version(roots)
            )
            if vouched.sha256 == in_force and self._proof_kept(vouched, targets, roots):
                return Outcome(vouched=vouched)
            if info.length > MAX_POLICY_BYTES:
                detail = f"{self.target!r} is {info.length} bytes, above {MAX_POLICY_BYTES}"
                return Outcome("invalid_policy", detail)
            phase = "target"
            data = self._download(updater, info)
        except Exception as exc:  # classify() re-raises what is not a refusal
            trusted = self._trusted_root()
            return Outcome(
                classify(exc, phase, self._fetcher.last_metadata, trusted), describe(exc)
            )
        try:
            policy = self._check(data, self._name(vouched.targets_version))
        except ConfigError as exc:
            return Outcome("invalid_policy", str(exc))
        self.applied.save(vouched, data, targets.to_bytes(), roots)
        return Outcome(vouched=vouched, policy=policy)

    def _proof_kept(self, vouched: Vouched, targets: Metadata[Targets], roots: list[bytes]) -> bool:
        """For the policy in force: whether the saved copy is current, its proof replaced when
        that changed (targets re-signed, root rotated: the offline start verifies it). False
        when the saved copy is not this policy's, or damaged: then it is downloaded again."""
        if self.applied.vouched() == vouched:
            return True
        try:
            policy = self.applied.verified(self._pinned_root, self.target).policy
        except CacheError:
            return False  # the saved copy is damaged: download the target again
        self.applied.save(vouched, policy, targets.to_bytes(), roots)
        return True

    def _download(self, updater: Updater, info: TargetFile) -> bytes:
        """The target's bytes, verified (python-tuf checks length and hashes while writing;
        the bytes read back are checked again, being the ones applied)."""
        with tempfile.TemporaryDirectory(dir=self._base, prefix=".target-") as tmp:
            path = updater.download_target(info, filepath=str(Path(tmp) / "target"))
            data = Path(path).read_bytes()
        info.verify_length_and_hashes(data)
        return data

    def _trusted(self) -> tuple[Metadata[Targets], list[bytes]]:
        """The targets metadata python-tuf now trusts, and the roots after the pinned one."""
        targets = Metadata[Targets].from_file(str(self._metadata_dir / "targets.json"))
        pinned = Metadata[Root].from_bytes(self._pinned_root).signed.version
        current = self._trusted_root().version
        history = self._metadata_dir / "root_history"
        roots = [(history / f"{v}.root.json").read_bytes() for v in range(pinned + 1, current + 1)]
        return targets, roots

    def _trusted_root(self) -> Root:
        try:
            return Metadata[Root].from_file(str(self._metadata_dir / "root.json")).signed
        except (OSError, exceptions.RepositoryError):
            return Metadata[Root].from_bytes(self._pinned_root).signed

    def _root_version(self, roots: list[bytes]) -> int:
        return Metadata[Root].from_bytes(self._pinned_root).signed.version + len(roots)

    def _name(self, targets_version: int) -> str:
        """How errors in the policy name it: its URL and the targets version vouching for it."""
        return f"{self.url}/targets/{self.target} (targets v{targets_version})"
