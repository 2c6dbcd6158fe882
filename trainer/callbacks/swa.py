"""Stochastic Weight Averaging (Izmailov et al., 2018) on `torch.optim.swa_utils`.

    epochs:  0 ........ swa_start ............................ max_epochs-1 | train end
    lr:      user's schedule | SWALR: anneal to swa_lrs over annealing_epochs, then constant
    weights: trained         | running average updated at each train epoch end
                                                       module <- average; update_bn(train data)

The average is kept as plain tensors (not an `AveragedModel`, whose deepcopy would copy
whatever the module references, the Trainer included); it is saved with the callback's
state so a resumed run continues the same average.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, get_swa_avg_fn, update_bn

from .base import Callback

_BN = (nn.modules.batchnorm._BatchNorm,)


def _scheduler_config(trainer: Any, scheduler: Any) -> Any:
    """A config for SWALR, of the Trainer's own config class when it has one."""
    cfgs = trainer.lr_scheduler_configs
    if cfgs and dataclasses.is_dataclass(cfgs[0]) and not isinstance(cfgs[0], type):
        return dataclasses.replace(cfgs[0], scheduler=scheduler, interval="epoch", frequency=1, monitor=None)
    try:
        from ..optim import LRSchedulerConfig
    except ImportError:  # the core is not there: a stand-in with the contract's fields
        return _SWAConfig(scheduler)
    return LRSchedulerConfig(scheduler=scheduler, interval="epoch", frequency=1)


@dataclasses.dataclass
class _SWAConfig:
    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    strict: bool = True
    name: str | None = None
    opt_idx: int = 0
    reduce_on_plateau: bool = False


