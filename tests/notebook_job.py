"""Notebook-style training, for test_trainer_distributed: the tests run this text with `python -c`, so
there is no script to re-run and the Module class lives only in the session (like a notebook cell);
Trainer(devices=2) must fork its ranks and hand the results back. BOOM=1 makes rank 1 raise."""

import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gridlab.trainer import Module, Trainer, seed_everything


class M(Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        if os.environ.get("BOOM") and self.trainer.global_rank == 1 and self.trainer.global_step == 2:
            raise ValueError("boom in a notebook")
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss, sync_dist=True, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


g = torch.Generator().manual_seed(3)
x = torch.randn(128, 8, generator=g)
ds = TensorDataset(x, x.sum(1, keepdim=True).sin())
kw = dict(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False, enable_checkpointing=False)
seed_everything(0)
a = M()
Trainer(**kw).fit(a, DataLoader(ds, batch_size=16))
seed_everything(0)
b = M()
t = Trainer(devices=2, **kw)
t.fit(b, DataLoader(ds, batch_size=8))
diff = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))
loss = float(t.callback_metrics["loss_epoch"])
print(f"forked steps={t.global_step} epoch={t.current_epoch} loss={loss:.5f} diff={diff:.2e} status={t.state.status}")
