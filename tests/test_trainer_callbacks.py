"""Callbacks against a small fake Trainer that follows the contract in trainer/callbacks/base.py.

The fake's loop calls the hooks in Lightning's order (validation at the end of an epoch runs
before on_train_epoch_end); integration tests with the real Trainer sit at the end.
"""

from __future__ import annotations

import copy
import io
import json
import os
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import SWALR

from gridlab.trainer.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    StochasticWeightAveraging,
    Timer,
)
from gridlab.trainer.loggers import Logger
from gridlab.trainer.precision import Precision
from gridlab.trainer.strategy import SingleDeviceStrategy

torch.set_num_threads(1)


class Cfg(SimpleNamespace):
    """A stand-in for LRSchedulerConfig: .scheduler, .interval, .frequency, .monitor."""


class RecordingLogger(Logger):
    def __init__(self) -> None:
        self.records: list[tuple[int, dict[str, float]]] = []
        self.saves = 0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.records.append((step, dict(metrics)))

    def save(self) -> None:
        self.saves += 1


def make_data(n: int = 64, batch: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


class FakeTrainer:
    """Implements the attributes and the hook order of the callback contract, nothing more."""

    def __init__(
        self,
        module: nn.Module,
        optimizers: list[torch.optim.Optimizer] | torch.optim.Optimizer,
        *,
        callbacks: list[Callback] = (),  # type: ignore[assignment]
        loggers: list[Logger] = (),  # type: ignore[assignment]
        schedulers: list[Cfg] = (),  # type: ignore[assignment]
        data: list[Any] | None = None,
        max_epochs: int = 3,
        val_metrics: Any = None,
        train_metrics: Any = None,
        checkpoint_dir: str = ".",
        start_epoch: int = 0,
        start_step: int = 0,
    ) -> None:
        self.module = module
        self.optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        self.lr_scheduler_configs = list(schedulers)
        self.callbacks = list(callbacks)
        self.loggers = list(loggers)
        self.logger = self.loggers[0] if self.loggers else None
        self.train_dataloader = data if data is not None else make_data()
        self.max_epochs = max_epochs
        self.max_steps = -1
        self.current_epoch = start_epoch
        self.global_step = start_step
        self.batch_idx = 0
        self.state = SimpleNamespace(stage="fit")
        self.sanity_checking = False
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.logged_metrics: dict[str, torch.Tensor] = {}
        self.progress_bar_metrics: dict[str, torch.Tensor] = {}
        self.val_metrics = val_metrics  # epoch -> {name: value}, run as "validation" at each epoch end
        self.train_metrics = train_metrics  # epoch -> {name: value}, logged at train epoch end
        self.num_training_batches = len(self.train_dataloader)
        self.num_val_batches = [1] if val_metrics else [0]
        self.estimated_stepping_batches = max_epochs * self.num_training_batches
        self.is_global_zero = True
        self.default_root_dir = checkpoint_dir
        self.checkpoint_dir = checkpoint_dir
        self.strategy = SingleDeviceStrategy(torch.device("cpu"), Precision())
        self.should_stop = False
        self.log_every_n_steps = 1
        self.saved: list[str] = []
        self.snapshots: list[list[torch.Tensor]] = []  # parameters after each epoch's batches
        self.epochs_run = 0

    def save_checkpoint(self, path: str) -> None:
        ckpt = {
            "state_dict": self.module.state_dict(),
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
        }
        tmp = f"{path}.tmp"
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
        self.saved.append(path)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, self.module, *args)

    def _record(self, metrics: Any) -> None:
        self.callback_metrics.update({k: torch.tensor(v) for k, v in metrics(self.current_epoch).items()})

    def fit(self) -> FakeTrainer:
        self._call("setup", "fit")
        self._call("on_fit_start")
        self._call("on_train_start")
        while self.current_epoch < self.max_epochs and not self.should_stop:
            self._call("on_train_epoch_start")
            for i, (x, y) in enumerate(self.train_dataloader):
                self.batch_idx = i
                self._call("on_train_batch_start", (x, y), i)
                loss = nn.functional.mse_loss(self.module(x), y)
                for opt in self.optimizers:
                    opt.zero_grad()
                loss.backward()
                for opt in self.optimizers:
                    opt.step()
                self.global_step += 1
                for cfg in self.lr_scheduler_configs:
                    if cfg.interval == "step":
                        cfg.scheduler.step()
                self.progress_bar_metrics = {"train_loss": loss.detach()}
                self._call("on_train_batch_end", {"loss": loss.detach()}, (x, y), i)
                if self.should_stop:
                    break
            self.snapshots.append([p.detach().clone() for p in self.module.parameters()])
            if self.train_metrics:
                self.callback_metrics.update(
                    {k: torch.tensor(v) for k, v in self.train_metrics(self.current_epoch).items()}
                )
            if self.val_metrics and not self.should_stop:
                self._call("on_validation_start")
                self.callback_metrics.update(
                    {k: torch.tensor(v) for k, v in self.val_metrics(self.current_epoch).items()}
                )
                self._call("on_validation_end")
            self._call("on_train_epoch_end")
            for cfg in self.lr_scheduler_configs:
                if cfg.interval == "epoch":
                    cfg.scheduler.step()
            self.epochs_run += 1
            self.current_epoch += 1
        self._call("on_train_end")
        self._call("on_fit_end")
        self._call("teardown", "fit")
        return self


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def trainer_for(tmp_path: Any, callbacks: list[Callback], **kw: Any) -> FakeTrainer:
    model = kw.pop("module", None) or mlp()
    opt = kw.pop("optimizer", None) or torch.optim.SGD(model.parameters(), lr=0.01)
    return FakeTrainer(model, opt, callbacks=callbacks, checkpoint_dir=str(tmp_path / "ckpts"), **kw)


