"""Errors the trainer raises for misuse; each message names the fix."""

from __future__ import annotations


class MisconfigurationError(ValueError):
    """The Trainer or Module was configured in a way that cannot work (the message says how to fix it)."""
