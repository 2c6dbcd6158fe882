"""Log each optimizer's learning rate (and optionally momentum) to the Trainer's loggers.

Names follow Lightning: "lr-SGD", "lr-SGD/pg1", "lr-SGD/pg2" for several param groups (a
group's "name" key replaces "pgN"), "lr-Adam-1" for a second optimizer of the same class,
"lr-SGD-momentum" for momentum (Adam-style optimizers log beta1).
"""

from __future__ import annotations

from typing import Any

from .base import Callback


class LearningRateMonitor(Callback):
    """Args:
        logging_interval: "step", "epoch", or None for each scheduler's own interval
            (optimizers without a scheduler are logged at both).
        log_momentum: also log momentum (or Adam's beta1).
        log_weight_decay: also log weight decay.

    Example:
        >>> Trainer(callbacks=[LearningRateMonitor(logging_interval="step")])  # doctest: +SKIP
    """

    def __init__(
        self, logging_interval: str | None = None, log_momentum: bool = False, log_weight_decay: bool = False
    ) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise ValueError(f"LearningRateMonitor(logging_interval={logging_interval!r}): use None, 'step' or 'epoch'")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}
        self._last_step_logged = -1

    def on_train_start(self, trainer: Any, module: Any) -> None:
        if not trainer.loggers:
            raise RuntimeError("LearningRateMonitor needs a logger: pass Trainer(logger=...) or remove the callback")
        if self.log_momentum and not any(
            "momentum" in g or "betas" in g for opt in trainer.optimizers for g in opt.param_groups
        ):
            import warnings

            warnings.warn(
                "LearningRateMonitor(log_momentum=True): no optimizer has momentum or betas; momentum is not logged",
                RuntimeWarning,
                stacklevel=2,
            )

    def _names(self, trainer: Any) -> list[tuple[Any, str]]:
        """(optimizer, base name) for each optimizer, in order."""
        seen: dict[str, int] = {}
        sched_names = {
            id(cfg.scheduler.optimizer): getattr(cfg, "name", None)
            for cfg in trainer.lr_scheduler_configs
            if getattr(cfg, "scheduler", None) is not None and hasattr(cfg.scheduler, "optimizer")
        }
        out = []
        for opt in trainer.optimizers:
            name = sched_names.get(id(opt)) or f"lr-{type(opt).__name__}"
            count = seen.get(name, 0)
            seen[name] = count + 1
            out.append((opt, name if count == 0 else f"{name}-{count}"))
        return out

    def _intervals(self, trainer: Any) -> dict[int, str]:
        return {
            id(cfg.scheduler.optimizer): cfg.interval
            for cfg in trainer.lr_scheduler_configs
            if getattr(cfg, "scheduler", None) is not None and hasattr(cfg.scheduler, "optimizer")
        }

    def extract_stats(self, trainer: Any, interval: str) -> dict[str, float]:
        """The values to log at this interval ("step", "epoch" or "any")."""
        intervals = self._intervals(trainer)
        stats: dict[str, float] = {}
        for opt, name in self._names(trainer):
            opt_interval = intervals.get(id(opt))
            if interval != "any" and opt_interval is not None and opt_interval != interval:
                continue
            groups = opt.param_groups
            for i, group in enumerate(groups):
                key = name if len(groups) == 1 else f"{name}/{group.get('name') or f'pg{i + 1}'}"
                stats[key] = float(group["lr"])
                if self.log_momentum:
                    mom = group.get("momentum", group.get("betas", (None,))[0])
                    if mom is not None:
                        stats[f"{key}-momentum"] = float(mom)
                if self.log_weight_decay and "weight_decay" in group:
                    stats[f"{key}-weight_decay"] = float(group["weight_decay"])
        return stats

    def _log(self, trainer: Any, stats: dict[str, float]) -> None:
        if not stats:
            return
        for key, value in stats.items():
            self.lrs.setdefault(key, []).append(value)
        if not getattr(trainer, "is_global_zero", True):
            return
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=trainer.global_step)

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.logging_interval == "epoch":
            return
        step = trainer.global_step
        every = getattr(trainer, "log_every_n_steps", 1) or 1
        # Once per optimizer step (not per accumulated micro-batch), every log_every_n_steps.
        if step == self._last_step_logged or (step % every != 0 and not trainer.should_stop):
            return
        self._last_step_logged = step
        self._log(trainer, self.extract_stats(trainer, "step" if self.logging_interval is None else "any"))

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        if self.logging_interval != "step":
            self._log(trainer, self.extract_stats(trainer, "epoch" if self.logging_interval is None else "any"))
