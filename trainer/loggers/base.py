"""The logger contract. The Trainer calls these on the global-zero process only."""

from __future__ import annotations

from typing import Any


class Logger:
    """Receives metrics (already reduced to Python floats) and hyperparameters."""

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def version(self) -> str | int:
        return 0

    @property
    def log_dir(self) -> str | None:
        """Where this logger writes, if anywhere (checkpoints default beside it)."""
        return None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_hyperparams(self, params: dict[str, Any]) -> None: ...

    def save(self) -> None:
        """Flush what is buffered (called at epoch ends and on checkpoint saves)."""

    def finalize(self, status: str) -> None:
        """The run ended ("success", "failed", "interrupted"): flush and close."""
