"""JSON-lines metrics for the gridlab agent: one object per `log_metrics` call.

    {"step": 120, "time": 1732790000.12, "train_loss": 0.031}

The agent tails this file for progress (an integer "step", numeric unix "time"), so each
line is written whole in one append and flushed at once. Non-finite values are written as
null, since NaN and Infinity are not JSON.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import IO, Any

from ._util import to_float
from .base import Logger

ENV = "GRIDLAB_METRICS_FILE"


class JSONLinesLogger(Logger):
    """Args:
        path: the file to append to; default $GRIDLAB_METRICS_FILE.

    Raises:
        ValueError: no path and GRIDLAB_METRICS_FILE is not set.

    Example:
        >>> logger = JSONLinesLogger("metrics.jsonl")  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is None:
            path = os.environ.get(ENV) or None
        if path is None:
            raise ValueError(f"JSONLinesLogger needs a path: pass JSONLinesLogger(path=...) or set ${ENV}")
        self.path = os.fspath(path)
        self._fh: IO[str] | None = None

    @property
    def log_dir(self) -> str | None:
        return os.path.dirname(os.path.abspath(self.path))

    def _file(self) -> IO[str]:
        if self._fh is None or self._fh.closed:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  # kept open across calls
        return self._fh

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        record: dict[str, Any] = {"step": int(step), "time": time.time()}
        for key, value in metrics.items():
            if key in ("step", "time"):
                continue
            number = to_float(value)
            record[key] = number if math.isfinite(number) else None
        fh = self._file()
        fh.write(json.dumps(record, allow_nan=False) + "\n")
        fh.flush()

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        """Hyperparameters are not progress: the agent's file holds metrics only."""

    def save(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.flush()

    def finalize(self, status: str) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()
        self._fh = None
