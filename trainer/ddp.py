"""`strategy="ddp"`: torch's DistributedDataParallel, one process per device.

The Module's `training_step` runs through the DDP wrapper (its forward is the step), so DDP's
gradient hooks see the real computation; evaluation steps call the Module directly. Checkpoints hold
the unwrapped Module's weights (no "module." prefix) and are written by rank 0 only.
"""

from __future__ import annotations

import contextlib
import datetime
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from .distributed import DistributedStrategy


class _TrainingStep(torch.nn.Module):
    """An nn.Module whose forward is the wrapped Module's training_step, for DDP to wrap."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any) -> Any:
        return self.module.training_step(*args)  # type: ignore[operator]


class DDPStrategy(DistributedStrategy):
    """Data parallel: every rank holds the whole model; gradients are averaged in backward.

    Args:
        find_unused_parameters: set True when some parameters get no gradient in a step (costs a
            graph traversal per step; DDP's error message says when it is needed).
        static_graph: DDP's static-graph optimisation for models whose graph never changes.
        gradient_as_bucket_view: DDP's memory saving (gradients alias the communication buckets).
        timeout: bound on every collective (seconds, a timedelta, or "DD:HH:MM:SS"); default 30 min,
            or $GRIDLAB_DIST_TIMEOUT.
        process_group_backend: "nccl" on CUDA and "gloo" on CPU unless given.
    """

    strategy_name = "ddp"

    def __init__(
        self,
        *,
        find_unused_parameters: bool = False,
        static_graph: bool = False,
        gradient_as_bucket_view: bool = False,
        timeout: float | str | datetime.timedelta | None = None,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(timeout=timeout, process_group_backend=process_group_backend)
        self.find_unused_parameters = find_unused_parameters
        self.static_graph = static_graph
        self.gradient_as_bucket_view = gradient_as_bucket_view
        self.model: DistributedDataParallel | None = None

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module = super().setup_module(module)
        if self.world_size > 1:
            # DDP broadcasts rank 0's parameters and buffers here, so every rank starts equal.
            self.model = DistributedDataParallel(
                _TrainingStep(module),
                device_ids=[self.root_device.index] if self.root_device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters,
                static_graph=self.static_graph,
                gradient_as_bucket_view=self.gradient_as_bucket_view,
            )
        return module

    def training_step(self, module: Any, *args: Any) -> Any:
        if self.model is None:
            return module.training_step(*args)
        return self.model(*args)

    def backward_sync(self, should_sync: bool) -> contextlib.AbstractContextManager:
        if self.model is None or should_sync:
            return contextlib.nullcontext()
        return self.model.no_sync()

    def teardown(self) -> None:
        self.model = None
