"""A small DDP/FSDP job for the multi-process tests: run as a script, by the Trainer's own launcher
(--devices 2) or by torchrun. Faults on demand: SIGTERM to chosen ranks at a step, or an exception."""

from __future__ import annotations

import argparse
import os
import signal
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gridlab.trainer import Module, Trainer, seed_everything


class Job(Module):
    def __init__(
        self, sigterm_at: int, sigterm_ranks: list[int], raise_at: int, raise_rank: int, print_every: int = 0
    ) -> None:
        super().__init__()
        self.print_every = print_every
        self.sleep = (-1, -1, 0.0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.faults = (sigterm_at, sigterm_ranks, raise_at, raise_rank)

    def training_step(self, batch, batch_idx):
        sigterm_at, sigterm_ranks, raise_at, raise_rank = self.faults
        rank = self.trainer.global_rank
        if self.trainer.global_step == sigterm_at and rank in sigterm_ranks and not self.trainer.received_sigterm:
            os.kill(os.getpid(), signal.SIGTERM)
        only_attempt = os.environ.get("DIST_JOB_RAISE_ATTEMPT")  # faults (raise, sleep) only in that attempt
        attempt_ok = only_attempt is None or os.environ.get("GRIDLAB_ATTEMPT") == only_attempt
        if self.trainer.global_step == raise_at and rank == raise_rank and attempt_ok:
            raise ValueError(f"boom on rank {rank}")
        if self.trainer.global_step == self.sleep[0] and rank == self.sleep[1] and attempt_ok:
            time.sleep(self.sleep[2])  # its peers wait in the next collective meanwhile
        if self.print_every and self.trainer.global_step % self.print_every == 0:
            self.print(f"step {self.trainer.global_step}", flush=True)
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss, sync_dist=True, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--clip", type=float, default=None)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--checkpoint", action="store_true", help="ModelCheckpoint at each epoch end")
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--root", required=True)
    p.add_argument("--ckpt-path", default=None)
    p.add_argument("--save-weights", default=None)
    p.add_argument("--sigterm-at", type=int, default=-1)
    p.add_argument("--sigterm-ranks", default="0,1")
    p.add_argument("--raise-at", type=int, default=-1)
    p.add_argument("--raise-rank", type=int, default=1)
    p.add_argument("--print-every", type=int, default=0, help="rank 0 prints 'step N' every N steps")
    p.add_argument("--sleep", default="-1,-1,0", help="STEP,RANK,SECONDS: that rank sleeps at that step")
    p.add_argument("--say-hello", action="store_true", help="every rank prints 'rank R of W' before training")
    args = p.parse_args()
    if args.say_hello:
        print(f"rank {os.environ.get('RANK', '0')} of {os.environ.get('WORLD_SIZE', '1')}", flush=True)

    seed_everything(0)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(256, 8, generator=g)
    data = TensorDataset(x, x.sum(dim=1, keepdim=True).sin())
    world = int(os.environ.get("WORLD_SIZE", args.devices))
    loader = DataLoader(data, batch_size=args.global_batch // world, shuffle=args.shuffle)
    ranks = [int(r) for r in args.sigterm_ranks.split(",") if r]
    model = Job(args.sigterm_at, ranks, args.raise_at, args.raise_rank, args.print_every)
    step, rank, seconds = args.sleep.split(",")
    model.sleep = (int(step), int(rank), float(seconds))
    trainer = Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy=args.strategy,
        max_epochs=args.epochs,
        accumulate_grad_batches=args.accumulate,
        gradient_clip_val=args.clip,
        precision=args.precision,
        default_root_dir=args.root,
        enable_progress_bar=False,
        enable_checkpointing=args.checkpoint,
        logger=False,
    )
    trainer.fit(model, loader, ckpt_path=args.ckpt_path)
    weights = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach() for k, v in model.state_dict().items()}
    if trainer.is_global_zero:
        loss = float(trainer.callback_metrics["loss_epoch"])
        print(f"done world_size={trainer.world_size} steps={trainer.global_step} epoch_loss={loss!r}", flush=True)
        if args.save_weights:
            torch.save(weights, args.save_weights)


if __name__ == "__main__":
    main()
