"""A TUF repository of policies as its publisher sees it: the files a static HTTP server serves,
written with python-tuf's Metadata API.

    <repo>/metadata/N.root.json       every root version (hosts fetch them in turn); root.json
    <repo>/metadata/N.snapshot.json   consistent snapshots: every file name is immutable, so a
    <repo>/metadata/N.targets.json    CDN or a host refreshing mid-publish never sees a mix
    <repo>/metadata/timestamp.json    the only file replaced, atomically and last
    <repo>/targets/<dir>/<sha256>.<name>   the policies, named by their hash

Keys are never in the repository. Every signature is checked against the role's threshold
before anything is written (`strict`; tests turn it off to play the attacker).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
DAY = 86400.0
# Default lifetimes. They set the jobs: the timestamp key re-signs daily (online, a cron job),
# snapshot weekly; targets holders re-sign within 90 days, root holders within a year.
LIFETIMES = {Root.type: 365 * DAY, Targets.type: 90 * DAY, Snapshot.type: 7 * DAY,
             Timestamp.type: DAY}  # fmt: skip


class PublishError(Exception):
    """The repository cannot be written as asked; the message is one line for the operator."""


def _expiry(seconds: float) -> datetime:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # served by a web server running as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Repository:
    def __init__(
        self,
        directory: Path,
        lifetimes: Mapping[str, float] | None = None,
        *,
        strict: bool = True,
    ) -> None:
        self.directory = directory
        self.metadata_dir = directory / "metadata"
        self.targets_dir = directory / "targets"
        self.lifetimes = {**LIFETIMES, **(lifetimes or {})}
        self.strict = strict

    # -- what hosts see now ------------------------------------------------------------------

    def root(self) -> Metadata[Root]:
        versions = [int(p.name.split(".")[0]) for p in self.metadata_dir.glob("*.root.json")]
        if not versions:
            raise PublishError(f"{self.directory}: no repository here (run `init` first)")
        return self._read(Root, f"{max(versions)}.root.json")

    def timestamp(self) -> Metadata[Timestamp]:
        return self._read(Timestamp, "timestamp.json")

    def snapshot(self) -> Metadata[Snapshot]:
        version = self.timestamp().signed.snapshot_meta.version
        return self._read(Snapshot, f"{version}.snapshot.json")

    def targets(self) -> Metadata[Targets]:
        version = self.snapshot().signed.meta["targets.json"].version
        return self._read(Targets, f"{version}.targets.json")

    def _read(self, kind: type[Any], name: str) -> Metadata[Any]:
        path = self.metadata_dir / name
        try:
            md: Metadata[Any] = Metadata.from_file(str(path))
        except (OSError, RepositoryError) as exc:
            raise PublishError(f"{path}: cannot read ({exc})") from exc
        if not isinstance(md.signed, kind):
            raise PublishError(f"{path}: not {kind.type} metadata")
        return md

    # -- publishing --------------------------------------------------------------------------

    def create(
        self, keys: Mapping[str, Sequence[Signer]], thresholds: Mapping[str, int]
    ) -> Metadata[Root]:
        """Root, targets, snapshot and timestamp version 1, each role's keys and threshold."""
        if any(self.metadata_dir.glob("*.json")):
            raise PublishError(f"{self.metadata_dir}: a repository is already there")
        root = Root(expires=_expiry(self.lifetimes[Root.type]), consistent_snapshot=True)
        for role in ROLES:
            if not keys.get(role):
                raise PublishError(f"no key for the {role} role")
            for signer in keys[role]:
                root.add_key(signer.public_key, role)
            threshold = thresholds.get(role, 1)
            if not 1 <= threshold <= len(keys[role]):
                raise PublishError(
                    f"{role} threshold {threshold}: expected 1..{len(keys[role])} (its keys)"
                )
            root.roles[role].threshold = threshold
        signers: list[Signer] = [s for role in ROLES for s in keys[role]]
        root_md = Metadata(root)
        self._sign(root_md, root, signers)
        targets = Metadata(Targets(expires=_expiry(self.lifetimes[Targets.type])))
        self._sign(targets, root, signers)
        snapshot = Metadata(Snapshot(expires=_expiry(self.lifetimes[Snapshot.type])))
        self._sign(snapshot, root, signers)
        self._write(root_md)
        self._write(targets)
        self._write(snapshot)
        timestamp = Metadata(
            Timestamp(
                expires=_expiry(self.lifetimes[Timestamp.type]), snapshot_meta=_meta(snapshot)
            )
        )
        self._sign(timestamp, root, signers)
        self._write(timestamp)
        return root_md

    def add_target(self, name: str, data: bytes, signers: Sequence[Signer]) -> Metadata[Targets]:
        """`data` as target `name`: the file, then targets, snapshot and timestamp metadata.
        Everything is signed (and checked) before the first file is written."""
        root = self.root().signed
        targets = self.targets()
        info = TargetFile.from_data(name, data, ["sha256"])
        targets.signed.targets[name] = info
        self._bump(targets)
        self._sign(targets, root, signers)
        staged = [targets, *self._snapshot_timestamp(root, signers, targets=targets)]
        directory, _, basename = name.rpartition("/")
        _write_atomic(self.targets_dir / directory / f"{info.hashes['sha256']}.{basename}", data)
        self._write(*staged)
        return targets

    def publish(
        self, root: Root, signers: Sequence[Signer], *, snapshot: bool = True
    ) -> Metadata[Timestamp]:
        """A new timestamp (after a new snapshot unless `snapshot` is False): the freshness
        job."""
        staged = self._snapshot_timestamp(root, signers, snapshot=snapshot)
        self._write(*staged)
        timestamp: Metadata[Timestamp] = staged[-1]
        return timestamp

    def _snapshot_timestamp(
        self,
        root: Root,
        signers: Sequence[Signer],
        *,
        targets: Metadata[Targets] | None = None,
        snapshot: bool = True,
    ) -> list[Metadata[Any]]:
        """A new snapshot (naming `targets` when given) and timestamp, signed, not written;
        the timestamp last (it is written last)."""
        staged: list[Metadata[Any]] = []
        timestamp = self.timestamp()
        if snapshot:
            snap = self.snapshot()
            if targets is not None:
                snap.signed.meta["targets.json"] = MetaFile(targets.signed.version)
            self._bump(snap)
            self._sign(snap, root, signers)
            timestamp.signed.snapshot_meta = _meta(snap)
            staged.append(snap)
        self._bump(timestamp)
        self._sign(timestamp, root, signers)
        return [*staged, timestamp]

    def rotate(
        self,
        role: str,
        signers: Sequence[Signer],
        *,
        add: Iterable[Key] = (),
        revoke: Iterable[str] = (),
        threshold: int | None = None,
    ) -> Metadata[Root]:
        """A new root version where `role` gains keys `add`, loses key ids `revoke` and gets
        `threshold`; signed by a threshold of the previous root's root keys and of its own
        (hosts check both). Then the role's own metadata is re-signed with its new keys."""
        old_md = self.root()
        old = old_md.signed
        new_md = Metadata[Root].from_bytes(old_md.to_bytes())
        new = new_md.signed
        new.version += 1
        new.expires = _expiry(self.lifetimes[Root.type])
        for keyid in revoke:
            if keyid not in new.roles[role].keyids:
                raise PublishError(f"key {keyid[:12]} is not a {role} key")
            new.revoke_key(keyid, role)
        for key in add:
            new.add_key(key, role)
        if threshold is not None:
            new.roles[role].threshold = threshold
        count = len(new.roles[role].keyids)
        if not 1 <= new.roles[role].threshold <= count:
            raise PublishError(f"{role} threshold {new.roles[role].threshold} with {count} keys")
        self._sign(new_md, new, signers, previous=old)
        staged: list[Metadata[Any]] = [new_md]
        if role == Targets.type:
            targets = self.targets()
            self._bump(targets)
            self._sign(targets, new, signers)
            staged += [targets, *self._snapshot_timestamp(new, signers, targets=targets)]
        elif role in (Snapshot.type, Timestamp.type):
            staged += self._snapshot_timestamp(new, signers)
        self._write(*staged)  # nothing is written unless every role's keys were there
        return new_md

    # -- signatures and files ----------------------------------------------------------------

    def _bump(self, md: Metadata[Any]) -> None:
        md.signed.version += 1
        md.signed.expires = _expiry(self.lifetimes[md.signed.type])

    def _sign(
        self, md: Metadata[Any], root: Root, signers: Sequence[Signer], previous: Root | None = None
    ) -> None:
        """Sign with every key the role has (for a root, the previous root's root keys too);
        below a threshold, refuse (hosts would)."""
        role = md.signed.type
        wanted = set(root.roles[role].keyids)
        if previous is not None:
            wanted |= set(previous.roles[Root.type].keyids)
        md.signatures.clear()
        for signer in signers:
            if signer.public_key.keyid in wanted and signer.public_key.keyid not in md.signatures:
                md.sign(signer, append=True)
        if not self.strict:
            return
        if previous is not None:
            result = root.get_root_verification_result(previous, md.signed_bytes, md.signatures)
            if not result.verified:
                raise PublishError(
                    f"root v{root.version} would be signed by {len(result.first.signed)}/"
                    f"{result.first.threshold} keys of root v{previous.version} and "
                    f"{len(result.second.signed)}/{result.second.threshold} of its own: give the "
                    "key files of both"
                )
            return
        signed = root.get_verification_result(role, md.signed_bytes, md.signatures)
        if not signed.verified:
            raise PublishError(
                f"{role} would be signed by {len(signed.signed)}/{signed.threshold} of its keys "
                "(hosts would refuse it): give more of its key files"
            )

    def _write(self, *staged: Metadata[Any]) -> None:
        """Versioned files first; `timestamp.json`, the one name hosts poll, replaced last."""
        for md in staged:
            role = md.signed.type
            data = md.to_bytes()
            if role == Timestamp.type:
                _write_atomic(self.metadata_dir / "timestamp.json", data)
                continue
            _write_atomic(self.metadata_dir / f"{md.signed.version}.{role}.json", data)
            if role == Root.type:  # the latest root, for operators to read and pin
                _write_atomic(self.metadata_dir / "root.json", data)


def _meta(snapshot: Metadata[Snapshot]) -> MetaFile:
    """What the timestamp says of the snapshot: version, length and hash (a snapshot altered
    in transit is then refused before it is parsed)."""
    data = snapshot.to_bytes()
    return MetaFile(
        snapshot.signed.version, len(data), {"sha256": hashlib.sha256(data).hexdigest()}
    )
