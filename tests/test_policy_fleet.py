"""The TUF client of the policy (auditd/policy/fleet) against a real static HTTP server on
loopback and a repository written by the publisher's code: every refusal reason, made the way an
attacker or a broken mirror would make it; rotations; the offline start. No root, no kernel."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _tuf_repo import TARGET, Publisher, StaticServer
from tuf.api.metadata import Metadata, MetaFile, Root

from auditd.policy.fleet.client import TufPolicySource
from auditd.policy.fleet.outcome import CacheError, NoCache, Outcome

POLICY = "version: 1\nrules:\n  - name: {name}\n    match: {{kind: denial}}\n"


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pub = Publisher(tmp / "pub")
        self.server = StaticServer(self.pub.repo_dir).start()
        self.state = tmp / "state"

    def client(self, timeout: float = 5.0) -> TufPolicySource:
        """A client as a (re)started daemon makes it: same state directory."""
        pinned = self.pub.pinned.read_bytes()
        return TufPolicySource(self.server.url, pinned, TARGET, self.state, timeout=timeout)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.server.stop()


@pytest.fixture
def v2(env: Env) -> tuple[Env, TufPolicySource, bytes]:
    """A client that applied v1, then v2."""
    env.pub.add(POLICY.format(name="v1"))
    client = env.client()
    assert applied(update(client)) == ["v1"]
    data = env.pub.add(POLICY.format(name="v2"))
    assert applied(update(client)) == ["v2"]
    return env, client, data


def update(client: TufPolicySource) -> Outcome:
    """One update by a host whose policy in force is the one it saved (as after a start)."""
    saved = client.applied.vouched()
    return client.update(saved.sha256 if saved is not None else None)


def applied(outcome: Outcome) -> list[str]:
    assert outcome.reason is None, outcome
    return [] if outcome.policy is None else [r.name for r in outcome.policy.rules]


def refused(client: TufPolicySource, kept: bytes, reason: str) -> Outcome:
    """An update refused for `reason`, the applied policy unchanged (and still verifying)."""
    out = update(client)
    assert (out.reason, out.policy) == (reason, None), out
    assert client.applied.verified(client._pinned_root, TARGET).policy == kept
    return out


def test_unchanged_target_is_not_downloaded_again(v2: tuple[Env, TufPolicySource, bytes]) -> None:
    env, client, _ = v2
    env.pub.timestamp()
    out = update(client)
    assert (out.reason, out.policy) == (None, None)
    assert out.vouched is not None
    assert out.vouched.targets_version == 3  # init v1, then v1 and v2 added


def test_bad_signature_on_timestamp(v2: tuple[Env, TufPolicySource, bytes]) -> None:
    env, client, data = v2
    env.pub.timestamp()
    env.pub.corrupt_signature("timestamp.json")
    out = refused(client, data, "bad_signature")
    assert "signed by 0/1" in out.detail


def test_bad_signature_on_one_of_two_targets_signatures(
    v2: tuple[Env, TufPolicySource, bytes],
) -> None:
    env, client, data = v2
    env.pub.add(POLICY.format(name="v3"))
    version = env.pub.repo().targets().signed.version
    env.pub.corrupt_signature(f"{version}.targets.json")
    refused(client, data, "bad_signature")


def test_below_threshold(v2: tuple[Env, TufPolicySource, bytes]) -> None:
    """A holder of one targets key (and the online keys) publishes alone."""
    env, client, data = v2
    env.pub.add(POLICY.format(name="v3"), "targets-1", "snapshot-1", "timestamp-1", strict=False)
    out = refused(client, data, "threshold")
    assert "signed by 1/2" in out.detail


def test_signed_by_an_unknown_key_is_below_threshold(
    v2: tuple[Env, TufPolicySource, bytes],
) -> None:
    env, client, data = v2
    timestamp = env.pub.repo().timestamp()
    timestamp.signed.version += 1
    env.pub.key("attacker")
    env.pub.write(timestamp, "attacker")
    refused(client, data, "threshold")


def test_expired_timestamp(v2: tuple[Env, TufPolicySource, bytes]) -> None:
    env, client, data = v2
    env.pub.timestamp(timestamp=-60)
    out = refused(client, data, "expired")
    assert "timestamp.json is expired" in out.detail


def test_freeze_is_refused_once_the_frozen_timestamp_expires(
    v2: tuple[Env, TufPolicySource, bytes],
) -> None:
    env, client, data = v2
    env.pub.timestamp(timestamp=2)
    assert applied(update(client)) == []
    frozen = env.pub.save_metadata("frozen")
    env.pub.timestamp()  # the repository moves on; the client is served the frozen copy
    env.pub.serve_metadata(frozen)
    assert applied(update(client)) == []  # until it expires, a freeze looks like no change
    time.sleep(2.5)
    refused(client, data, "expired")


def test_rollback_to_replayed_metadata(v2: tuple[Env, TufPolicySource, bytes]) -> None:
    env, client, _ = v2
    old = env.pub.save_metadata("v2")
    v3 = env.pub.add(POLICY.format(name="v3"))
    assert applied(update(client)) == ["v3"]
    env.pub.serve_metadata(old)  # every file validly signed, none expired: only older
    out = refused(client, v3, "rollback")
    assert "must be >=" in out.detail


def test_rollback_by_a_snapshot_naming_older_targets(
    v2: tuple[Env, TufPolicySource, bytes],
) -> None:
    env, client, data = v2
    repo = env.pub.repo()
    snap = repo.snapshot()
    snap.signed.version += 1
    snap.signed.meta["targets.json"] = MetaFile(snap.signed.meta["targets.json"].version - 1)
    env.pub.write(snap, "snapshot-1")
    timestamp = repo.timestamp()
    timestamp.signed.version += 1
    timestamp.signed.snapshot_meta = MetaFile(snap.signed.version)
    env.pub.write(timestamp, "timestamp-1")
    refused(client, data, "rollback")


@pytest.mark.parametrize("how", ["same-length", "shorter", "longer"])
def test_tampered_target(v2: tuple[Env, TufPolicySource, bytes], how: str) -> None:
    env, client, data = v2
    v3 = env.pub.add(POLICY.format(name="v3"))
    env.pub.tamper_target(
        {"same-length": v3.replace(b"v3", b"v4"), "shorter": v3[:-3], "longer": v3 + b"#\n"}[how]
    )
    refused(client, data, "target_mismatch")


def test_unreachable(v2: tuple[Env, TufPolicySource, bytes]) -> None:
    env, client, data = v2
    env.server.stop()
    out = refused(client, data, "unreachable")
    assert "Connection refused" in out.detail  # python-tuf's own fetcher says nothing here


def test_http_error_is_unreachable(v2: tuple[Env, TufPolicySource, bytes]) -> None:
    env, client, data = v2
    env.server.mode("500")
    assert "HTTP 500" in refused(client, data, "unreachable").detail


def test_a_dripping_server_is_cut_off_at_the_deadline(
    v2: tuple[Env, TufPolicySource, bytes],
) -> None:
    """One byte every 0.25 s never trips a read timeout; the download deadline does (the
    drip would otherwise take 100 s)."""
    env, _, data = v2
    env.server.mode("drip")
    client = env.client(timeout=2.0)
    started = time.monotonic()
    out = refused(client, data, "unreachable")
    took = time.monotonic() - started
    assert took < 20, took
    assert "not downloaded within 2 s" in out.detail


def test_a_silent_server_is_cut_off_at_the_deadline(env: Env) -> None:
    """Accepts the connection, never answers: one `timeout`, not python-tuf's four (one per
    retry) of 30 s each."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = TufPolicySource(url, env.pub.pinned.read_bytes(), TARGET, env.state, timeout=2)
        started = time.monotonic()
        out = client.update(None)
        took = time.monotonic() - started
    assert out.reason == "unreachable", out
    assert "timed out" in out.detail
    assert took < 10, took


