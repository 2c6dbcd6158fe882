"""The distributed trainer's pieces, in one process: environment, devices, sampler injection, sharded
checkpoint IO, the SIGTERM flag and the one-process preemption path. (Real groups: test_trainer_distributed.)"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from boring import BoringModel, regression_data
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from gridlab.trainer import MisconfigurationError, Trainer
from gridlab.trainer import checkpoint as ckpt_io
from gridlab.trainer.ddp import DDPStrategy
from gridlab.trainer.distributed import DistributedStrategy
from gridlab.trainer.environment import ClusterEnvironment
from gridlab.trainer.fsdp import FSDPStrategy
from gridlab.trainer.launcher import script_command
from gridlab.trainer.preemption import SigtermFlag
from gridlab.trainer.trainer import _parse_devices

GROUP = {
    "RANK": "1",
    "WORLD_SIZE": "4",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "10.0.0.5",
    "MASTER_PORT": "29500",
}
S = TypeVar("S", bound=DistributedStrategy)
QUIET: dict[str, Any] = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}


def test_environment_reads_torchrun_variables_and_rejects_nonsense() -> None:
    assert ClusterEnvironment.detect({}) is None
    env = ClusterEnvironment.detect(GROUP)
    assert env == ClusterEnvironment(1, 4, 1, 2, 0, "10.0.0.5", 29500)
    assert env.num_nodes == 2
    assert ClusterEnvironment.detect(env.to_env()) == env
    with pytest.raises(MisconfigurationError, match=r"RANK=4 must be in \[0, WORLD_SIZE=4\)"):
        ClusterEnvironment.detect({**GROUP, "RANK": "4"})
    with pytest.raises(MisconfigurationError, match="MASTER_ADDR and MASTER_PORT"):
        ClusterEnvironment.detect({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(MisconfigurationError, match="LOCAL_RANK='x' is not an integer"):
        ClusterEnvironment.detect({**GROUP, "LOCAL_RANK": "x"})


def test_devices_forms() -> None:
    assert _parse_devices("auto", "cpu") == [0]
    assert _parse_devices(3, "cpu") == [0, 1, 2]
    assert _parse_devices("2", "cpu") == [0, 1]
    assert _parse_devices("0,1", "cpu") == [0, 1]
    assert _parse_devices([0, 1], "cpu") == [0, 1]
    for bad, match in [(0, ">= 1"), (-1, "every GPU"), (True, "not a bool"), ("two", "got 'two'")]:
        with pytest.raises(MisconfigurationError, match=match):
            _parse_devices(bad, "cpu")


def test_the_launchers_environment_decides_the_topology(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in GROUP.items():
        monkeypatch.setenv(k, v)
    trainer = Trainer(accelerator="cpu", **QUIET)  # the script never said devices=: torchrun did
    assert isinstance(trainer.strategy, DDPStrategy)
    assert (trainer.num_devices, trainer.num_nodes, trainer.world_size) == (2, 2, 4)
    fsdp = Trainer(accelerator="cpu", strategy="fsdp", **QUIET)
    assert isinstance(fsdp.strategy, FSDPStrategy)
    clash = Trainer(accelerator="cpu", devices=3, **QUIET)
    with pytest.raises(MisconfigurationError, match="WORLD_SIZE=4"):
        clash.strategy.setup_environment()


def test_num_nodes_without_a_launcher_says_what_to_use() -> None:
    trainer = Trainer(accelerator="cpu", devices=2, num_nodes=2, **QUIET)
    assert trainer.world_size == 4
    with pytest.raises(MisconfigurationError, match="torchrun"):
        trainer.fit(BoringModel(), DataLoader(regression_data(), batch_size=8))


def test_the_launcher_refuses_to_rerun_pytest() -> None:
    with pytest.raises(MisconfigurationError, match="pytest"):
        script_command()


def _rank(strategy: S, rank: int, world: int) -> S:
    strategy.env = ClusterEnvironment(rank, world, rank, world, 0, "127.0.0.1", 1)
    return strategy


def test_loaders_get_a_distributed_sampler_that_follows_their_shuffle() -> None:
    data = regression_data(10)
    strategy = _rank(DDPStrategy(), 1, 2)
    plain = strategy.process_dataloader(DataLoader(data, batch_size=2))
    assert isinstance(plain.sampler, DistributedSampler)
    assert list(plain.sampler) == [1, 3, 5, 7, 9]  # rank 1 of 2, in order
    assert plain.batch_size == 2
    shuffled = strategy.process_dataloader(DataLoader(data, batch_size=2, shuffle=True))
    assert shuffled.sampler.shuffle
    own = DataLoader(data, batch_size=2, sampler=SequentialSampler(range(4)))
    own.sampler.__class__ = type("MySampler", (SequentialSampler,), {})
    with pytest.warns(UserWarning, match="not sharded"):
        assert strategy.process_dataloader(own) is own
    assert _rank(DDPStrategy(), 0, 1).process_dataloader(own) is own  # one process: nothing to shard


def test_use_distributed_sampler_false_leaves_loaders_alone() -> None:
    trainer = Trainer(accelerator="cpu", devices=2, use_distributed_sampler=False, **QUIET)
    _rank(trainer.strategy, 0, 2)  # type: ignore[type-var]
    loader = DataLoader(regression_data(), batch_size=4)
    assert trainer._loaders(loader, "train") == [loader]


def test_timeout_forms() -> None:
    assert DDPStrategy(timeout=90).timeout.total_seconds() == 90
    assert DDPStrategy(timeout="00:00:02:00").timeout.total_seconds() == 120
    with pytest.raises(MisconfigurationError, match="timeout"):
        DDPStrategy(timeout="soon")


def _trained(tmp_path: Path) -> tuple[BoringModel, torch.optim.Optimizer]:
    model = BoringModel(optimizer="adam")
    opt = model.configure_optimizers()
    for x, y in DataLoader(regression_data(), batch_size=16):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return model, opt


def test_sharded_folder_round_trip_in_one_process(tmp_path: Path) -> None:
    """The FSDP layout read back by a plain process: weights, name-keyed optimizer state, metadata."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model, opt = _trained(tmp_path)
    ckpt = {
        "format_version": ckpt_io.FORMAT_VERSION,
        "global_step": 4,
        "hyper_parameters": dict(model.hparams),
        "state_dict": model.state_dict(),
        "optimizer_states": [get_optimizer_state_dict(model, opt)],
    }
    folder = tmp_path / "epoch=0.ckpt"
    for _ in range(2):  # the second save replaces the first whole
        ckpt_io.save_sharded(ckpt, folder, is_global_zero=True, barrier=lambda: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0.ckpt"]  # no .partial or .old left

    fresh = BoringModel(optimizer="adam")
    fresh_opt = fresh.configure_optimizers()
    loaded = ckpt_io.read(folder, fresh, [fresh_opt], no_dist=True)
    assert loaded["global_step"] == 4
    fresh.load_state_dict(loaded["state_dict"])
    strategy = _rank(DDPStrategy(), 0, 1)
    strategy.module = fresh
    strategy.load_optimizer_state_dict(fresh_opt, loaded["optimizer_states"][0])
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["exp_avg_sq"], fresh_opt.state[q]["exp_avg_sq"])
    again = BoringModel.load_from_checkpoint(folder)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(), strict=True))


