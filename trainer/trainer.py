"""The Trainer: one class, an explicit loop (after Lightning Fabric's build-your-own-trainer).

Seams: a `Strategy` (device, backward, optimizer step, sampler, checkpoint IO) and a precision
plugin owned by it. Nothing outside this file mutates the Trainer.

RNG contract (parity with a plain loop): the training DataLoader's iterator, and so its shuffle
permutation, is created at the start of each epoch, right after the `on_train_epoch_start` hooks,
from the global RNG as it stands then. Nothing else in the trainer draws from the global RNG:
every evaluation run inside `fit` (sanity check, validation) runs with the RNG state saved and
restored, so adding or removing validation never changes the training trajectory.
"""

from __future__ import annotations

import functools
import glob
import math
import os
import re
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .callbacks.base import Callback
from .checkpoint import FORMAT_VERSION
from .datamodule import DataModule
from .distributed import DistributedStrategy
from .durations import parse_duration
from .environment import ClusterEnvironment, cuda_device_count
from .errors import MisconfigurationError
from .loaders import with_sampler
from .module import Module
from .optim import LRSchedulerConfig, parse_optimizers
from .precision import apply_to_tensors, make_precision, normalize_precision
from .preemption import PREEMPTION_CHECKPOINT, Preempted, SigtermFlag, ignore_sigterm_in_worker
from .results import Results
from .seed import SEED_WORKERS_ENV, collect_rng_states, set_rng_states, worker_init_fn
from .strategy import SingleDeviceStrategy, Strategy

__all__ = ["LRSchedulerConfig", "Trainer", "TrainerState"]


@dataclass
class TrainerState:
    stage: str | None = None  # "fit", "validate", "test", "predict", "sanity_check"
    status: str = "initializing"  # "running", "finished", "interrupted", "failed"


@dataclass
class Progress:
    """Lightning's counters: ready -> started -> processed -> completed."""

    ready: int = 0
    started: int = 0
    processed: int = 0
    completed: int = 0

    def load(self, d: dict[str, int]) -> None:
        self.ready, self.started, self.processed, self.completed = (
            d["ready"],
            d["started"],
            d["processed"],
            d["completed"],
        )


@dataclass
class _FitProgress:
    epoch: Progress = field(default_factory=Progress)
    batch_total: Progress = field(default_factory=Progress)
    batch_current: Progress = field(default_factory=Progress)  # within the current epoch


class _WrappedOptimizer:
    """What `Module.optimizers()` returns: `.step()` goes through the strategy and precision."""

    def __init__(self, optimizer: torch.optim.Optimizer, trainer: Trainer) -> None:
        self.optimizer = optimizer
        self._trainer = trainer

    def step(self, closure: Any = None) -> Any:
        return self._trainer._optimizer_step(self.optimizer, closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._trainer._call("on_before_zero_grad", self.optimizer)
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)


def _split_datamodule(loaders: Any, datamodule: DataModule | None) -> tuple[Any, DataModule | None]:
    """Accept a DataModule in the dataloaders position, as Lightning does."""
    if isinstance(loaders, DataModule):
        return None, loaders
    return loaders, datamodule


def _limit(n: float, limit: int | float) -> float:
    if isinstance(limit, bool):
        raise MisconfigurationError("limit_*_batches must be an int (batches) or a float (fraction), not a bool.")
    if isinstance(limit, int):
        return min(n, limit)
    if not 0.0 <= limit <= 1.0:
        raise MisconfigurationError(f"A float limit_*_batches must be within [0, 1], got {limit}.")
    return n if limit == 1.0 or n == math.inf else int(n * limit)


def _len(loader: Any) -> float:
    try:
        return len(loader)
    except TypeError:
        return math.inf


def _as_list(loaders: Any) -> list[Any]:
    if loaders is None:
        return []
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]


def _infer_batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for b in batch:
            n = _infer_batch_size(b)
            if n:
                return n
    return 1