def scripted(values: list[float], name: str = "val_loss") -> Any:
    return lambda epoch: {name: values[epoch]}


def ckpt_files(tmp_path: Any) -> list[str]:
    d = tmp_path / "ckpts"
    return sorted(os.listdir(d)) if d.exists() else []


# ---------------------------------------------------------------------------- ModelCheckpoint


def test_checkpoint_default_keeps_latest_epoch_in_checkpoint_dir(tmp_path: Any) -> None:
    ckpt = ModelCheckpoint()
    t = trainer_for(tmp_path, [ckpt], max_epochs=3).fit()
    assert ckpt.dirpath == str(tmp_path / "ckpts")
    assert ckpt_files(tmp_path) == ["epoch=2-step=24.ckpt"]
    assert ckpt.best_model_path == str(tmp_path / "ckpts" / "epoch=2-step=24.ckpt")
    assert len(t.saved) == 3  # one per epoch; the older ones deleted


def test_checkpoint_top_k_by_monitor_with_last(tmp_path: Any) -> None:
    ckpt = ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True, filename="{epoch}-{val_loss:.2f}")
    trainer_for(tmp_path, [ckpt], max_epochs=5, val_metrics=scripted([5.0, 3.0, 4.0, 1.0, 2.0])).fit()
    assert ckpt_files(tmp_path) == ["epoch=3-val_loss=1.00.ckpt", "epoch=4-val_loss=2.00.ckpt", "last.ckpt"]
    d = tmp_path / "ckpts"
    assert ckpt.best_model_path == str(d / "epoch=3-val_loss=1.00.ckpt")
    assert float(ckpt.best_model_score) == 1.0
    assert ckpt.last_model_path == str(d / "last.ckpt")
    assert {os.path.basename(p): float(v) for p, v in ckpt.best_k_models.items()} == {
        "epoch=3-val_loss=1.00.ckpt": 1.0,
        "epoch=4-val_loss=2.00.ckpt": 2.0,
    }
    assert float(ckpt.kth_value) == 2.0
    # The checkpoint file holds the callback's own state.
    saved = torch.load(d / "last.ckpt", weights_only=True)
    assert saved["callbacks"][ckpt.state_key]["best_model_path"] == ckpt.best_model_path


def test_checkpoint_mode_max_and_nan_never_best(tmp_path: Any) -> None:
    ckpt = ModelCheckpoint(monitor="acc", mode="max", filename="{epoch}")
    trainer_for(tmp_path, [ckpt], max_epochs=4, val_metrics=scripted([0.5, 0.9, float("nan"), 0.7], "acc")).fit()
    assert ckpt_files(tmp_path) == ["epoch=1.ckpt"]
    assert float(ckpt.best_model_score) == pytest.approx(0.9)


