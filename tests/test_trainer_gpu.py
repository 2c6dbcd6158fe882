"""The NCCL path: DDP and FSDP on every visible GPU (skipped without CUDA; run them when a GPU
machine is lent: `pytest -m gpu`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_trainer_distributed import EXAMPLE, max_diff, ok, run

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def gpus() -> int:
    return torch.cuda.device_count()


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_ddp_on_every_gpu_with_nccl(tmp_path: Path, precision: str) -> None:
    n = gpus()
    out = ok(
        run(
            EXAMPLE,
            "--accelerator",
            "gpu",
            "--devices",
            n,
            "--strategy",
            "ddp",
            "--precision",
            precision,
            "--root",
            tmp_path / "r",
            "--save-weights",
            tmp_path / "w.pt",
            cwd=tmp_path,
        )
    )
    assert f"world_size={n} steps=32" in out
    weights = torch.load(tmp_path / "w.pt")
    assert all(torch.isfinite(v).all() for v in weights.values())
    if precision == "32-true":  # the same global batch on the CPU, one process: the same weights, nearly
        ok(run(EXAMPLE, "--root", tmp_path / "c", "--save-weights", tmp_path / "cpu.pt", cwd=tmp_path))
        assert max_diff(tmp_path / "w.pt", tmp_path / "cpu.pt") < 1e-3  # TF32 and reduction order differ


def test_fsdp_bf16_on_every_gpu_and_resume_in_one_process(tmp_path: Path) -> None:
    n = gpus()
    fsdp = [EXAMPLE, "--accelerator", "gpu", "--devices", n, "--strategy", "fsdp", "--precision", "bf16-mixed"]
    out = ok(run(*fsdp, "--root", tmp_path / "a", cwd=tmp_path))
    assert f"world_size={n} steps=32" in out
    folder = tmp_path / "a" / "checkpoints" / "epoch=1-step=32.ckpt"
    assert (folder / "meta.pt").is_file()
    resumed = run(EXAMPLE, "--epochs", 3, "--root", tmp_path / "b", "--ckpt-path", folder, cwd=tmp_path)
    assert "world_size=1 steps=48" in ok(resumed)


def test_cuda_is_what_the_trainer_picks_by_default() -> None:
    from gridlab.trainer import Trainer

    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.strategy.root_device.type == "cuda"
    assert trainer.num_devices == gpus()
    assert sys.modules["torch"].cuda.is_available()
