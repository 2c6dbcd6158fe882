"""One model file, any number of processes: a small regression MLP trained with DDP.

    python examples/ddp_mlp.py                              # one process
    python examples/ddp_mlp.py --devices 2                  # the Trainer starts 2 processes (gloo on CPU)
    torchrun --nproc-per-node 2 examples/ddp_mlp.py         # torchrun starts them; same file, no change
    python examples/ddp_mlp.py --strategy fsdp --devices 2  # sharded parameters and optimizer state

The data is generated (a fixed random linear map plus noise), so nothing is downloaded. The global
batch is --batch-size; each of N processes takes batch-size / N of it, so every run takes the same
optimizer steps on the same data and ends with the same weights (up to float rounding).
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gridlab.trainer import Module, Trainer, seed_everything


class Regressor(Module):
    def __init__(self, width: int = 32, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(16, width), nn.Tanh(), nn.Linear(width, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def make_data(n: int = 512) -> TensorDataset:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, 16, generator=g)
    w = torch.randn(16, 1, generator=g)
    return TensorDataset(x, x @ w + 0.1 * torch.randn(n, 1, generator=g))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=1, help="processes to start (ignored under torchrun)")
    p.add_argument("--strategy", default="auto", help='"auto", "ddp" or "fsdp"')
    p.add_argument("--accelerator", default="cpu", help='"cpu", "gpu" or "auto"')
    p.add_argument("--precision", default="32-true", help='"32-true", "bf16-mixed", ...')
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32, help="global batch, split across the processes")
    p.add_argument("--root", default="runs/ddp_mlp", help="default_root_dir (logs, checkpoints)")
    p.add_argument("--ckpt-path", default=None, help="resume from this checkpoint (a file or a sharded folder)")
    p.add_argument("--save-weights", default=None, help="write the final weights here (rank 0)")
    args = p.parse_args()

    seed_everything(0)
    world = int(os.environ.get("WORLD_SIZE", args.devices))
    data = make_data()
    train = DataLoader(data, batch_size=args.batch_size // world, shuffle=False)
    val = DataLoader(make_data(128), batch_size=64)
    model = Regressor()
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        precision=args.precision,
        strategy=args.strategy,
        max_epochs=args.epochs,
        default_root_dir=args.root,
        enable_progress_bar=False,
        log_every_n_steps=4,
    )
    trainer.fit(model, train, val, ckpt_path=args.ckpt_path)
    # Under FSDP each rank holds a shard (a DTensor): gather full tensors, on every rank, before saving.
    weights = {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu() for k, v in model.state_dict().items()
    }
    if trainer.is_global_zero:
        loss = float(trainer.callback_metrics["train_loss_epoch"])
        print(f"world_size={trainer.world_size} steps={trainer.global_step} train_loss={loss:.6f}")
        if args.save_weights:
            torch.save(weights, args.save_weights)


if __name__ == "__main__":
    main()
