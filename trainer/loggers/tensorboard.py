"""TensorBoard logger through `torch.utils.tensorboard` (needs the optional `tensorboard` package)."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from ._util import next_version, to_float
from .base import Logger


class TensorBoardLogger(Logger):
    """Event files in `<save_dir>/<name>/version_<n>/`.

    Raises:
        ImportError: the `tensorboard` package is not installed (`pip install tensorboard`).

    Example:
        >>> logger = TensorBoardLogger("runs")  # doctest: +SKIP
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str = "gridlab_logs",
        version: int | str | None = None,
        prefix: str = "",
        **writer_kwargs: Any,
    ) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise ImportError(
                "TensorBoardLogger needs the `tensorboard` package: `pip install tensorboard`, "
                "or use CSVLogger (the default)"
            )
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._prefix = prefix
        self._writer_kwargs = writer_kwargs
        self._writer: Any = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int | str:
        if self._version is None:
            self._version = next_version(os.path.join(self._save_dir, self._name))
        return self._version

    @property
    def log_dir(self) -> str:
        version = self.version
        folder = version if isinstance(version, str) else f"version_{version}"
        return os.path.join(self._save_dir, self._name, folder)

    @property
    def experiment(self) -> Any:
        """The `SummaryWriter`, created on first use."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(self.log_dir, exist_ok=True)
            self._writer = SummaryWriter(log_dir=self.log_dir, **self._writer_kwargs)
        return self._writer

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            tag = f"{self._prefix}-{key}" if self._prefix else key
            self.experiment.add_scalar(tag, to_float(value), global_step=step)

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        if not isinstance(params, dict):
            params = vars(params)
        text = "\n".join(f"- {k}: {v!r}" for k, v in params.items())
        self.experiment.add_text("hparams", text)

    def save(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def finalize(self, status: str) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
