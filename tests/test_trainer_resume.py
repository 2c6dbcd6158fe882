"""A fit stopped mid-epoch and resumed from its checkpoint ends exactly like an uninterrupted fit:
weights, optimizer state and logged metrics (shuffle=True, dropout in the model)."""

from __future__ import annotations

import torch
from boring import BoringDataModule, BoringModel, quiet_trainer_kwargs
from torch.utils.data import DataLoader

from gridlab.trainer import Callback, Trainer
from gridlab.trainer.loggers.base import Logger

torch.set_num_threads(1)


class RecordingLogger(Logger):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))


class LoggingModel(BoringModel):
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("loss", loss, on_step=True, on_epoch=True)
        return loss


class StopAfter(Callback):
    def __init__(self, steps: int, path: str) -> None:
        self.steps, self.path = steps, path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.steps:
            trainer.save_checkpoint(self.path)
            raise KeyboardInterrupt  # a crash after the save; the trainer ends the run as "interrupted"


def make(tmp_path, logger, **kw):
    torch.manual_seed(3)
    model = LoggingModel(dropout=0.3, optimizer="adam", lr=0.01)
    trainer = Trainer(
        **quiet_trainer_kwargs(tmp_path, max_epochs=3, log_every_n_steps=1, logger=logger, num_sanity_val_steps=2, **kw)
    )
    return model, trainer


def test_resume_mid_epoch_is_exact(tmp_path) -> None:
    full_log = RecordingLogger()
    ref, trainer = make(tmp_path, full_log)
    trainer.fit(ref, datamodule=BoringDataModule(batch_size=8, n=40))  # 5 batches an epoch

    ckpt = str(tmp_path / "mid.ckpt")
    first_log = RecordingLogger()
    model, trainer = make(tmp_path, first_log, callbacks=[StopAfter(7, ckpt)])  # epoch 1, batch 2
    trainer.fit(model, datamodule=BoringDataModule(batch_size=8, n=40))
    assert trainer.state.status == "interrupted"
    assert trainer.global_step == 7

    second_log = RecordingLogger()
    torch.manual_seed(12345)  # the resumed run must not depend on the RNG at start
    model, trainer = make(tmp_path, second_log)
    trainer.fit(model, datamodule=BoringDataModule(batch_size=8, n=40), ckpt_path=ckpt)
    assert trainer.global_step == 15
    assert trainer.current_epoch == 3

    for a, b in zip(ref.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b), (a - b).abs().max()
    opt_ref = trainer_opt_state(ref)
    for k, v in trainer_opt_state(model).items():
        assert torch.equal(v, opt_ref[k]), k
    # The interrupted run logged step 7's metrics before the crash (logging precedes on_train_batch_end).
    assert first_log.rows + second_log.rows == full_log.rows


def trainer_opt_state(model):
    state = model.trainer.optimizers[0].state_dict()["state"]
    return {f"{i}.{k}": v for i, s in state.items() for k, v in s.items() if isinstance(v, torch.Tensor)}


def test_max_steps_then_continue_and_resume_from_env(tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    ref = BoringModel(dropout=0.3)
    Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=2)).fit(
        ref, DataLoader(BoringDataModule(n=48).setup_and(lambda d: d.train_set), batch_size=8, shuffle=True)
    )

    torch.manual_seed(0)
    model = BoringModel(dropout=0.3)
    loader = DataLoader(BoringDataModule(n=48).setup_and(lambda d: d.train_set), batch_size=8, shuffle=True)
    t1 = Trainer(**quiet_trainer_kwargs(tmp_path, max_steps=4))
    t1.fit(model, loader)
    path = tmp_path / "checkpoints" / "last.ckpt"
    t1.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["format_version"] == 1
    assert ckpt["hyper_parameters"]["dropout"] == 0.3
    assert ckpt["loops"]["fit_loop"]["batch_progress"]["current"]["completed"] == 4

    monkeypatch.setenv("GRIDLAB_RESUME_FROM", str(path))
    model2 = BoringModel(dropout=0.3)
    t2 = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=2))
    t2.fit(model2, loader)
    assert t2.global_step == 12
    for a, b in zip(ref.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)

    monkeypatch.delenv("GRIDLAB_RESUME_FROM")
    model3 = BoringModel(dropout=0.3)
    t3 = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=2))
    t3.fit(model3, loader, ckpt_path="last")  # finds checkpoints/last.ckpt
    for a, b in zip(ref.parameters(), model3.parameters(), strict=True):
        assert torch.equal(a, b)
