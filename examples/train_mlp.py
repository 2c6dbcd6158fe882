"""Train a small MLP on data generated here (no downloads), the gridlab way.

Runs anywhere: `python examples/train_mlp.py` on a laptop, or submitted to gridlab,
where it reads the worker environment the agent sets: it writes its checkpoint to
$GRIDLAB_CHECKPOINT_DIR (temp file, then rename), appends metrics as JSON lines to
$GRIDLAB_METRICS_FILE, and resumes from $GRIDLAB_RESUME_FROM when the run is restarted.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

# torch warns at import when NumPy is absent; this example does not use NumPy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
from torch import nn  # noqa: E402


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    w = torch.randn(16, 1, generator=g)
    y = torch.sin(x @ w) + 0.05 * torch.randn(n, 1, generator=g)
    return x, y


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".partial")
    torch.save(state, tmp)
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    x, y = make_data(4096, args.seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    start_step = 0
    resume = os.environ.get("GRIDLAB_RESUME_FROM")
    if resume:
        state = torch.load(resume, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_step = state["step"]
        print(f"resumed from {resume} at step {start_step}")
    ckpt_dir = Path(os.environ.get("GRIDLAB_CHECKPOINT_DIR", "checkpoints"))
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = os.environ.get("GRIDLAB_METRICS_FILE")

    t0 = time.perf_counter()
    for step in range(start_step, args.steps):
        idx = torch.randint(0, x.shape[0], (128,))
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}", flush=True)
            if metrics_file:
                with open(metrics_file, "a") as fh:
                    fh.write(json.dumps({"step": step, "loss": loss.item(), "time": time.time()}) + "\n")
    with torch.no_grad():
        final = nn.functional.mse_loss(model(x), y).item()
    save_checkpoint(
        ckpt_dir / "last.pt", {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": args.steps}
    )
    print(f"done: {args.steps - start_step} steps in {time.perf_counter() - t0:.1f}s, full-data loss {final:.4f}")
    print(f"checkpoint: {ckpt_dir / 'last.pt'}")


if __name__ == "__main__":
    main()
