"""CSV logger (the default): `<save_dir>/<name>/version_<n>/metrics.csv` and `hparams.yaml`.

Rows are buffered and written on `save()` (epoch ends, checkpoint saves) and every
`flush_logs_every_n_steps`. When a new metric appears, the file is rewritten with the wider
header, as Lightning does, so it always parses as one table.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from ._util import next_version, to_float, to_yaml
from .base import Logger


class CSVLogger(Logger):
    """Args:
        save_dir: the root directory.
        name: the experiment's folder under save_dir.
        version: an int (folder "version_<n>") or a folder name; default the next free number.
        prefix: prepended to every metric name ("<prefix>-<name>").
        flush_logs_every_n_steps: write buffered rows at least this often.

    Example:
        >>> logger = CSVLogger("runs")  # runs/gridlab_logs/version_0/metrics.csv
    """

    METRICS_FILE = "metrics.csv"
    HPARAMS_FILE = "hparams.yaml"

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str = "gridlab_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        if flush_logs_every_n_steps < 1:
            raise ValueError(f"CSVLogger(flush_logs_every_n_steps={flush_logs_every_n_steps}) must be >= 1")
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._prefix = prefix
        self._flush_every = flush_logs_every_n_steps
        self._rows: list[dict[str, Any]] = []
        self._keys: list[str] = []
        self.hparams: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self._name

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        return os.path.join(self._save_dir, self._name)

    @property
    def version(self) -> int | str:
        if self._version is None:
            self._version = next_version(self.root_dir)
        return self._version

    @property
    def log_dir(self) -> str:
        version = self.version
        folder = version if isinstance(version, str) else f"version_{version}"
        return os.path.join(self.root_dir, folder)

    @property
    def metrics_file_path(self) -> str:
        return os.path.join(self.log_dir, self.METRICS_FILE)

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        if not isinstance(params, dict):
            params = vars(params)
        self.hparams.update(params)
        os.makedirs(self.log_dir, exist_ok=True)
        tmp = os.path.join(self.log_dir, self.HPARAMS_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(to_yaml(self.hparams))
        os.replace(tmp, os.path.join(self.log_dir, self.HPARAMS_FILE))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        row: dict[str, Any] = {(f"{self._prefix}-{k}" if self._prefix else k): to_float(v) for k, v in metrics.items()}
        row["step"] = int(step)
        self._rows.append(row)
        if (int(step) + 1) % self._flush_every == 0:
            self.save()

    def save(self) -> None:
        if not self._rows:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        path = self.metrics_file_path
        new_keys = sorted({k for row in self._rows for k in row} - set(self._keys) - {"step"})
        if not self._keys and os.path.exists(path):  # a resumed run appending to its own file
            with open(path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh), [])
            self._keys = header
            new_keys = [k for k in new_keys if k not in header]
        if not self._keys:
            self._keys = ["step", *new_keys]
            with open(path, "w", newline="", encoding="utf-8") as fh:
                csv.DictWriter(fh, fieldnames=self._keys).writeheader()
        elif new_keys:
            self._rewrite_with_header([*self._keys, *new_keys])
        with open(path, "a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=self._keys)
            writer.writerows(self._rows)
        self._rows = []

    def _rewrite_with_header(self, keys: list[str]) -> None:
        path = self.metrics_file_path
        rows: list[dict[str, Any]] = []
        if os.path.exists(path):
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        tmp = path + ".tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self._keys = keys

    def finalize(self, status: str) -> None:
        self.save()