def test_checkpoint_every_n_train_steps_keep_all(tmp_path: Any) -> None:
    ckpt = ModelCheckpoint(every_n_train_steps=5, save_top_k=-1, filename="{step}")
    trainer_for(tmp_path, [ckpt], max_epochs=2).fit()  # 16 steps
    assert ckpt_files(tmp_path) == ["step=10.ckpt", "step=15.ckpt", "step=5.ckpt"]


def test_checkpoint_every_n_epochs(tmp_path: Any) -> None:
    ckpt = ModelCheckpoint(every_n_epochs=2, save_top_k=-1, filename="{epoch}")
    trainer_for(tmp_path, [ckpt], max_epochs=5).fit()
    assert ckpt_files(tmp_path) == ["epoch=1.ckpt", "epoch=3.ckpt"]


def test_checkpoint_skips_sanity_check_fast_dev_run_and_validate_only(tmp_path: Any) -> None:
    ckpt = ModelCheckpoint(monitor="val_loss")
    t = trainer_for(tmp_path, [ckpt], val_metrics=scripted([1.0] * 3))
    t.fast_dev_run = True  # type: ignore[attr-defined]
    t.fit()
    assert ckpt_files(tmp_path) == []
    # validate() alone (no fit) and a sanity check never save.
    t2 = trainer_for(tmp_path, [ckpt2 := ModelCheckpoint()])
    t2.global_step = 3
    ckpt2.setup(t2, t2.module, "validate")
    ckpt2.on_validation_end(t2, t2.module)
    ckpt2.on_fit_start(t2, t2.module)
    t2.sanity_checking = True
    ckpt2.on_validation_end(t2, t2.module)
    assert ckpt_files(tmp_path) == []


def test_checkpoint_missing_monitor_names_available_metrics(tmp_path: Any) -> None:
    ckpt = ModelCheckpoint(monitor="val_los")
    with pytest.raises(KeyError, match="val_loss"):
        trainer_for(tmp_path, [ckpt], val_metrics=scripted([1.0] * 3)).fit()


def test_checkpoint_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        ModelCheckpoint(mode="best")
    with pytest.raises(ValueError, match="monitor"):
        ModelCheckpoint(save_top_k=3)


def test_checkpoint_state_survives_resume(tmp_path: Any) -> None:
    ckpt = ModelCheckpoint(monitor="val_loss", save_top_k=2)
    losses = [5.0, 3.0, 4.0, 1.0, 2.0, 0.5]
    t = trainer_for(tmp_path, [ckpt], max_epochs=3, val_metrics=scripted(losses)).fit()
    state = torch.load(t.saved[-1], weights_only=True)["callbacks"][ckpt.state_key]
    resumed = ModelCheckpoint(monitor="val_loss", save_top_k=2)
    assert resumed.state_key == ckpt.state_key
    resumed.load_state_dict(state)
    assert resumed.best_model_path == ckpt.best_model_path
    assert float(resumed.best_model_score) == 3.0
    t2 = trainer_for(tmp_path, [resumed], max_epochs=6, val_metrics=scripted(losses), start_epoch=3, start_step=24)
    t2.fit()
    # Ranking continued across the resume: the epoch-1 file (3.0) fell out and was deleted.
    assert ckpt_files(tmp_path) == ["epoch=3-step=32.ckpt", "epoch=5-step=48.ckpt"]
    assert os.path.basename(resumed.best_model_path) == "epoch=5-step=48.ckpt"


def test_checkpoint_does_not_overwrite_foreign_file(tmp_path: Any) -> None:
    d = tmp_path / "ckpts"
    d.mkdir()
    (d / "epoch=0-step=8.ckpt").write_text("someone else's")
    ckpt = ModelCheckpoint(save_top_k=-1)
    trainer_for(tmp_path, [ckpt], max_epochs=1).fit()
    assert (d / "epoch=0-step=8.ckpt").read_text() == "someone else's"
    assert ckpt.best_model_path == str(d / "epoch=0-step=8-v1.ckpt")


# ---------------------------------------------------------------------------- EarlyStopping


