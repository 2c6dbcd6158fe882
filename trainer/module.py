"""`Module`: an nn.Module with Lightning's training hooks, logging, manual optimization and export."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import MisconfigurationError
from .hparams import HyperparametersMixin, instantiate_from_hparams


class Module(HyperparametersMixin, nn.Module):
    """Override `training_step` and `configure_optimizers`; everything else is optional."""

    # Properties TorchScript must not compile when scripting the module.
    __jit_unused_properties__: list[str] = ["trainer", "device", "current_epoch", "global_step", "hparams"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization: bool = True
        self._trainer: Any = None
        self._device_hint = torch.device("cpu")

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike,
        map_location: Any = None,
        strict: bool = True,
        **hparam_overrides: Any,
    ) -> Any:
        """Rebuild the module from a checkpoint's hyper_parameters (plus overrides) and load its weights.

        Returned in eval mode, as Lightning does.
        """
        from . import checkpoint as ckpt_io

        sharded = ckpt_io.is_sharded(checkpoint_path)  # an FSDP folder: gather the shards into this one process
        if sharded:
            ckpt = ckpt_io.read_meta(checkpoint_path)
        else:
            ckpt = torch.load(checkpoint_path, map_location=map_location or "cpu", weights_only=False)  # noqa: S614
        module = instantiate_from_hparams(cls, ckpt.get("hyper_parameters") or {}, hparam_overrides, checkpoint_path)
        if sharded:
            ckpt = ckpt_io.load_sharded(checkpoint_path, module, no_dist=True, meta=ckpt)
        module.on_load_checkpoint(ckpt)
        module.load_state_dict(ckpt["state_dict"], strict=strict)
        if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
            module.to(map_location)
        return module.eval()

    def print(self, *args: Any, **kwargs: Any) -> None:
        """print() from global rank 0 only, so a message appears once however many processes train."""
        if self._trainer is None or self._trainer.is_global_zero:
            print(*args, **kwargs)

    # -- context ----------------------------------------------------------
    @property
    def trainer(self) -> Any:
        """The attached Trainer, or None before fit/validate/test/predict (and while exporting)."""
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        object.__setattr__(self, "_trainer", trainer)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return self._device_hint

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    # -- the steps ----------------------------------------------------------
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        raise MisconfigurationError(
            f"{type(self).__name__} has no training_step: define `training_step(self, batch, batch_idx)` "
            "returning the loss."
        )

    def validation_step(self, *args: Any, **kwargs: Any) -> Any: ...
    def test_step(self, *args: Any, **kwargs: Any) -> Any: ...

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self(batch)

    def configure_optimizers(self) -> Any:
        raise MisconfigurationError(
            f"{type(self).__name__} has no configure_optimizers: define it and return an optimizer, e.g. "
            "`return torch.optim.Adam(self.parameters(), lr=1e-3)`."
        )

    def configure_callbacks(self) -> Any:
        return []

    def tbptt_split_batch(self, batch: Any, split_size: int) -> list[Any]:
        """Split every tensor of the batch with a time dimension (dim 1) into chunks of `split_size`."""
        from .precision import apply_to_tensors

        lengths: list[int] = []

        def measure(t: torch.Tensor) -> torch.Tensor:
            if t.dim() > 1:
                lengths.append(t.shape[1])
            return t

        apply_to_tensors(batch, measure)
        if not lengths:
            return [batch]

        def chunk(start: int) -> Any:
            return apply_to_tensors(batch, lambda t: t[:, start : start + split_size] if t.dim() > 1 else t)

        return [chunk(start) for start in range(0, max(lengths), split_size)]

    # -- hooks (Lightning's names; each default does nothing) ---------------
    def prepare_data(self) -> None: ...
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...

    # -- logging ------------------------------------------------------------
    def log(
        self,
        name: str,
        value: Any,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        prog_bar: bool = False,
        logger: bool = True,
        reduce_fx: str = "mean",
        sync_dist: bool = False,
        batch_size: int | None = None,
    ) -> None:
        """Record a metric. Defaults follow Lightning: per step in training_step, per epoch (a
        batch-size-weighted mean) in validation/test; both on -> keys `name_step` and `name_epoch`."""
        if self._trainer is None:
            return
        self._trainer._log(name, value, on_step, on_epoch, prog_bar, logger, reduce_fx, sync_dist, batch_size)

    def log_dict(self, dictionary: Mapping[str, Any], **kwargs: Any) -> None:
        for k, v in dictionary.items():
            self.log(k, v, **kwargs)

    # -- manual optimization --------------------------------------------------
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        opts = self.trainer._wrapped_optimizers if use_pl_optimizer else self.trainer.optimizers
        return opts[0] if len(opts) == 1 else list(opts)

    def lr_schedulers(self) -> Any:
        scheds = [c.scheduler for c in self.trainer.lr_scheduler_configs]
        if not scheds:
            return None
        return scheds[0] if len(scheds) == 1 else scheds

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward through the precision plugin (loss scaling) with the backward hooks."""
        self.trainer._backward(loss)

    def clip_gradients(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        self.trainer._clip_gradients(
            getattr(optimizer, "optimizer", optimizer), gradient_clip_val, gradient_clip_algorithm
        )

    # -- export -----------------------------------------------------------------
    @torch.no_grad()
    def to_torchscript(
        self, file_path: str | os.PathLike | None = None, method: str = "script", example_inputs: Any = None
    ) -> torch.jit.ScriptModule:
        """Export as TorchScript by scripting `forward` or tracing it on `example_inputs`."""
        mode = self.training
        self.eval()
        try:
            if method == "script":
                scripted = torch.jit.script(self)
            elif method == "trace":
                if example_inputs is None:
                    example_inputs = getattr(self, "example_input_array", None)
                if example_inputs is None:
                    raise MisconfigurationError(
                        'to_torchscript(method="trace") needs example_inputs= (or self.example_input_array).'
                    )
                scripted = torch.jit.trace(self, example_inputs=example_inputs)
            else:
                raise MisconfigurationError(f'to_torchscript method must be "script" or "trace", got {method!r}.')
        finally:
            self.train(mode)
        if file_path is not None:
            torch.jit.save(scripted, os.fspath(file_path))
        return scripted

    @torch.no_grad()
    def to_onnx(self, file_path: str | os.PathLike, input_sample: Any = None, **kwargs: Any) -> Any:
        """Export `forward` to ONNX with torch.onnx.export (needs the onnx/onnxscript packages)."""
        if input_sample is None:
            input_sample = getattr(self, "example_input_array", None)
        if input_sample is None:
            raise MisconfigurationError("to_onnx needs input_sample= (or self.example_input_array).")
        if not isinstance(input_sample, tuple):
            input_sample = (input_sample,)
        mode = self.training
        self.eval()
        try:
            return torch.onnx.export(self, input_sample, os.fspath(file_path), **kwargs)
        finally:
            self.train(mode)