def test_garbage_metadata(v2: tuple[Env, TufPolicySource, bytes]) -> None:
    env, client, data = v2
    env.server.mode("garbage")
    refused(client, data, "invalid_metadata")


def test_missing_target(v2: tuple[Env, TufPolicySource, bytes]) -> None:
    env, _, _ = v2
    pinned = env.pub.pinned.read_bytes()
    other = TufPolicySource(
        env.server.url, pinned, "policies/other.yaml", env.tmp / "other", timeout=5
    )
    assert update(other).reason == "missing_target"


def test_signed_but_not_a_valid_policy(v2: tuple[Env, TufPolicySource, bytes]) -> None:
    env, client, data = v2
    env.pub.add("version: 1\nrules:\n  - name: x\n    matc: {kind: denial}\n")
    out = refused(client, data, "invalid_policy")
    assert f"{env.server.url}/targets/{TARGET} (targets v4):4: rules[0].matc: unknown key" in (
        out.detail
    )


def test_root_and_targets_key_rotation_are_followed(
    v2: tuple[Env, TufPolicySource, bytes],
) -> None:
    env, client, _ = v2
    pub = env.pub
    new_root = pub.key("root-2")
    pub.repo().rotate(
        "root", pub.signers(), add=[new_root.public_key], revoke=[pub.keys["root-1"].keyid]
    )
    new_targets = pub.key("targets-3")
    pub.repo().rotate(
        "targets", pub.signers(), add=[new_targets.public_key], revoke=[pub.keys["targets-2"].keyid]
    )
    out = update(client)  # same policy, re-signed by the new targets keys under root v3
    assert out.reason is None
    assert out.vouched is not None
    assert (out.vouched.root_version, out.policy) == (3, None)
    v3 = pub.add(POLICY.format(name="v3"), "targets-1", "targets-3", "snapshot-1", "timestamp-1")
    assert applied(update(client)) == ["v3"]
    # Root v4 signed only by a key it introduces (not by root v3's key) is refused.
    forged = Metadata[Root].from_bytes(pub.current_root().to_bytes())
    forged.signed.version += 1
    forged.signed.revoke_key(new_root.keyid, "root")
    forged.signed.add_key(pub.key("root-forged").public_key, "root")
    pub.write(forged, "root-forged")
    assert "root was signed by 0/1" in refused(client, v3, "threshold").detail