def test_early_stopping_stops_a_run_that_would_go_on(tmp_path: Any) -> None:
    losses = [1.0, 0.9, 0.95, 0.96, 0.97] + [0.99] * 20
    baseline = trainer_for(tmp_path, [], max_epochs=20, val_metrics=scripted(losses)).fit()
    assert baseline.epochs_run == 20
    stop = EarlyStopping("val_loss", patience=3)
    t = trainer_for(tmp_path, [stop], max_epochs=20, val_metrics=scripted(losses)).fit()
    assert t.epochs_run == 5  # best at epoch 1, then 3 epochs without improvement
    assert stop.stopped_epoch == 4
    assert stop.wait_count == 3
    assert float(stop.best_score) == pytest.approx(0.9)


def test_early_stopping_min_delta_and_max_mode(tmp_path: Any) -> None:
    stop = EarlyStopping("acc", mode="max", min_delta=0.05, patience=2)
    t = trainer_for(tmp_path, [stop], max_epochs=10, val_metrics=scripted([0.5, 0.6, 0.62, 0.64, 0.9] * 2, "acc"))
    t.fit()
    assert t.epochs_run == 4  # 0.62 and 0.64 improve by less than min_delta over 0.6
    assert float(stop.best_score) == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("kwargs", "values", "epochs"),
    [
        ({"stopping_threshold": 0.5}, [1.0, 0.7, 0.4, 0.3], 3),
        ({"divergence_threshold": 10.0}, [1.0, 0.7, 11.0, 0.3], 3),
        ({}, [1.0, float("nan"), 0.5, 0.3], 2),
    ],
)
def test_early_stopping_thresholds_and_non_finite(tmp_path: Any, kwargs: dict, values: list, epochs: int) -> None:
    stop = EarlyStopping("val_loss", patience=100, **kwargs)
    t = trainer_for(tmp_path, [stop], max_epochs=4, val_metrics=scripted(values)).fit()
    assert t.epochs_run == epochs


def test_early_stopping_strict_missing_metric_lists_available(tmp_path: Any) -> None:
    with pytest.raises(RuntimeError, match=r"val_acc.*val_loss"):
        trainer_for(tmp_path, [EarlyStopping("val_acc")], val_metrics=scripted([1.0] * 3)).fit()
    t = trainer_for(tmp_path, [EarlyStopping("val_acc", strict=False)], val_metrics=scripted([1.0] * 3)).fit()
    assert t.epochs_run == 3


def test_early_stopping_without_validation_checks_at_train_epoch_end(tmp_path: Any) -> None:
    stop = EarlyStopping("train_loss", patience=1)
    t = trainer_for(tmp_path, [stop], max_epochs=10, train_metrics=scripted([1.0, 2.0, 3.0] * 4, "train_loss"))
    t.fit()
    assert t.epochs_run == 2


def test_early_stopping_state_dict_roundtrip() -> None:
    stop = EarlyStopping("val_loss", patience=5)
    stop.wait_count, stop.stopped_epoch, stop.best_score = 2, 7, torch.tensor(0.25)
    other = EarlyStopping("val_loss", patience=5)
    other.load_state_dict(stop.state_dict())
    assert (other.wait_count, other.stopped_epoch, float(other.best_score)) == (2, 7, 0.25)


# ---------------------------------------------------------------------------- LearningRateMonitor


def test_lr_monitor_logs_param_groups_per_step(tmp_path: Any) -> None:
    model = mlp()
    opt = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.1}, {"params": model[2].parameters(), "lr": 0.01}],
        lr=0.1,
        momentum=0.9,
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    logger = RecordingLogger()
    t = trainer_for(
        tmp_path,
        [LearningRateMonitor(log_momentum=True)],
        module=model,
        optimizer=opt,
        loggers=[logger],
        schedulers=[Cfg(scheduler=sched, interval="step", frequency=1, monitor=None)],
        data=make_data(n=24),
        max_epochs=1,
    ).fit()
    assert [step for step, _ in logger.records] == [1, 2, 3]
    step1 = logger.records[0][1]
    assert step1 == pytest.approx(
        {"lr-SGD/pg1": 0.05, "lr-SGD/pg2": 0.005, "lr-SGD/pg1-momentum": 0.9, "lr-SGD/pg2-momentum": 0.9}
    )
    assert logger.records[-1][1]["lr-SGD/pg1"] == pytest.approx(0.1 * 0.5**3)
    assert t.global_step == 3