class Trainer:
    def __init__(
        self,
        *,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        num_nodes: int = 1,
        precision: str | int = "32-true",
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        max_time: Any = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        val_check_interval: int | float = 1.0,
        check_val_every_n_epoch: int | None = 1,
        limit_train_batches: int | float = 1.0,
        limit_val_batches: int | float = 1.0,
        limit_test_batches: int | float = 1.0,
        limit_predict_batches: int | float = 1.0,
        num_sanity_val_steps: int = 2,
        fast_dev_run: bool | int = False,
        overfit_batches: int | float = 0.0,
        deterministic: bool | str | None = None,
        log_every_n_steps: int = 50,
        callbacks: Callback | list[Callback] | None = None,
        logger: Any = True,
        enable_progress_bar: bool = True,
        enable_checkpointing: bool = True,
        default_root_dir: str | os.PathLike | None = None,
        truncated_bptt_steps: int | None = None,
        strategy: Strategy | str = "auto",
        use_distributed_sampler: bool = True,
    ) -> None:
        self.default_root_dir = os.fspath(default_root_dir) if default_root_dir is not None else os.getcwd()
        self.precision = normalize_precision(precision)
        self.strategy = self._make_strategy(accelerator, devices, num_nodes, strategy)
        self.use_distributed_sampler = use_distributed_sampler

        self.fast_dev_run = int(fast_dev_run)
        if fast_dev_run is not False and int(fast_dev_run) < 1:
            raise MisconfigurationError("fast_dev_run must be True or a positive number of batches.")
        if self.fast_dev_run:
            n = self.fast_dev_run
            max_epochs, max_steps, num_sanity_val_steps, val_check_interval = 1, n, 0, 1.0
            limit_train_batches = limit_val_batches = limit_test_batches = limit_predict_batches = n
            log_every_n_steps, logger, enable_checkpointing = 1, False, False
        if max_epochs is None:
            # Lightning: 1000 epochs unless max_steps or max_time bounds the run.
            max_epochs = 1000 if max_steps == -1 and max_time is None else -1
        self.max_epochs = max_epochs
        self.min_epochs = min_epochs or 0
        self.max_steps = max_steps
        self._max_time = parse_duration(max_time, "max_time")
        if accumulate_grad_batches < 1:
            raise MisconfigurationError("accumulate_grad_batches must be >= 1.")
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        if gradient_clip_algorithm not in (None, "norm", "value"):
            raise MisconfigurationError(
                f'gradient_clip_algorithm must be "norm" or "value", got {gradient_clip_algorithm!r}.'
            )
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm or "norm"
        self.val_check_interval = val_check_interval
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.overfit_batches = overfit_batches
        if overfit_batches:
            limit_train_batches = limit_val_batches = overfit_batches
        self.limit_train_batches = limit_train_batches
        self.limit_val_batches = limit_val_batches
        self.limit_test_batches = limit_test_batches
        self.limit_predict_batches = limit_predict_batches
        self.num_sanity_val_steps = num_sanity_val_steps
        self.deterministic = deterministic
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self.truncated_bptt_steps = truncated_bptt_steps
        if truncated_bptt_steps is not None and truncated_bptt_steps < 1:
            raise MisconfigurationError("truncated_bptt_steps must be a positive number of time steps.")

        self.callbacks: list[Callback] = _as_list(callbacks)
        if enable_progress_bar and not any(type(c).__name__.endswith("ProgressBar") for c in self.callbacks):
            from .callbacks.progress import ProgressBar

            self.callbacks.append(ProgressBar())
        self._enable_checkpointing = enable_checkpointing
        if enable_checkpointing and not any(type(c).__name__ == "ModelCheckpoint" for c in self.callbacks):
            from .callbacks.checkpoint import ModelCheckpoint

            self.callbacks.append(ModelCheckpoint())
        if not enable_checkpointing and self.fast_dev_run:
            self.callbacks = [c for c in self.callbacks if type(c).__name__ != "ModelCheckpoint"]
        self.loggers: list[Any] = self._make_loggers(logger)

        # State the callbacks read (never rebind).
        self.state = TrainerState()
        self.module: Module | None = None
        self.datamodule: DataModule | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self._wrapped_optimizers: list[_WrappedOptimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self.current_epoch = 0
        self.global_step = 0
        self.batch_idx = 0
        self.should_stop = False
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.logged_metrics: dict[str, torch.Tensor] = {}
        self.progress_bar_metrics: dict[str, torch.Tensor] = {}
        self.train_dataloader: Any = None
        self.val_dataloaders: list[Any] = []
        self.test_dataloaders: list[Any] = []
        self.predict_dataloaders: list[Any] = []
        self.num_training_batches: float = 0
        self.num_val_batches: list[float] = []
        self.num_test_batches: list[float] = []
        self.num_predict_batches: list[float] = []
        self.ckpt_path: str | None = None
        self.fit_progress = _FitProgress()
        self._batches_that_stepped = 0
        self._results = Results()
        self._current_fx: str | None = None
        self._current_batch: Any = None
        self._batch_size: int | None = None
        self._dataloader_suffix = ""
        self._epoch_rng: dict[str, Any] | None = None
        self._rng_snapshot: dict[str, Any] | None = None
        self._resume: dict[str, Any] | None = None
        self._time_elapsed = 0.0
        self._hooks: dict[str, list[Any]] = {}
        self._in_eval = False
        self._pending_step_logs: dict[str, torch.Tensor] = {}
        self._train_results = self._results
        self._t0 = time.monotonic()
        self._sigterm = SigtermFlag()

    # ------------------------------------------------------------------ setup
    def _make_strategy(self, accelerator: str, devices: Any, num_nodes: int, strategy: Strategy | str) -> Strategy:
        """Resolve accelerator x devices x num_nodes x strategy into one Strategy (Lightning's rules, with the
        environment of torchrun or the gridlab agent taking precedence over `devices`)."""
        from .ddp import DDPStrategy
        from .fsdp import FSDPStrategy

        if accelerator == "auto":
            accelerator = "cuda" if cuda_device_count() else "cpu"
        if accelerator == "gpu":
            accelerator = "cuda"
        if accelerator not in ("cpu", "cuda"):
            raise MisconfigurationError(f'accelerator must be "auto", "cpu", "gpu" or "cuda", got {accelerator!r}.')
        if accelerator == "cuda" and not cuda_device_count():
            raise MisconfigurationError('accelerator="gpu" but no CUDA GPU is visible: use accelerator="cpu".')
        ids = _parse_devices(devices, accelerator)
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
            raise MisconfigurationError(f"num_nodes must be a positive int, got {num_nodes!r}.")
        env = ClusterEnvironment.detect()
        if env is not None and env.world_size > 1 and devices in ("auto", 1, "1"):
            # The same script under torchrun or the agent: the launcher decided the topology.
            ids, num_nodes = list(range(env.local_world_size)), env.num_nodes
        world = len(ids) * num_nodes
        if isinstance(strategy, str):
            name = strategy.lower()
            if name == "auto":
                name = "ddp" if world > 1 or (env is not None and env.world_size > 1) else "single_device"
            if name == "single_device":
                if world > 1:
                    raise MisconfigurationError(
                        f'strategy="single_device" runs one process, but devices x num_nodes is {world}: use '
                        'strategy="ddp" or "fsdp".'
                    )
                index = ids[0] if accelerator == "cuda" else None
                if accelerator == "cuda" and env is not None:
                    index = env.local_rank
                device = torch.device(accelerator, index) if index is not None else torch.device(accelerator)
                return SingleDeviceStrategy(device, make_precision(self.precision, device.type))
            kinds: dict[str, type[DistributedStrategy]] = {"ddp": DDPStrategy, "fsdp": FSDPStrategy}
            if name not in kinds:
                raise MisconfigurationError(
                    f'strategy must be "auto", "single_device", "ddp", "fsdp" or a Strategy, got {strategy!r}.'
                )
            strategy = kinds[name]()
        if isinstance(strategy, DistributedStrategy):
            strategy.configure(accelerator, ids, num_nodes, lambda dt: make_precision(self.precision, dt))
            return strategy
        if not isinstance(strategy, Strategy):
            raise MisconfigurationError(f"strategy must be a string or a Strategy, got {type(strategy).__name__}.")
        return strategy

    def _make_loggers(self, logger: Any) -> list[Any]:
        if logger is None or logger is False:
            return []
        if logger is True:
            from .loggers.csv import CSVLogger

            loggers: list[Any] = [CSVLogger(self.default_root_dir)]
        else:
            loggers = _as_list(logger)
        path = os.environ.get("GRIDLAB_METRICS_FILE")
        if path and not any(type(lg).__name__ == "JSONLinesLogger" for lg in loggers):
            from .loggers.jsonl import JSONLinesLogger

            try:
                loggers.append(JSONLinesLogger(path))
            except TypeError:
                loggers.append(JSONLinesLogger())
        return loggers

    # ------------------------------------------------------------- properties
    @property
    def logger(self) -> Any:
        return self.loggers[0] if self.loggers else None

    @property
    def lightning_module(self) -> Module | None:
        return self.module

    @property
    def is_global_zero(self) -> bool:
        return self.strategy.is_global_zero

    @property
    def global_rank(self) -> int:
        return self.strategy.global_rank

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    @property
    def local_rank(self) -> int:
        return self.strategy.local_rank

    @property
    def num_devices(self) -> int:
        return getattr(self.strategy, "num_devices", 1)

    @property
    def num_nodes(self) -> int:
        return getattr(self.strategy, "num_nodes", 1)

    @property
    def received_sigterm(self) -> bool:
        return self._sigterm.requested

    @property
    def sanity_checking(self) -> bool:
        return self.state.stage == "sanity_check"

    @property
    def training(self) -> bool:
        return self.state.stage == "fit" and self.module is not None and self.module.training

    @property
    def checkpoint_dir(self) -> str:
        return os.environ.get("GRIDLAB_CHECKPOINT_DIR") or os.path.join(self.default_root_dir, "checkpoints")

    @property
    def log_dir(self) -> str:
        d = self.logger.log_dir if self.logger is not None else None
        return d or self.default_root_dir

    @property
    def checkpoint_callbacks(self) -> list[Callback]:
        return [c for c in self.callbacks if type(c).__name__ == "ModelCheckpoint"]

    @property
    def checkpoint_callback(self) -> Callback | None:
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def estimated_stepping_batches(self) -> float:
        per_epoch = math.ceil(self.num_training_batches / self.accumulate_grad_batches)
        total = per_epoch * self.max_epochs if self.max_epochs >= 0 else math.inf
        return min(total, self.max_steps) if self.max_steps != -1 else total

    # ----------------------------------------------------------------- hooks
    def _hook_fns(self, name: str) -> list[Any]:
        fns = self._hooks.get(name)
        if fns is None:
            base = getattr(Callback, name, None)
            fns = [getattr(cb, name) for cb in self.callbacks if getattr(type(cb), name, None) is not base]
            self._hooks[name] = fns
        return fns

    def _call(self, name: str, *args: Any, module_first: bool = False) -> Any:
        """Call callbacks' then the module's hook (module first for on_train_epoch_end, so that
        monitoring callbacks see what the module logged there)."""
        module = self.module
        prev, self._current_fx = self._current_fx, name
        try:
            out = None
            module_fn = getattr(type(module), name, None)
            if module_first and module_fn is not None:
                out = module_fn(module, *args)
            for fn in self._hook_fns(name):
                fn(self, module, *args)
            if not module_first and module_fn is not None:
                out = module_fn(module, *args)
            return out
        finally:
            self._current_fx = prev

    # --------------------------------------------------------------- logging
    def _log(
        self,
        name: str,
        value: Any,
        on_step: bool | None,
        on_epoch: bool | None,
        prog_bar: bool,
        logger: bool,
        reduce_fx: str,
        sync_dist: bool,
        batch_size: int | None,
    ) -> None:
        # Per step while a training batch is in flight (training_step, batch and backward hooks).
        in_step = self.state.stage == "fit" and not self._in_eval and self._current_batch is not None
        if on_step is None:
            on_step = in_step
        if on_epoch is None:
            on_epoch = not in_step
        if not isinstance(value, torch.Tensor):
            value = torch.tensor(float(value))
        value = value.detach()
        if value.numel() != 1:
            raise MisconfigurationError(
                f"self.log({name!r}) needs a scalar; got a tensor of shape {tuple(value.shape)}."
            )
        if on_epoch and batch_size is None and reduce_fx == "mean":
            if self._batch_size is None:
                self._batch_size = _infer_batch_size(self._current_batch) if self._current_batch is not None else 1
            batch_size = self._batch_size
        name = name + self._dataloader_suffix
        if sync_dist and on_step and not on_epoch:
            value = self.strategy.reduce(value, reduce_fx)
        m, step_key = self._results.log(
            name, value, on_step, on_epoch, prog_bar, logger, reduce_fx, sync_dist, batch_size
        )
        if step_key is not None:
            if sync_dist and on_epoch:  # the epoch accumulator keeps the local value; the step value is global
                value = self.strategy.reduce(value, reduce_fx)
            self.callback_metrics[step_key] = value
            self.callback_metrics[name] = value
            if prog_bar:
                self.progress_bar_metrics[step_key] = value
            if logger:
                self._pending_step_logs[step_key] = value

    def _update_epoch_metrics(self) -> dict[str, torch.Tensor]:
        """Epoch reductions into callback/progress-bar metrics; returns what goes to the loggers."""
        to_log = {}
        for name, (m, key, v) in self._results.epoch_values(self.strategy.reduce).items():
            self.callback_metrics[key] = v
            self.callback_metrics[name] = v
            if m.prog_bar:
                self.progress_bar_metrics[key] = v
            if m.logger:
                to_log[key] = v
        return to_log

    def _log_to_loggers(self, metrics: dict[str, torch.Tensor], step: int, epoch: bool = False) -> None:
        if not metrics:
            return
        self.logged_metrics.update(metrics)
        if not self.loggers or not self.is_global_zero:
            return
        floats = {k: float(v) for k, v in metrics.items()}
        floats["epoch"] = float(self.current_epoch)
        for lg in self.loggers:
            lg.log_metrics(floats, step)

    # ------------------------------------------------------------ public API
    def fit(
        self,
        module: Module,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: DataModule | None = None,
        ckpt_path: str | os.PathLike | None = None,
    ) -> None:
        train_dataloaders, datamodule = _split_datamodule(train_dataloaders, datamodule)
        if ckpt_path is None and os.environ.get("GRIDLAB_RESUME_FROM"):
            ckpt_path = os.environ["GRIDLAB_RESUME_FROM"]
        self._run("fit", module, datamodule, ckpt_path, train=train_dataloaders, val=val_dataloaders)

    def validate(
        self,
        module: Module | None = None,
        dataloaders: Any = None,
        datamodule: DataModule | None = None,
        ckpt_path: str | os.PathLike | None = None,
        verbose: bool = True,
    ) -> list[dict[str, float]]:
        dataloaders, datamodule = _split_datamodule(dataloaders, datamodule)
        return self._run("validate", module, datamodule, ckpt_path, val=dataloaders, verbose=verbose)

    def test(
        self,
        module: Module | None = None,
        dataloaders: Any = None,
        datamodule: DataModule | None = None,
        ckpt_path: str | os.PathLike | None = None,
        verbose: bool = True,
    ) -> list[dict[str, float]]:
        dataloaders, datamodule = _split_datamodule(dataloaders, datamodule)
        return self._run("test", module, datamodule, ckpt_path, test=dataloaders, verbose=verbose)

    def predict(
        self,
        module: Module | None = None,
        dataloaders: Any = None,
        datamodule: DataModule | None = None,
        ckpt_path: str | os.PathLike | None = None,
        return_predictions: bool = True,
    ) -> list[Any] | None:
        """The predict_step outputs (a list per dataloader when there are several); None with
        return_predictions=False, which keeps no outputs in memory (callbacks still see each)."""
        dataloaders, datamodule = _split_datamodule(dataloaders, datamodule)
        return self._run(
            "predict", module, datamodule, ckpt_path, predict=dataloaders, return_predictions=return_predictions
        )

    def save_checkpoint(self, filepath: str | os.PathLike, weights_only: bool = False) -> None:
        if self.module is None:
            raise RuntimeError("save_checkpoint needs a module: call fit/validate/test first.")
        # Every rank writes (FSDP) or agrees on one path: rank 0's, moved into this node's own checkpoint folder
        # when it lies in rank 0's (nodes of a run need not share storage; each agent uploads its own folder).
        path = self._on_this_node(os.fspath(filepath), self.checkpoint_dir)
        assert path is not None  # noqa: S101 - rank 0 passed a path
        ckpt = self._dump_checkpoint(weights_only)
        self.strategy.save_checkpoint(ckpt, path)
        for lg in self._rank_zero_loggers():
            lg.save()
        self.strategy.barrier("save_checkpoint")

    def _rank_zero_loggers(self) -> list[Any]:
        """Loggers write from rank 0 only (other ranks would each open their own version folder)."""
        return self.loggers if self.is_global_zero else []

    # ------------------------------------------------------------- the run
    def _run(
        self,
        stage: str,
        module: Module | None,
        datamodule: DataModule | None,
        ckpt_path: Any,
        train: Any = None,
        val: Any = None,
        test: Any = None,
        predict: Any = None,
        verbose: bool = True,
        return_predictions: bool = True,
    ) -> Any:
        if module is None:
            module = self.module
        if module is None:
            raise MisconfigurationError(f"trainer.{stage}() needs a module: trainer.{stage}(model, ...).")
        if not isinstance(module, Module):
            raise MisconfigurationError(f"{type(module).__name__} is not a gridlab.trainer.Module: subclass Module.")
        if isinstance(self.strategy, DistributedStrategy) and self.strategy.should_fork():
            kwargs = {"train": train, "val": val, "test": test, "predict": predict, "verbose": verbose}
            return self._run_forked(
                stage, module, datamodule, ckpt_path, return_predictions=return_predictions, **kwargs
            )
        self.module, self.datamodule = module, datamodule
        module.trainer = self
        if datamodule is not None:
            datamodule.trainer = self
        self.strategy.setup_environment()
        self.state = TrainerState(stage=stage, status="running")
        self.should_stop = False
        prev_det = torch.are_deterministic_algorithms_enabled()
        prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=self.deterministic == "warn")
        elif self.deterministic is not None:  # deterministic=False turns them off for the run, as in Lightning
            torch.use_deterministic_algorithms(False)
        try:
            if self.local_rank == 0:  # download/unpack once per node (Lightning's prepare_data_per_node)
                if datamodule is not None:
                    datamodule.prepare_data()
                module.prepare_data()
            self.strategy.barrier("prepare_data")
            if datamodule is not None:
                datamodule.setup(stage)
            self._setup_callbacks(module)
            for cb in self.callbacks:
                cb.setup(self, module, stage)
            module.setup(stage)
            self.strategy.setup_module(module)
            out = getattr(self, f"_run_{stage}")(
                module,
                ckpt_path,
                train=train,
                val=val,
                test=test,
                predict=predict,
                verbose=verbose,
                return_predictions=return_predictions,
            )
            self.state.status = "finished"
            for lg in self._rank_zero_loggers():
                lg.finalize("success")
            return out
        except Preempted as stop:
            self.state.status = "interrupted"
            for lg in self._rank_zero_loggers():
                lg.finalize("preempted")
            if self.is_global_zero:
                print(
                    f"gridlab.trainer: SIGTERM received; saved {stop.path} at epoch {self.current_epoch}, step "
                    f"{self.global_step}; exiting 0 so the run resumes from it",
                    flush=True,
                )
            raise SystemExit(0) from None
        except KeyboardInterrupt as interrupt:
            self.state.status = "interrupted"
            for cb in self.callbacks:
                cb.on_exception(self, module, KeyboardInterrupt())
            for lg in self._rank_zero_loggers():
                lg.finalize("interrupted")
            if self.world_size > 1:
                # Ctrl-C on one rank only: carrying on alone would leave the others in a collective. Stop the group.
                self.strategy.on_exception(interrupt)
                raise
            return None
        except BaseException as exc:
            self.state.status = "failed"
            clearer = self.strategy.on_exception(exc)
            for cb in self.callbacks:
                cb.on_exception(self, module, exc)
            for lg in self._rank_zero_loggers():
                lg.finalize("failed")
            if clearer is not None:
                raise clearer from exc
            raise
        finally:
            for cb in self.callbacks:
                cb.teardown(self, module, stage)
            module.teardown(stage)
            if datamodule is not None:
                datamodule.teardown(stage)
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
            self.strategy.end_run()

    def _run_forked(self, stage: str, module: Module, datamodule: DataModule | None, ckpt_path: Any, **kw: Any) -> Any:
        """devices=N from a notebook: fork the ranks, then take rank 0's results into this process (the
        trained weights, counters, metrics and callback state), as if this process had trained."""
        from .launcher import run_forked

        strategy = self.strategy
        assert isinstance(strategy, DistributedStrategy)  # noqa: S101 - the caller checked

        def rank_main() -> dict[str, Any] | None:
            out = self._run(stage, module, datamodule, ckpt_path, **kw)
            weights = strategy.full_state_dict(module)  # a collective under FSDP: every rank calls it
            payload = None
            if self.is_global_zero:
                payload = {
                    "out": out,
                    "state_dict": weights,
                    "global_step": self.global_step,
                    "current_epoch": self.current_epoch,
                    "status": self.state.status,
                    "callback_metrics": {k: v.detach().cpu() for k, v in self.callback_metrics.items()},
                    "logged_metrics": {k: v.detach().cpu() for k, v in self.logged_metrics.items()},
                    "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
                }
            strategy.close_group()
            return payload

        payload = run_forked(strategy.num_devices, rank_main)
        self.module, self.datamodule, module.trainer = module, datamodule, self
        if payload is None:  # the ranks were preempted: their checkpoint is on disk
            self.state = TrainerState(stage=stage, status="interrupted")
            return None
        module.load_state_dict(payload["state_dict"])
        self.global_step, self.current_epoch = payload["global_step"], payload["current_epoch"]
        self.callback_metrics, self.logged_metrics = payload["callback_metrics"], payload["logged_metrics"]
        for cb in self.callbacks:
            if cb.state_key in payload["callbacks"]:
                cb.load_state_dict(payload["callbacks"][cb.state_key])
        self.state = TrainerState(stage=stage, status=payload["status"])
        return payload["out"]

    def _setup_callbacks(self, module: Module) -> None:
        extra = _as_list(module.configure_callbacks())
        if extra:
            kinds = {type(c) for c in extra}
            self.callbacks = [c for c in self.callbacks if type(c) not in kinds] + extra
        # Checkpoint callbacks run last, so they save what the others recorded.
        self.callbacks.sort(key=lambda c: type(c).__name__ == "ModelCheckpoint")
        self._hooks = {}

    def _loaders(self, given: Any, kind: str) -> list[Any]:
        loaders = _as_list(given)
        if not loaders:
            source = self.datamodule if self.datamodule is not None else self.module
            method = getattr(source, f"{kind}_dataloader", None)
            if method is not None:
                try:
                    loaders = _as_list(method())
                except NotImplementedError:
                    loaders = []
        out = []
        for dl in loaders:
            if (
                os.environ.get(SEED_WORKERS_ENV) == "1"
                and getattr(dl, "num_workers", 0) > 0
                and getattr(dl, "worker_init_fn", 1) is None
            ):
                dl.worker_init_fn = functools.partial(worker_init_fn, rank=self.global_rank)
            if getattr(dl, "num_workers", 0) > 0:
                # The agent's SIGTERM reaches the whole process group: workers must outlive it until the rank
                # has finished its step and saved (see preemption.py).
                dl.worker_init_fn = ignore_sigterm_in_worker(dl.worker_init_fn)
            out.append(self.strategy.process_dataloader(dl) if self.use_distributed_sampler else dl)
        return out

    def _overfit_loader(self, dl: Any) -> Any:
        from torch.utils.data import SequentialSampler

        return with_sampler(dl, SequentialSampler(dl.dataset))

    # ------------------------------------------------------------------ fit
    def _run_fit(self, module: Module, ckpt_path: Any, train: Any, val: Any, **_: Any) -> None:
        self.optimizers, self.lr_scheduler_configs = parse_optimizers(module.configure_optimizers())
        self._wrapped_optimizers = [_WrappedOptimizer(o, self) for o in self.optimizers]
        if module.automatic_optimization:
            if len(self.optimizers) > 1:
                raise MisconfigurationError(
                    "Several optimizers need manual optimization: set `self.automatic_optimization = False` "
                    "in __init__ and step them in training_step."
                )
        else:
            if self.gradient_clip_val:
                raise MisconfigurationError(
                    "gradient_clip_val does not apply to manual optimization: call "
                    "`self.clip_gradients(opt, gradient_clip_val=...)` in training_step."
                )
            if self.accumulate_grad_batches != 1:
                raise MisconfigurationError(
                    "accumulate_grad_batches does not apply to manual optimization: step the optimizer every "
                    "N batches yourself in training_step."
                )
        loaders = self._loaders(train, "train")
        if not loaders:
            raise MisconfigurationError(
                "fit() has no training data: pass train_dataloaders=, a datamodule=, or define train_dataloader()."
            )
        self.train_dataloader = loaders[0]
        if self.overfit_batches:
            # Lightning 2.x: the train loader loses its shuffle; validation keeps its own loaders, limited to
            # the same number of batches (limit_val_batches = overfit_batches).
            self.train_dataloader = self._overfit_loader(self.train_dataloader)
            if self.use_distributed_sampler:
                self.train_dataloader = self.strategy.process_dataloader(self.train_dataloader)
        self.val_dataloaders = self._loaders(val, "val")
        self.num_training_batches = _limit(_len(self.train_dataloader), self.limit_train_batches)
        self.num_val_batches = [_limit(_len(dl), self.limit_val_batches) for dl in self.val_dataloaders]
        self._check_val_check_interval()

        if ckpt_path is not None:
            self._restore(module, ckpt_path)
        if self.is_global_zero:
            for lg in self.loggers:
                lg.log_hyperparams(dict(module.hparams))

        self._call("on_fit_start")
        if self.num_sanity_val_steps and self._has_validation() and self._resume is None:
            self.state.stage = "sanity_check"
            with self._isolated_rng():
                self._call("on_sanity_check_start")
                self._evaluate(
                    "validation",
                    self.val_dataloaders,
                    [
                        n if self.num_sanity_val_steps == -1 else min(n, self.num_sanity_val_steps)
                        for n in self.num_val_batches
                    ],
                    log=False,
                )
                self._call("on_sanity_check_end")
            self.state.stage = "fit"
            self.callback_metrics, self.progress_bar_metrics = {}, {}
        module.train()
        self._fit_loop(module)
        self._call("on_fit_end")
        # The run got past the point it was preempted at: that checkpoint is stale now (and must not win "last").
        self.strategy.remove_checkpoint(os.path.join(self.checkpoint_dir, PREEMPTION_CHECKPOINT))

    def _check_val_check_interval(self) -> None:
        vci, n = self.val_check_interval, self.num_training_batches
        is_int = isinstance(vci, int) and not isinstance(vci, bool)
        if self.check_val_every_n_epoch is None:
            if not is_int and vci != 1.0:  # 1.0 is the default, as Lightning's None
                raise MisconfigurationError(
                    f"val_check_interval={vci!r} must be an int (train batches) when check_val_every_n_epoch=None."
                )
        elif is_int and 0 < n < vci:
            raise MisconfigurationError(
                f"val_check_interval ({vci}) must be at most the number of training batches ({n}). To validate "
                "every N batches across epochs set check_val_every_n_epoch=None; to disable validation set "
                "limit_val_batches=0."
            )

    def _has_validation(self) -> bool:
        return (
            bool(self.val_dataloaders)
            and any(self.num_val_batches)
            and self.module is not None
            and type(self.module).validation_step is not Module.validation_step
        )

    @contextmanager
    def _isolated_rng(self) -> Any:
        snapshot = collect_rng_states()
        outer, self._rng_snapshot = self._rng_snapshot, snapshot
        try:
            yield
        finally:
            set_rng_states(snapshot)
            self._rng_snapshot = outer

    def _done(self) -> bool:
        if self.world_size > 1:  # epoch-end hooks may have set should_stop on some ranks only
            self.should_stop = self.strategy.reduce_boolean_decision(self.should_stop, all=False)
        if self.max_steps != -1 and self.global_step >= self.max_steps:
            return True
        if self.max_epochs != -1 and self.current_epoch >= self.max_epochs:
            return True
        return self.should_stop and self.current_epoch >= self.min_epochs

    def _fit_loop(self, module: Module) -> None:
        self._t0 = time.monotonic() - self._time_elapsed
        resume, self._resume = self._resume, None
        if resume is not None and resume["batches"] == 0:
            set_rng_states(resume["rng"])
            resume = None
        self._call("on_train_start")
        self._sigterm.install()
        try:
            while not self._done():
                self._train_epoch(module, resume)
                resume = None
        finally:
            self._sigterm.uninstall()
        self._call("on_train_end")

    def _val_check_batch(self) -> float:
        vci = self.val_check_interval
        if isinstance(vci, int) and not isinstance(vci, bool):
            return vci
        return max(1, int(self.num_training_batches * vci)) if self.num_training_batches != math.inf else math.inf

    def _train_epoch(self, module: Module, resume: dict[str, Any] | None) -> None:
        prog = self.fit_progress
        prog.epoch.ready += 1
        if resume is None:
            self._train_results = Results()
        self._results = self._train_results
        prog.batch_current = Progress() if resume is None else prog.batch_current
        self._call("on_train_epoch_start")
        prog.epoch.started += 1
        set_epoch = getattr(getattr(self.train_dataloader, "sampler", None), "set_epoch", None)
        if set_epoch is not None:
            set_epoch(self.current_epoch)
        if resume is not None:
            set_rng_states(resume["epoch_rng"])
        self._epoch_rng = collect_rng_states()
        iterator = iter(self.train_dataloader)  # draws the shuffle permutation (see the module docstring)
        start = 0
        if resume is not None:
            start = resume["batches"]
            for _ in range(min(start, self.num_training_batches)):
                next(iterator)
            set_rng_states(resume["rng"])
        n = self.num_training_batches
        val_every = self._val_check_batch()
        val_this_epoch = self._has_validation() and (
            self.check_val_every_n_epoch is None or (self.current_epoch + 1) % self.check_val_every_n_epoch == 0
        )
        acc = self.accumulate_grad_batches
        batch_idx = start
        stopped_mid_epoch = False
        while batch_idx < n:
            try:
                batch = next(iterator)
            except StopIteration:
                break
            self.batch_idx = batch_idx
            batch = self.strategy.batch_to_device(batch)
            self._current_batch, self._batch_size = batch, None
            self._pending_step_logs = {}
            prog.batch_total.ready += 1
            prog.batch_current.ready += 1
            if self._call("on_train_batch_start", batch, batch_idx) == -1:
                break
            prog.batch_total.started += 1
            prog.batch_current.started += 1
            last = batch_idx + 1 >= n
            step_before = self.global_step
            if self.truncated_bptt_steps:
                outputs = self._tbptt_batch(module, batch, batch_idx)
            elif module.automatic_optimization:
                outputs = self._automatic_batch(module, batch, batch_idx, (batch_idx + 1) % acc == 0 or last)
            else:
                with self.strategy.precision.forward_context():
                    outputs = self.strategy.training_step(module, batch, batch_idx)
            stepped = self.global_step != step_before
            prog.batch_total.processed += 1
            prog.batch_current.processed += 1
            if stepped:
                if module.automatic_optimization:
                    # Manual optimization steps its schedulers itself (sch.step()), as Lightning documents.
                    self._step_schedulers("step")
                if (self._batches_that_stepped + 1) % self.log_every_n_steps == 0 or self.should_stop:
                    self._log_to_loggers(self._pending_step_logs, self._batches_that_stepped)
                self._batches_that_stepped += 1
            self._call("on_train_batch_end", outputs, batch, batch_idx)
            prog.batch_total.completed += 1
            prog.batch_current.completed += 1
            self._current_batch = None
            batch_idx += 1
            # check_val_every_n_epoch=None: every val_check_interval batches counted across epochs.
            seen = prog.batch_total.completed if self.check_val_every_n_epoch is None else batch_idx
            if val_this_epoch and (seen % val_every == 0 or (last and self.val_check_interval == 1.0)):
                self._validate_during_fit()
            if self._max_time is not None and time.monotonic() - self._t0 >= self._max_time:
                self.should_stop = True
            if stepped and self._sync_stop_flags():
                self._save_preemption_checkpoint()
            if (
                stepped
                and not last
                and (
                    self.should_stop
                    and self.current_epoch >= self.min_epochs
                    or self.max_steps != -1
                    and self.global_step >= self.max_steps
                )
            ):
                stopped_mid_epoch = True
                break
        self._time_elapsed = time.monotonic() - self._t0
        # A stop inside the epoch (max_steps, max_time, should_stop) still runs the epoch end, as Lightning does:
        # epoch metrics, on_train_epoch_end (so ModelCheckpoint saves), the logger flush. The epoch's counters
        # stay "started, not processed", so a checkpoint taken now resumes inside it, exactly; for the same
        # reason epoch-interval schedulers step only when the epoch really finishes.
        to_log = self._update_epoch_metrics()
        if not stopped_mid_epoch:
            if module.automatic_optimization:
                self._step_schedulers("epoch", plateau=False)
            prog.epoch.processed += 1
        self._call("on_train_epoch_end", module_first=True)
        to_log.update(self._update_epoch_metrics())
        # Lightning steps ReduceLROnPlateau after on_train_epoch_end, so it may monitor what that hook logs.
        if not stopped_mid_epoch and module.automatic_optimization:
            self._step_schedulers("epoch", plateau=True)
        self._log_to_loggers(to_log, max(self._batches_that_stepped - 1, 0), epoch=True)
        for lg in self._rank_zero_loggers():
            lg.save()
        if stopped_mid_epoch:
            return
        prog.epoch.completed += 1
        self.current_epoch += 1

    def _sync_stop_flags(self) -> bool:
        """At an optimizer step boundary, agree on stopping: any rank's SIGTERM preempts every rank, and any
        rank's should_stop (a callback, max_time on a slightly faster clock) stops every rank, so no rank is
        left waiting in a collective. One tiny all-reduce per step when distributed. Returns "preempt"."""
        if self.world_size == 1:
            return self._sigterm.requested
        preempt, self.should_stop = self.strategy.any_of([self._sigterm.requested, self.should_stop])
        return preempt

    def _save_preemption_checkpoint(self) -> None:
        self._time_elapsed = time.monotonic() - self._t0
        path = os.path.join(self.checkpoint_dir, PREEMPTION_CHECKPOINT)
        self.save_checkpoint(path)
        raise Preempted(path)

    def _training_loss(self, output: Any) -> torch.Tensor:
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, dict) and "loss" in output:
            return output["loss"]
        if output is None:
            raise MisconfigurationError(
                "training_step returned None: return the loss, or set automatic_optimization = False "
                "(and step the optimizers yourself)."
            )
        raise MisconfigurationError(
            f"training_step returned {type(output).__name__}: return the loss tensor or a dict with a 'loss' key."
        )

    def _automatic_batch(self, module: Module, batch: Any, batch_idx: int, step: bool, *extra: Any) -> Any:
        with self.strategy.backward_sync(step):  # DDP: no gradient all-reduce inside an accumulation window
            with self.strategy.precision.forward_context():
                output = self.strategy.training_step(module, batch, batch_idx, *extra)
            loss = self._training_loss(output)
            self._backward(loss / self.accumulate_grad_batches if self.accumulate_grad_batches > 1 else loss)
        if step:
            opt = self.optimizers[0]
            self._optimizer_step(opt)
            self._call("on_before_zero_grad", opt)
            opt.zero_grad(set_to_none=True)
        if isinstance(output, dict):
            return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in output.items()}
        return {"loss": loss.detach()}

    def _tbptt_batch(self, module: Module, batch: Any, batch_idx: int) -> Any:
        if not module.automatic_optimization:
            raise MisconfigurationError("truncated_bptt_steps needs automatic optimization.")
        hiddens = None
        outputs = []
        assert self.truncated_bptt_steps is not None  # noqa: S101 - the caller checked
        for chunk in module.tbptt_split_batch(batch, self.truncated_bptt_steps):
            out = self._automatic_batch(module, chunk, batch_idx, True, hiddens)
            hiddens = out.get("hiddens") if isinstance(out, dict) else None
            hiddens = _detach(hiddens)
            outputs.append(out)
        return outputs[-1] if outputs else None

    def _backward(self, loss: torch.Tensor) -> None:
        self._call("on_before_backward", loss)
        self.strategy.backward(loss)
        self._call("on_after_backward")

    def _optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Any = None) -> Any:
        if closure is None:
            # Lightning's order: unscale (16-mixed; once per step) so the hook sees real gradients, then clip.
            self.strategy.precision.unscale_gradients(optimizer)
        self._call("on_before_optimizer_step", optimizer)
        if self.gradient_clip_val and self.module is not None and self.module.automatic_optimization:
            self._clip_gradients(optimizer, self.gradient_clip_val, self.gradient_clip_algorithm)
        out = self.strategy.optimizer_step(optimizer, closure)
        self.global_step += 1
        return out

    def _clip_gradients(self, optimizer: torch.optim.Optimizer, value: float | None, algorithm: str | None) -> None:
        value = self.gradient_clip_val if value is None else value
        if not value:
            return
        self.strategy.precision.unscale_gradients(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if (algorithm or self.gradient_clip_algorithm) == "value":
            torch.nn.utils.clip_grad_value_(params, value)
        else:
            torch.nn.utils.clip_grad_norm_(params, value)

    def _step_schedulers(self, interval: str, plateau: bool | None = None) -> None:
        for cfg in self.lr_scheduler_configs:
            if cfg.interval != interval or (plateau is not None and cfg.reduce_on_plateau != plateau):
                continue
            count = self.global_step if interval == "step" else self.current_epoch + 1
            if cfg.frequency and count % cfg.frequency:
                continue
            if cfg.reduce_on_plateau:
                value = self.callback_metrics.get(cfg.monitor or "")
                if value is None:
                    if cfg.strict:
                        raise MisconfigurationError(
                            f"ReduceLROnPlateau monitors {cfg.monitor!r}, which was not logged; logged: "
                            f"{sorted(self.callback_metrics)}. Log it with self.log({cfg.monitor!r}, ...)."
                        )
                    continue
                cfg.scheduler.step(float(value))
            else:
                cfg.scheduler.step()

    def _validate_during_fit(self) -> None:
        module = self._require_module()
        with self._isolated_rng():
            self._evaluate("validation", self.val_dataloaders, self.num_val_batches, log=True)
        module.train()

    # ------------------------------------------------------------ evaluation
    def _require_module(self) -> Module:
        if self.module is None:
            raise MisconfigurationError("no module is attached: call fit/validate/test/predict with a Module")
        return self.module

    def _evaluate(self, prefix: str, loaders: list[Any], limits: list[float], log: bool) -> list[dict[str, float]]:
        module = self._require_module()
        step_fn = getattr(module, f"{prefix}_step")
        saved_results, saved_batch = self._results, self._current_batch
        self._results = Results()
        self._in_eval = True
        was_training = module.training
        module.eval()
        try:
            self._call(f"on_{prefix}_start")
            self._call(f"on_{prefix}_epoch_start")
            with torch.no_grad():
                for dl_idx, loader in enumerate(loaders):
                    self._dataloader_suffix = f"/dataloader_idx_{dl_idx}" if len(loaders) > 1 else ""
                    extra = (dl_idx,) if len(loaders) > 1 else ()
                    for batch_idx, batch in enumerate(loader):
                        if batch_idx >= limits[dl_idx]:
                            break
                        batch = self.strategy.batch_to_device(batch)
                        self._current_batch, self._batch_size = batch, None
                        self._call(f"on_{prefix}_batch_start", batch, batch_idx, *extra)
                        with self.strategy.precision.forward_context():
                            out = step_fn(batch, batch_idx, *extra)
                        self._call(f"on_{prefix}_batch_end", out, batch, batch_idx, *extra)
                    self._dataloader_suffix = ""
            to_log = self._update_epoch_metrics()
            self._call(f"on_{prefix}_epoch_end")
            to_log.update(self._update_epoch_metrics())
            if log:
                self._log_to_loggers(to_log, self._batches_that_stepped)
            self._call(f"on_{prefix}_end")
            results = self._results
        finally:
            self._dataloader_suffix = ""
            self._in_eval = False
            self._results, self._current_batch = saved_results, saved_batch
            module.train(was_training)
        per_loader: list[dict[str, float]] = [{} for _ in loaders]
        # sync_dist metrics come back reduced over the ranks (as callback_metrics are); the rest are this rank's.
        for name, (_m, key, v) in results.epoch_values(self.strategy.reduce).items():
            m = re.search(r"/dataloader_idx_(\d+)$", name)
            idx = int(m.group(1)) if m else None
            for i, d in enumerate(per_loader):
                if idx is None or idx == i:
                    d[key] = float(v)
        return per_loader

    def _run_eval_stage(self, stage: str, module: Module, ckpt_path: Any, given: Any, verbose: bool) -> Any:
        kind = "val" if stage == "validate" else "test"
        prefix = "validation" if stage == "validate" else "test"
        loaders = self._loaders(given, kind)
        if not loaders:
            raise MisconfigurationError(f"trainer.{stage}() has no data: pass dataloaders= or a datamodule=.")
        limit = self.limit_val_batches if stage == "validate" else self.limit_test_batches
        limits = [_limit(_len(dl), limit) for dl in loaders]
        if stage == "validate":
            self.val_dataloaders, self.num_val_batches = loaders, limits
        else:
            self.test_dataloaders, self.num_test_batches = loaders, limits
        if ckpt_path is not None:
            self._restore(module, ckpt_path, weights_only=True)
        results = self._evaluate(prefix, loaders, limits, log=True)
        if verbose and self.is_global_zero:
            for i, r in enumerate(results):
                title = f"{stage} results" + (f" (dataloader {i})" if len(results) > 1 else "")
                print(title + ": " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(r.items())))
        return results

    def _run_validate(self, module: Module, ckpt_path: Any, val: Any, verbose: bool, **_: Any) -> Any:
        return self._run_eval_stage("validate", module, ckpt_path, val, verbose)

    def _run_test(self, module: Module, ckpt_path: Any, test: Any, verbose: bool, **_: Any) -> Any:
        return self._run_eval_stage("test", module, ckpt_path, test, verbose)

    def _run_predict(
        self, module: Module, ckpt_path: Any, predict: Any, return_predictions: bool = True, **_: Any
    ) -> list[Any] | None:
        loaders = self._loaders(predict, "predict")
        if not loaders:
            raise MisconfigurationError("trainer.predict() has no data: pass dataloaders= or a datamodule=.")
        self.predict_dataloaders = loaders
        self.num_predict_batches = [_limit(_len(dl), self.limit_predict_batches) for dl in loaders]
        if ckpt_path is not None:
            self._restore(module, ckpt_path, weights_only=True)
        was_training = module.training
        module.eval()
        all_preds: list[list[Any]] = []
        try:
            self._call("on_predict_start")
            self._call("on_predict_epoch_start")
            with torch.no_grad():
                for dl_idx, loader in enumerate(loaders):
                    extra = (dl_idx,) if len(loaders) > 1 else ()
                    preds = []
                    for batch_idx, batch in enumerate(loader):
                        if batch_idx >= self.num_predict_batches[dl_idx]:
                            break
                        batch = self.strategy.batch_to_device(batch)
                        self._call("on_predict_batch_start", batch, batch_idx, *extra)
                        with self.strategy.precision.forward_context():
                            out = module.predict_step(batch, batch_idx, *extra)
                        self._call("on_predict_batch_end", out, batch, batch_idx, *extra)
                        if return_predictions:
                            preds.append(out)
                    all_preds.append(preds)
            self._call("on_predict_epoch_end")
            self._call("on_predict_end")
        finally:
            module.train(was_training)
        if not return_predictions:
            return None
        return all_preds[0] if len(all_preds) == 1 else all_preds

    # ------------------------------------------------------------ checkpoints
    def _dump_checkpoint(self, weights_only: bool = False) -> dict[str, Any]:
        module = self.module
        if module is None:
            raise RuntimeError("No module attached: call fit/validate/test first.")
        ckpt: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "epoch": self.current_epoch,
            "global_step": self.global_step,
            "state_dict": self.strategy.module_state_dict(module),
            "hyper_parameters": dict(module.hparams),
        }
        if self.datamodule is not None and self.datamodule.hparams:
            ckpt["datamodule_hyper_parameters"] = dict(self.datamodule.hparams)
        if not weights_only:
            prog = self.fit_progress
            ckpt.update(
                {
                    "optimizer_states": [self.strategy.optimizer_state_dict(o) for o in self.optimizers],
                    "lr_schedulers": [c.scheduler.state_dict() for c in self.lr_scheduler_configs],
                    "precision": self.strategy.precision.state_dict(),
                    "loops": {
                        "fit_loop": {
                            "epoch_progress": asdict(prog.epoch),
                            "batch_progress": {
                                "total": asdict(prog.batch_total),
                                "current": asdict(prog.batch_current),
                            },
                            "batches_that_stepped": self._batches_that_stepped,
                            "epoch_rng_states": self._epoch_rng,
                            "time_elapsed": self._time_elapsed
                            if self._current_batch is None
                            else time.monotonic() - self._t0,
                            "results": self._train_results.state_dict(),
                        }
                    },
                    "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
                    "rng_states": self._rng_snapshot if self._rng_snapshot is not None else collect_rng_states(),
                }
            )
            if self.datamodule is not None:
                ckpt["datamodule"] = self.datamodule.state_dict()
            if self.world_size > 1:
                # What differs between ranks (RNG streams, each rank's share of the epoch metrics), from every
                # rank, so a resume at the same world size gives each rank its own back.
                fit_loop = ckpt["loops"]["fit_loop"]
                mine = {"rng_states": ckpt["rng_states"], "epoch_rng_states": self._epoch_rng}
                mine["results"] = apply_to_tensors(fit_loop["results"], lambda t: t.detach().cpu())
                fit_loop["per_rank"] = self.strategy.all_gather_object(mine)
            for cb in self._hook_fns("on_save_checkpoint"):
                cb(self, module, ckpt)
        module.on_save_checkpoint(ckpt)
        return ckpt

    def _on_this_node(self, path: str | None, local_root: str) -> str | None:
        """Rank 0's `path`, with its part under rank 0's `local_root` put under this rank's `local_root` (a
        folder each node has at a path of its own: its checkpoint folder, or the checkpoint it resumes from)."""
        root0, path = self.strategy.broadcast((local_root, path))
        if path is None or not root0 or not local_root or root0 == local_root:
            return path
        rel = os.path.relpath(path, root0)
        if rel == os.curdir:
            return local_root
        return path if rel.startswith(os.pardir) else os.path.join(local_root, rel)

    def _resolve_ckpt_path(self, ckpt_path: Any) -> str | None:
        if ckpt_path == "last":
            # Lightning looks where the checkpoint callbacks write, not only the default folder.
            dirs = {self.checkpoint_dir, *(d for c in self.checkpoint_callbacks if (d := getattr(c, "dirpath", None)))}
            found = sorted(
                {
                    f
                    for d in dirs
                    for pattern in ("last*.ckpt", PREEMPTION_CHECKPOINT)
                    for f in glob.glob(os.path.join(os.fspath(d), "**", pattern), recursive=True)
                }
            )
            if not found:
                warnings.warn(
                    f'ckpt_path="last" but no last*.ckpt or {PREEMPTION_CHECKPOINT} in {sorted(dirs)}: starting fresh.',
                    stacklevel=3,
                )
                return None
            return max(found, key=os.path.getmtime)
        if ckpt_path == "best":
            cb = self.checkpoint_callback
            best = getattr(cb, "best_model_path", "") if cb is not None else ""
            if not best:
                raise MisconfigurationError(
                    'ckpt_path="best" but there is no best checkpoint: add ModelCheckpoint(monitor=...) to the '
                    "trainer's callbacks and fit first, or pass a checkpoint path."
                )
            return os.fspath(best)
        return os.fspath(ckpt_path)

    def _restore(self, module: Module, ckpt_path: Any, weights_only: bool = False) -> None:
        # "last"/"best": rank 0's choice. GRIDLAB_RESUME_FROM: each node's agent put the checkpoint on its own
        # machine, at a path of its own.
        path = self._on_this_node(self._resolve_ckpt_path(ckpt_path), os.environ.get("GRIDLAB_RESUME_FROM", ""))
        if path is None:
            return
        self.ckpt_path = path
        ckpt = self.strategy.load_checkpoint(path, () if weights_only else self.optimizers)
        version = ckpt.get("format_version", 0)
        if version > FORMAT_VERSION:
            raise MisconfigurationError(
                f"{path} has checkpoint format {version}, newer than this trainer's {FORMAT_VERSION}: upgrade gridlab."
            )
        module.on_load_checkpoint(ckpt)
        self.strategy.load_module_state_dict(module, ckpt["state_dict"])
        if weights_only or "loops" not in ckpt:
            return
        for cb in self._hook_fns("on_load_checkpoint"):
            cb(self, module, ckpt)
        states = ckpt.get("callbacks", {})
        for cb in self.callbacks:
            if cb.state_key in states:
                cb.load_state_dict(states[cb.state_key])
        for opt, state in zip(self.optimizers, ckpt.get("optimizer_states", []), strict=False):
            self.strategy.load_optimizer_state_dict(opt, state)
        for cfg, state in zip(self.lr_scheduler_configs, ckpt.get("lr_schedulers", []), strict=False):
            cfg.scheduler.load_state_dict(state)
        self.strategy.precision.load_state_dict(ckpt.get("precision", {}))
        if self.datamodule is not None and "datamodule" in ckpt:
            self.datamodule.load_state_dict(ckpt["datamodule"])
        fit = ckpt["loops"]["fit_loop"]
        prog = self.fit_progress
        prog.epoch.load(fit["epoch_progress"])
        prog.batch_total.load(fit["batch_progress"]["total"])
        prog.batch_current.load(fit["batch_progress"]["current"])
        self.current_epoch = ckpt["epoch"]
        self.global_step = ckpt["global_step"]
        self._batches_that_stepped = fit["batches_that_stepped"]
        self._time_elapsed = fit.get("time_elapsed", 0.0)
        # Resume is decided by the counters alone: an epoch that stopped inside (max_steps, max_time) ran its
        # epoch end but stays "started, not processed"; one whose batches all ran is "processed".
        if prog.epoch.processed > prog.epoch.completed:
            # Processed but saved before completion (on_train_epoch_end, ModelCheckpoint's usual place): that
            # epoch is done, so resume at the next one, as Lightning does, instead of training it again.
            prog.epoch.completed = prog.epoch.processed
            self.current_epoch += 1
        open_epoch = prog.epoch.started > prog.epoch.processed
        batches = prog.batch_current.processed if open_epoch else 0
        if open_epoch:
            # The epoch's ready/started counters are counted again when it re-enters.
            prog.epoch.ready -= 1
            prog.epoch.started -= 1
        per_rank = fit.get("per_rank") or []
        own = per_rank[self.global_rank] if len(per_rank) == self.world_size else None  # else rank 0's
        if open_epoch:
            self._train_results.load_state_dict(own["results"] if own else fit.get("results", {}))
        epoch_rng = own["epoch_rng_states"] if own else fit["epoch_rng_states"]
        rng = own["rng_states"] if own else ckpt["rng_states"]
        self._resume = {"batches": batches, "epoch_rng": epoch_rng, "rng": rng}


