"""`DataModule`: data preparation and loaders in one object whose state travels with checkpoints."""

from __future__ import annotations

from typing import Any

from .hparams import HyperparametersMixin


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
