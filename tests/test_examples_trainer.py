"""The trainer examples run, in a few seconds each, and do what their docstrings say.

Each example is loaded from its file and its `main(argv)` called with `--fast-dev-run` or
a few steps; one parametrized test also runs each file as a script, as a user would.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

trainer_pkg = pytest.importorskip("gridlab.trainer")
if not all(hasattr(trainer_pkg, name) for name in ("Module", "Trainer", "DataModule", "seed_everything")):
    pytest.skip("gridlab.trainer has no Trainer yet (issue 3)", allow_module_level=True)

import torch  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def autoencoder() -> ModuleType:
    return load("autoencoder")


@pytest.fixture(scope="module")
def gan() -> ModuleType:
    return load("gan")


@pytest.fixture(scope="module")
def tbptt() -> ModuleType:
    return load("tbptt_rnn")


def quiet(tmp_path: Path, *args: str) -> list[str]:
    return [*args, "--no-progress-bar", "--default-root-dir", str(tmp_path)]


def test_autoencoder_fast_dev_run(autoencoder: ModuleType, tmp_path: Path) -> None:
    model, trainer, data = autoencoder.main(quiet(tmp_path, "--fast-dev-run"))
    assert trainer.global_step == 1
    assert math.isfinite(float(trainer.callback_metrics["val_loss"]))
    x = data.val_set.tensors[0][:5]
    with torch.no_grad():
        emb = model(x)
    # forward embeds: the encoder's output, not a reconstruction.
    assert emb.shape == (5, autoencoder.LATENT)
    assert torch.equal(emb, model.encoder(x))
    assert model.hparams["lr"] == pytest.approx(3e-3)


def test_autoencoder_loss_decreases_with_more_steps(autoencoder: ModuleType, tmp_path: Path) -> None:
    def val_loss(model: torch.nn.Module, data: object) -> float:
        with torch.no_grad():
            return float(model.reconstruction_loss(data.val_set.tensors[0]))

    # main() seeds before building the model, so this is the model it starts from.
    autoencoder.seed_everything(0)
    start = autoencoder.AutoEncoder()
    data = autoencoder.ManifoldData()
    data.setup("fit")
    initial = val_loss(start, data)

    losses = []
    for steps in (20, 80):
        model, trainer, data = autoencoder.main(quiet(tmp_path / str(steps), "--max-steps", str(steps)))
        assert trainer.global_step == steps
        losses.append(val_loss(model, data))
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] < initial
    assert losses[1] < 0.8 * losses[0], (initial, losses)


def test_gan_steps_both_optimizers(gan: ModuleType, tmp_path: Path) -> None:
    gan.seed_everything(0)
    start = gan.GAN()
    model, trainer = gan.main(quiet(tmp_path, "--fast-dev-run"))
    assert model.automatic_optimization is False
    assert (model.d_steps, model.g_steps) == (1, 1)

    optimizers = trainer.optimizers
    assert len(optimizers) == 2
    for opt in optimizers:
        steps = {float(opt.state[p]["step"]) for group in opt.param_groups for p in group["params"]}
        assert steps == {1.0}, f"{type(opt).__name__} stepped {steps} times"

    # Both networks moved away from the same seeded start; nothing else changed them.
    for name in ("generator", "discriminator"):
        before = torch.nn.utils.parameters_to_vector(getattr(start, name).parameters())
        after = torch.nn.utils.parameters_to_vector(getattr(model, name).parameters())
        assert not torch.equal(before, after), f"{name} did not change"
    for key in ("d_loss", "g_loss"):
        assert math.isfinite(float(trainer.callback_metrics[key]))


def test_gan_a_few_steps(gan: ModuleType, tmp_path: Path) -> None:
    model, trainer = gan.main(quiet(tmp_path, "--max-steps", "20"))
    assert model.d_steps == model.g_steps > 1
    for key in ("d_loss", "g_loss"):
        assert math.isfinite(float(trainer.callback_metrics[key]))
    with torch.no_grad():
        assert torch.isfinite(model.sample(100)).all()


def test_tbptt_chunks_carry_hidden_state(tbptt: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[tuple[int, ...], torch.Tensor | None]] = []
    original = tbptt.NextValueRNN.training_step

    def spy(self: Any, batch: Any, batch_idx: int, hiddens: torch.Tensor | None) -> Any:
        seen.append((tuple(batch[0].shape), hiddens))
        return original(self, batch, batch_idx, hiddens)

    monkeypatch.setattr(tbptt.NextValueRNN, "training_step", spy)
    model, trainer = tbptt.main(quiet(tmp_path, "--fast-dev-run", "--seq-len", "100", "--tbptt-steps", "25"))

    # One batch of 100 time steps in chunks of 25: four training_steps, four optimizer steps.
    assert [shape for shape, _ in seen] == [(32, 25, 1)] * 4
    assert trainer.global_step == 4
    assert seen[0][1] is None
    for _, h in seen[1:]:
        assert isinstance(h, torch.Tensor)
        assert h.shape == (1, 32, 32)
        assert not h.requires_grad
    assert math.isfinite(float(trainer.callback_metrics["val_loss"]))


def test_tbptt_a_few_steps(tbptt: ModuleType, tmp_path: Path) -> None:
    model, trainer = tbptt.main(quiet(tmp_path, "--max-steps", "12"))
    assert trainer.global_step == 12
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))


@pytest.mark.parametrize("name", ["autoencoder", "gan", "tbptt_rnn"])
def test_example_runs_as_a_script(name: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--fast-dev-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
