"""A plain PyTorch loop and the Trainer give bit-identical weights on CPU.

Both draw the shuffle permutation when the epoch's iterator is created (the Trainer: right after
on_train_epoch_start), and the Trainer's validation and sanity check run with the RNG saved and
restored, so they do not shift the permutation."""

from __future__ import annotations

import pytest
import torch
from boring import BoringModel, quiet_trainer_kwargs, regression_data
from torch.utils.data import DataLoader

from gridlab.trainer import Trainer

torch.set_num_threads(1)


def plain_loop(epochs: int, acc: int, clip: float | None, algo: str, dropout: float) -> BoringModel:
    torch.manual_seed(7)
    model = BoringModel(dropout=dropout)
    opt = model.configure_optimizers()
    loader = DataLoader(regression_data(40), batch_size=8, shuffle=True)
    n = len(loader)
    model.train()
    for _ in range(epochs):
        for i, (x, y) in enumerate(loader):
            loss = torch.nn.functional.mse_loss(model(x), y)
            (loss / acc if acc > 1 else loss).backward()
            if (i + 1) % acc == 0 or i + 1 == n:
                if clip is not None:
                    if algo == "norm":
                        torch.nn.utils.clip_grad_norm_(list(model.parameters()), clip)
                    else:
                        torch.nn.utils.clip_grad_value_(list(model.parameters()), clip)
                opt.step()
                opt.zero_grad()
    return model


@pytest.mark.parametrize(
    ("acc", "clip", "algo"),
    [(1, None, "norm"), (2, None, "norm"), (1, 0.5, "norm"), (2, 0.5, "norm"), (2, 0.05, "value")],
)
def test_trainer_matches_plain_loop_bit_for_bit(tmp_path, acc, clip, algo) -> None:
    ref = plain_loop(3, acc, clip, algo, dropout=0.2)
    torch.manual_seed(7)
    model = BoringModel(dropout=0.2)
    loader = DataLoader(regression_data(40), batch_size=8, shuffle=True)
    val = DataLoader(regression_data(16, seed=3), batch_size=8, shuffle=True)  # draws RNG: must be isolated
    trainer = Trainer(
        **quiet_trainer_kwargs(
            tmp_path,
            max_epochs=3,
            accumulate_grad_batches=acc,
            gradient_clip_val=clip,
            gradient_clip_algorithm=algo,
            num_sanity_val_steps=2,
            val_check_interval=0.5,
        )
    )
    trainer.fit(model, loader, val)
    for a, b in zip(ref.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b), (a - b).abs().max()
    assert trainer.global_step == 3 * (5 // acc + (5 % acc > 0))
