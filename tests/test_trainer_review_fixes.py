"""Regression tests for review findings: mid-epoch stop runs the epoch end, ckpt_path="best", unscale before
on_before_optimizer_step, manual-optimization schedulers, positional DataModules, load_from_checkpoint."""

from __future__ import annotations

import glob
import math
import os

import pytest
import torch
from boring import BoringModel, regression_data
from torch.utils.data import DataLoader

from gridlab.trainer import DataModule, MisconfigurationError, Module, Trainer
from gridlab.trainer.callbacks import ModelCheckpoint

torch.set_num_threads(1)


def _dl(n: int = 64, bs: int = 8, shuffle: bool = False) -> DataLoader:
    return DataLoader(regression_data(n), batch_size=bs, shuffle=shuffle)


def _kw(tmp_path, **kw):
    return {"default_root_dir": str(tmp_path), "enable_progress_bar": False, "logger": False, **kw}


class EpochLogModel(BoringModel):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("tl", loss, on_step=False, on_epoch=True)
        return loss


def _weights(m: Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def test_max_steps_mid_epoch_runs_epoch_end_and_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    m = EpochLogModel(dropout=0.2)
    t = Trainer(**_kw(tmp_path / "a", max_steps=5, num_sanity_val_steps=0))
    t.fit(m, _dl(shuffle=True))  # 8 batches per epoch
    ckpts = glob.glob(os.path.join(tmp_path / "a", "**", "*.ckpt"), recursive=True)
    assert len(ckpts) == 1
    assert "tl" in t.callback_metrics

    torch.manual_seed(1)
    resumed = EpochLogModel(dropout=0.2)
    t2 = Trainer(**_kw(tmp_path / "b", max_steps=12, num_sanity_val_steps=0))
    t2.fit(resumed, _dl(shuffle=True), ckpt_path=ckpts[0])

    torch.manual_seed(0)
    ref = EpochLogModel(dropout=0.2)
    t3 = Trainer(**_kw(tmp_path / "c", max_steps=12, num_sanity_val_steps=0))
    t3.fit(ref, _dl(shuffle=True))
    assert t2.global_step == t3.global_step == 12
    assert t2.current_epoch == t3.current_epoch
    for a, b in zip(_weights(resumed), _weights(ref), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(t2.callback_metrics["tl"], t3.callback_metrics["tl"])


def test_ckpt_path_best(tmp_path):
    m = BoringModel()
    t = Trainer(**_kw(tmp_path, max_epochs=2, callbacks=[ModelCheckpoint(monitor="val_loss")]))
    t.fit(m, _dl(), _dl(16))
    best = t.checkpoint_callback.best_model_path
    assert best
    res = t.test(m, _dl(16), ckpt_path="best", verbose=False)
    assert t.ckpt_path == best
    assert "test_loss" in res[0]
    t.validate(m, _dl(16), ckpt_path="best", verbose=False)
    assert len(t.predict(m, DataLoader(regression_data(16)[:][0], batch_size=8), ckpt_path="best")) == 2


def test_ckpt_path_best_without_checkpoint_callback(tmp_path):
    t = Trainer(**_kw(tmp_path, enable_checkpointing=False))
    with pytest.raises(MisconfigurationError, match=r"ModelCheckpoint\(monitor="):
        t.test(BoringModel(), _dl(16), ckpt_path="best", verbose=False)


def test_before_optimizer_step_sees_unscaled_gradients(tmp_path):
    class M(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[float] = []

        def on_before_optimizer_step(self, optimizer):
            self.seen.append(max(p.grad.abs().max().item() for p in self.parameters()))

    torch.manual_seed(0)
    m = M()
    t = Trainer(**_kw(tmp_path, max_steps=8, precision="16-mixed", accelerator="cpu", enable_checkpointing=False))
    t.fit(m, _dl())
    finite = [g for g in m.seen if math.isfinite(g)]
    assert finite, m.seen
    assert max(finite) < 100, m.seen  # scaled by >= 2**14 they would be in the thousands


def test_manual_optimization_does_not_step_schedulers(tmp_path):
    class M(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt, sch = self.optimizers(), self.lr_schedulers()
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            sch.step()

        def configure_optimizers(self):
            o = torch.optim.SGD(self.parameters(), lr=1.0)
            s = torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5)
            return {"optimizer": o, "lr_scheduler": {"scheduler": s, "interval": "step"}}

    t = Trainer(**_kw(tmp_path, max_steps=4, enable_checkpointing=False))
    t.fit(M(), _dl())
    assert t.lr_scheduler_configs[0].scheduler.last_epoch == 4
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.5**4)


class _DM(DataModule):
    def val_dataloader(self):
        return _dl(16)

    def test_dataloader(self):
        return _dl(16)

    def predict_dataloader(self):
        return DataLoader(regression_data(16)[:][0], batch_size=8)


def test_positional_datamodule_in_eval_stages(tmp_path):
    t = Trainer(**_kw(tmp_path, enable_checkpointing=False))
    m = BoringModel()
    assert len(t.predict(m, _DM())) == 2
    assert "test_loss" in t.test(m, _DM(), verbose=False)[0]
    assert "val_loss" in t.validate(m, _DM(), verbose=False)[0]


def test_load_from_checkpoint(tmp_path):
    m = BoringModel(hidden=12, lr=0.05)
    t = Trainer(**_kw(tmp_path, max_epochs=1))
    t.fit(m, _dl())
    path = t.checkpoint_callback.best_model_path
    loaded = BoringModel.load_from_checkpoint(path)
    assert not loaded.training
    assert loaded.hparams.hidden == 12
    assert loaded.hparams.lr == 0.05
    for a, b in zip(_weights(loaded), _weights(m), strict=True):
        assert torch.equal(a, b)
    assert BoringModel.load_from_checkpoint(path, lr=0.5).hparams.lr == 0.5


def test_load_from_checkpoint_without_hparams_needs_arguments(tmp_path):
    class NoHp(Module):
        def __init__(self, hidden: int) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, hidden)

    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": NoHp(3).state_dict(), "hyper_parameters": {}}, path)
    with pytest.raises(MisconfigurationError, match="no hyper_parameters"):
        NoHp.load_from_checkpoint(path)
    assert NoHp.load_from_checkpoint(path, hidden=3).lin.out_features == 3


def test_datamodule_load_from_checkpoint(tmp_path):
    class HpDM(_DM):
        def __init__(self, bs: int = 8) -> None:
            super().__init__()
            self.save_hyperparameters()

    t = Trainer(**_kw(tmp_path, max_epochs=1))
    t.fit(BoringModel(), _dl())
    ckpt = t._dump_checkpoint()
    ckpt["datamodule_hyper_parameters"] = {"bs": 4}
    torch.save(ckpt, tmp_path / "dm.ckpt")
    assert HpDM.load_from_checkpoint(tmp_path / "dm.ckpt").hparams.bs == 4
