"""Stop fitting after a wall-clock duration, and measure how long each stage took.

Elapsed training time is saved in checkpoints, so a resumed run has only the remainder.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from ..durations import parse_duration
from .base import Callback

_STAGES = ("train", "validate", "test", "predict")


class Timer(Callback):
    """Args:
        duration: a `timedelta`, a dict such as `{"hours": 2}`, or "DD:HH:MM:SS"; None only measures.
        interval: check after every optimizer "step" or every "epoch".

    Example:
        >>> timer = Timer(duration="00:01:30:00")
        >>> # Trainer(callbacks=[timer]).fit(model); timer.time_elapsed("train")
    """

    def __init__(
        self,
        duration: str | timedelta | dict[str, int] | None = None,
        interval: str = "step",
        verbose: bool = True,
    ) -> None:
        if interval not in ("step", "epoch"):
            raise ValueError(f"Timer(interval={interval!r}): use 'step' or 'epoch'")
        self._duration = parse_duration(duration, "Timer(duration)")
        self._interval = interval
        self._verbose = verbose
        self._start_time: dict[str, float | None] = dict.fromkeys(_STAGES)
        self._end_time: dict[str, float | None] = dict.fromkeys(_STAGES)
        self._offset = 0.0

    def start_time(self, stage: str = "train") -> float | None:
        """time.monotonic() when the stage started, or None."""
        return self._start_time[stage]

    def end_time(self, stage: str = "train") -> float | None:
        """time.monotonic() when the stage ended, or None."""
        return self._end_time[stage]

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds spent in the stage (training time includes that before a resume)."""
        start, end = self._start_time[stage], self._end_time[stage]
        offset = self._offset if stage == "train" else 0.0
        if start is None:
            return offset
        if end is None:
            return time.monotonic() - start + offset
        return end - start + offset

    def time_remaining(self, stage: str = "train") -> float | None:
        """Seconds left of the duration, or None without one."""
        if self._duration is None:
            return None
        return self._duration - self.time_elapsed(stage)

    def _start(self, stage: str) -> None:
        self._start_time[stage] = time.monotonic()
        self._end_time[stage] = None

    def _end(self, stage: str) -> None:
        self._end_time[stage] = time.monotonic()

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self._start("train")

    def on_train_end(self, trainer: Any, module: Any) -> None:
        self._end("train")

    def on_validation_start(self, trainer: Any, module: Any) -> None:
        self._start("validate")

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        self._end("validate")

    def on_test_start(self, trainer: Any, module: Any) -> None:
        self._start("test")

    def on_test_end(self, trainer: Any, module: Any) -> None:
        self._end("test")

    def on_predict_start(self, trainer: Any, module: Any) -> None:
        self._start("predict")

    def on_predict_end(self, trainer: Any, module: Any) -> None:
        self._end("predict")

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        # Fit may be called again after a stop: start over only if the old timing was finished.
        if self._end_time["train"] is not None:
            self._offset = self.time_elapsed("train")
            self._start_time["train"] = self._end_time["train"] = None

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._interval == "step":
            self._check(trainer)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if self._interval == "epoch":
            self._check(trainer)

    def _check(self, trainer: Any) -> None:
        if self._duration is None or getattr(trainer, "fast_dev_run", False):
            return
        should_stop = self.time_elapsed("train") >= self._duration
        broadcast = getattr(getattr(trainer, "strategy", None), "broadcast", None)
        if callable(broadcast):  # rank 0's clock decides, so every rank stops at the same step
            should_stop = bool(broadcast(should_stop))
        if should_stop:
            trainer.should_stop = True
            if self._verbose and getattr(trainer, "is_global_zero", True):
                elapsed = timedelta(seconds=int(self.time_elapsed("train")))
                print(f"Time limit reached. Elapsed time is {elapsed}. Signaling Trainer to stop.")

    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage: self.time_elapsed(stage) for stage in _STAGES}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._offset = float(state.get("time_elapsed", {}).get("train", 0.0))
        self._start_time = dict.fromkeys(_STAGES)
        self._end_time = dict.fromkeys(_STAGES)
