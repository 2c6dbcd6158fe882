"""The Strategy seam: how the model, batches, backward, optimizer step, sampler and checkpoint IO are
handled. The loop talks only to this interface; DDP and FSDP subclass it (issue 4)."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

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
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    def barrier(self, name: str | None = None) -> None: ...

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def reduce(self, value: Any, reduce_op: str = "mean") -> Any:
        return value

    # -- model and data ---------------------------------------------------
    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module = self.precision.convert_module(module)
        module.to(self.root_device)
        self.module = module
        return module

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

    # -- checkpoint IO ----------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
        """Write atomically: a temp file in the same folder, fsync, then os.replace."""
        if not self.is_global_zero:
            return
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def load_checkpoint(self, path: str | os.PathLike) -> dict[str, Any]:
        # Checkpoints hold python objects (RNG states, hyperparameters): load them in full.
        return torch.load(os.fspath(path), map_location="cpu", weights_only=False)  # noqa: S614

    def teardown(self) -> None: ...


class SingleDeviceStrategy(Strategy):
    """One process, one device (CPU or one GPU)."""