class StochasticWeightAveraging(Callback):
    """Args:
        swa_lrs: the SWA learning rate, one for all param groups or a list, one per group.
        swa_epoch_start: the first averaged epoch: an int epoch, or a float fraction of max_epochs.
        annealing_epochs: epochs to anneal from the current lr to swa_lrs.
        annealing_strategy: "cos" or "linear".
        avg_fn: `avg_fn(averaged_param, current_param, num_averaged) -> new average`;
            default the equal-weight running mean.

    Example:
        >>> Trainer(max_epochs=20, callbacks=[StochasticWeightAveraging(swa_lrs=1e-2)])  # doctest: +SKIP
    """

    def __init__(
        self,
        swa_lrs: float | list[float],
        swa_epoch_start: int | float = 0.8,
        annealing_epochs: int = 10,
        annealing_strategy: str = "cos",
        avg_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if isinstance(swa_epoch_start, bool) or not isinstance(swa_epoch_start, (int, float)):
            raise TypeError(f"swa_epoch_start must be an int epoch or a float fraction, not {swa_epoch_start!r}")
        if isinstance(swa_epoch_start, int) and swa_epoch_start < 0:
            raise ValueError(f"swa_epoch_start={swa_epoch_start}: an epoch is >= 0")
        if isinstance(swa_epoch_start, float) and not 0.0 <= swa_epoch_start <= 1.0:
            raise ValueError(f"swa_epoch_start={swa_epoch_start}: a fraction of max_epochs lies in [0, 1]")
        lrs = swa_lrs if isinstance(swa_lrs, (list, tuple)) else [swa_lrs]
        if not lrs or any(not isinstance(lr, (int, float)) or lr <= 0 for lr in lrs):
            raise ValueError(f"swa_lrs={swa_lrs!r}: a positive float or a list of them, one per param group")
        if not isinstance(annealing_epochs, int) or annealing_epochs <= 0:
            raise ValueError(f"annealing_epochs={annealing_epochs!r} must be a positive int")
        if annealing_strategy not in ("cos", "linear"):
            raise ValueError(f"annealing_strategy={annealing_strategy!r}: use 'cos' or 'linear'")
        self._swa_lrs = swa_lrs
        self._swa_epoch_start_arg = swa_epoch_start
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = annealing_strategy
        self._avg_fn = avg_fn or get_swa_avg_fn()
        self.swa_start: int = swa_epoch_start if isinstance(swa_epoch_start, int) else -1
        self.swa_end: int = -1
        self.n_averaged = 0
        self._average: list[torch.Tensor] | None = None
        self._scheduler: SWALR | None = None
        self._scheduler_state: dict[str, Any] | None = None
        self._latest_update_epoch = -1

    @property
    def swa_lrs(self) -> float | list[float]:
        return self._swa_lrs

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        if len(trainer.optimizers) != 1:
            raise RuntimeError(f"StochasticWeightAveraging supports one optimizer, found {len(trainer.optimizers)}")
        if len(trainer.lr_scheduler_configs) > 1:
            raise RuntimeError("StochasticWeightAveraging supports at most one learning-rate scheduler")
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 0:
            raise RuntimeError("StochasticWeightAveraging needs Trainer(max_epochs=N): it averages whole epochs")
        if isinstance(self._swa_epoch_start_arg, float):
            self.swa_start = int(max_epochs * self._swa_epoch_start_arg)
        self.swa_end = max_epochs - 1
        if isinstance(self._swa_lrs, (list, tuple)) and len(self._swa_lrs) != len(trainer.optimizers[0].param_groups):
            raise ValueError(
                f"swa_lrs has {len(self._swa_lrs)} values for {len(trainer.optimizers[0].param_groups)} param groups"
            )

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        epoch = trainer.current_epoch
        if self._scheduler is None and epoch >= self.swa_start:
            # First SWA epoch, or a resume that lands after it.
            optimizer = trainer.optimizers[0]
            lrs = self._swa_lrs if isinstance(self._swa_lrs, (list, tuple)) else [self._swa_lrs]
            lrs = list(lrs) * (len(optimizer.param_groups) if len(lrs) == 1 else 1)
            for lr, group in zip(lrs, optimizer.param_groups, strict=True):
                group["initial_lr"] = lr
            self._scheduler = SWALR(
                optimizer,
                swa_lr=lrs,  # type: ignore[arg-type]  # SWALR accepts one per param group
                anneal_epochs=self._annealing_epochs,
                anneal_strategy=self._annealing_strategy,  # type: ignore[arg-type]
            )
            if self._scheduler_state is not None:
                self._scheduler.load_state_dict(self._scheduler_state)
                for group, last in zip(optimizer.param_groups, self._scheduler.get_last_lr(), strict=True):
                    group["lr"] = last
                self._scheduler_state = None
            cfg = _scheduler_config(trainer, self._scheduler)
            if trainer.lr_scheduler_configs:
                old = trainer.lr_scheduler_configs[0]
                if old.interval != "epoch" or getattr(old, "frequency", 1) != 1:
                    warnings.warn(
                        f"SWA replaces the current scheduler (interval={old.interval!r}) by SWALR stepped every epoch",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                trainer.lr_scheduler_configs[0] = cfg
            else:
                trainer.lr_scheduler_configs.append(cfg)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        epoch = trainer.current_epoch
        if self.swa_start <= epoch <= self.swa_end and epoch > self._latest_update_epoch:
            self._update_average(module)
            self._latest_update_epoch = epoch

    @torch.no_grad()
    def _update_average(self, module: nn.Module) -> None:
        params = [p.detach() for p in module.parameters()]
        if self._average is None or self.n_averaged == 0:
            self._average = [p.clone() for p in params]
        else:
            n = torch.tensor(self.n_averaged, device=params[0].device if params else None)
            for avg, p in zip(self._average, params, strict=True):
                avg.copy_(self._avg_fn(avg, p.to(avg.device), n))
        self.n_averaged += 1

    def on_train_end(self, trainer: Any, module: Any) -> None:
        if self._average is None or self.n_averaged == 0:
            return
        with torch.no_grad():
            for p, avg in zip(module.parameters(), self._average, strict=True):
                p.copy_(avg.to(p.device))
        if any(isinstance(m, _BN) for m in module.modules()):
            loader = trainer.train_dataloader
            if loader is None:
                warnings.warn("SWA: no train_dataloader to recompute BatchNorm stats", RuntimeWarning, stacklevel=2)
                return
            device = next(iter(module.parameters())).device
            update_bn(loader, module, device=device)

    def state_dict(self) -> dict[str, Any]:
        sched = self._scheduler.state_dict() if self._scheduler is not None else self._scheduler_state
        return {
            "n_averaged": self.n_averaged,
            "average": [t.detach().clone() for t in self._average] if self._average is not None else None,
            "latest_update_epoch": self._latest_update_epoch,
            "scheduler_state": sched,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_averaged = int(state["n_averaged"])
        avg = state.get("average")
        self._average = [t.clone() for t in avg] if avg is not None else None
        self._latest_update_epoch = int(state.get("latest_update_epoch", -1))
        self._scheduler_state = state.get("scheduler_state")
        self._scheduler = None
