"""A small GAN trained with manual optimization in `gridlab.trainer`.

Two networks, two optimizers, one `Module`: with `self.automatic_optimization = False`
the module steps each optimizer itself (`self.optimizers()`, `self.manual_backward`),
which is how any system of several models with its own update order is written. The data
is a ring of eight 2-d Gaussians generated here (no downloads); the discriminator takes
one step, then the generator one step, on every batch.

    python examples/gan.py [--max-epochs 20] [--fast-dev-run]
"""

from __future__ import annotations

import argparse
import math
import warnings
from typing import Any

# torch warns at import when NumPy is absent; this example does not use NumPy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from gridlab.trainer import Module, Trainer, seed_everything  # noqa: E402

MODES = 8


def ring_of_gaussians(n: int, seed: int, radius: float = 2.0, std: float = 0.05) -> torch.Tensor:
    """n points from MODES Gaussians evenly spaced on a circle."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, MODES, (n,), generator=g).float()
    angle = 2 * math.pi * k / MODES
    centers = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centers + std * torch.randn(n, 2, generator=g)


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, n_out),
    )


class GAN(Module):
    def __init__(self, noise_dim: int = 8, hidden: int = 64, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.noise_dim, self.lr = noise_dim, lr
        self.generator = mlp(noise_dim, hidden, 2)
        self.discriminator = mlp(2, hidden, 1)  # outputs a logit: real > 0
        self.d_steps = 0
        self.g_steps = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Inference samples: noise in, 2-d points out."""
        return self.generator(z)

    def sample(self, n: int) -> torch.Tensor:
        return self.generator(torch.randn(n, self.noise_dim))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        (real,) = batch
        opt_g, opt_d = self.optimizers()
        bce = nn.functional.binary_cross_entropy_with_logits
        ones = torch.ones(real.shape[0], 1)
        zeros = torch.zeros(real.shape[0], 1)

        # Discriminator: real -> 1, fake -> 0. The fake batch is detached so that this
        # step computes no generator gradients.
        fake = self.sample(real.shape[0])
        d_loss = bce(self.discriminator(real), ones) + bce(self.discriminator(fake.detach()), zeros)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.d_steps += 1

        # Generator: make the (just updated) discriminator call the fakes real. This also
        # fills the discriminator's .grad, which its zero_grad() clears before next use.
        g_loss = bce(self.discriminator(fake), ones)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.g_steps += 1

        self.log_dict({"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}, prog_bar=True)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (0.5, 0.999)
        return [
            torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=betas),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=betas),
        ]


def mode_coverage(points: torch.Tensor, radius: float = 2.0, tol: float = 0.5) -> int:
    """How many of the MODES centres have a generated point within `tol`."""
    angle = 2 * math.pi * torch.arange(MODES) / MODES
    centers = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return int((torch.cdist(centers, points).min(dim=1).values < tol).sum())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-epochs", type=int, default=20)
    p.add_argument(
        "--max-steps",
        type=int,
        default=-1,
        help="stop after this many optimizer steps, both optimizers counted (-1: no limit)",
    )
    p.add_argument("--fast-dev-run", action="store_true", help="one training batch, no logging")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress-bar", action="store_true")
    p.add_argument("--default-root-dir", default=None, help="where logs and checkpoints go")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> tuple[GAN, Trainer]:
    args = parse_args(argv)
    seed_everything(args.seed)
    torch.set_num_threads(1)
    loader = DataLoader(TensorDataset(ring_of_gaussians(8192, args.seed)), batch_size=args.batch_size, shuffle=True)
    model = GAN(lr=args.lr)
    trainer = Trainer(
        max_epochs=args.max_epochs,
        max_steps=args.max_steps,
        fast_dev_run=args.fast_dev_run,
        enable_progress_bar=not args.no_progress_bar,
        **({"default_root_dir": args.default_root_dir} if args.default_root_dir else {}),
    )
    trainer.fit(model, train_dataloaders=loader)
    with torch.no_grad():
        samples = model.sample(2000)
    print(
        f"{model.d_steps} discriminator and {model.g_steps} generator steps; "
        f"generated samples cover {mode_coverage(samples)} of {MODES} modes"
    )
    return model, trainer


if __name__ == "__main__":
    main()
