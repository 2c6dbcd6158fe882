"""Progress from a rank's metrics file, for AttemptStatus.last_step (hang detection)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path


class MetricsTail:
    """Follows a JSON-lines file that ranks append to, reading only what is new, and
    remembers the highest `step` seen (with the line's `time`, else when it was read)."""

    MAX_READ = 4 * 1024 * 1024  # per poll, so a huge file cannot stall a heartbeat

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._offset = 0
        self._partial = b""
        self.last_step = 0
        self.last_step_time: float | None = None

    def poll(self) -> None:
        try:
            with self.path.open("rb") as fh:
                fh.seek(0, 2)
                if fh.tell() < self._offset:  # truncated or replaced: start over
                    self._offset, self._partial = 0, b""
                fh.seek(self._offset)
                data = fh.read(self.MAX_READ)
        except OSError:
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            step = record.get("step") if isinstance(record, dict) else None
            if isinstance(step, int) and not isinstance(step, bool) and step >= self.last_step:
                self.last_step = step
                when = record.get("time")
                ok = isinstance(when, (int, float)) and not isinstance(when, bool)
                self.last_step_time = float(when) if ok else self._clock()
