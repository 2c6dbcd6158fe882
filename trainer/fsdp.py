"""`strategy="fsdp"`: torch's fully sharded data parallel (FSDP2, `fully_shard`), gridlab's answer to
DeepSpeed ZeRO-3: parameters, gradients and optimizer state are sharded across ranks, gathered one
wrapped block at a time for compute.

- `auto_wrap_policy`: which submodules become their own shard unit (a set of module classes, or a
  callable `(module) -> bool`); the root is always wrapped. Without one, the whole model is one unit
  (the memory saving then comes only from sharded optimizer state and gradients).
- `precision="bf16-mixed"`: parameters are gathered in bf16 for compute, gradients reduced in fp32.
- `cpu_offload=True`: sharded parameters, gradients and optimizer state live in CPU memory.
- Checkpoints: a sharded folder through torch.distributed.checkpoint (every rank writes its part, no
  rank ever holds the whole model), loadable at any world size and by one plain process; with
  `state_dict_type="full"` rank 0 gathers one ordinary file instead.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from . import checkpoint as ckpt_io
from .distributed import DistributedStrategy
from .errors import MisconfigurationError

_STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")


class FSDPStrategy(DistributedStrategy):
    """Fully sharded data parallel over torch.distributed (see the module docstring)."""

    strategy_name = "fsdp"

    def __init__(
        self,
        *,
        auto_wrap_policy: Iterable[type[torch.nn.Module]] | Callable[[torch.nn.Module], bool] | None = None,
        cpu_offload: bool = False,
        reshard_after_forward: bool = True,
        state_dict_type: str = "sharded",
        timeout: float | str | datetime.timedelta | None = None,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(timeout=timeout, process_group_backend=process_group_backend)
        if state_dict_type not in ("sharded", "full"):
            raise MisconfigurationError(f'state_dict_type must be "sharded" or "full", got {state_dict_type!r}.')
        if auto_wrap_policy is None or callable(auto_wrap_policy) and not isinstance(auto_wrap_policy, type):
            self._wrap: Callable[[torch.nn.Module], bool] | None = auto_wrap_policy
        else:
            classes = tuple(auto_wrap_policy) if not isinstance(auto_wrap_policy, type) else (auto_wrap_policy,)
            self._wrap = lambda m: isinstance(m, classes)
        self.cpu_offload = cpu_offload  # checked in setup_module: it needs the accelerator the trainer picked
        self.reshard_after_forward = reshard_after_forward
        self.state_dict_type = state_dict_type

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FSDPModule

        if isinstance(module, FSDPModule):  # a second fit/test on the same module: already sharded
            self.module = module
            return module
        if self.cpu_offload and self.root_device.type == "cpu":
            raise MisconfigurationError(
                "FSDPStrategy(cpu_offload=True) moves shards between GPU and CPU memory; on accelerator='cpu' the "
                "shards are in CPU memory already: drop cpu_offload."
            )
        # No module.to(device) first: fully_shard moves each unit's parameters to the device as it shards
        # them, so the device never holds more than one unit's full parameters at a time.
        module = self.precision.convert_module(module)
        self._shard(module)
        self.module = module
        return module

    def backward_sync(self, should_sync: bool) -> contextlib.AbstractContextManager:
        """Inside an accumulation window, keep unsharded gradients and reduce-scatter once, at the last one."""
        from torch.distributed.fsdp import FSDPModule

        module = self.module
        if should_sync or not isinstance(module, FSDPModule):
            return contextlib.nullcontext()
        return _no_gradient_sync(module)

    def end_run(self) -> None:
        """A group of one stays up after the run: the module's parameters are DTensors on its mesh."""

    def _default_backend(self) -> str:
        # With cpu_offload the gradients live on the CPU: clipping reduces their norms there, which needs gloo
        # beside NCCL (torch routes each collective by the tensors' device).
        if self.cpu_offload and self.root_device.type == "cuda":
            return "cpu:gloo,cuda:nccl"
        return super()._default_backend()

    def _mp_policy(self) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        name = getattr(self.precision, "name", "32-true")
        if name == "bf16-mixed":
            return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if name == "16-mixed":
            raise MisconfigurationError(
                'FSDP here supports precision "32-true", "bf16-mixed" and "64-true"; fp16 needs a sharded gradient '
                'scaler: use "bf16-mixed".'
            )
        return MixedPrecisionPolicy()

    def _shard(self, module: torch.nn.Module) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard, register_fsdp_forward_method

        mesh = init_device_mesh(self.root_device.type, (self.world_size,))
        kwargs: dict[str, Any] = {
            "mesh": mesh,
            "mp_policy": self._mp_policy(),
            "offload_policy": CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy(),
            "reshard_after_forward": self.reshard_after_forward,
        }
        if self._wrap is not None:
            # Children before parents (reverse pre-order), as fully_shard requires.
            for sub in reversed(list(module.modules())):
                if sub is not module and self._wrap(sub):
                    fully_shard(sub, **kwargs)
        fully_shard(module, **kwargs)
        # The root's hooks run around forward(); the trainer calls the *_step methods, so hook those too.
        for name in _STEP_METHODS:
            if callable(getattr(module, name, None)):
                register_fsdp_forward_method(module, name)

    # -- state dicts --------------------------------------------------------
    def _options(self) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        full = self.state_dict_type == "full"
        return StateDictOptions(full_state_dict=full, cpu_offload=full)

    def module_state_dict(self, module: torch.nn.Module) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(module, options=self._options())

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        assert self.module is not None  # noqa: S101 - setup_module ran first
        return get_optimizer_state_dict(self.module, optimizer, options=self._options())

    def full_state_dict(self, module: torch.nn.Module) -> dict[str, Any]:
        """Every rank calls this (it gathers); rank 0 gets the whole model on the CPU, the others {}."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_module_state_dict(self, module: torch.nn.Module, state: dict[str, Any], strict: bool = True) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.tensor import DTensor

        full = not any(isinstance(v, DTensor) for v in state.values())
        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=full, strict=strict))

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        from torch.distributed.tensor import DTensor

        assert self.module is not None  # noqa: S101
        if not ckpt_io.is_name_keyed(state):  # a one-device or DDP checkpoint file
            state = ckpt_io.name_keyed(self.module, optimizer, state)
        full = not any(isinstance(v, DTensor) for s in state["state"].values() for v in s.values())
        set_optimizer_state_dict(self.module, optimizer, state, options=StateDictOptions(full_state_dict=full))

    # -- checkpoint IO ----------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
        if self.state_dict_type == "full":
            super().save_checkpoint(checkpoint, path)
            return
        ckpt_io.save_sharded(
            checkpoint,
            path,
            is_global_zero=self.is_global_zero,
            barrier=self.barrier,
            is_local_zero=self.local_rank == 0,
        )


@contextlib.contextmanager
def _no_gradient_sync(module: Any) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)
