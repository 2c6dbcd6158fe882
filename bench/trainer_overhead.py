"""What does `gridlab.trainer.Trainer` cost per step, against the plain PyTorch loop?

The same training (model, data, DataLoader, Adam, seed) run several ways, on one thread:

  plain    a hand-written loop: for x, y in loader: zero_grad, loss, backward, step
  bare     the Trainer with logger, checkpointing and progress bar off
  logged   the Trainer with a progress bar, the default logger and a `self.log` every step
  PL       PyTorch Lightning, logger, checkpointing, progress bar and summary off
           (only when `lightning` or `pytorch_lightning` is importable)

on a tiny MLP (32-64-64-1, batch 64), where the engine's overhead dominates, and a wide
one (1024-1024-1024-1, batch 64), where compute does. Each run times the whole `fit()`
(or loop) for --steps optimizer steps, so the per-step time includes setup and teardown
spread over the steps, as a user pays them. After one untimed warm-up each, the variants
run in turn, their order rotated every repeat; the table shows the median per-step time,
and the median of the per-repeat ratios to plain (each variant against the plain run of
the same repeat, which cancels slow drift on a shared machine). Every run must end with
weights identical to the plain loop's (checked by an assert, and printed).

    python bench/trainer_overhead.py [--steps 2000] [--wide-steps 100] [--repeats 7] [--device cuda]

With --device cuda every variant runs on the GPU: the plain loop moves each batch there itself,
the Trainers get accelerator="gpu", and each timing ends after a CUDA synchronize. The goals
were set for the CPU; on a GPU the tiny MLP's step is a few kernel launches, so the same
Python overhead weighs more.

Goals: tiny MLP at most 1.10x plain with logging off and 1.30x with it on; wide MLP at
most 1.02x.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import itertools
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from gridlab.trainer import Module, Trainer  # noqa: E402

INIT_SEED = 0  # model initialisation
LOOP_SEED = 1  # set just before the loop: the DataLoader's shuffle draws from it
DEVICE = torch.device("cpu")  # --device
GOALS = {("tiny", "bare"): 1.10, ("tiny", "logged"): 1.30, ("wide", "bare"): 1.02, ("wide", "logged"): 1.02}


@dataclass(frozen=True)
class Size:
    name: str
    widths: tuple[int, ...]
    batch: int
    batches_per_epoch: int


TINY = Size("tiny", (32, 64, 64, 1), 64, 256)
WIDE = Size("wide", (1024, 1024, 1024, 1), 64, 32)


def make_net(size: Size) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(size.widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def make_loader(size: Size) -> DataLoader:
    g = torch.Generator().manual_seed(1234)
    n = size.batch * size.batches_per_epoch
    x = torch.randn(n, size.widths[0], generator=g)
    y = torch.randn(n, size.widths[-1], generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=size.batch, shuffle=True)


def adam(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


# -- the variants: each returns (seconds, final weights) -------------------------------------------


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def accelerator() -> str:
    return "gpu" if DEVICE.type == "cuda" else "cpu"


def run_plain(size: Size, loader: DataLoader, steps: int) -> tuple[float, nn.Module]:
    torch.manual_seed(INIT_SEED)
    net = make_net(size).to(DEVICE)
    opt = adam(net.parameters())
    torch.manual_seed(LOOP_SEED)
    t0 = time.perf_counter()
    step = 0
    while step < steps:
        for x, y in loader:
            x, y = x.to(DEVICE), y.to(DEVICE)
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.step()
            step += 1
            if step == steps:
                break
    sync()
    return time.perf_counter() - t0, net


class BenchModule(Module):
    def __init__(self, size: Size, log_every_step: bool = False) -> None:
        super().__init__()
        self.net = make_net(size)
        self.log_every_step = log_every_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if self.log_every_step:
            self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self.parameters())


def run_gridlab(size: Size, loader: DataLoader, steps: int, logged: bool, root: str) -> tuple[float, nn.Module]:
    torch.manual_seed(INIT_SEED)
    module = BenchModule(size, log_every_step=logged)
    kwargs: dict[str, Any] = {"logger": False, "enable_progress_bar": False} if not logged else {}
    trainer = Trainer(
        max_epochs=-1,
        max_steps=steps,
        accelerator=accelerator(),
        devices=1,
        enable_checkpointing=False,
        default_root_dir=root,
        **kwargs,
    )
    torch.manual_seed(LOOP_SEED)
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    sync()
    return time.perf_counter() - t0, module.net


def lightning() -> Any | None:
    for name in ("lightning.pytorch", "pytorch_lightning"):
        with contextlib.suppress(ImportError):
            return importlib.import_module(name)
    return None


def make_run_lightning(pl: Any) -> Callable[[Size, DataLoader, int, str], tuple[float, nn.Module]]:
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(lightning|pytorch_lightning|lightning_fabric)(\..*)?")

    class PLModule(pl.LightningModule):
        def __init__(self, size: Size) -> None:
            super().__init__()
            self.net = make_net(size)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return adam(self.parameters())

    def run(size: Size, loader: DataLoader, steps: int, root: str) -> tuple[float, nn.Module]:
        torch.manual_seed(INIT_SEED)
        module = PLModule(size)
        trainer = pl.Trainer(
            max_steps=steps,
            max_epochs=-1,
            accelerator=accelerator(),
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=root,
        )
        torch.manual_seed(LOOP_SEED)
        t0 = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        sync()
        return time.perf_counter() - t0, module.net

    return run


# -- measurement -----------------------------------------------------------------------------------


def max_abs_diff(a: nn.Module, b: nn.Module) -> float:
    return max(
        float((p.cpu() - q.cpu()).abs().max())
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def measure(size: Size, steps: int, repeats: int, pl_run: Any, root: str) -> dict[str, Row]:
    """Per variant: median seconds per step, median paired ratio to plain, largest weight difference."""
    loader = make_loader(size)
    variants: dict[str, Callable[[int], tuple[float, nn.Module]]] = {
        "plain": lambda n: run_plain(size, loader, n),
        "bare": lambda n: run_gridlab(size, loader, n, False, root),
        "logged": lambda n: run_gridlab(size, loader, n, True, root),
    }
    if pl_run is not None:
        variants["PL"] = lambda n: pl_run(size, loader, n, root)

    names = list(variants)
    for run in variants.values():  # warm-up: lazy imports, allocator, first-call paths
        run(max(1, steps // 10))
    per_step: dict[str, list[float]] = {k: [] for k in names}
    ratios: dict[str, list[float]] = {k: [] for k in names}
    diffs: dict[str, float] = dict.fromkeys(names, 0.0)
    reference: nn.Module | None = None
    for r in range(repeats):
        # Rotate the order each repeat so that no variant always runs first (or after a
        # particular other one); compare each to the plain run of the same repeat.
        this: dict[str, float] = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()
            seconds, net = variants[name](steps)
            this[name] = seconds / steps
            reference = reference or net
            diffs[name] = max(diffs[name], max_abs_diff(reference, net))
        for name, t in this.items():
            per_step[name].append(t)
            ratios[name].append(t / this["plain"])
        print(f"  {size.name}: repeat {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    med = statistics.median
    return {k: Row(med(per_step[k]), med(ratios[k]), diffs[k]) for k in names}


@dataclass(frozen=True)
class Row:
    per_step: float  # seconds: the whole fit() (or loop) over the number of steps, median
    ratio: float  # median over repeats of (this variant / plain in the same repeat)
    weight_diff: float  # largest |w - w_plain| over all runs


def table(results: dict[str, dict[str, Row]], steps: dict[str, int]) -> bool:
    """Print the table; True when every goal is met and every variant matched plain's weights."""
    ok = True
    head = (
        f"{'model':<6} {'steps':>6} {'variant':<7} {'per step':>10} {'overhead':>11} {'ratio':>7} {'goal':>13}  weights"
    )
    print(head)
    print("-" * len(head))
    for model, rows in results.items():
        base = rows["plain"].per_step
        for name, row in rows.items():
            goal = GOALS.get((model, name))
            ratio = row.ratio
            verdict = ""
            if goal is not None:
                met = ratio <= goal
                ok &= met
                verdict = f"<={goal:.2f} {'ok' if met else 'MISSED'}"
            same = row.weight_diff == 0.0
            ok &= same
            weights = "identical" if same else f"DIFFER by {row.weight_diff:.3g}"
            overhead = "" if name == "plain" else f"{(row.ratio - 1) * base * 1e6:+9.1f}us"
            print(
                f"{model:<6} {steps[model]:>6} {name:<7} {row.per_step * 1e6:>8.1f}us {overhead:>11} {ratio:>6.3f}x"
                f" {verdict:>13}  {weights}"
            )
    return ok


