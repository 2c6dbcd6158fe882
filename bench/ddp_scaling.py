"""How does `gridlab.trainer.Trainer(strategy="ddp")` scale from 1 to N processes, against raw PyTorch DDP?

The same training (model, data, Adam, per-rank batch, seeds) run two ways, each at world size 1 and N:

  raw       a hand-written loop: DistributedDataParallel + DistributedSampler (set_epoch every epoch);
            zero_grad, loss, backward, step. At world 1 a plain loop, as the Trainer runs it
            (neither wraps one process in DDP).
  trainer   the Trainer, strategy="ddp", logger, checkpointing and progress bar off
  raw+flag  (world > 1 only) the raw loop plus what the Trainer adds per optimizer step when
            world_size > 1: one all-reduce of two int flags on the CPU (over a gloo side group
            under NCCL), the ranks' agreement on SIGTERM preemption and should_stop; it prices
            that collective on its own.

on CPU with gloo, N = 2; and, when CUDA is available, also on the GPUs with NCCL, N = every
visible GPU. Model: an MLP of three Linear(width, width) layers and a Linear(width, 1) head
(ReLU between) on generated data (nothing is downloaded).

Weak scaling: the per-rank batch is fixed (--batch, default 64), so the global batch is batch x
world, and "scaling" is throughput(world N) / throughput(world 1) of the same loop (ideal: N).
On CPU every process gets one thread (OMP_NUM_THREADS=1 and torch.set_num_threads(1)), so
1 vs 2 processes compares one core against two.

Method: the driver starts every configuration as fresh worker processes (this script with
--worker, RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT/LOCAL_RANK/LOCAL_WORLD_SIZE set, the same
launch for both loops), so start-up, imports and rendezvous are not timed. Inside the workers
the clock starts after --warmup optimizer steps, at a barrier, and stops at a barrier after
--steps more (CUDA is synchronized first); rank 0 reports samples/s = global batch x steps /
seconds as one JSON line. The configurations run in turn, their order rotated each repeat; the
table shows medians over --repeats, and the ratios are medians of per-repeat ratios (each
against the run of the same repeat, which cancels slow drift on a shared machine). Both loops
start from the same weights and see the same batches, so their final weights should agree:
the last line says whether they did.

    python bench/ddp_scaling.py [--steps 300] [--warmup 30] [--repeats 3] [--width 512]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset  # noqa: E402

INIT_SEED = 0  # model initialisation
LOOP_SEED = 1  # set just before the loop: a world-1 DataLoader's shuffle draws from it
DATA_SEED = 1234
SAMPLER_SEED = 0  # the Trainer's DistributedSampler seed when seed_everything was not called
LR = 1e-4
REPORT_KEY = "ddp_scaling"
LAUNCH_TIMEOUT_S = 600.0
CONFIGS = ("raw", "trainer", "raw+flag")


# -- what every worker trains --------------------------------------------------------------------


def make_net(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 1),
    )


def make_dataset(width: int, batch: int, world: int, batches_per_epoch: int) -> TensorDataset:
    g = torch.Generator().manual_seed(DATA_SEED)
    n = batch * world * batches_per_epoch
    x = torch.randn(n, width, generator=g)
    return TensorDataset(x, torch.randn(n, 1, generator=g))


def make_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=LR)


def checksum(net: nn.Module) -> float:
    return float(sum(p.detach().double().abs().sum() for p in net.parameters()))


def mark(device: torch.device) -> float:
    """All ranks here, all queued work done: now."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return time.perf_counter()


def run_raw(args: argparse.Namespace, device: torch.device, flag: bool) -> tuple[float, float]:
    """The hand-written loop; returns (timed seconds, checksum of the final weights)."""
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    flag_group = None
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world, device_id=device if backend == "nccl" else None)
        if flag and backend == "nccl":
            flag_group = dist.new_group(backend="gloo")
    data = make_dataset(args.width, args.batch, world, args.batches_per_epoch)
    torch.manual_seed(INIT_SEED)
    net = make_net(args.width).to(device)
    model: nn.Module = net
    sampler: DistributedSampler | None = None
    if world > 1:
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=SAMPLER_SEED)
    loader = DataLoader(data, batch_size=args.batch, shuffle=sampler is None, sampler=sampler)
    opt = make_optimizer(net.parameters())
    torch.manual_seed(LOOP_SEED)
    total = args.warmup + args.steps
    step = epoch = 0
    t0 = t1 = 0.0
    while step < total:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if flag:  # what Trainer._sync_stop_flags does when world_size > 1 (DistributedStrategy.any_of)
                t = torch.tensor([0, 0], dtype=torch.int32)
                dist.all_reduce(t, op=dist.ReduceOp.MAX, group=flag_group)
                t.tolist()
            if step == args.warmup:
                t0 = mark(device)
            if step == total:
                t1 = mark(device)
                break
        epoch += 1
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return t1 - t0, checksum(net)


