"""Every Module hook is called, in order, for a tiny fit, validate, test and predict."""

from __future__ import annotations

import torch
from boring import BoringModel, quiet_trainer_kwargs, regression_data
from torch.utils.data import DataLoader

from gridlab.trainer import Callback, Trainer

torch.set_num_threads(1)

HOOKS = [
    "setup",
    "teardown",
    "on_fit_start",
    "on_fit_end",
    "on_train_start",
    "on_train_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_validation_start",
    "on_validation_end",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_start",
    "on_test_end",
    "on_test_epoch_start",
    "on_test_epoch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_start",
    "on_predict_end",
    "on_predict_epoch_start",
    "on_predict_epoch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_save_checkpoint",
    "on_load_checkpoint",
    "configure_optimizers",
    "training_step",
    "validation_step",
    "test_step",
    "predict_step",
]


class Recorder(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []


def _recording(name):
    def hook(self, *args, **kwargs):
        self.calls.append(name)
        return getattr(BoringModel, name)(self, *args, **kwargs)

    return hook


for _name in HOOKS:
    setattr(Recorder, _name, _recording(_name))


def batch(*names):
    return list(names)


TRAIN_BATCH = [
    "on_train_batch_start",
    "training_step",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
]
VAL = [
    "on_validation_start",
    "on_validation_epoch_start",
    "on_validation_batch_start",
    "validation_step",
    "on_validation_batch_end",
    "on_validation_epoch_end",
    "on_validation_end",
]


def test_fit_validate_test_predict_hook_order(tmp_path) -> None:
    torch.manual_seed(0)
    model = Recorder()
    loader = DataLoader(regression_data(16), batch_size=8)
    val = DataLoader(regression_data(8), batch_size=8)
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=1, num_sanity_val_steps=1))
    trainer.fit(model, loader, val)
    assert model.calls == [
        "setup",
        "configure_optimizers",
        "on_fit_start",
        *VAL,
        "on_train_start",
        "on_train_epoch_start",
        *TRAIN_BATCH,
        *TRAIN_BATCH,
        *VAL,
        "on_train_epoch_end",
        "on_train_end",
        "on_fit_end",
        "teardown",
    ]

    model.calls.clear()
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    assert model.calls == ["on_save_checkpoint"]

    model.calls.clear()
    trainer.validate(model, val, ckpt_path=tmp_path / "a.ckpt", verbose=False)
    assert model.calls == ["setup", "on_load_checkpoint", *VAL, "teardown"]

    model.calls.clear()
    out = trainer.test(model, val, verbose=False)
    assert model.calls == [
        "setup",
        "on_test_start",
        "on_test_epoch_start",
        "on_test_batch_start",
        "test_step",
        "on_test_batch_end",
        "on_test_epoch_end",
        "on_test_end",
        "teardown",
    ]
    assert set(out[0]) == {"test_loss"}

    model.calls.clear()
    preds = trainer.predict(model, val)
    assert model.calls == [
        "setup",
        "on_predict_start",
        "on_predict_epoch_start",
        "on_predict_batch_start",
        "predict_step",
        "on_predict_batch_end",
        "on_predict_epoch_end",
        "on_predict_end",
        "teardown",
    ]
    assert preds[0].shape == (8, 1)


def test_callback_hooks_and_batch_start_skip(tmp_path) -> None:
    seen: list[str] = []

    class CB(Callback):
        def on_train_epoch_start(self, trainer, module):
            seen.append(f"epoch{trainer.current_epoch}")

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            assert "loss" in outputs
            assert "train_loss" in trainer.callback_metrics
            seen.append(f"b{batch_idx}")

        def on_sanity_check_start(self, trainer, module):
            assert trainer.sanity_checking
            seen.append("sanity")

    class SkipAfterTwo(BoringModel):
        def on_train_batch_start(self, batch, batch_idx):
            return -1 if batch_idx == 2 else None

    model = SkipAfterTwo()
    loader = DataLoader(regression_data(40), batch_size=8)
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=2, callbacks=[CB()], num_sanity_val_steps=1))
    trainer.fit(model, loader, DataLoader(regression_data(8), batch_size=8))
    assert seen == ["sanity", "epoch0", "b0", "b1", "epoch1", "b0", "b1"]
    assert trainer.global_step == 4
    for attr in (
        "current_epoch",
        "global_step",
        "max_epochs",
        "max_steps",
        "batch_idx",
        "state",
        "sanity_checking",
        "callback_metrics",
        "logged_metrics",
        "progress_bar_metrics",
        "optimizers",
        "lr_scheduler_configs",
        "num_training_batches",
        "num_val_batches",
        "estimated_stepping_batches",
        "is_global_zero",
        "default_root_dir",
        "loggers",
        "logger",
        "strategy",
        "module",
        "checkpoint_dir",
        "train_dataloader",
        "should_stop",
    ):
        assert hasattr(trainer, attr), attr
