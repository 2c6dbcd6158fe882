"""Identifiers: a kind prefix, then a time-ordered part, then randomness.

Ids sort by creation time (handy in tables and logs) and are hard to guess.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _b32(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id(kind: str) -> str:
    """e.g. ``run-01jd8x3k2m9q4f7a2b6c``: 10 characters of milliseconds, 12 of randomness."""
    return f"{kind}-{_b32(int(time.time() * 1000), 10)}{_b32(secrets.randbits(60), 12)}"