def device_name() -> str:
    return torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps per run, tiny MLP")
    p.add_argument("--wide-steps", type=int, default=100, help="optimizer steps per run, wide MLP")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--only", choices=["tiny", "wide"], help="run one model size")
    p.add_argument("--no-lightning", action="store_true", help="skip the Lightning column even if installed")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where every variant trains")
    args = p.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")

    torch.set_num_threads(1)
    pl = None if args.no_lightning else lightning()
    pl_run = make_run_lightning(pl) if pl is not None else None
    pl_note = f"{pl.__name__} {pl.__version__}" if pl is not None else "not installed: no PL column"
    where = f"torch {torch.__version__} on {device_name()}, 1 thread"
    print(f"{where}, {args.repeats} repeats, medians; Lightning: {pl_note}")

    sizes = {"tiny": (TINY, args.steps), "wide": (WIDE, args.wide_steps)}
    if args.only:
        sizes = {args.only: sizes[args.only]}
    results = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gridlab-bench-") as root:
        for name, (size, steps) in sizes.items():
            results[name] = measure(size, steps, args.repeats, pl_run, root)
    print(f"\n(measured in {time.perf_counter() - t0:.0f}s; overhead and ratio against plain PyTorch)")
    print("Goals: tiny MLP <=1.10x with logging off (bare), <=1.30x with it on (logged); wide MLP <=1.02x.\n")
    ok = table(results, {name: steps for name, (_, steps) in sizes.items()})
    same = all(row.weight_diff == 0.0 for rows in results.values() for row in rows.values())
    print(f"\nfinal weights of every variant and repeat identical to the plain loop's: {same}")
    assert same, "a variant ended with different weights from the plain PyTorch loop"
    print("all goals met" if ok else "some goals missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
