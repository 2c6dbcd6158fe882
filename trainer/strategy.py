"""The Strategy seam: how the model, batches, backward, optimizer step, sampler, collectives and
checkpoint IO are handled. The loop talks only to this interface; `SingleDeviceStrategy` is one
process, `DDPStrategy` and `FSDPStrategy` (in ddp.py, fsdp.py) span a torch.distributed group."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import torch

from . import checkpoint as ckpt_io
from .precision import Precision, apply_to_tensors


class Strategy:
    """Base class. Subclasses override what differs across processes."""

    def __init__(self, device: torch.device, precision: Precision) -> None:
        self.root_device = device
        self.precision = precision
        self.module: torch.nn.Module | None = None

    # -- process topology -------------------------------------------------
    @property
    def world_size(self) -> int:
        return 1

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    def setup_environment(self) -> None:
        """Join (or start) the process group; called at the start of every fit/validate/test/predict."""

    def barrier(self, name: str | None = None) -> None: ...

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def reduce(self, value: Any, reduce_op: str = "mean") -> Any:
        return value

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002 - Lightning's name
        """With all=True: every rank decided so; with all=False: any rank did."""
        return decision

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order."""
        return [obj]

    def any_of(self, flags: list[bool]) -> list[bool]:
        """Element-wise: did any rank set each flag? (The per-step stop check; one process: the flags.)"""
        return flags

    def on_exception(self, exc: BaseException) -> BaseException | None:
        """A fit/validate/test/predict raised on this rank; may return a clearer error to raise instead."""
        return None

    # -- model and data ---------------------------------------------------
    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module = self.precision.convert_module(module)
        module.to(self.root_device)
        self.module = module
        return module

    def training_step(self, module: Any, *args: Any) -> Any:
        """Run `module.training_step`; distributed strategies route it through their wrapper."""
        return module.training_step(*args)

    def backward_sync(self, should_sync: bool) -> contextlib.AbstractContextManager:
        """Around a micro-batch's forward and backward: DDP skips the gradient all-reduce when False."""
        return contextlib.nullcontext()

    def batch_to_device(self, batch: Any) -> Any:
        device = self.root_device
        moved = batch if device.type == "cpu" else apply_to_tensors(batch, lambda t: t.to(device, non_blocking=True))
        return self.precision.convert_input(moved)

    def process_dataloader(self, dataloader: Any) -> Any:
        """Wrap the sampler (distributed strategies shard it); a no-op on one device."""
        return dataloader

    # -- optimization -----------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        self.precision.backward(loss)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Any = None) -> Any:
        return self.precision.optimizer_step(optimizer, closure)

    # -- state dicts --------------------------------------------------------
    def module_state_dict(self, module: torch.nn.Module) -> dict[str, Any]:
        return module.state_dict()

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_module_state_dict(self, module: torch.nn.Module, state: dict[str, Any], strict: bool = True) -> None:
        module.load_state_dict(state, strict=strict)

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        if ckpt_io.is_name_keyed(state):  # written by FSDP (sharded) or another world size
            from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

            assert self.module is not None  # noqa: S101 - setup_module ran first
            set_optimizer_state_dict(self.module, optimizer, state)
        else:
            optimizer.load_state_dict(state)

    # -- checkpoint IO ----------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
        """Rank 0 writes one file, atomically (temp file, fsync, rename)."""
        if self.is_global_zero:
            ckpt_io.write_file(checkpoint, path)

    def load_checkpoint(
        self, path: str | os.PathLike, optimizers: Sequence[torch.optim.Optimizer] = ()
    ) -> dict[str, Any]:
        """A file, or a sharded folder (resharded into this process's module and `optimizers`)."""
        return ckpt_io.read(path, self.module, optimizers, no_dist=self.world_size == 1)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        if self.is_global_zero:
            ckpt_io.remove(path)

    def end_run(self) -> None:
        """The end of one fit/validate/test/predict (after its teardown hooks)."""

    def teardown(self) -> None: ...


class SingleDeviceStrategy(Strategy):
    """One process, one device (CPU or one GPU)."""
