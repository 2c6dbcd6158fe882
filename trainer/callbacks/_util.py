"""Helpers shared by the callbacks (contract attributes only, read defensively)."""

from __future__ import annotations

from typing import Any


def runs_validation(trainer: Any, module: Any) -> bool:
    """Does this fit validate: validation batches, and a module that defines validation_step."""
    num_val = getattr(trainer, "num_val_batches", 0) or 0
    if isinstance(num_val, (list, tuple)):
        num_val = sum(num_val)
    if not num_val:
        return False
    try:
        from ..module import Module
    except ImportError:  # no core Module: trust the batch count
        return True
    if isinstance(module, Module):
        return type(module).validation_step is not Module.validation_step
    return True


def should_skip(trainer: Any) -> bool:
    """Sanity checks and fast_dev_run never count (no checkpoints, no early stop)."""
    return bool(
        getattr(trainer, "fast_dev_run", False)
        or getattr(trainer, "sanity_checking", False)
        or getattr(getattr(trainer, "state", None), "stage", None) == "sanity_check"
    )