def test_restart_without_network_starts_with_the_verified_saved_policy(
    v2: tuple[Env, TufPolicySource, bytes],
) -> None:
    env, client, data = v2
    pub = env.pub
    new_root = pub.key("root-2")
    pub.repo().rotate("root", pub.signers(), add=[new_root.public_key],
                      revoke=[pub.keys["root-1"].keyid])  # fmt: skip
    assert update(client).reason is None  # the saved proof now goes through root v2
    env.server.stop()
    restarted = env.client()
    cached = restarted.cached()
    assert [r.name for r in cached.policy.rules] == ["v2"]
    assert (cached.vouched.root_version, cached.expired) == (2, ())
    assert update(restarted).reason == "unreachable"
    # Altered on disk, the saved policy is not used.
    record = json.loads(restarted.applied.path.read_text())
    record["policy"] = base64.b64encode(data + b"# x\n").decode()
    restarted.applied.path.write_text(json.dumps(record))
    with pytest.raises(CacheError, match="LengthOrHashMismatchError"):
        restarted.cached()


def test_saved_policy_with_expired_metadata_is_still_used_and_reported(env: Env) -> None:
    env.pub.add(POLICY.format(name="v1"), targets=2)
    client = env.client()
    assert applied(update(client)) == ["v1"]
    env.server.stop()
    time.sleep(2.5)
    cached = env.client().cached()
    assert [r.name for r in cached.policy.rules] == ["v1"]
    assert len(cached.expired) == 1
    assert cached.expired[0].startswith("targets v2 expired")


def test_a_refused_target_does_not_become_the_saved_policy(
    v2: tuple[Env, TufPolicySource, bytes],
) -> None:
    """python-tuf's cache moves on to targets v3 whose target is then refused; the saved
    policy stays v2, verified against the targets metadata saved with it."""
    env, client, data = v2
    env.pub.add(POLICY.format(name="v3"))
    env.pub.tamper_target(b"version: 1\nrules: []\n")
    refused(client, data, "target_mismatch")
    env.server.stop()
    cached = env.client().cached()
    assert [r.name for r in cached.policy.rules] == ["v2"]


def test_first_start_has_no_saved_policy(env: Env) -> None:
    with pytest.raises(NoCache):
        env.client().cached()


def test_a_saved_policy_of_another_target_is_no_cache(
    v2: tuple[Env, TufPolicySource, bytes],
) -> None:
    """The config now names another target: nothing saved for it (not a damaged copy)."""
    env, _, _ = v2
    pinned = env.pub.pinned.read_bytes()
    other = TufPolicySource(env.server.url, pinned, "policies/other.yaml", env.state, timeout=5)
    with pytest.raises(NoCache, match=r"saved policy is target 'policies/fleet\.yaml'"):
        other.cached()