def test_lr_monitor_epoch_interval_and_duplicate_names(tmp_path: Any) -> None:
    model = mlp()
    opts = [torch.optim.Adam(model[0].parameters(), lr=1e-3), torch.optim.Adam(model[2].parameters(), lr=2e-3)]
    logger = RecordingLogger()
    t = FakeTrainer(model, opts, callbacks=[LearningRateMonitor("epoch")], loggers=[logger], max_epochs=2)
    t.fit()
    assert logger.records == [(0, {"lr-Adam": 1e-3, "lr-Adam-1": 2e-3}), (8, {"lr-Adam": 1e-3, "lr-Adam-1": 2e-3})]


def test_lr_monitor_needs_a_logger(tmp_path: Any) -> None:
    with pytest.raises(RuntimeError, match="logger"):
        trainer_for(tmp_path, [LearningRateMonitor()]).fit()


# ---------------------------------------------------------------------------- StochasticWeightAveraging


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))


def swa_run(tmp_path: Any, epochs: int, swa: StochasticWeightAveraging, **kw: Any) -> FakeTrainer:
    model = kw.pop("module", None) or bn_model()
    opt = kw.pop("optimizer", None) or torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = kw.pop("sched", None) or torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    return trainer_for(
        tmp_path,
        [swa],
        module=model,
        optimizer=opt,
        schedulers=[Cfg(scheduler=sched, interval="epoch", frequency=1, monitor=None)],
        max_epochs=epochs,
        **kw,
    ).fit()


def test_swa_final_weights_are_the_average_and_bn_is_recomputed(tmp_path: Any) -> None:
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=3, annealing_epochs=2)
    t = swa_run(tmp_path, 6, swa)
    expected = [torch.stack(ps).mean(0) for ps in zip(*t.snapshots[3:], strict=True)]
    final = [p.detach() for p in t.module.parameters()]
    for got, want in zip(final, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # The average differs from the last epoch's weights: a no-op callback fails above.
    assert any(not torch.allclose(a, b) for a, b in zip(t.snapshots[-1], expected, strict=True))
    assert swa.n_averaged == 3
    assert isinstance(t.lr_scheduler_configs[0].scheduler, SWALR)
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01)
    # BatchNorm statistics belong to the averaged weights: one pass over the training data.
    bn = t.module[1]
    probe = copy.deepcopy(t.module)
    probe[1].reset_running_stats()
    probe[1].momentum = None
    probe.train()
    with torch.no_grad():
        for x, _ in t.train_dataloader:
            probe(x)
    torch.testing.assert_close(bn.running_mean, probe[1].running_mean)
    torch.testing.assert_close(bn.running_var, probe[1].running_var)
    assert int(bn.num_batches_tracked) == len(t.train_dataloader)
    assert bn.momentum == 0.1  # update_bn restores the momentum it changed


def test_swa_fractional_start_and_lr_anneals_to_swa_lr(tmp_path: Any) -> None:
    swa = StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=0.5, annealing_epochs=1, annealing_strategy="linear")
    t = swa_run(tmp_path, 4, swa)
    assert swa.swa_start == 2
    assert swa.n_averaged == 2
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.02)


