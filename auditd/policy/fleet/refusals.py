"""python-tuf's exceptions → the refusal reasons of `outcome.REASONS`, with a one-line detail.

Anything that is not a refusal (our own state directory failing, a bug) is re-raised: it must
surface as an error, not be counted as the repository's fault.
"""

from __future__ import annotations

from typing import Any

from tuf.api import exceptions
from tuf.api.metadata import Metadata, Root

MAX_DETAIL = 300


def classify(
    exc: BaseException, phase: str, last_metadata: bytes | None, trusted_root: Root
) -> str:
    """The reason for `exc`, raised while refreshing metadata (`phase` "metadata") or while
    downloading the target ("target")."""
    if isinstance(exc, exceptions.UnsignedMetadataError):
        return "bad_signature" if _has_bad_signature(last_metadata, trusted_root) else "threshold"
    if isinstance(exc, exceptions.ExpiredMetadataError):
        return "expired"
    if isinstance(exc, exceptions.BadVersionNumberError):
        return "rollback"
    if isinstance(
        exc, exceptions.LengthOrHashMismatchError | exceptions.DownloadLengthMismatchError
    ):
        return "target_mismatch" if phase == "target" else "invalid_metadata"
    if isinstance(exc, exceptions.DownloadError):
        return "unreachable"
    if isinstance(exc, exceptions.RepositoryError):  # unparsable, wrong type, bad snapshot meta
        return "invalid_metadata"
    raise exc


def _has_bad_signature(data: bytes | None, trusted_root: Root) -> bool:
    """Whether the metadata python-tuf refused carries a signature by a key its delegator
    authorizes that does not verify. python-tuf says "signed by 0/1 keys" for a forged
    signature and for a missing one alike; an operator needs to know which."""
    if data is None:
        return False
    try:
        md: Metadata[Any] = Metadata.from_bytes(data)
    except exceptions.RepositoryError:
        return False
    role = md.signed.type
    delegators = [trusted_root, md.signed] if isinstance(md.signed, Root) else [trusted_root]
    for delegator in delegators:
        if role not in delegator.roles:
            continue
        result = delegator.get_verification_result(role, md.signed_bytes, md.signatures)
        if any(keyid in md.signatures for keyid in result.unsigned):
            return True
    return False


def describe(exc: BaseException) -> str:
    """One line: the exception's class and message, and its innermost cause when chained."""
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if cause is not exc and str(cause) not in text:
        text += f" (cause: {type(cause).__name__}: {cause})"
    return " ".join(text.split())[:MAX_DETAIL]
