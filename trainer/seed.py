"""Seeding and RNG state capture (python, torch CPU, CUDA), for seeding runs and exact resumes."""

from __future__ import annotations

import os
import random
from typing import Any

import torch

# Lightning's names, so DataLoader worker seeding behaves the same under either library.
SEED_ENV = "PL_GLOBAL_SEED"
SEED_WORKERS_ENV = "PL_SEED_WORKERS"


def seed_everything(seed: int | None = None, workers: bool = True) -> int:
    """Seed python's `random`, torch (CPU and CUDA) and record the seed in the environment.

    With `workers=True` the trainer gives DataLoaders without a `worker_init_fn` one that seeds
    each worker from (seed, worker id, rank), as Lightning does.
    """
    if seed is None:
        env = os.environ.get(SEED_ENV)
        seed = int(env) if env is not None else 0
    seed = int(seed)
    os.environ[SEED_ENV] = str(seed)
    os.environ[SEED_WORKERS_ENV] = str(int(workers))
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def worker_init_fn(worker_id: int, rank: int = 0) -> None:
    """Seed a DataLoader worker from the global seed, its id and the process rank."""
    base = int(os.environ.get(SEED_ENV, "0"))
    seed = (base * 1_000_003 + rank * 10_007 + worker_id) % (2**63)
    random.seed(seed)
    torch.manual_seed(seed)


def collect_rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    if "python" in states:
        random.setstate(_as_python_state(states["python"]))
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "torch.cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])


def _as_python_state(state: Any) -> tuple:
    # A checkpoint round trip may turn the nested tuples into lists.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