def test_swa_resume_equals_uninterrupted_run(tmp_path: Any) -> None:
    full = swa_run(tmp_path, 6, StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2, annealing_epochs=3))
    # Stop after epoch 3 (inside the SWA phase), keep what a checkpoint would hold, and resume.
    swa_a = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2, annealing_epochs=3)
    part = swa_run(tmp_path, 4, swa_a)
    model_state = copy.deepcopy(part.module.state_dict())
    opt_state = copy.deepcopy(part.optimizers[0].state_dict())
    swa_state = copy.deepcopy(swa_a.state_dict())
    # The averaged weights were copied into the module at this train end; a mid-fit checkpoint holds
    # the trained ones, which are the last snapshot.
    for p, s in zip(part.module.parameters(), part.snapshots[-1], strict=True):
        p.data.copy_(s)
    model_state = {k: v for k, v in part.module.state_dict().items() if "running" not in k and "num_batches" not in k}
    model = bn_model()
    full_state = model.state_dict()
    full_state.update(model_state)
    model.load_state_dict(full_state)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt.load_state_dict(opt_state)
    swa_b = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2, annealing_epochs=3)
    swa_b.load_state_dict(swa_state)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    resumed = swa_run(tmp_path, 6, swa_b, module=model, optimizer=opt, sched=sched, start_epoch=4, start_step=32)
    for a, b in zip(full.module.parameters(), resumed.module.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert swa_b.n_averaged == 4


def test_swa_bad_arguments() -> None:
    with pytest.raises(ValueError, match="swa_lrs"):
        StochasticWeightAveraging(swa_lrs=-1.0)
    with pytest.raises(ValueError, match="fraction"):
        StochasticWeightAveraging(swa_lrs=0.1, swa_epoch_start=1.5)
    with pytest.raises(ValueError, match="annealing_strategy"):
        StochasticWeightAveraging(swa_lrs=0.1, annealing_strategy="step")


# ---------------------------------------------------------------------------- ProgressBar


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_plain_lines_when_not_a_terminal(tmp_path: Any) -> None:
    out = io.StringIO()
    bar = ProgressBar(stream=out)
    trainer_for(tmp_path, [bar], data=make_data(n=400, batch=4), max_epochs=2).fit()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 2 <= len(lines) <= 2 * 11  # about every 10% of an epoch, plus each epoch's end
    assert lines[-1].startswith("Epoch 1/1")
    assert "100/100" in lines[-1]
    assert "loss=" in lines[-1]
    assert "train_loss=" in lines[-1]
    assert "it/s" in lines[-1] or "s/it" in lines[-1]
    assert any("ETA" in line for line in lines)


def test_progress_live_bar_on_a_terminal(tmp_path: Any) -> None:
    out = TTY()
    bar = ProgressBar(stream=out, interval_s=0.0)
    trainer_for(tmp_path, [bar], data=make_data(n=40, batch=4), max_epochs=1).fit()
    text = out.getvalue()
    assert text.count("\r") == 10  # interval 0, refresh_rate 1: every batch
    assert text.endswith("\n")  # leave=True keeps the final bar
    assert "[####################]" in text
    assert "ETA" in text


def test_progress_redraws_are_rate_limited(tmp_path: Any) -> None:
    out = TTY()
    bar = ProgressBar(stream=out)  # 0.1 s between redraws on a terminal
    t = trainer_for(tmp_path, [bar])
    t.num_training_batches = 100_000
    bar.on_train_start(t, t.module)
    bar.on_train_epoch_start(t, t.module)
    outputs = {"loss": torch.tensor(0.5)}
    n = 20_000
    start = time.perf_counter()
    for i in range(n):
        bar.on_train_batch_end(t, t.module, outputs, None, i)
    # Redraws are limited by time, not by steps (its cost is measured in bench/trainer_overhead.py).
    assert out.getvalue().count("\r") <= 2 + int((time.perf_counter() - start) / 0.1)


def test_progress_disabled_writes_nothing(tmp_path: Any) -> None:
    out = TTY()
    trainer_for(tmp_path, [ProgressBar(refresh_rate=0, stream=out)]).fit()
    assert out.getvalue() == ""


# ---------------------------------------------------------------------------- Timer


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("01:02:03:04", 93784), (timedelta(minutes=2), 120), ({"hours": 1, "seconds": 5}, 3605)],
)
def test_timer_duration_forms(duration: Any, seconds: float) -> None:
    assert Timer(duration).time_remaining() == seconds


def test_timer_bad_duration() -> None:
    with pytest.raises(ValueError, match="DD:HH:MM:SS"):
        Timer("2 hours")
    with pytest.raises(ValueError, match="interval"):
        Timer("00:00:00:01", interval="batch")


def test_timer_stops_after_the_duration(tmp_path: Any) -> None:
    timer = Timer(timedelta(0), verbose=False)
    t = trainer_for(tmp_path, [timer], max_epochs=5).fit()
    assert t.global_step == 1
    assert timer.start_time("train") is not None
    assert timer.end_time("train") is not None
    timer_e = Timer({"seconds": 0}, interval="epoch", verbose=False)
    t = trainer_for(tmp_path, [timer_e], max_epochs=5).fit()
    assert t.epochs_run == 1
    assert t.global_step == 8


