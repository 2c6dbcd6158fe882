"""Logged-metric bookkeeping for one stage: step values, batch-size-weighted epoch reductions."""

from __future__ import annotations

from typing import Any

import torch

_REDUCE = ("mean", "sum", "max", "min")


class _Metric:
    __slots__ = ("name", "on_step", "on_epoch", "prog_bar", "logger", "reduce_fx", "sync_dist", "total", "weight")

    def __init__(
        self, name: str, on_step: bool, on_epoch: bool, prog_bar: bool, logger: bool, reduce_fx: str, sync_dist: bool
    ) -> None:
        self.name, self.on_step, self.on_epoch = name, on_step, on_epoch
        self.prog_bar, self.logger, self.reduce_fx, self.sync_dist = prog_bar, logger, reduce_fx, sync_dist
        self.total: torch.Tensor | None = None
        self.weight = 0.0

    @property
    def forked(self) -> bool:
        return self.on_step and self.on_epoch

    def update(self, value: torch.Tensor, batch_size: int) -> None:
        if self.total is None:
            self.total = value * batch_size if self.reduce_fx == "mean" else value.clone()
        elif self.reduce_fx == "mean":
            self.total = self.total + value * batch_size
        elif self.reduce_fx == "sum":
            self.total = self.total + value
        elif self.reduce_fx == "max":
            self.total = torch.maximum(self.total, value)
        else:
            self.total = torch.minimum(self.total, value)
        self.weight += batch_size

    def compute(self) -> torch.Tensor | None:
        if self.total is None:
            return None
        return self.total / self.weight if self.reduce_fx == "mean" else self.total

    def state_dict(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in self.__slots__}


class Results:
    """Metrics logged in one stage ("train", "validate", "test")."""

    def __init__(self) -> None:
        self.metrics: dict[str, _Metric] = {}

    def reset(self) -> None:
        self.metrics.clear()

    def log(
        self,
        name: str,
        value: torch.Tensor,
        on_step: bool,
        on_epoch: bool,
        prog_bar: bool,
        logger: bool,
        reduce_fx: str,
        sync_dist: bool,
        batch_size: int | None,
    ) -> tuple[_Metric, str | None]:
        """Record `value`; returns the metric and its step key (None when not logged per step)."""
        if reduce_fx not in _REDUCE:
            raise ValueError(f"reduce_fx must be one of {_REDUCE}, got {reduce_fx!r}.")
        m = self.metrics.get(name)
        if m is None:
            m = self.metrics[name] = _Metric(name, on_step, on_epoch, prog_bar, logger, reduce_fx, sync_dist)
        if on_epoch:
            m.update(value, batch_size or 1)
        if not on_step:
            return m, None
        return m, (name + "_step") if m.forked else name

    def epoch_values(self, reduce: Any = None) -> dict[str, tuple[_Metric, str, torch.Tensor]]:
        out = {}
        for m in self.metrics.values():
            if not m.on_epoch:
                continue
            v = m.compute()
            if v is None:
                continue
            if m.sync_dist and reduce is not None:
                v = reduce(v, m.reduce_fx)
            out[m.name] = (m, (m.name + "_epoch") if m.forked else m.name, v)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {k: m.state_dict() for k, m in self.metrics.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.metrics = {}
        for k, s in state.items():
            m = _Metric(
                s["name"], s["on_step"], s["on_epoch"], s["prog_bar"], s["logger"], s["reduce_fx"], s["sync_dist"]
            )
            m.total, m.weight = s["total"], s["weight"]
            self.metrics[k] = m
