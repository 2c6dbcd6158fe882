"""Progress from a rank's metrics file, for AttemptStatus.last_step (hang detection)."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeGuard

MAX_STEP = 2**63 - 1  # AttemptStatus.last_step is an int64
# What a protobuf Timestamp can hold: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
MIN_TIME = -62_135_596_800
MAX_TIME = 253_402_300_799


def valid_step(value: object) -> TypeGuard[int]:
    """An integer step an int64 holds, not negative (JSON true is not a step)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_STEP


def valid_time(value: object) -> bool:
    """Seconds since the epoch, finite and within a protobuf Timestamp's range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return MIN_TIME <= value <= MAX_TIME


MAX_RECORD_BYTES = 64 * 1024  # a longer metrics line is not forwarded (it still counts for progress)


class MetricsTail:
    """Follows a JSON-lines file that ranks append to, reading only what is new, and
    remembers the highest `step` seen (with the line's `time`, else when it was read).

    The file is the user's: a step that is not an integer in [0, 2**63) is ignored, and a
    `time` that is not finite seconds within a protobuf Timestamp's range (milliseconds,
    NaN, ...) is replaced by the time the line was read, so nothing written there can
    make the agent's status unreportable."""

    MAX_READ = 4 * 1024 * 1024  # per poll, so a huge file cannot stall a heartbeat

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._offset = 0
        self._partial = b""
        self._inode = -1
        self.last_step = 0
        self.last_step_time: float | None = None
        self.records: list[str] = []  # new JSON objects since the caller last took them (take_records)

    def poll(self) -> bool:
        """Read what is new (at most MAX_READ); True when there may be more to read now.

        The file is meant to be appended to. One that is replaced (a new inode) or truncated below
        what was read is read again from its start."""
        try:
            with self.path.open("rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_ino != self._inode or st.st_size < self._offset:  # replaced or truncated
                    self._inode, self._offset, self._partial = st.st_ino, 0, b""
                fh.seek(self._offset)
                data = fh.read(self.MAX_READ)
        except OSError:
            return False
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            try:
                record = json.loads(raw)
            except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
                continue
            if isinstance(record, dict) and len(raw) <= MAX_RECORD_BYTES:
                self.records.append(raw.decode("utf-8", "replace").strip())
            step = record.get("step") if isinstance(record, dict) else None
            if valid_step(step) and step >= self.last_step:
                self.last_step = step
                when = record.get("time")
                self.last_step_time = float(when) if valid_time(when) else self._clock()
        return len(data) == self.MAX_READ

    def take_records(self) -> list[str]:
        """The JSON objects read since the last call, as text, oldest first (forwarded to the scheduler)."""
        out, self.records = self.records, []
        return out