def test_timer_elapsed_survives_resume(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    clock = [1000.0]
    import gridlab.trainer.callbacks.timer as timer_mod

    monkeypatch.setattr(timer_mod, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    timer = Timer("00:00:01:00", verbose=False)
    t = trainer_for(tmp_path, [timer], max_epochs=1)
    timer.on_train_start(t, t.module)
    clock[0] += 45.0
    assert timer.time_elapsed() == 45.0
    assert timer.time_remaining() == 15.0
    state = timer.state_dict()
    resumed = Timer("00:00:01:00", verbose=False)
    resumed.load_state_dict(state)
    resumed.on_train_start(t, t.module)
    clock[0] += 10.0
    assert resumed.time_elapsed() == 55.0
    resumed.on_train_batch_end(t, t.module, None, None, 0)
    assert not t.should_stop
    clock[0] += 6.0
    resumed.on_train_batch_end(t, t.module, None, None, 1)
    assert t.should_stop


# ---------------------------------------------------------------------------- the real Trainer


def _real_trainer() -> tuple[Any, Any]:
    try:
        from gridlab.trainer.module import Module
        from gridlab.trainer.trainer import Trainer
    except ImportError:
        return None, None
    return Trainer, Module


Trainer, Module = _real_trainer()
needs_trainer = pytest.mark.skipif(Trainer is None, reason="gridlab.trainer.trainer.Trainer is not importable yet")


class BoringWithBN(Module if Trainer is not None else object):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.9)}


def _loaders() -> tuple[Any, Any]:
    from torch.utils.data import DataLoader

    from tests.boring import regression_data

    return DataLoader(regression_data(64, seed=0), batch_size=8), DataLoader(regression_data(32, seed=1), batch_size=8)


@needs_trainer
def test_real_trainer_checkpoint_early_stopping_lr_monitor_and_loggers(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.boring import BoringModel

    monkeypatch.delenv("GRIDLAB_CHECKPOINT_DIR", raising=False)
    metrics_file = tmp_path / "metrics.jsonl"
    monkeypatch.setenv("GRIDLAB_METRICS_FILE", str(metrics_file))
    train, val = _loaders()
    ckpt = ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True)
    # min_delta so large that nothing counts as an improvement: stops after patience checks.
    stop = EarlyStopping("val_loss", patience=2, min_delta=100.0)
    lrm = LearningRateMonitor()
    out = io.StringIO()
    trainer = Trainer(
        default_root_dir=str(tmp_path),
        max_epochs=10,
        log_every_n_steps=1,
        num_sanity_val_steps=1,
        callbacks=[ckpt, stop, lrm, ProgressBar(stream=out), Timer("00:01:00:00")],
    )
    trainer.fit(BoringModel(), train, val)
    assert trainer.current_epoch == 3  # stopped by EarlyStopping (first check sets best), not max_epochs
    assert stop.stopped_epoch == 2
    files = sorted(os.listdir(tmp_path / "checkpoints"))
    assert len(files) == 3
    assert "last.ckpt" in files
    assert ckpt.best_model_path.startswith(str(tmp_path / "checkpoints"))
    assert lrm.lrs["lr-SGD"][0] == pytest.approx(0.1)
    assert "Epoch 1/9" in out.getvalue()
    logs = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert any("lr-SGD" in rec for rec in logs)
    assert any("val_loss" in rec for rec in logs)
    csv_file = tmp_path / "gridlab_logs" / "version_0" / "metrics.csv"
    assert "val_loss" in csv_file.read_text().splitlines()[0]
    # Resume keeps the callbacks' state.
    ckpt2 = ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True)
    t2 = Trainer(default_root_dir=str(tmp_path), max_epochs=3, callbacks=[ckpt2], enable_progress_bar=False)
    t2.fit(BoringModel(), train, val, ckpt_path="last")
    assert len(ckpt2.best_k_models) == 2
    assert len([f for f in os.listdir(tmp_path / "checkpoints") if f != "last.ckpt"]) == 2


@needs_trainer
def test_real_trainer_swa(tmp_path: Any) -> None:
    train, _ = _loaders()
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2, annealing_epochs=2)

    class Snap(Callback):
        def __init__(self) -> None:
            self.snaps: list[list[torch.Tensor]] = []

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            self.snaps.append([p.detach().clone() for p in module.parameters()])

    snap = Snap()
    model = BoringWithBN()
    trainer = Trainer(
        default_root_dir=str(tmp_path),
        max_epochs=5,
        callbacks=[snap, swa],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, train)
    expected = [torch.stack(ps).mean(0) for ps in zip(*snap.snaps[2:], strict=True)]
    for got, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want, atol=1e-6, rtol=1e-5)
    assert swa.n_averaged == 3
    assert int(model.net[1].num_batches_tracked) == len(train)  # recomputed by update_bn
