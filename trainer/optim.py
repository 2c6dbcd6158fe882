"""Optimizer and scheduler plumbing: `LRSchedulerConfig` and parsing `configure_optimizers`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import MisconfigurationError


@dataclass
class LRSchedulerConfig:
    scheduler: Any
    interval: str = "epoch"  # "step" or "epoch"
    frequency: int = 1
    monitor: str | None = None
    strict: bool = True
    name: str | None = None
    opt_idx: int = 0

    @property
    def reduce_on_plateau(self) -> bool:
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _scheduler_config(item: Any, opt_idx: int = 0) -> LRSchedulerConfig:
    if isinstance(item, dict):
        if "scheduler" not in item:
            raise MisconfigurationError(
                'An "lr_scheduler" dict needs a "scheduler" key: {"scheduler": sched, "interval": "step"}.'
            )
        extra = set(item) - {"scheduler", "interval", "frequency", "monitor", "strict", "name"}
        if extra:
            raise MisconfigurationError(f"Unknown lr_scheduler keys {sorted(extra)}.")
        cfg = LRSchedulerConfig(
            scheduler=item["scheduler"],
            interval=item.get("interval", "epoch"),
            frequency=int(item.get("frequency", 1)),
            monitor=item.get("monitor"),
            strict=item.get("strict", True),
            name=item.get("name"),
        )
    else:
        cfg = LRSchedulerConfig(scheduler=item)
    if cfg.interval not in ("step", "epoch"):
        raise MisconfigurationError(f'lr_scheduler "interval" must be "step" or "epoch", got {cfg.interval!r}.')
    if cfg.reduce_on_plateau and cfg.monitor is None:
        raise MisconfigurationError(
            "ReduceLROnPlateau needs a metric to monitor: return "
            '{"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}} '
            "from configure_optimizers."
        )
    optimizer = getattr(cfg.scheduler, "optimizer", None)
    cfg.opt_idx = opt_idx if optimizer is None else -1
    return cfg


def parse_optimizers(returned: Any) -> tuple[list[torch.optim.Optimizer], list[LRSchedulerConfig]]:
    """Accept every form Lightning accepts from `configure_optimizers`."""
    optimizers: list[Any]
    schedulers: list[Any] = []
    if returned is None:
        raise MisconfigurationError(
            "configure_optimizers returned None: return an optimizer, e.g. "
            "`return torch.optim.Adam(self.parameters(), lr=1e-3)`."
        )
    if isinstance(returned, torch.optim.Optimizer):
        optimizers = [returned]
    elif isinstance(returned, dict):
        if "optimizer" not in returned:
            raise MisconfigurationError('configure_optimizers returned a dict without an "optimizer" key.')
        optimizers = [returned["optimizer"]]
        if returned.get("lr_scheduler") is not None:
            sched = returned["lr_scheduler"]
            if isinstance(sched, dict):
                sched = dict(sched)
                if "monitor" in returned and "monitor" not in sched:
                    sched["monitor"] = returned["monitor"]
            elif "monitor" in returned:
                sched = {"scheduler": sched, "monitor": returned["monitor"]}
            schedulers = [sched]
    elif isinstance(returned, (list, tuple)) and len(returned) == 2 and isinstance(returned[0], (list, tuple)):
        optimizers = list(returned[0])
        schedulers = list(returned[1]) if isinstance(returned[1], (list, tuple)) else [returned[1]]
    elif isinstance(returned, (list, tuple)) and all(isinstance(o, dict) for o in returned):
        optimizers = []
        for d in returned:
            o, s = parse_optimizers(d)
            optimizers.extend(o)
            schedulers.extend([{**vars(c)} for c in s])
            for item in schedulers:
                if isinstance(item, dict):
                    item.pop("opt_idx", None)
    elif isinstance(returned, (list, tuple)):
        optimizers = list(returned)
    else:
        raise MisconfigurationError(
            f"configure_optimizers returned {type(returned).__name__}: return an optimizer, a list of "
            'optimizers, ([optimizers], [schedulers]) or {"optimizer": ..., "lr_scheduler": ...}.'
        )
    for o in optimizers:
        if not isinstance(o, torch.optim.Optimizer):
            raise MisconfigurationError(f"configure_optimizers returned {type(o).__name__}, not a torch optimizer.")
    configs = [_scheduler_config(s) for s in schedulers]
    for cfg in configs:
        opt = getattr(cfg.scheduler, "optimizer", None)
        cfg.opt_idx = next((i for i, o in enumerate(optimizers) if o is opt), 0)
    return optimizers, configs
