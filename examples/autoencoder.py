"""An encoder and a decoder trained as one system with `gridlab.trainer`.

Shows the Lightning-style split between the science and the engineering: a `Module` that
holds two networks (its `forward` embeds, i.e. returns the encoder's output; training
reconstructs through both), a `DataModule` that generates its data (points on a smooth
3-d manifold embedded in 32-d, plus noise; no downloads), validation logged with
`self.log("val_loss")`, and hyperparameters saved with `save_hyperparameters()`.

    python examples/autoencoder.py [--max-epochs 10] [--fast-dev-run]
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

# torch warns at import when NumPy is absent; this example does not use NumPy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from gridlab.trainer import DataModule, Module, Trainer, seed_everything  # noqa: E402

DIM = 32
LATENT = 3


def manifold_points(n: int, seed: int) -> torch.Tensor:
    """n points x = tanh(z A) sin-warped, z ~ N(0, I_3): a curved 3-d manifold in 32-d."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(LATENT, DIM, generator=g) / LATENT**0.5
    z = torch.randn(n, LATENT, generator=g)
    x = torch.tanh(z @ a) + 0.3 * torch.sin(2.0 * (z @ a))
    return x + 0.01 * torch.randn(n, DIM, generator=g)


class ManifoldData(DataModule):
    """Generated data split once in `setup`, so train and val never overlap."""

    def __init__(self, n: int = 8192, batch_size: int = 128, seed: int = 0) -> None:
        super().__init__()
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        x = manifold_points(self.n, self.seed)
        n_val = self.n // 8
        self.train_set = TensorDataset(x[n_val:])
        self.val_set = TensorDataset(x[:n_val])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=512)


class AutoEncoder(Module):
    def __init__(self, hidden: int = 64, latent: int = LATENT, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Linear(DIM, hidden), nn.GELU(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.GELU(), nn.Linear(hidden, DIM))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference embeds: the encoder's output, as in Lightning's autoencoder example."""
        return self.encoder(x)

    def reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(self.decoder(self.encoder(x)), x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x,) = batch
        loss = self.reconstruction_loss(x)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        (x,) = batch
        self.log("val_loss", self.reconstruction_loss(x), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-epochs", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (-1: no limit)")
    p.add_argument("--fast-dev-run", action="store_true", help="one training and one validation batch, no logging")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress-bar", action="store_true")
    p.add_argument("--default-root-dir", default=None, help="where logs and checkpoints go")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> tuple[AutoEncoder, Trainer, ManifoldData]:
    args = parse_args(argv)
    seed_everything(args.seed)
    torch.set_num_threads(1)
    data = ManifoldData(batch_size=args.batch_size, seed=args.seed)
    model = AutoEncoder(lr=args.lr)
    trainer = Trainer(
        max_epochs=args.max_epochs,
        max_steps=args.max_steps,
        fast_dev_run=args.fast_dev_run,
        enable_progress_bar=not args.no_progress_bar,
        **({"default_root_dir": args.default_root_dir} if args.default_root_dir else {}),
    )
    trainer.fit(model, datamodule=data)
    val = trainer.callback_metrics.get("val_loss")
    if val is not None:
        print(f"val_loss {float(val):.5f}")
    with torch.no_grad():
        emb = model(data.val_set.tensors[0][:4])
    print(f"embedding of 4 validation points (shape {tuple(emb.shape)}):\n{emb}")
    return model, trainer, data


if __name__ == "__main__":
    main()