def run_trainer(args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    """The same training under gridlab's Trainer; returns (timed seconds, checksum of the final weights)."""
    from gridlab.trainer import Callback, Module, Trainer

    class Net(Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net(args.width)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return make_optimizer(self.parameters())

    class Clock(Callback):
        def __init__(self) -> None:
            self.t0 = self.t1 = 0.0

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step == args.warmup:
                self.t0 = mark(device)
            elif trainer.global_step == args.warmup + args.steps:
                self.t1 = mark(device)

    world = int(os.environ["WORLD_SIZE"])
    data = make_dataset(args.width, args.batch, world, args.batches_per_epoch)
    # The Trainer gives this loader a DistributedSampler (shuffle=True, seed 0) when world > 1.
    loader = DataLoader(data, batch_size=args.batch, shuffle=True)
    torch.manual_seed(INIT_SEED)
    module = Net()
    clock = Clock()
    with tempfile.TemporaryDirectory(prefix="gridlab-bench-") as root:
        trainer = Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=world,
            strategy="ddp",
            max_steps=args.warmup + args.steps,
            callbacks=[clock],
            enable_progress_bar=False,
            enable_checkpointing=False,
            logger=False,
            default_root_dir=root,
        )
        torch.manual_seed(LOOP_SEED)
        trainer.fit(module, train_dataloaders=loader)
    assert trainer.world_size == world, f"trainer ran with world_size={trainer.world_size}, expected {world}"
    return clock.t1 - clock.t0, checksum(module.net)


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    if args.device == "gpu":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if args.worker == "trainer":
        seconds, check = run_trainer(args, device)
    else:
        seconds, check = run_raw(args, device, flag=args.worker == "raw+flag")
    world = int(os.environ["WORLD_SIZE"])
    if int(os.environ["RANK"]) == 0:
        assert seconds > 0, "the clock did not run (is --warmup >= 1?)"
        report = {"seconds": seconds, "samples_per_s": args.batch * world * args.steps / seconds, "checksum": check}
        print(json.dumps({REPORT_KEY: report}), flush=True)


# -- the driver ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Config:
    device: str  # "cpu" or "gpu"
    name: str  # one of CONFIGS
    world: int
    width: int
    batch: int


def launch(cfg: Config, args: argparse.Namespace, scratch: Path) -> dict[str, float]:
    """Run one configuration as `world` fresh processes; return rank 0's report."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", cfg.name, "--device", cfg.device]
    cmd += ["--width", str(cfg.width), "--batch", str(cfg.batch), "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup), "--batches-per-epoch", str(args.batches_per_epoch)]
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for rank in range(cfg.world):
            env = os.environ.copy()
            env.update(
                RANK=str(rank),
                WORLD_SIZE=str(cfg.world),
                LOCAL_RANK=str(rank),
                LOCAL_WORLD_SIZE=str(cfg.world),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                OMP_NUM_THREADS="1",
            )
            log = scratch / f"rank{rank}.log"
            logs.append(log)
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while any(p.poll() is None for p in procs):
            failed = [r for r, p in enumerate(procs) if p.returncode]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        for p in procs:  # a failed rank leaves its peers blocked in a collective: stop them
            if p.poll() is None:
                p.kill()
            p.wait()
    codes = [p.returncode for p in procs]
    text = logs[0].read_text(errors="replace")
    reports = [json.loads(line)[REPORT_KEY] for line in text.splitlines() if line.startswith(f'{{"{REPORT_KEY}"')]
    if any(codes) or not reports:
        tails = "\n".join(
            f"--- rank {r} (exit {c}):\n{logs[r].read_text(errors='replace')[-3000:]}" for r, c in enumerate(codes)
        )
        raise RuntimeError(f"{cfg} failed:\n{tails}")
    return reports[-1]


def configs(args: argparse.Namespace) -> list[Config]:
    out = []
    devices = [("cpu", 2, args.width, args.batch)]
    if args.device != "cpu" and torch.cuda.is_available():
        devices.append(("gpu", torch.cuda.device_count(), args.gpu_width, args.gpu_batch))
    if args.device == "gpu":
        devices = devices[1:]
    for device, n, width, batch in devices:
        for world in sorted({1, n}):
            out += [Config(device, name, world, width, batch) for name in CONFIGS if name != "raw+flag" or world > 1]
    return out


@dataclass
class Row:
    cfg: Config
    samples_per_s: float  # median over repeats
    spread: float  # (max - min) / median of samples/s over repeats
    scaling: float  # median per-repeat ratio to world 1 of the same loop and device
    vs_raw: float | None  # median per-repeat ratio to raw at the same world size and device


def measure(args: argparse.Namespace) -> tuple[list[Row], dict[Config, list[float]]]:
    todo = configs(args)
    rates: dict[Config, list[float]] = {c: [] for c in todo}
    checks: dict[Config, list[float]] = {c: [] for c in todo}
    with tempfile.TemporaryDirectory(prefix="gridlab-ddp-scaling-") as scratch:
        for r in range(args.repeats):
            # Rotate the order each repeat so no configuration always runs first or after another.
            for cfg in todo[r % len(todo) :] + todo[: r % len(todo)]:
                rep = launch(cfg, args, Path(scratch))
                rates[cfg].append(rep["samples_per_s"])
                if args.verbose:
                    print(f"  {cfg.device} {cfg.name} world {cfg.world}: {rep['samples_per_s']:.0f}/s", file=sys.stderr)
                checks[cfg].append(rep["checksum"])
            print(f"  repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    med = statistics.median
    rows = []
    for cfg in todo:
        base = "raw" if cfg.name == "raw+flag" else cfg.name  # raw+flag scales against raw at world 1
        one = Config(cfg.device, base, 1, cfg.width, cfg.batch)
        raw = Config(cfg.device, "raw", cfg.world, cfg.width, cfg.batch)
        scaling = med(a / b for a, b in zip(rates[cfg], rates[one], strict=True))
        vs_raw = None if cfg.name == "raw" else med(a / b for a, b in zip(rates[cfg], rates[raw], strict=True))
        spread = (max(rates[cfg]) - min(rates[cfg])) / med(rates[cfg])
        rows.append(Row(cfg, med(rates[cfg]), spread, scaling, vs_raw))
    return rows, checks


def table(rows: list[Row]) -> None:
    head = (
        f"{'device':<6} {'config':<9} {'world':>5} {'global batch':>12} {'samples/s':>10} {'spread':>7} {'ms/step':>8}"
        f" {'scaling vs world 1':>18} {'vs raw':>7}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        c = row.cfg
        global_batch = c.batch * c.world
        ms = global_batch / row.samples_per_s * 1e3
        scaling = f"{row.scaling:.3f}x (ideal {c.world})"
        vs_raw = "" if row.vs_raw is None else f"{row.vs_raw:.3f}x"
        print(
            f"{c.device:<6} {c.name:<9} {c.world:>5} {global_batch:>12} {row.samples_per_s:>10.0f}"
            f" {row.spread * 100:>6.0f}% {ms:>8.2f}"
            f" {scaling:>18} {vs_raw:>7}"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=30, help="untimed optimizer steps before the clock starts (>= 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--width", type=int, default=512, help="MLP width on CPU")
    p.add_argument("--batch", type=int, default=64, help="per-rank batch on CPU")
    p.add_argument("--gpu-width", type=int, default=4096, help="MLP width on GPU")
    p.add_argument("--gpu-batch", type=int, default=128, help="per-rank batch on GPU")
    p.add_argument("--batches-per-epoch", type=int, default=64, help="per rank: the dataset is batch x world x this")
    p.add_argument("--device", choices=["all", "cpu", "gpu"], default="all", help="all: CPU, and GPUs when present")
    p.add_argument("-v", "--verbose", action="store_true", help="print every run's samples/s as it ends")
    p.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be >= 1")
    if args.worker:
        worker(args)
        return 0

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.device == "gpu" and not gpus:
        p.error("--device gpu: no CUDA GPU is visible")
    print(
        f"torch {torch.__version__}; CPU: gloo, 1 thread per process, MLP width {args.width}, batch {args.batch} per"
        f" rank; GPUs: {gpus}" + (f" (NCCL, width {args.gpu_width}, batch {args.gpu_batch} per rank)" if gpus else "")
    )
    print(
        f"{args.warmup} warm-up + {args.steps} timed steps per run, {args.repeats} repeats, medians; weak scaling"
        " (per-rank batch fixed, global batch = batch x world)",
        flush=True,
    )
    t0 = time.perf_counter()
    rows, checks = measure(args)
    print(f"\n(measured in {time.perf_counter() - t0:.0f}s)\n")
    table(rows)
    print(
        "\nspread: (max - min) / median of samples/s over the repeats. scaling: samples/s over the same loop's at"
        " world 1 (raw+flag: over raw's); vs raw: samples/s over raw DDP's at the same world size; both medians of"
        " per-repeat ratios."
    )
    same = True
    worst = 0.0
    for cfg, values in checks.items():
        raw = checks[Config(cfg.device, "raw", cfg.world, cfg.width, cfg.batch)]
        for a, b in zip(values, raw, strict=True):
            same &= a == b
            worst = max(worst, abs(a - b) / abs(b))
    note = "identical" if same else f"differ (largest relative difference of the weight checksum {worst:.2g})"
    print(f"final weights of every config against raw at the same world size and repeat: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
