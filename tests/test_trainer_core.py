"""Precision, TBPTT, manual optimization, logging defaults, schedulers and misuse errors."""

from __future__ import annotations

import pytest
import torch
from boring import BoringModel, quiet_trainer_kwargs, regression_data
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gridlab.trainer import MisconfigurationError, Module, Trainer, seed_everything

torch.set_num_threads(1)


def fit(tmp_path, model, n=64, **kw):
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, **kw))
    trainer.fit(
        model,
        DataLoader(regression_data(n), batch_size=8, shuffle=True),
        DataLoader(regression_data(16, seed=1), batch_size=8),
    )
    return trainer


def test_bf16_mixed_on_cpu_autocasts_and_trains(tmp_path) -> None:
    dtypes, losses = [], {}

    class M(BoringModel):
        def training_step(self, batch, batch_idx):
            out = self(batch[0])
            dtypes.append(out.dtype)
            loss = nn.functional.mse_loss(out.float(), batch[1])
            losses.setdefault(self.current_epoch, []).append(float(loss))
            return loss

    seed_everything(0)
    model = M(lr=0.05)
    trainer = fit(tmp_path, model, max_epochs=4, precision="bf16-mixed", log_every_n_steps=1)
    assert dtypes[0] == torch.bfloat16
    assert model.net[0].weight.dtype == torch.float32
    assert trainer.current_epoch == 4
    mean = {e: sum(v) / len(v) for e, v in losses.items()}
    assert mean[3] < 0.5 * mean[0]


def test_64_true_gives_float64_params(tmp_path) -> None:
    model = BoringModel()
    trainer = fit(tmp_path, model, max_epochs=1, precision=64)
    assert trainer.precision == "64-true"
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert torch.get_default_dtype() == torch.float32


def test_16_mixed_with_grad_scaler_on_cpu(tmp_path) -> None:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.ones(2, 2) @ torch.ones(2, 2)
        torch.amp.GradScaler("cpu")
    except (RuntimeError, TypeError) as exc:
        pytest.skip(f"this torch has no CPU fp16 autocast/GradScaler: {exc}")
    model = BoringModel(lr=0.01)
    trainer = fit(tmp_path, model, max_epochs=2, precision="16-mixed", gradient_clip_val=1.0)
    scaler = trainer.strategy.precision.scaler
    assert scaler is not None
    assert scaler.get_scale() > 0
    assert trainer.global_step == 16
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_unknown_precision_names_the_valid_values() -> None:
    with pytest.raises(MisconfigurationError, match="'bf16-mixed'"):
        Trainer(precision="fp8", logger=False, enable_checkpointing=False, enable_progress_bar=False)


