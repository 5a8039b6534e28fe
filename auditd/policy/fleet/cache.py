"""The last applied policy with the metadata that vouched for it, kept in the state directory so
that a restart without network starts with it, verified again from the pinned root.

python-tuf's own cache cannot serve for this: its `refresh()` needs the network before it
yields anything, and it may run ahead of what was applied (new metadata whose target was then
refused). So one file, `applied.json`, replaced atomically, holds the policy, the exact
targets metadata and the root versions after the pinned one. Verifying it needs no network:
the root chain from the pinned root, the targets signatures against the last root, the
policy's length and hashes against the targets metadata. Expiry is reported, not enforced:
expiry protects against being *served* stale metadata; refusing the saved copy would let
anyone who can cut the network, then wait for a restart, roll every host back to the default.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuf.api import exceptions
from tuf.api.metadata import Metadata, Root, Targets

from auditd.policy.fleet.outcome import CacheError, NoCache, Vouched

FILE_NAME = "applied.json"
# A record larger than this is not ours (policies are KBs; the TUF client bounds its files).
MAX_RECORD_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class Saved:
    vouched: Vouched
    policy: bytes
    applied_at: str
    expired: tuple[str, ...]


class AppliedPolicy:
    """`<directory>/applied.json`: what was applied, and proof of it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME

    def vouched(self) -> Vouched | None:
        """What the record says was applied (unverified: to tell an unchanged target)."""
        try:
            raw = self._raw()
            return _vouched(raw)
        except CacheError:
            return None

    def save(self, vouched: Vouched, policy: bytes, targets: bytes, roots: list[bytes]) -> None:
        """Replace the record in one atomic step (write, fsync, rename)."""
        record = {
            "target": vouched.target,
            "sha256": vouched.sha256,
            "length": vouched.length,
            "targets_version": vouched.targets_version,
            "root_version": vouched.root_version,
            "applied_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "policy": _b64(policy),
            "targets_metadata": _b64(targets),
            "root_metadata": [_b64(r) for r in roots],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{FILE_NAME}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(record).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def verified(self, pinned_root: bytes, target: str) -> Saved:
        """The saved policy, verified without network from `pinned_root`. CacheError if there
        is none for `target` or it does not verify."""
        raw = self._raw()
        vouched = _vouched(raw)
        if vouched.target != target:  # the config names another target now: not an attack
            raise NoCache(f"the saved policy is target {vouched.target!r}, not {target!r}")
        try:
            policy = base64.b64decode(raw["policy"], validate=True)
            targets_md = Metadata[Targets].from_bytes(base64.b64decode(raw["targets_metadata"]))
            roots = [base64.b64decode(r, validate=True) for r in raw["root_metadata"]]
            root = _root_chain(pinned_root, roots)
            if root.version != vouched.root_version:
                raise CacheError(f"root chain ends at v{root.version}, not v{vouched.root_version}")
            root.verify_delegate(Targets.type, targets_md.signed_bytes, targets_md.signatures)
            info = targets_md.signed.targets.get(target)
            if info is None:
                raise CacheError(f"its targets metadata does not list {target!r}")
            info.verify_length_and_hashes(policy)
        except exceptions.RepositoryError as exc:  # signatures, lengths, hashes, JSON
            raise CacheError(f"{type(exc).__name__}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(f"malformed record ({type(exc).__name__}: {exc})") from exc
        if targets_md.signed.version != vouched.targets_version:
            raise CacheError("targets version differs from the record")
        now = datetime.now(UTC)
        expired = tuple(
            f"{name} v{md.version} expired {md.expires.isoformat()}"
            for name, md in (("root", root), ("targets", targets_md.signed))
            if md.is_expired(now)
        )
        return Saved(vouched, policy, str(raw.get("applied_at", "")), expired)

    def _raw(self) -> dict[str, Any]:
        try:
            with self.path.open("rb") as f:
                data = f.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            raise NoCache("no policy saved yet") from None
        except OSError as exc:
            raise CacheError(f"cannot read {self.path}: {exc.strerror}") from exc
        if len(data) > MAX_RECORD_BYTES:
            raise CacheError(f"{self.path} is larger than {MAX_RECORD_BYTES} bytes")
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise CacheError(f"{self.path} is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise CacheError(f"{self.path} is not a JSON object")
        return raw


def _root_chain(pinned: bytes, newer: list[bytes]) -> Root:
    """The last root of the chain, each version signed by a threshold of its predecessor's
    root keys and of its own (as python-tuf updates roots)."""
    md = Metadata[Root].from_bytes(pinned)
    root = md.signed
    root.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    for data in newer:
        new_md = Metadata[Root].from_bytes(data)
        new = new_md.signed
        if new.version != root.version + 1:
            raise CacheError(f"root v{new.version} does not follow v{root.version}")
        root.verify_delegate(Root.type, new_md.signed_bytes, new_md.signatures)
        new.verify_delegate(Root.type, new_md.signed_bytes, new_md.signatures)
        root = new
    return root


def _vouched(raw: dict[str, Any]) -> Vouched:
    try:
        fields = {name: raw[name] for name in Vouched.__slots__}
        vouched = Vouched(**fields)
    except (KeyError, TypeError) as exc:
        raise CacheError(f"malformed record ({type(exc).__name__}: {exc})") from exc
    ints = (vouched.length, vouched.targets_version, vouched.root_version)
    texts = (vouched.target, vouched.sha256)
    if not all(isinstance(v, int) for v in ints) or not all(isinstance(v, str) for v in texts):
        raise CacheError("malformed record (types)")
    return vouched


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
