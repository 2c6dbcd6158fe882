"""Bearer tokens: how they are made, sent, stored and written to disk.

Tokens carry 256 random bits, so a plain SHA-256 is a safe stored form (no salt or slow
hash is needed against guessing); the scheduler stores only that hash.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from pathlib import Path

from gridlab.common.atomicfile import write_atomic

METADATA_KEY = "authorization"
PREFIX = "glt_"


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token`. Explicit metadata, because call credentials are
    silently dropped on insecure channels."""
    return ((METADATA_KEY, f"Bearer {token}"),)


def token_from_metadata(items: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in items or ():
        if key.lower() == METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def write_secret(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read, atomically."""
    write_atomic(path, text + "\n", 0o600)


def read_secret(path: str | Path) -> str:
    token = Path(path).expanduser().read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token
