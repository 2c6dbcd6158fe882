"""Trainer flags against Lightning 2.x semantics: validation frequency, batch limits, overfit_batches,
sanity check, deterministic, log_every_n_steps, ReduceLROnPlateau, DataModule stages, evaluation
returns, ckpt_path="last", max_epochs/max_steps and accumulation on a ragged epoch."""

from __future__ import annotations

import csv
import glob
import os
from typing import Any

import pytest
import torch
from boring import BoringDataModule, BoringModel, quiet_trainer_kwargs, regression_data
from torch.utils.data import DataLoader

from gridlab.trainer import MisconfigurationError, Trainer
from gridlab.trainer.callbacks.checkpoint import ModelCheckpoint

torch.set_num_threads(1)


class Counting(BoringModel):
    """Records which batches each loop ran, and the global step at each validation."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.train_batches: list[tuple[int, int]] = []  # (epoch, batch_idx)
        self.train_x: list[torch.Tensor] = []
        self.val_at: list[int] = []
        self.val_batches = self.sanity_batches = self.test_batches = self.predict_batches = 0
        self.steps_at: list[int] = []  # batch_idx of each optimizer step

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.train_batches.append((self.trainer.current_epoch, batch_idx))
        self.train_x.append(batch[0].clone())
        return super().training_step(batch, batch_idx)

    def on_validation_start(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_at.append(self.trainer.global_step)

    def validation_step(self, batch: Any, batch_idx: int, *extra: Any) -> None:
        if self.trainer.sanity_checking:
            self.sanity_batches += 1
        else:
            self.val_batches += 1
        super().validation_step(batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int, *extra: Any) -> None:
        self.test_batches += 1
        super().test_step(batch, batch_idx)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        self.predict_batches += 1
        return super().predict_step(batch, batch_idx)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.steps_at.append(self.trainer.batch_idx)


def loaders(n_train: int = 40, n_val: int = 16, bs: int = 4, shuffle: bool = True) -> tuple[DataLoader, DataLoader]:
    return (
        DataLoader(regression_data(n_train), batch_size=bs, shuffle=shuffle),
        DataLoader(regression_data(n_val, seed=1), batch_size=bs),
    )


def run(tmp_path: Any, model: Any = None, n_train: int = 40, n_val: int = 16, **kw: Any) -> tuple[Trainer, Any]:
    model = model if model is not None else Counting()
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, **kw))
    trainer.fit(model, *loaders(n_train, n_val))
    return trainer, model


# ------------------------------------------------------------------ validation frequency
def test_val_check_interval_int_is_every_n_train_batches_within_the_epoch(tmp_path: Any) -> None:
    _, m = run(tmp_path, max_epochs=2, val_check_interval=3)  # 10 batches an epoch
    assert m.val_at == [3, 6, 9, 13, 16, 19]  # the count restarts each epoch; batch 10 is no multiple of 3


def test_val_check_interval_int_counts_across_epochs_without_check_val_every_n_epoch(tmp_path: Any) -> None:
    _, m = run(tmp_path, max_epochs=2, val_check_interval=3, check_val_every_n_epoch=None)
    assert m.val_at == [3, 6, 9, 12, 15, 18]


def test_val_check_interval_misuse_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(MisconfigurationError, match="check_val_every_n_epoch=None"):
        run(tmp_path, max_epochs=1, val_check_interval=11)  # more than the 10 batches of an epoch
    with pytest.raises(MisconfigurationError, match="must be an int"):
        run(tmp_path, max_epochs=1, val_check_interval=0.5, check_val_every_n_epoch=None)


@pytest.mark.parametrize(("n_train", "vci", "expected"), [(32, 0.25, [2, 4, 6, 8]), (20, 0.5, [2, 4]), (20, 1.0, [5])])
def test_val_check_interval_float_is_a_fraction_of_the_epoch(tmp_path: Any, n_train: int, vci: float, expected: list):
    _, m = run(tmp_path, n_train=n_train, max_epochs=1, val_check_interval=vci)
    assert m.val_at == expected  # Lightning: every int(n * vci) batches, no extra run at the epoch end


def test_check_val_every_n_epoch(tmp_path: Any) -> None:
    _, m = run(tmp_path, n_train=12, max_epochs=5, check_val_every_n_epoch=2)
    assert m.val_at == [6, 12]  # after epochs 2 and 4 (3 batches each)


# ------------------------------------------------------------------ batch limits
@pytest.mark.parametrize(("train", "val", "n_train", "n_val"), [(3, 2, 3, 2), (0.5, 0.25, 5, 1), (1.0, 0, 10, 0)])
def test_limit_train_and_val_batches(tmp_path: Any, train: Any, val: Any, n_train: int, n_val: int) -> None:
    trainer, m = run(tmp_path, max_epochs=2, limit_train_batches=train, limit_val_batches=val)
    assert len(m.train_batches) == 2 * n_train
    assert trainer.global_step == 2 * n_train
    assert m.val_batches == 2 * n_val
    assert trainer.num_training_batches == n_train
    assert trainer.num_val_batches == [n_val]


@pytest.mark.parametrize(("limit", "expected"), [(2, 2), (0.5, 2), (1.0, 4), (10, 4)])
def test_limit_test_and_predict_batches(tmp_path: Any, limit: Any, expected: int) -> None:
    m = Counting()
    kw = {"limit_test_batches": limit, "limit_predict_batches": limit}
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, **kw))
    _, val = loaders()  # 4 batches
    trainer.test(m, val, verbose=False)
    preds = trainer.predict(m, val)
    assert m.test_batches == expected
    assert m.predict_batches == expected
    assert len(preds) == expected
    assert trainer.num_test_batches == [expected]
    assert trainer.num_predict_batches == [expected]


def test_limit_float_out_of_range_and_bool_are_errors(tmp_path: Any) -> None:
    with pytest.raises(MisconfigurationError, match=r"within \[0, 1\]"):
        run(tmp_path, max_epochs=1, limit_train_batches=1.5)


# ------------------------------------------------------------------ overfit_batches
def test_overfit_batches_same_first_batches_every_epoch_without_shuffle(tmp_path: Any) -> None:
    trainer, m = run(tmp_path, max_epochs=3, overfit_batches=2)
    data = regression_data(40).tensors[0]
    assert m.train_batches == [(e, b) for e in range(3) for b in range(2)]
    for i, x in enumerate(m.train_x):
        assert torch.equal(x, data[(i % 2) * 4 : (i % 2) * 4 + 4])  # dataset order, first two batches
    assert trainer.num_training_batches == 2
    assert trainer.num_val_batches == [2]
    assert m.val_batches == 3 * 2


def test_overfit_batches_float_is_a_fraction(tmp_path: Any) -> None:
    trainer, m = run(tmp_path, max_epochs=1, overfit_batches=0.3)  # int(10 * 0.3) = 3, val int(4 * 0.3) = 1
    assert trainer.num_training_batches == 3
    assert trainer.num_val_batches == [1]
    assert len(m.train_batches) == 3


# ------------------------------------------------------------------ sanity check
@pytest.mark.parametrize(("steps", "expected"), [(0, 0), (2, 2), (-1, 4)])
def test_num_sanity_val_steps(tmp_path: Any, steps: int, expected: int) -> None:
    _, m = run(tmp_path, max_epochs=1, num_sanity_val_steps=steps)  # the val loader has 4 batches
    assert m.sanity_batches == expected
    assert m.val_batches == 4


def test_sanity_check_does_not_change_training(tmp_path: Any) -> None:
    weights = []
    for steps in (0, 2, -1):
        torch.manual_seed(0)
        model = Counting(dropout=0.5)  # dropout and shuffling both draw from the global RNG
        run(tmp_path, model, max_epochs=2, num_sanity_val_steps=steps)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert torch.equal(weights[0], weights[2])


# ------------------------------------------------------------------ deterministic
@pytest.mark.parametrize(("before", "flag", "during"), [(False, True, True), (True, False, False), (True, None, True)])
def test_deterministic_during_fit_and_restored_after(tmp_path: Any, before: bool, flag: Any, during: bool) -> None:
    seen = []

    class M(Counting):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen.append(torch.are_deterministic_algorithms_enabled())
            return super().training_step(batch, batch_idx)

    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(before)
    try:
        run(tmp_path, M(), max_epochs=1, limit_train_batches=2, deterministic=flag)
        assert seen == [during, during]
        assert torch.are_deterministic_algorithms_enabled() is before
    finally:
        torch.use_deterministic_algorithms(prev)


# ------------------------------------------------------------------ log_every_n_steps
def _csv_rows(trainer: Trainer) -> list[dict[str, str]]:
    (path,) = glob.glob(os.path.join(trainer.default_root_dir, "**", "metrics.csv"), recursive=True)
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_log_every_n_steps_with_the_default_csv_logger(tmp_path: Any) -> None:
    trainer, _ = run(tmp_path, n_train=32, max_epochs=2, log_every_n_steps=3, logger=True, limit_val_batches=0)
    rows = _csv_rows(trainer)
    assert [int(r["step"]) for r in rows if r.get("train_loss")] == [2, 5, 8, 11, 14]


# ------------------------------------------------------------------ ReduceLROnPlateau
class Plateau(Counting):
    def __init__(self, monitor: str = "val_loss", **kw: Any) -> None:
        super().__init__(**kw)
        self.monitor = monitor

    def validation_step(self, batch: Any, batch_idx: int, *extra: Any) -> None:
        self.log("val_loss", 1.0)  # never improves

    def on_train_epoch_end(self) -> None:
        self.log("epoch_end_metric", 1.0)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.monitor}}


@pytest.mark.parametrize("monitor", ["val_loss", "epoch_end_metric"])
def test_reduce_lr_on_plateau_reduces_when_the_monitor_plateaus(tmp_path: Any, monitor: str) -> None:
    trainer, _ = run(tmp_path, Plateau(monitor), n_train=8, max_epochs=4)
    # epoch 1 sets the best value; each of the three later epochs without improvement halves the LR
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_reduce_lr_on_plateau_missing_monitor_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(MisconfigurationError, match="'val_acc'.*val_loss"):
        run(tmp_path, Plateau("val_acc"), n_train=8, max_epochs=1)


# ------------------------------------------------------------------ DataModule stages
class RecordingDM(BoringDataModule):
    def __init__(self) -> None:
        super().__init__(batch_size=8, n=32)
        self.calls: list[str] = []

    def prepare_data(self) -> None:
        self.calls.append("prepare_data")

    def setup(self, stage: str) -> None:
        self.calls.append(f"setup:{stage}")
        super().setup(stage)

    def teardown(self, stage: str) -> None:
        self.calls.append(f"teardown:{stage}")


def test_datamodule_prepare_setup_teardown_per_stage(tmp_path: Any) -> None:
    dm, model = RecordingDM(), Counting()
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=2))
    trainer.fit(model, datamodule=dm)
    assert dm.calls == ["prepare_data", "setup:fit", "teardown:fit"]  # once per run, not per epoch
    for stage in ("validate", "test", "predict"):
        dm.calls.clear()
        getattr(trainer, stage)(model, datamodule=dm, **({} if stage == "predict" else {"verbose": False}))
        assert dm.calls == ["prepare_data", f"setup:{stage}", f"teardown:{stage}"]


# ------------------------------------------------------------------ evaluation returns
def test_validate_and_test_return_one_dict_of_epoch_metrics_per_dataloader(tmp_path: Any) -> None:
    model = Counting()
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path))
    a = DataLoader(regression_data(12, seed=1), batch_size=8)  # ragged: 8 + 4, a weighted mean
    b = DataLoader(regression_data(8, seed=2), batch_size=4)
    with torch.no_grad():
        expected = [
            float(torch.nn.functional.mse_loss(model(*dl.dataset.tensors[:1]), dl.dataset.tensors[1])) for dl in (a, b)
        ]
    out = trainer.validate(model, a, verbose=False)
    assert isinstance(out, list)
    assert len(out) == 1
    assert set(out[0]) == {"val_loss"}
    assert out[0]["val_loss"] == pytest.approx(expected[0], rel=1e-6)
    out = trainer.test(model, [a, b], verbose=False)
    assert len(out) == 2
    assert set(out[0]) == {"test_loss/dataloader_idx_0"}
    assert set(out[1]) == {"test_loss/dataloader_idx_1"}
    assert out[0]["test_loss/dataloader_idx_0"] == pytest.approx(expected[0], rel=1e-6)
    assert out[1]["test_loss/dataloader_idx_1"] == pytest.approx(expected[1], rel=1e-6)


def test_predict_returns_the_predict_step_outputs(tmp_path: Any) -> None:
    model = Counting()
    trainer = Trainer(**quiet_trainer_kwargs(tmp_path))
    data = regression_data(10, seed=3)
    preds = trainer.predict(model, DataLoader(data, batch_size=4))
    assert isinstance(preds, list)
    assert [p.shape[0] for p in preds] == [4, 4, 2]
    with torch.no_grad():
        assert torch.allclose(torch.cat(preds), model(data.tensors[0]))


# ------------------------------------------------------------------ ckpt_path="last"
@pytest.mark.parametrize("custom_dir", [False, True])
def test_fit_ckpt_path_last_resumes_from_the_newest_last_checkpoint(tmp_path: Any, custom_dir: bool) -> None:
    def trainer(epochs: int) -> Trainer:
        dirpath = str(tmp_path / "ck") if custom_dir else None
        cb = ModelCheckpoint(dirpath=dirpath, save_last=True, save_top_k=0)
        return Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=epochs, enable_checkpointing=True, callbacks=[cb]))

    t1 = trainer(2)
    t1.fit(Counting(), *loaders(n_train=16))
    assert t1.global_step == 8
    t2 = trainer(3)
    m2 = Counting()
    t2.fit(m2, *loaders(n_train=16), ckpt_path="last")
    assert t2.ckpt_path is not None
    assert os.path.basename(t2.ckpt_path).startswith("last")
    assert m2.train_batches == [(2, b) for b in range(4)]  # only the third epoch ran
    assert t2.global_step == 12


# ------------------------------------------------------------------ max_epochs / max_steps
def test_max_steps_stops_mid_epoch(tmp_path: Any) -> None:
    trainer, m = run(tmp_path, max_epochs=3, max_steps=13)  # 10 batches an epoch
    assert trainer.global_step == 13
    assert len(m.train_batches) == 13
    assert m.train_batches[-1] == (1, 2)


def test_max_epochs_defaults_like_lightning() -> None:
    assert Trainer(logger=False, enable_progress_bar=False).max_epochs == 1000
    assert Trainer(logger=False, enable_progress_bar=False, max_steps=10).max_epochs == -1
    assert Trainer(logger=False, enable_progress_bar=False, max_time="00:00:01:00").max_epochs == -1
    assert Trainer(logger=False, enable_progress_bar=False, max_epochs=2, max_steps=10).max_epochs == 2


def test_max_epochs_stops_before_max_steps(tmp_path: Any) -> None:
    trainer, m = run(tmp_path, max_epochs=2, max_steps=100)
    assert trainer.global_step == 20
    assert trainer.current_epoch == 2


# ------------------------------------------------------------------ accumulation
def test_accumulate_grad_batches_steps_on_the_last_batch_of_a_ragged_epoch(tmp_path: Any) -> None:
    trainer, m = run(tmp_path, n_train=20, max_epochs=2, accumulate_grad_batches=2)  # 5 batches an epoch
    assert m.steps_at == [1, 3, 4, 1, 3, 4]
    assert trainer.global_step == 6


def test_predict_without_keeping_predictions(tmp_path) -> None:
    from gridlab.trainer import Callback

    seen = []

    class Count(Callback):
        def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            seen.append(outputs.shape[0])

    model = BoringModel()
    trainer = Trainer(callbacks=[Count()], **quiet_trainer_kwargs(tmp_path))
    loader = DataLoader(regression_data(24), batch_size=8)
    assert trainer.predict(model, loader, return_predictions=False) is None
    assert seen == [8, 8, 8]
    assert len(trainer.predict(model, loader)) == 3
