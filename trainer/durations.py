"""Durations as users write them for `Trainer(max_time=...)` and `Timer(duration=...)`."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from .errors import MisconfigurationError

_DDHHMMSS = re.compile(r"\s*(\d+):(\d{1,2}):(\d{1,2}):(\d{1,2})\s*")


def parse_duration(value: Any, what: str) -> float | None:
    """Seconds from a `timedelta`, a dict of timedelta arguments, or "DD:HH:MM:SS"; None stays None.

    `what` names the argument in the error, e.g. "max_time" or "Timer(duration)"."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return timedelta(**value).total_seconds()
    if isinstance(value, str):
        m = _DDHHMMSS.fullmatch(value)
        if m is None:
            raise MisconfigurationError(
                f"{what} must look like 'DD:HH:MM:SS' (e.g. '00:12:00:00' for 12 hours), got {value!r}."
            )
        days, hours, minutes, seconds = map(int, m.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()
    raise MisconfigurationError(f"{what} must be a timedelta, a dict or 'DD:HH:MM:SS', got {type(value).__name__}.")
