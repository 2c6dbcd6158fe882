"""A GRU that predicts the next value of a sine wave, trained with truncated BPTT.

`Trainer(truncated_bptt_steps=k)` splits each batch of sequences along time into chunks
of k steps; `training_step(batch, batch_idx, hiddens)` sees one chunk and the hidden
state left by the previous one (None for the first), returns `{"loss", "hiddens"}`, and
the Trainer takes one optimizer step per chunk. Gradients flow within a chunk only, so
memory grows with k, not with the sequence length. Lightning dropped this in 2.0; the
signature here is Lightning 1.x's. The sequences (random frequency, phase, amplitude,
plus noise) are generated here; no downloads.

    python examples/tbptt_rnn.py [--max-epochs 10] [--tbptt-steps 25] [--fast-dev-run]
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


def sine_sequences(n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (n, length, 1) and targets shifted one step ahead (n, length, 1)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length + 1, dtype=torch.float32)
    freq = 0.05 + 0.15 * torch.rand(n, 1, generator=g)
    phase = 2 * math.pi * torch.rand(n, 1, generator=g)
    amp = 0.5 + 0.5 * torch.rand(n, 1, generator=g)
    wave = amp * torch.sin(freq * t + phase) + 0.02 * torch.randn(n, length + 1, generator=g)
    wave = wave.unsqueeze(-1)
    return wave[:, :-1], wave[:, 1:]


class NextValueRNN(Module):
    def __init__(self, hidden: int = 32, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.rnn = nn.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)
        self.lr = lr

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out, h = self.rnn(x, h)
        return self.head(out), h

    def training_step(self, batch: Any, batch_idx: int, hiddens: torch.Tensor | None) -> dict[str, torch.Tensor]:
        x, y = batch  # one chunk: (batch, truncated_bptt_steps, 1)
        pred, hiddens = self(x, hiddens)
        loss = nn.functional.mse_loss(pred, y)
        self.log("train_loss", loss, prog_bar=True)
        # Detached here as well as by the Trainer: the next chunk must not backpropagate
        # into this one, which is the point of truncation.
        return {"loss": loss, "hiddens": hiddens.detach()}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch  # whole sequences: validation is not truncated
        pred, _ = self(x)
        self.log("val_loss", nn.functional.mse_loss(pred, y), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-epochs", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (-1: no limit)")
    p.add_argument("--fast-dev-run", action="store_true", help="one training and one validation batch, no logging")
    p.add_argument("--tbptt-steps", type=int, default=25, help="time steps per chunk (truncated_bptt_steps)")
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress-bar", action="store_true")
    p.add_argument("--default-root-dir", default=None, help="where logs and checkpoints go")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> tuple[NextValueRNN, Trainer]:
    args = parse_args(argv)
    seed_everything(args.seed)
    torch.set_num_threads(1)
    x, y = sine_sequences(1024, args.seq_len, args.seed)
    train = DataLoader(TensorDataset(x[128:], y[128:]), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=128)
    model = NextValueRNN(lr=args.lr)
    trainer = Trainer(
        max_epochs=args.max_epochs,
        max_steps=args.max_steps,
        fast_dev_run=args.fast_dev_run,
        truncated_bptt_steps=args.tbptt_steps,
        enable_progress_bar=not args.no_progress_bar,
        **({"default_root_dir": args.default_root_dir} if args.default_root_dir else {}),
    )
    trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    val_loss = trainer.callback_metrics.get("val_loss")
    if val_loss is not None:
        # Predicting "the same as now" is the baseline a useful model must beat.
        naive = nn.functional.mse_loss(x[:128], y[:128])
        print(f"val_loss {float(val_loss):.5f} (repeat-last-value baseline {float(naive):.5f})")
    return model, trainer


if __name__ == "__main__":
    main()
