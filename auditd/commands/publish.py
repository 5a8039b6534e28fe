"""`bpf-auditd policy publish`: keep a TUF repository of policies that hosts update from.

    keygen FILE...                    new ed25519 key files (mode 0600), their key ids
    init REPO --root K --targets K --snapshot K --timestamp K [--threshold ROLE=N]
    add REPO POLICY --name TARGET --key K...      check-policy, then publish it
    timestamp REPO --key K... [--snapshot]        re-sign timestamp (snapshot): the freshness job
    rotate REPO --role ROLE --key K... [--add K] [--revoke KEYID|K] [--threshold N]

Keys (K: a key file, or a directory of `*.pem`) stay with the publisher; hosts get the first
root (`REPO/metadata/1.root.json`) pinned in their config, nothing else.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from auditd.config.schema import TARGET_NAME_EXPECTED, is_target_name
from auditd.model.units import DURATION_EXPECTED, parse_duration

if TYPE_CHECKING:  # imported when a step runs: python-tuf stays out of the other commands
    from securesystemslib.signer import Signer

    from auditd.commands.repository import Repository

PASSPHRASE_VARIABLE = "BPF_AUDITD_KEY_PASSPHRASE"
ROLES = ("root", "targets", "snapshot", "timestamp")


class UsageError(Exception):
    """A refusal of the command's input; one line."""


def add_parser(policy: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`policy publish ...` under the `policy` command."""
    publish = policy.add_parser(
        "publish", help="keep a TUF repository of policies (keys, init, add, re-sign, rotate)"
    )
    sub = publish.add_subparsers(dest="publish_command", required=True, metavar="STEP")
    lifetimes = argparse.ArgumentParser(add_help=False)
    lifetimes.add_argument(
        "--expires",
        type=_lifetime,
        action="append",
        default=[],
        metavar="ROLE=DURATION",
        help="lifetime of the metadata written now (defaults: root 365d, targets 90d, "
        "snapshot 7d, timestamp 1d)",
    )
    keys = argparse.ArgumentParser(add_help=False)
    keys.add_argument(
        "--key",
        type=Path,
        action="append",
        required=True,
        help="a key file, or a directory of *.pem key files, to sign with (repeatable)",
    )

    keygen = sub.add_parser("keygen", help="write new ed25519 key files")
    keygen.add_argument("files", type=Path, nargs="+")

    init = sub.add_parser("init", parents=[lifetimes], help="create a repository")
    init.add_argument("repo", type=Path)
    for role in ROLES:
        init.add_argument(
            f"--{role}", type=Path, action="append", required=True, help=f"{role} key file"
        )
    init.add_argument("--threshold", type=_threshold, action="append", default=[], metavar="ROLE=N")

    add = sub.add_parser("add", parents=[lifetimes, keys], help="check and publish a policy")
    add.add_argument("repo", type=Path)
    add.add_argument("policy", type=Path)
    add.add_argument("--name", required=True, help="target name, e.g. policies/web.yaml")

    stamp = sub.add_parser(
        "timestamp", parents=[lifetimes, keys], help="re-sign timestamp (and snapshot)"
    )
    stamp.add_argument("repo", type=Path)
    stamp.add_argument("--snapshot", action="store_true", help="re-sign snapshot too")

    rotate = sub.add_parser(
        "rotate", parents=[lifetimes, keys], help="change a role's keys in a new root"
    )
    rotate.add_argument("repo", type=Path)
    rotate.add_argument("--role", choices=ROLES, required=True)
    rotate.add_argument("--add", type=Path, action="append", default=[], help="key file to add")
    rotate.add_argument(
        "--revoke", action="append", default=[], help="key id (or its key file) to remove"
    )
    rotate.add_argument("--threshold", type=int)


def _lifetime(text: str) -> tuple[str, float]:
    role, _, duration = text.partition("=")
    if role not in ROLES:
        raise argparse.ArgumentTypeError(f"expected ROLE=DURATION, ROLE one of {', '.join(ROLES)}")
    try:
        seconds = parse_duration(duration)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {DURATION_EXPECTED}, got {duration!r}"
        ) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a lifetime above 0, got {duration!r}")
    return role, seconds


def _threshold(text: str) -> tuple[str, int]:
    role, _, n = text.partition("=")
    if role not in ROLES or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"expected ROLE=N (N >= 1), got {text!r}")
    return role, int(n)


def main(args: argparse.Namespace, passphrase: bytes | None) -> int:
    """Run one step; raises UsageError, PublishError, KeyFileError or ConfigError (the CLI
    turns each into one line and exit code 2)."""
    from auditd.commands import signing
    from auditd.commands.repository import Repository

    step = args.publish_command
    if step == "keygen":
        for path in args.files:
            signer = signing.generate(path, passphrase)
            print(f"{path}: ed25519 key id {signer.keyid}")
        return 0
    repo = Repository(args.repo, dict(args.expires))
    if step == "init":
        keys = {role: signing.load_all(getattr(args, role), passphrase) for role in ROLES}
        repo.create(keys, dict(args.threshold))
        print(f"{args.repo}: repository created; pin {repo.metadata_dir / '1.root.json'} on hosts")
        return 0
    signers: list[Signer] = list(signing.load_all(args.key, passphrase))
    if step == "add":
        return _add(repo, args.policy, args.name, signers)
    if step == "timestamp":
        root = repo.root().signed
        stamp = repo.publish(root, signers, snapshot=args.snapshot)
        print(f"timestamp v{stamp.signed.version}, expires {stamp.signed.expires.isoformat()}")
        return 0
    added = [signing.load(path, passphrase) for path in args.add]
    signers += added
    revoked = [_keyid(text, passphrase) for text in args.revoke]
    new = repo.rotate(
        args.role,
        signers,
        add=[s.public_key for s in added],
        revoke=revoked,
        threshold=args.threshold,
    ).signed
    keyids = sorted(k[:12] for k in new.roles[args.role].keyids)
    print(
        f"root v{new.version}: {args.role} keys {', '.join(keyids)}, "
        f"threshold {new.roles[args.role].threshold}"
    )
    return 0


def _add(repo: Repository, policy: Path, name: str, signers: list[Signer]) -> int:
    from auditd.policy import language

    if not is_target_name(name):
        raise UsageError(f"--name: expected {TARGET_NAME_EXPECTED}, got {name!r}")
    # The check hosts run before applying it: a policy they would refuse is not published.
    checked, _notes = language.load_checked(policy)
    data = policy.read_bytes()
    targets = repo.add_target(name, data, signers)
    info = targets.signed.targets[name]
    print(
        f"{name}: {len(checked.active_rules)} rules, sha256 {info.hashes['sha256'][:12]}, "
        f"targets v{targets.signed.version}, timestamp v{repo.timestamp().signed.version}"
    )
    return 0


def _keyid(text: str, passphrase: bytes | None) -> str:
    """A key id given as hex, or the id of a key file."""
    from auditd.commands import signing

    path = Path(text)
    if path.exists():
        return signing.load(path, passphrase).keyid
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise UsageError(f"--revoke: expected a key id (64 hex digits) or a key file, got {text!r}")
    return text
