"""ed25519 key files for publishing policies: create them, load them as TUF signers.

Keys are PEM PKCS#8 files (`openssl genpkey -algorithm ed25519` writes the same), optionally
encrypted with a passphrase. Signing uses any `cryptography` (Debian bookworm's 38 included):
securesystemslib 1.6 takes a `cryptography` older than 40 for absent, so its own CryptoSigner
does not work there, and this small signer does. Verification (the daemon) needs no
`cryptography` at all: ed25519 is verified in pure Python. Hence ed25519 only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Key, SecretsHandler, Signature, Signer, SSlibKey


class KeyFileError(Exception):
    """A key file that cannot be used; the message names it and says why."""


def _crypto() -> Any:
    """`cryptography`'s ed25519 and serialization modules, or a one-line error saying what to
    install (only publishing needs them)."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise KeyFileError(
            "publishing needs the `cryptography` package (Debian: apt-get install "
            "python3-cryptography; scripts/setup installs it)"
        ) from exc
    return serialization, ed25519


class Ed25519Signer(Signer):
    """Signs TUF metadata with one ed25519 private key."""

    def __init__(self, private: Any, path: Path) -> None:
        serialization, _ = _crypto()
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        keyval = {"public": raw.hex()}
        self.path = path
        self._private = private
        self._public = SSlibKey(_keyid(keyval), "ed25519", "ed25519", keyval)

    @property
    def public_key(self) -> Key:
        return self._public

    @property
    def keyid(self) -> str:
        return self._public.keyid

    @classmethod
    def from_priv_key_uri(
        cls, priv_key_uri: str, public_key: Key, secrets_handler: SecretsHandler | None = None
    ) -> Ed25519Signer:
        raise NotImplementedError("load key files with signing.load()")

    def sign(self, payload: bytes) -> Signature:
        return Signature(self.keyid, self._private.sign(payload).hex())


def _keyid(keyval: dict[str, str]) -> str:
    """The TUF key id: sha256 of the key's canonical JSON (what securesystemslib computes)."""
    canonical = encode_canonical({"keytype": "ed25519", "scheme": "ed25519", "keyval": keyval})
    assert isinstance(canonical, str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def generate(path: Path, passphrase: bytes | None = None) -> Ed25519Signer:
    """A new key file (mode 0600; never overwritten)."""
    serialization, ed25519 = _crypto()
    private = ed25519.Ed25519PrivateKey.generate()
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: exists; not overwriting a key") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return Ed25519Signer(private, path)


def load(path: Path, passphrase: bytes | None = None) -> Ed25519Signer:
    """The signer of a key file; KeyFileError (one line) when it cannot be used."""
    serialization, ed25519 = _crypto()
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from exc
    encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem
    if encrypted and passphrase is None:
        raise KeyFileError(f"{path}: encrypted key; set BPF_AUDITD_KEY_PASSPHRASE")
    try:
        private = serialization.load_pem_private_key(pem, passphrase if encrypted else None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a usable PEM private key ({exc})") from exc
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an ed25519 key (the only kind hosts verify)")
    return Ed25519Signer(private, path)


def load_all(paths: list[Path], passphrase: bytes | None = None) -> list[Ed25519Signer]:
    """Key files, each path a file or a directory of `*.pem` files."""
    signers: list[Ed25519Signer] = []
    for path in paths:
        files = sorted(path.glob("*.pem")) if path.is_dir() else [path]
        signers += [load(f, passphrase) for f in files]
    return signers
