"""A dependency-free progress bar: a live one-line bar on a terminal, periodic lines otherwise.

    Epoch 2/10  [########------------]  412/1000  loss=0.0312 val_acc=0.91  1520.3 it/s  ETA 0:00:00

Per step it costs one counter check and one clock read; the text (and `.item()` on the
metrics, which would synchronise a GPU) is built only when it is redrawn: at most every
`refresh_rate` batches and every `interval_s` seconds (0.1 s on a terminal; on a file or a
pipe, every 10% of the epoch or `interval_s`, default 30 s, whichever comes first).
"""

from __future__ import annotations

import math
import sys
import time
from datetime import timedelta
from typing import Any, TextIO

import torch

from .base import Callback


def _fmt(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.float().mean().item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    return str(timedelta(seconds=int(seconds)))


class ProgressBar(Callback):
    """Args:
    refresh_rate: redraw at most every this many batches; 0 disables the bar.
    leave: keep each epoch's final bar on screen (a terminal only).
    stream: where to write (default sys.stderr, looked up when training starts).
    interval_s: the least time between redraws (default 0.1 s on a terminal, 30 s otherwise).
    """

    def __init__(
        self,
        refresh_rate: int = 1,
        leave: bool = True,
        *,
        stream: TextIO | None = None,
        interval_s: float | None = None,
    ) -> None:
        if refresh_rate < 0:
            raise ValueError(f"ProgressBar(refresh_rate={refresh_rate}) must be >= 0")
        self.refresh_rate = refresh_rate
        self.leave = leave
        self._stream_arg = stream
        self._interval_arg = interval_s
        self._enabled = refresh_rate > 0
        self._stream: TextIO = sys.stderr
        self._tty = False
        self._interval = 0.1
        self._next_time = 0.0
        self._next_batch = 0
        self._epoch_start = 0.0
        self._last_draw_time = 0.0
        self._last_draw_batch = 0
        self._total = 0
        self._width = 0  # of the last line drawn, to blank what a shorter line leaves behind
        self.last_text = ""
        self._last_outputs: Any = None

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = self.refresh_rate > 0

    def _open(self, trainer: Any) -> bool:
        if not self._enabled or not getattr(trainer, "is_global_zero", True):
            return False
        self._stream = self._stream_arg or sys.stderr
        isatty = getattr(self._stream, "isatty", None)
        self._tty = bool(isatty and isatty())
        self._interval = self._interval_arg if self._interval_arg is not None else (0.1 if self._tty else 30.0)
        return True

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self._open(trainer)

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        if not self._enabled:
            return
        total = trainer.num_training_batches
        self._total = int(total) if isinstance(total, (int, float)) and math.isfinite(total) else 0
        self._epoch_start = self._last_draw_time = time.monotonic()
        self._last_draw_batch = 0
        self._next_time = self._epoch_start + (0.0 if self._tty else self._interval)
        self._next_batch = self._step_every()

    def _step_every(self) -> int:
        """The batch count of the next redraw (by count; the clock is checked too)."""
        if self._tty or not self._total:
            return self.refresh_rate
        return max(self.refresh_rate, self._total // 10)

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._enabled:
            return
        self._last_outputs = outputs  # a reference only; read when drawn
        n = batch_idx + 1
        if n == self._total:
            return  # drawn by on_train_epoch_end, with the epoch's final metrics
        now = time.monotonic()
        if self._tty:
            if now < self._next_time or n % self.refresh_rate:
                return
        elif n < self._next_batch and now < self._next_time:
            return
        self._draw(trainer, outputs, n, now, final=False)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not self._enabled:
            return
        n = self._total or trainer.batch_idx + 1
        self._draw(trainer, self._last_outputs, n, time.monotonic(), final=True)
        self._last_outputs = None

    def on_train_end(self, trainer: Any, module: Any) -> None:
        if self._enabled and self._tty and self._width:  # stopped mid-epoch: end the live line
            self._write("\n")
            self._width = 0

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if not self._enabled or getattr(trainer, "sanity_checking", False) or self._tty:
            return
        metrics = {k: _fmt(v) for k, v in trainer.progress_bar_metrics.items()}
        if metrics:
            self._write("Validation  " + "  ".join(f"{k}={v}" for k, v in metrics.items()) + "\n")

    def _draw(self, trainer: Any, outputs: Any, n: int, now: float, final: bool) -> None:
        elapsed_since = now - self._last_draw_time
        done_since = n - self._last_draw_batch
        rate = done_since / elapsed_since if elapsed_since > 0 and done_since > 0 else 0.0
        if final:
            total_time = now - self._epoch_start
            rate = n / total_time if total_time > 0 else rate
        self._last_draw_time, self._last_draw_batch = now, n
        self._next_time = now + self._interval
        self._next_batch = n + self._step_every()

        parts = [self._epoch_text(trainer)]
        if self._total:
            frac = min(1.0, n / self._total)
            if self._tty:
                filled = int(20 * frac)
                parts.append(f"[{'#' * filled}{'-' * (20 - filled)}]")
            parts.append(f"{n}/{self._total}")
        else:
            parts.append(f"{n}")
        metrics = self.get_metrics(trainer, outputs)
        if metrics:
            parts.append(" ".join(f"{k}={v}" for k, v in metrics.items()))
        parts.append(f"{rate:.1f} it/s" if rate >= 1 or rate == 0 else f"{1 / rate:.2f} s/it")
        if self._total and not final:
            parts.append(f"ETA {_eta((self._total - n) / rate) if rate > 0 else '?'}")
        elif final:
            parts.append(f"in {_eta(now - self._epoch_start)}")
        text = "  ".join(parts)
        self.last_text = text
        if self._tty:
            pad = " " * max(0, self._width - len(text))
            self._width = len(text)
            end = ("\n" if self.leave else "") if final else ""
            if final and not self.leave:
                self._write("\r" + " " * self._width + "\r")
                self._width = 0
            else:
                self._write("\r" + text + pad + end)
                if end:
                    self._width = 0
        else:
            self._write(text + "\n")

    def _epoch_text(self, trainer: Any) -> str:
        max_epochs = trainer.max_epochs
        epoch = trainer.current_epoch
        if max_epochs is not None and max_epochs > 0:
            return f"Epoch {epoch}/{max_epochs - 1}"
        return f"Epoch {epoch}"

    def get_metrics(self, trainer: Any, outputs: Any) -> dict[str, str]:
        """What the bar shows beside the counts: the step's loss and the prog_bar metrics."""
        shown: dict[str, str] = {}
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            shown["loss"] = _fmt(loss.detach())
        for key, value in trainer.progress_bar_metrics.items():
            shown[key] = _fmt(value)
        return shown

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not end a run
            self._enabled = False