def _detach(h: Any) -> Any:
    if isinstance(h, torch.Tensor):
        return h.detach()
    if isinstance(h, (list, tuple)):
        return type(h)(_detach(x) for x in h)
    return h


def _parse_devices(devices: Any, accelerator: str) -> list[int]:
    """Device indices on this node: "auto" (every GPU, or one CPU process), N, -1 (every GPU), "0,1", [0, 1]."""
    gpus = cuda_device_count() if accelerator == "cuda" else 0
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return list(range(gpus)) if gpus else [0]
        try:
            devices = [int(x) for x in text.split(",") if x.strip()] if "," in text else int(text)
        except ValueError:
            raise MisconfigurationError(f'devices must be "auto", an int, -1 or indices, got {devices!r}.') from None
    if isinstance(devices, bool):
        raise MisconfigurationError("devices must be an int or a list of indices, not a bool.")
    if isinstance(devices, int):
        if devices == -1:
            if accelerator != "cuda":
                raise MisconfigurationError("devices=-1 means every GPU; on CPU give the number of processes.")
            return list(range(gpus))
        if devices < 1:
            raise MisconfigurationError(f"devices must be >= 1 (or -1 for every GPU), got {devices}.")
        if accelerator == "cuda" and devices > gpus:
            raise MisconfigurationError(f"devices={devices} but only {gpus} CUDA GPU(s) are visible.")
        return list(range(devices))
    if isinstance(devices, (list, tuple)) and devices and all(isinstance(d, int) for d in devices):
        if accelerator == "cuda" and any(not 0 <= d < gpus for d in devices):
            raise MisconfigurationError(f"devices={list(devices)} names GPUs that are not visible ({gpus} are).")
        return list(devices)
    raise MisconfigurationError(f'devices must be "auto", an int, -1 or a list of indices, got {devices!r}.')
