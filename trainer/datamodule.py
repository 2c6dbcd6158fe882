"""`DataModule`: data preparation and loaders in one object whose state travels with checkpoints."""

from __future__ import annotations

import os
from typing import Any

import torch

from .hparams import HyperparametersMixin, instantiate_from_hparams


class DataModule(HyperparametersMixin):
    """Override the `*_dataloader` methods you need; `state_dict` is saved in checkpoints."""

    def __init__(self) -> None:
        self.trainer: Any = None

    def prepare_data(self) -> None:
        """Download or write data once (called before setup)."""

    def setup(self, stage: str) -> None:
        """Build datasets for `stage` ("fit", "validate", "test", "predict")."""

    def teardown(self, stage: str) -> None: ...

    def train_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} defines no train_dataloader.")

    def val_dataloader(self) -> Any:
        return []

    def test_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} defines no test_dataloader.")

    def predict_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} defines no predict_dataloader.")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | os.PathLike, **hparam_overrides: Any) -> Any:
        """Rebuild from the checkpoint's datamodule_hyper_parameters (plus overrides) and load its state."""
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)  # noqa: S614
        hp = ckpt.get("datamodule_hyper_parameters") or {}
        dm = instantiate_from_hparams(cls, hp, hparam_overrides, checkpoint_path)
        if "datamodule" in ckpt:
            dm.load_state_dict(ckpt["datamodule"])
        return dm
