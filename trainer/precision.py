"""Precision plugins: autocast, the fp16 GradScaler, backward scaling, unscale-before-clip, dtype casts."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .errors import MisconfigurationError

_ALIASES = {
    "32-true": "32-true",
    "32": "32-true",
    32: "32-true",
    "64-true": "64-true",
    "64": "64-true",
    64: "64-true",
    "16-mixed": "16-mixed",
    "16": "16-mixed",
    16: "16-mixed",
    "bf16-mixed": "bf16-mixed",
    "bf16": "bf16-mixed",
}
VALID = ("32-true", "16-mixed", "bf16-mixed", "64-true")


def normalize_precision(value: Any) -> str:
    try:
        return _ALIASES[value]
    except (KeyError, TypeError):
        raise MisconfigurationError(
            f"precision={value!r} is not supported: use one of {', '.join(repr(v) for v in VALID)} "
            "(aliases 32, 16, 'bf16', 64)."
        ) from None


class Precision:
    """Full precision ("32-true"); the base class of the other plugins."""

    name = "32-true"

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def convert_input(self, data: Any) -> Any:
        return data

    def forward_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Make `p.grad` hold true gradients (before clipping or inspection)."""

    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> Any:
        return optimizer.step(closure) if closure is not None else optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class DoublePrecision(Precision):
    name = "64-true"

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.double()

    def convert_input(self, data: Any) -> Any:
        return apply_to_tensors(data, lambda t: t.double() if t.is_floating_point() else t)

    @contextlib.contextmanager
    def forward_context(self) -> Iterator[None]:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)


class MixedPrecision(Precision):
    """torch.autocast around the forward; fp16 adds a GradScaler (loss scaling, unscale before clip)."""

    def __init__(self, name: str, device_type: str) -> None:
        self.name = name
        self.device_type = device_type
        self.dtype = torch.float16 if name == "16-mixed" else torch.bfloat16
        self.scaler: torch.amp.GradScaler | None = None
        if name == "16-mixed":
            self.scaler = torch.amp.GradScaler(device_type)
        self._unscaled: set[int] = set()

    def forward_context(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> Any:
        if self.scaler is None:
            return super().optimizer_step(optimizer, closure)
        if closure is not None:
            closure()
        out = self.scaler.step(optimizer)  # skips the step when gradients hold inf/nan
        self.scaler.update()
        self._unscaled.discard(id(optimizer))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def make_precision(value: Any, device_type: str) -> Precision:
    name = normalize_precision(value)
    if name == "64-true":
        return DoublePrecision()
    if name in ("16-mixed", "bf16-mixed"):
        return MixedPrecision(name, device_type)
    return Precision()


def apply_to_tensors(data: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply `fn` to every tensor in nested lists, tuples and dicts (namedtuples kept)."""
    if isinstance(data, torch.Tensor):
        return fn(data)
    if isinstance(data, dict):
        return type(data)((k, apply_to_tensors(v, fn)) for k, v in data.items())
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(apply_to_tensors(v, fn) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(apply_to_tensors(v, fn) for v in data)
    return data
