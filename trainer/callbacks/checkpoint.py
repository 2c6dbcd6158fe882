"""Save checkpoints periodically and keep the best k by a monitored metric (Lightning semantics).

    when:  train epoch end (default; or after validation when it runs mid-epoch / every n epochs)
           every_n_train_steps, every_n_epochs
    what:  top k by `monitor` (the latest k when monitor is None), plus "last.ckpt" when save_last

The Trainer writes the file (`trainer.save_checkpoint(path)`: temp file + rename, so a reader
never sees half a checkpoint); deleting files that fall out of the top k is done here, on the
global-zero process only.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from typing import Any

import torch

from ._util import runs_validation, should_skip
from .base import Callback

_LAST = "last"
_EXT = ".ckpt"


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64).reshape(())
    return torch.tensor(float(value), dtype=torch.float64)


class ModelCheckpoint(Callback):
    """Args:
        dirpath: where to write; default `trainer.checkpoint_dir` ($GRIDLAB_CHECKPOINT_DIR when set).
        filename: a template such as "{epoch}-{val_loss:.3f}" giving "epoch=3-val_loss=0.123";
            default "{epoch}-{step}". The ".ckpt" suffix is added.
        monitor: a key of `trainer.callback_metrics`; None keeps the latest checkpoint(s).
        mode: "min" or "max" (is a lower or a higher monitored value better).
        save_top_k: how many to keep; -1 all, 0 none (only "last" when save_last).
        save_last: also write "last.ckpt" at every save.
        every_n_train_steps / every_n_epochs: how often; by default every epoch.
        save_on_train_epoch_end: save at train epoch end (True) or after validation (False);
            default: at train epoch end unless validation runs other than once per epoch.

    Example:
        >>> ckpt = ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True)
        >>> # Trainer(callbacks=[ckpt]).fit(model); ckpt.best_model_path
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool | None = None,
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        auto_insert_metric_name: bool = True,
        verbose: bool = False,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"ModelCheckpoint(mode={mode!r}): use 'min' or 'max'")
        if save_top_k < -1:
            raise ValueError(f"ModelCheckpoint(save_top_k={save_top_k}): use -1 (all), 0 (none) or a positive k")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ValueError(
                f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None) cannot rank checkpoints: "
                "pass monitor='<metric>' or use save_top_k in (-1, 0, 1)"
            )
        for arg, val in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if val is not None and val < 0:
                raise ValueError(f"ModelCheckpoint({arg}={val}) must be >= 0")
        self.dirpath: str | None = os.fspath(dirpath) if dirpath is not None else None
        self.filename = filename
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.auto_insert_metric_name = auto_insert_metric_name
        self.verbose = verbose
        self._save_on_train_epoch_end = save_on_train_epoch_end
        if every_n_train_steps is None and every_n_epochs is None:
            self._every_n_train_steps, self._every_n_epochs = 0, 1
        else:
            self._every_n_train_steps = every_n_train_steps or 0
            self._every_n_epochs = every_n_epochs or 0

        self.best_k_models: dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.kth_value: torch.Tensor = torch.tensor(math.inf if mode == "min" else -math.inf, dtype=torch.float64)
        self.best_model_path = ""
        self.best_model_score: torch.Tensor | None = None
        self.current_score: torch.Tensor | None = None
        self.last_model_path = ""
        self._last_global_step_saved = 0
        self._fitting = False

    @property
    def state_key(self) -> str:
        # Several ModelCheckpoints may sit in one Trainer; each keeps its own state in a checkpoint.
        return (
            f"ModelCheckpoint{{'monitor': {self.monitor!r}, 'mode': {self.mode!r}, "
            f"'every_n_train_steps': {self._every_n_train_steps}, 'every_n_epochs': {self._every_n_epochs}}}"
        )

    # -- hooks ---------------------------------------------------------------------------

    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.fspath(trainer.checkpoint_dir)

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        self._fitting = True

    def on_fit_end(self, trainer: Any, module: Any) -> None:
        self._fitting = False

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._should_skip(trainer) or self._every_n_train_steps < 1:
            return
        if trainer.global_step % self._every_n_train_steps != 0:
            return
        self._save(trainer)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if self._should_skip(trainer) or not self._should_save_on_train_epoch_end(trainer):
            return
        if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
            self._save(trainer)

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if self._should_skip(trainer) or self._should_save_on_train_epoch_end(trainer):
            return
        if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
            self._save(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "dirpath": self.dirpath,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": self.current_score,
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
            "last_global_step_saved": self._last_global_step_saved,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.dirpath is not None and state.get("dirpath") not in (None, self.dirpath):
            # A different directory: the old top-k files are not ours to rank or delete.
            warnings.warn(
                f"ModelCheckpoint: dirpath changed from {state.get('dirpath')!r} to {self.dirpath!r}; "
                "only best_model_path is restored",
                stacklevel=2,
            )
            self.best_model_path = state.get("best_model_path", "")
            return
        if self.dirpath is None:
            self.dirpath = state.get("dirpath")
        self.best_model_score = state.get("best_model_score")
        self.best_model_path = state.get("best_model_path", "")
        self.current_score = state.get("current_score")
        self.best_k_models = {k: _as_tensor(v) for k, v in state.get("best_k_models", {}).items()}
        self.kth_best_model_path = state.get("kth_best_model_path", "")
        if state.get("kth_value") is not None:
            self.kth_value = _as_tensor(state["kth_value"])
        self.last_model_path = state.get("last_model_path", "")
        self._last_global_step_saved = int(state.get("last_global_step_saved", 0))

    # -- decisions -----------------------------------------------------------------------

    def _should_skip(self, trainer: Any) -> bool:
        return (
            should_skip(trainer)
            or not self._fitting
            or self._last_global_step_saved == trainer.global_step  # nothing new since the last save
        )

    def _should_save_on_train_epoch_end(self, trainer: Any) -> bool:
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        if getattr(trainer, "check_val_every_n_epoch", 1) != 1:
            return False
        if not runs_validation(trainer, getattr(trainer, "module", None)):
            return True
        # Validation once per epoch runs before on_train_epoch_end, so its metrics are there;
        # validation several times an epoch (or every n batches) saves after each validation.
        vci = getattr(trainer, "val_check_interval", 1.0)
        return isinstance(vci, float) and vci == 1.0

    def _monitor_candidates(self, trainer: Any) -> dict[str, Any]:
        metrics = dict(trainer.callback_metrics)
        metrics.setdefault("epoch", trainer.current_epoch)
        metrics.setdefault("step", trainer.global_step)
        return metrics

    # -- saving --------------------------------------------------------------------------

    def _save(self, trainer: Any) -> None:
        # Rank 0's metrics decide for every rank (which checkpoints to keep, their names, best_model_path):
        # the ranks must agree, as FSDP saves collectively and "best" must name the same file everywhere.
        metrics = trainer.strategy.broadcast(self._monitor_candidates(trainer))
        self._save_topk(trainer, metrics)
        self._save_last(trainer, metrics)
        self._last_global_step_saved = trainer.global_step
        for logger in getattr(trainer, "loggers", None) or []:
            logger.save()

    def _save_topk(self, trainer: Any, metrics: dict[str, Any]) -> None:
        if self.save_top_k == 0:
            return
        if self.monitor is None:
            self._save_none_monitor(trainer, metrics)
            return
        if self.monitor not in metrics:
            raise KeyError(
                f"ModelCheckpoint(monitor={self.monitor!r}) could not find the monitored key in the returned "
                f"metrics: {sorted(metrics)}. Did you call self.log({self.monitor!r}, value) in the Module, "
                "or should the checkpoint be saved after validation (save_on_train_epoch_end=False)?"
            )
        current = _as_tensor(metrics[self.monitor])
        if self._check_monitor_top_k(current):
            self._update_best_and_save(current, trainer, metrics)
        elif self.verbose:
            print(f"Epoch {trainer.current_epoch}, step {trainer.global_step}: {self.monitor!r} not in top k")

    def _save_none_monitor(self, trainer: Any, metrics: dict[str, Any]) -> None:
        filepath = self._unique_path(self.format_checkpoint_name(metrics), keep=self.best_model_path)
        previous = self.best_model_path
        self._write(trainer, filepath)
        self.best_model_path = filepath
        if self.save_top_k == 1 and previous and previous != filepath:
            self._remove(trainer, previous)

    def _check_monitor_top_k(self, current: torch.Tensor) -> bool:
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        better = torch.lt if self.mode == "min" else torch.gt
        return bool(better(current, self.kth_value))

    def _update_best_and_save(self, current: torch.Tensor, trainer: Any, metrics: dict[str, Any]) -> None:
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        del_filepath = None
        if len(self.best_k_models) == k and k > 0:
            del_filepath = self.kth_best_model_path
            self.best_k_models.pop(del_filepath)
        if torch.isnan(current):  # a NaN never ranks above a real value
            current = torch.tensor(math.inf if self.mode == "min" else -math.inf, dtype=torch.float64)
        filepath = self._unique_path(self.format_checkpoint_name(metrics), keep=del_filepath)
        self.current_score = current
        self.best_k_models[filepath] = current
        if len(self.best_k_models) == k:
            worst = max if self.mode == "min" else min
            self.kth_best_model_path = worst(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        best = min if self.mode == "min" else max
        self.best_model_path = best(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
        self.best_model_score = self.best_k_models[self.best_model_path]
        if self.verbose:
            print(f"Epoch {trainer.current_epoch}, step {trainer.global_step}: {self.monitor!r} = {float(current):.5g}")
        self._write(trainer, filepath)
        if del_filepath and del_filepath != filepath:
            self._remove(trainer, del_filepath)

    def _save_last(self, trainer: Any, metrics: dict[str, Any]) -> None:
        if not self.save_last:
            return
        filepath = os.path.join(self._dir(trainer), _LAST + _EXT)
        self._write(trainer, filepath)
        self.last_model_path = filepath

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None) -> str:
        """The path for these metrics: "{epoch}-{val_loss:.2f}" -> "<dirpath>/epoch=2-val_loss=0.12.ckpt"."""
        name = self._format(filename or self.filename or "{epoch}-{step}", metrics)
        return os.path.join(self.dirpath or "", name + _EXT)

    def _format(self, template: str, metrics: dict[str, Any]) -> str:
        def repl(match: re.Match[str]) -> str:
            key, spec = match.group(1), match.group(2) or ""
            value = metrics.get(key, 0)
            if isinstance(value, torch.Tensor):
                value = value.item()
            if key in ("epoch", "step") and isinstance(value, float) and value.is_integer():
                value = int(value)
            text = format(value, spec[1:])
            return f"{key.replace('/', '_')}={text}" if self.auto_insert_metric_name else text

        return re.sub(r"\{([^{}:]+)(:[^{}]*)?\}", repl, template)

    def _unique_path(self, filepath: str, keep: str | None) -> str:
        """Never overwrite a file this callback does not mean to replace: add -v1, -v2, ..."""
        base, n, candidate = filepath[: -len(_EXT)], 0, filepath
        while os.path.exists(candidate) and candidate != keep:
            n += 1
            candidate = f"{base}-v{n}{_EXT}"
        return candidate

    def _dir(self, trainer: Any) -> str:
        if self.dirpath is None:
            self.dirpath = os.fspath(trainer.checkpoint_dir)
        return self.dirpath

    def _write(self, trainer: Any, filepath: str) -> None:
        self._dir(trainer)
        if trainer.is_global_zero:
            os.makedirs(os.path.dirname(filepath) or ".", exist_ok=True)
        trainer.save_checkpoint(filepath)

    def _remove(self, trainer: Any, filepath: str) -> None:
        if filepath != self.last_model_path:
            trainer.strategy.remove_checkpoint(filepath)  # rank 0 only; a file or a sharded folder