def test_devices_above_one_choose_ddp() -> None:
    trainer = Trainer(devices=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert type(trainer.strategy).__name__ == "DDPStrategy"
    assert (trainer.world_size, trainer.num_devices, trainer.global_rank) == (2, 2, 0)
    with pytest.raises(MisconfigurationError, match='use strategy="ddp" or "fsdp"'):
        Trainer(devices=2, strategy="single_device", accelerator="cpu", logger=False)


def test_misuse_errors_name_the_fix(tmp_path) -> None:
    class NoOpt(Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            return self.lin(batch[0]).mean()

    with pytest.raises(MisconfigurationError, match="configure_optimizers"):
        fit(tmp_path, NoOpt(), max_epochs=1)

    class ReturnsNone(BoringModel):
        def training_step(self, batch, batch_idx):
            return None

    with pytest.raises(MisconfigurationError, match="return the loss, or set automatic_optimization = False"):
        fit(tmp_path, ReturnsNone(), max_epochs=1)

    class Plateau(BoringModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt)}

    with pytest.raises(MisconfigurationError, match="monitor"):
        fit(tmp_path, Plateau(), max_epochs=1)


def test_logging_defaults_and_epoch_weighted_mean(tmp_path) -> None:
    class M(BoringModel):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("both", float(batch_idx), on_step=True, on_epoch=True, prog_bar=True)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_bs", float(len(batch[0])))

    model = M()
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(
        model, DataLoader(regression_data(24), batch_size=8), DataLoader(regression_data(12, seed=1), batch_size=8)
    )  # val batches of 8 and 4
    m = trainer.callback_metrics
    assert "train_loss" in m
    assert "train_loss_epoch" not in m
    assert float(m["both_epoch"]) == pytest.approx(1.0)
    assert float(m["both_step"]) == 2.0
    assert float(m["val_bs"]) == pytest.approx((8 * 8 + 4 * 4) / 12)  # batch-size-weighted mean
    assert "both_step" in trainer.progress_bar_metrics


def test_schedulers_step_and_epoch_intervals(tmp_path) -> None:
    class M(BoringModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            return [opt], [{"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5), "interval": "step"}]

    model = M()
    trainer = fit(tmp_path, model, n=32, max_epochs=1)
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.5**4

    class P(BoringModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}

    trainer = fit(tmp_path, P(lr=1e-9), n=32, max_epochs=3)
    assert trainer.lr_scheduler_configs[0].reduce_on_plateau


def test_fast_dev_run_limits_and_max_time(tmp_path) -> None:
    trainer = fit(tmp_path, BoringModel(), fast_dev_run=2)
    assert trainer.global_step == 2
    assert trainer.current_epoch == 1
    trainer = fit(tmp_path, BoringModel(), max_epochs=3, limit_train_batches=0.5, limit_val_batches=1)
    assert trainer.num_training_batches == 4
    assert trainer.global_step == 12
    assert trainer.num_val_batches == [1]
    trainer = fit(tmp_path, BoringModel(), max_time="00:00:00:00")
    assert trainer.global_step == 1
    trainer = fit(tmp_path, BoringModel(), max_steps=5, overfit_batches=2)
    assert trainer.global_step == 5


class Seq(Module):
    """A tiny RNN regressor for TBPTT: batch (x [B, T, 2], y [B, T, 1])."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(2, 8, batch_first=True)
        self.head = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx, hiddens=None):
        x, y = batch
        out, h = self.rnn(x, hiddens)
        loss = nn.functional.mse_loss(self.head(out), y)
        return {"loss": loss, "hiddens": h}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_tbptt_matches_a_hand_written_loop(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 12, 2, generator=g)
    data = TensorDataset(x, x.sum(-1, keepdim=True).cumsum(1) * 0.1)

    torch.manual_seed(1)
    ref = Seq()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):
        for xb, yb in DataLoader(data, batch_size=4):
            h = None
            for s in range(0, 12, 5):
                out, h = ref.rnn(xb[:, s : s + 5], h)
                loss = nn.functional.mse_loss(ref.head(out), yb[:, s : s + 5])
                loss.backward()
                opt.step()
                opt.zero_grad()
                h = h.detach()

    torch.manual_seed(1)
    model = Seq()
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=2, truncated_bptt_steps=5))
    trainer.fit(model, DataLoader(data, batch_size=4))
    assert trainer.global_step == 2 * 4 * 3
    for a, b in zip(ref.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


class GAN(Module):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.gen = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        self.disc = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        (real,) = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], 4)
        bce = nn.functional.binary_cross_entropy_with_logits
        fake = self.gen(z)
        d_loss = bce(self.disc(real), torch.ones(len(real), 1)) + bce(
            self.disc(fake.detach()), torch.zeros(len(real), 1)
        )
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        self.clip_gradients(opt_d, gradient_clip_val=1.0)
        opt_d.step()
        g_loss = bce(self.disc(fake), torch.ones(len(real), 1))
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, prog_bar=True)

    def configure_optimizers(self):
        return [torch.optim.Adam(self.gen.parameters(), 1e-3), torch.optim.Adam(self.disc.parameters(), 1e-3)]


def test_manual_optimization_gan_steps_both_optimizers(tmp_path) -> None:
    torch.manual_seed(0)
    model = GAN()
    g0 = [p.clone() for p in model.gen.parameters()]
    d0 = [p.clone() for p in model.disc.parameters()]
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(32, 2) + 3), batch_size=8))
    assert trainer.global_step == 8  # each optimizer step counts, as in Lightning
    assert all(not torch.equal(a, b) for a, b in zip(g0, model.gen.parameters(), strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(d0, model.disc.parameters(), strict=True))
    assert {"d_loss", "g_loss"} <= set(trainer.callback_metrics)

    class Auto(GAN):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = True

    with pytest.raises(MisconfigurationError, match="automatic_optimization = False"):
        Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=1)).fit(
            Auto(), DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=8)
        )


def test_save_hyperparameters_and_datamodule_state(tmp_path) -> None:
    from boring import BoringDataModule

    class DM(BoringDataModule):
        def state_dict(self):
            return {"cursor": 42}

        def load_state_dict(self, state):
            self.restored = state

    model = BoringModel(hidden=4, lr=0.2)
    assert model.hparams == {"features": 8, "hidden": 4, "lr": 0.2, "dropout": 0.0, "optimizer": "sgd"}
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(model, datamodule=DM())
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    dm = DM()
    Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=2)).fit(
        BoringModel(hidden=4), datamodule=dm, ckpt_path=tmp_path / "c.ckpt"
    )
    assert dm.restored == {"cursor": 42}