def test_positional_optimizer_state_translates_to_names() -> None:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model, opt = _trained(Path("."))
    by_name = ckpt_io.name_keyed(model, opt, opt.state_dict())
    assert ckpt_io.is_name_keyed(by_name)
    assert not ckpt_io.is_name_keyed(opt.state_dict())
    expected = get_optimizer_state_dict(model, opt)
    assert by_name["state"].keys() == expected["state"].keys()
    assert by_name["param_groups"][0]["params"] == expected["param_groups"][0]["params"]


def test_sigterm_flag_catches_the_first_signal_and_restores_the_handler() -> None:
    flag = SigtermFlag()
    before = signal.getsignal(signal.SIGTERM)
    flag.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.requested
    finally:
        flag.uninstall()
    assert signal.getsignal(signal.SIGTERM) == before


class SigtermAt(BoringModel):
    def __init__(self, at: int = -1, **kw: Any) -> None:
        super().__init__(**kw)
        self.at = at

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.trainer.global_step == self.at and not self.trainer.received_sigterm:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().training_step(batch, batch_idx)


def test_one_process_preemption_saves_exits_zero_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fit(model: BoringModel, root: str, **kw: Any) -> Trainer:
        torch.manual_seed(0)
        loader = DataLoader(regression_data(), batch_size=8, shuffle=True)
        trainer = Trainer(accelerator="cpu", max_epochs=2, default_root_dir=tmp_path / root, **QUIET)
        trainer.fit(model, loader, **kw)
        return trainer

    torch.manual_seed(1)
    ref = SigtermAt()
    fit(ref, "ref")
    torch.manual_seed(1)
    stopped = SigtermAt(at=5)
    monkeypatch.setenv("GRIDLAB_CHECKPOINT_DIR", str(tmp_path / "ckpts"))
    with pytest.raises(SystemExit) as exit_:
        fit(stopped, "pre")
    assert exit_.value.code == 0
    path = tmp_path / "ckpts" / "preempted.ckpt"
    assert f"saved {path} at epoch 0, step 6; exiting 0" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with fit

    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(path.read_bytes())

    def resume(root: str, **kw: Any) -> SigtermAt:
        model = SigtermAt()
        trainer = fit(model, root, **kw)
        assert trainer.global_step == 16
        for p, q in zip(ref.parameters(), model.parameters(), strict=True):
            assert torch.equal(p, q)
        return model

    assert resume("last", ckpt_path="last").trainer.ckpt_path == str(path)  # "last" finds it
    assert not path.exists()  # a finished fit removes the preemption checkpoint: it must not win "last" later
    monkeypatch.setenv("GRIDLAB_RESUME_FROM", str(copy))  # what the agent sets for the next attempt
    assert resume("env").trainer.ckpt_path == str(copy)


