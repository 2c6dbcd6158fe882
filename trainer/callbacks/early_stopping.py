"""Stop fitting when a monitored metric stops improving (Lightning semantics).

Checked after validation, or at train epoch end when the run has no validation (or when
`check_on_train_epoch_end=True`). Stopping sets `trainer.should_stop`; the Trainer ends at
the next step boundary.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from ._util import runs_validation, should_skip
from .base import Callback


class EarlyStopping(Callback):
    """Args:
        monitor: a key of `trainer.callback_metrics`.
        min_delta: the least change that counts as an improvement.
        patience: how many checks without improvement before stopping.
        mode: "min" or "max".
        strict: a missing metric is an error (else a warning and no check).
        check_finite: stop when the metric becomes NaN or infinite.
        stopping_threshold: stop as soon as the metric is better than this.
        divergence_threshold: stop as soon as the metric is worse than this.
        check_on_train_epoch_end: check at train epoch end instead of after validation;
            default: after validation, or at train epoch end when there is no validation.

    Example:
        >>> stop = EarlyStopping("val_loss", patience=5)
        >>> # Trainer(callbacks=[stop]).fit(model); stop.stopped_epoch
    """

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        verbose: bool = False,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping(mode={mode!r}): use 'min' or 'max'")
        if patience < 0:
            raise ValueError(f"EarlyStopping(patience={patience}) must be >= 0")
        self.monitor = monitor
        self.mode = mode
        self.min_delta = abs(min_delta) if mode == "max" else -abs(min_delta)
        self.patience = patience
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.verbose = verbose
        self._check_on_train_epoch_end = check_on_train_epoch_end
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(math.inf if mode == "min" else -math.inf, dtype=torch.float64)
        self.stopping_reason: str | None = None
        self._fitting = False

    @property
    def state_key(self) -> str:
        return f"EarlyStopping{{'monitor': {self.monitor!r}, 'mode': {self.mode!r}}}"

    def _better(self, a: torch.Tensor, b: torch.Tensor | float) -> bool:
        return bool(torch.lt(a, b) if self.mode == "min" else torch.gt(a, b))

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        self._fitting = True

    def on_fit_end(self, trainer: Any, module: Any) -> None:
        self._fitting = False

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if self._check_on_train_epoch_end is None:
            if runs_validation(trainer, module):
                return
        elif not self._check_on_train_epoch_end:
            return
        self._run_check(trainer)

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if self._check_on_train_epoch_end:
            return
        self._run_check(trainer)

    def _run_check(self, trainer: Any) -> None:
        if not self._fitting or should_skip(trainer):
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            msg = (
                f"EarlyStopping is conditioned on metric {self.monitor!r}, which is not available. "
                f"Pass EarlyStopping(monitor=...) one of the available metrics: {sorted(metrics)} "
                "(or strict=False to skip the check when it is missing)"
            )
            if self.strict:
                raise RuntimeError(msg)
            if self.verbose:
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
            return
        value = metrics[self.monitor]
        current = (value.detach() if isinstance(value, torch.Tensor) else torch.tensor(value)).to("cpu", torch.float64)
        should_stop, reason = self._evaluate(current.reshape(()))
        reduce = getattr(getattr(trainer, "strategy", None), "reduce_boolean_decision", None)
        if callable(reduce):  # every rank must agree, or ranks would hang in a collective
            should_stop = bool(reduce(should_stop, all=False))
        if should_stop:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason = reason
            if reason and self.verbose and getattr(trainer, "is_global_zero", True):
                print(reason)

    def _evaluate(self, current: torch.Tensor) -> tuple[bool, str | None]:
        if self.check_finite and not torch.isfinite(current):
            return True, (
                f"Monitored metric {self.monitor} = {float(current)} is not finite. "
                f"Previous best value was {float(self.best_score):.3f}. Signaling Trainer to stop."
            )
        if self.stopping_threshold is not None and self._better(current, self.stopping_threshold):
            return True, (
                f"Stopping threshold reached: {self.monitor} = {float(current)} "
                f"{'<' if self.mode == 'min' else '>'} {self.stopping_threshold}. Signaling Trainer to stop."
            )
        if self.divergence_threshold is not None and self._better(-current, -self.divergence_threshold):
            return True, (
                f"Divergence threshold reached: {self.monitor} = {float(current)} "
                f"{'>' if self.mode == 'min' else '<'} {self.divergence_threshold}. Signaling Trainer to stop."
            )
        if self._better(current - self.min_delta, self.best_score):
            self.best_score = current
            self.wait_count = 0
            return False, None
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, (
                f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records. "
                f"Best score: {float(self.best_score):.3f}. Signaling Trainer to stop."
            )
        return False, None

    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait_count = int(state["wait_count"])
        self.stopped_epoch = int(state["stopped_epoch"])
        best = state["best_score"]
        self.best_score = (best if isinstance(best, torch.Tensor) else torch.tensor(best)).to("cpu", torch.float64)
        self.patience = int(state.get("patience", self.patience))
