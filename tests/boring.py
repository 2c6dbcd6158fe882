"""Tiny models and data shared by the trainer tests (after Lightning's demos/boring_classes.py).
Keep these stable: other test files reuse them."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from gridlab.trainer import DataModule, Module


class RandomDataset(Dataset):
    def __init__(self, size: int = 32, length: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randn(length, size, generator=g)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i]


def regression_data(n: int = 64, features: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, 1, generator=g)
    return TensorDataset(x, x @ w + 0.1 * torch.randn(n, 1, generator=g))


def make_net(features: int = 8, hidden: int = 16, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1))


class BoringModel(Module):
    """An MLP regressor on (x, y) batches; logs train_loss per step and val_loss/test_loss per epoch."""

    def __init__(
        self, features: int = 8, hidden: int = 16, lr: float = 0.1, dropout: float = 0.0, optimizer: str = "sgd"
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = make_net(features, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self(x), y))

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> Any:
        if self.hparams.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class BoringDataModule(DataModule):
    def __init__(self, batch_size: int = 8, n: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size, self.n = batch_size, n

    def setup(self, stage: str) -> None:
        self.train_set = regression_data(self.n, seed=0)
        self.val_set = regression_data(self.n // 2, seed=1)

    def setup_and(self, fn: Any, stage: str = "fit") -> Any:
        """Run setup(stage), then return fn(self) (for tests that build their own loaders)."""
        self.setup(stage)
        return fn(self)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


def quiet_trainer_kwargs(tmp_path: Any, **kw: Any) -> dict[str, Any]:
    """Trainer arguments for tests independent of the callbacks and loggers packages."""
    return {
        "default_root_dir": str(tmp_path),
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "logger": False,
        "num_sanity_val_steps": 0,
        **kw,
    }