def test_fsdp_options_fail_early_with_the_fix() -> None:
    with pytest.raises(MisconfigurationError, match='"sharded" or "full"'):
        FSDPStrategy(state_dict_type="zero3")
    strategy = _rank(FSDPStrategy(cpu_offload=True), 0, 2)
    with pytest.raises(MisconfigurationError, match="drop cpu_offload"):
        strategy.setup_module(BoringModel())


def test_module_print_speaks_from_rank_zero_only(capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    model = BoringModel()
    model.print("alone")
    model.trainer = SimpleNamespace(is_global_zero=False)
    model.print("rank 1")
    model.trainer = SimpleNamespace(is_global_zero=True)
    model.print("rank 0")
    assert capsys.readouterr().out == "alone\nrank 0\n"


def test_strategies_are_exported_and_device_lists_pick_each_ranks_gpu() -> None:
    import gridlab.trainer as gt

    assert gt.DDPStrategy is DDPStrategy
    assert gt.FSDPStrategy is FSDPStrategy
    strategy = DDPStrategy()
    strategy.configure("cpu", [2, 3], 1, lambda dt: None)
    strategy.env = ClusterEnvironment(1, 2, 1, 2, 0, "127.0.0.1", 1)
    assert strategy._device_index() == 3  # devices=[2, 3]: local rank 1 on cuda:3


GROUP_SIGTERM_JOB = """
import os, signal, sys, threading, time
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from gridlab.trainer import Module, Trainer

class Slow(Dataset):  # the rank spends its time waiting for batches, as input-bound training does
    def __len__(self):
        return 256
    def __getitem__(self, i):
        time.sleep(0.01)
        return torch.full((4,), float(i)), torch.ones(1)

class M(Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)
    def on_train_start(self):
        # What the agent does on cancel: SIGTERM to the whole process group, workers included, at a moment
        # that is most likely inside next(iterator).
        threading.Timer(1.0, os.killpg, (os.getpgrp(), signal.SIGTERM)).start()
    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.lin(x), y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-4)

loader = DataLoader(Slow(), batch_size=4, num_workers=2)
Trainer(accelerator="cpu", max_epochs=5, logger=False, enable_progress_bar=False,
        default_root_dir=sys.argv[1]).fit(M(), loader)
print("fit returned")
"""


def test_a_sigterm_to_the_whole_process_group_with_dataloader_workers_still_checkpoints(tmp_path: Path) -> None:
    """The agent signals the process group: the DataLoader workers get SIGTERM too. They must neither die
    (the rank would fail with "worker killed by signal") nor count as a second SIGTERM in the rank."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", GROUP_SIGTERM_JOB, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,  # its own process group, so the killpg stays inside it
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SIGTERM received; saved" in proc.stdout
    assert "second SIGTERM" not in proc.stderr
    assert "fit returned" not in proc.stdout
    assert (tmp_path / "checkpoints" / "preempted.ckpt").is_file()


def test_write_file_replaces_a_sharded_folder_but_never_an_ordinary_one(tmp_path: Path) -> None:
    plain = tmp_path / "mine"
    (plain / "sub").mkdir(parents=True)
    (plain / "notes.txt").write_text("keep me")
    with pytest.raises(IsADirectoryError, match="not a checkpoint"):
        ckpt_io.write_file({"x": 1}, plain)
    assert (plain / "notes.txt").read_text() == "keep me"
    sharded = tmp_path / "last.ckpt"
    sharded.mkdir()
    (sharded / ckpt_io.META_FILE).write_bytes(b"")
    ckpt_io.write_file({"x": 1}, sharded)
    assert sharded.is_file()


def test_a_one_process_ddp_fit_leaves_no_group_and_no_launcher_environment(tmp_path: Path) -> None:
    import torch.distributed as dist

    trainer = Trainer(accelerator="cpu", strategy="ddp", devices=1, max_steps=2, default_root_dir=tmp_path, **QUIET)
    trainer.fit(BoringModel(), DataLoader(regression_data(), batch_size=8))
    assert trainer.global_step == 2
    assert not dist.is_initialized()
    assert "WORLD_SIZE" not in os.environ
