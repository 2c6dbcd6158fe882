"""The real GPU path of the agent (skipped without CUDA; run when a GPU machine is lent: `pytest -m gpu`):
NVML's inventory against what CUDA sees, and a run placed by the scheduler on a real GPU that
the agent hands over through CUDA_VISIBLE_DEVICES, trains there with the Trainer's defaults,
and whose GPU the scheduler lists with its live memory."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gridlab.client.localcluster import LocalCluster

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

# The Trainer's defaults (accelerator and devices "auto") on whatever GPUs the agent gave the run.
JOB = textwrap.dedent(
    """
    import os, torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from gridlab.trainer import Module, Trainer

    class Net(Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    print("visible", os.environ.get("CUDA_VISIBLE_DEVICES"), "count", torch.cuda.device_count(), flush=True)
    data = TensorDataset(torch.randn(512, 64), torch.randn(512, 1))
    trainer = Trainer(max_epochs=2, precision="bf16-mixed", logger=False, enable_progress_bar=False)
    trainer.fit(Net(), DataLoader(data, batch_size=64))
    print("device", trainer.strategy.root_device.type, "steps", trainer.global_step, flush=True)
    """
)


def test_nvml_inventory_matches_what_cuda_sees() -> None:
    from gridlab.agent.inventory import NvmlGpus

    source = NvmlGpus.open()
    assert source is not None, "NVML did not open on a machine with CUDA"
    try:
        gpus = source.gpus()
    finally:
        source.close()
    assert len(gpus) == torch.cuda.device_count()
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    assert sorted(g.model for g in gpus) == sorted(p.name for p in props)
    assert sorted(g.compute_capability for g in gpus) == sorted(f"{p.major}.{p.minor}" for p in props)
    for gpu, prop in zip(sorted(gpus, key=lambda g: g.model), sorted(props, key=lambda p: p.name), strict=True):
        assert gpu.uuid.startswith("GPU-")
        assert abs(gpu.memory_total_bytes - prop.total_memory) < 0.05 * prop.total_memory
        assert 0 <= gpu.memory_used_bytes <= gpu.memory_total_bytes
    assert len({g.uuid for g in gpus}) == len(gpus)


def test_a_run_on_a_real_agent_trains_on_the_gpu_it_was_given(make_cluster, tmp_path: Path) -> None:
    cluster: LocalCluster = make_cluster()
    cluster.start_scheduler()
    cluster.start_agent("gpu-box")  # no GRIDLAB_FAKE_GPUS: NVML
    client = cluster.client()
    (agent,) = client.agents()
    assert not agent.inventory.fake_gpus
    assert len(agent.inventory.gpus) == torch.cuda.device_count()
    (job := tmp_path / "job.py").write_text(JOB)
    run = client.submit([sys.executable, str(job)], gpus=1, name="on-gpu")
    status = run.wait(timeout=300, raise_on_failure=False)
    lines = list(client.logs(run.id))
    assert status.state == "SUCCEEDED", lines[-30:]
    (visible,) = [line for line in lines if line.startswith("visible ")]
    uuid = visible.split()[1]
    assert uuid in {g.uuid for g in agent.inventory.gpus}, visible  # the agent named the GPU it gave
    assert visible.endswith("count 1")  # and the run saw only that one
    assert any(line == "device cuda steps 16" for line in lines), lines[-30:]
