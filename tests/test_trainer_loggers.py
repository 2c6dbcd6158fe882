"""Loggers: CSV (growing columns, versions, hparams.yaml), JSON lines for the agent, TensorBoard."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from gridlab.agent.metrics import MetricsTail
from gridlab.trainer.loggers import CSVLogger, JSONLinesLogger, Logger, TensorBoardLogger

torch.set_num_threads(1)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_csv_logger_layout_versions_and_growing_columns(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    assert isinstance(logger, Logger)
    assert logger.name == "gridlab_logs"
    assert logger.version == 0
    assert logger.log_dir == str(tmp_path / "gridlab_logs" / "version_0")
    logger.log_metrics({"loss": 1.5}, step=0)
    logger.log_metrics({"loss": torch.tensor(1.25)}, step=1)
    logger.save()
    logger.log_metrics({"loss": 1.0, "val_acc": 0.5}, step=2)  # a new column: the header is rewritten
    logger.finalize("success")
    path = tmp_path / "gridlab_logs" / "version_0" / "metrics.csv"
    with open(path) as fh:
        assert fh.readline().strip() == "step,loss,val_acc"
    assert read_csv(path) == [
        {"step": "0", "loss": "1.5", "val_acc": ""},
        {"step": "1", "loss": "1.25", "val_acc": ""},
        {"step": "2", "loss": "1.0", "val_acc": "0.5"},
    ]
    assert CSVLogger(tmp_path).version == 1
    assert CSVLogger(tmp_path, version="mine").log_dir == str(tmp_path / "gridlab_logs" / "mine")


def test_csv_logger_flushes_every_n_steps_and_appends_on_resume(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=2)
    logger.log_metrics({"a": 1.0}, step=0)
    assert not Path(logger.metrics_file_path).exists()
    logger.log_metrics({"a": 2.0}, step=1)
    assert len(read_csv(logger.metrics_file_path)) == 2
    again = CSVLogger(tmp_path, version=0)  # a resumed run writes into its own version
    again.log_metrics({"a": 3.0, "b": 4.0}, step=2)
    again.finalize("success")
    assert [r["a"] for r in read_csv(again.metrics_file_path)] == ["1.0", "2.0", "3.0"]
    assert read_csv(again.metrics_file_path)[-1]["b"] == "4.0"


def test_csv_logger_hparams_yaml(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    params = {"lr": 0.001, "layers": [64, 64], "opt": {"name": "adam", "betas": (0.9, 0.999)}, "flag": True, "x": None}
    logger.log_hyperparams(params)
    text = (Path(logger.log_dir) / "hparams.yaml").read_text()
    assert '"lr": 0.001' in text
    assert '"name": "adam"' in text
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(text) == {
        "lr": 0.001,
        "layers": [64, 64],
        "opt": {"name": "adam", "betas": [0.9, 0.999]},
        "flag": True,
        "x": None,
    }


def test_jsonl_logger_from_env_is_what_the_agent_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m" / "metrics.jsonl"
    monkeypatch.setenv("GRIDLAB_METRICS_FILE", str(path))
    logger = JSONLinesLogger()
    logger.log_metrics({"loss": torch.tensor(0.5)}, step=10)
    logger.log_metrics({"loss": float("nan"), "acc": 1}, step=20)
    # Flushed on each call: readable before save() or finalize().
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["step"] == 10
    assert isinstance(first["time"], float)
    assert first["loss"] == 0.5
    assert second == {"step": 20, "time": second["time"], "loss": None, "acc": 1.0}
    tail = MetricsTail(path)
    tail.poll()
    assert tail.last_step == 20
    assert tail.last_step_time == pytest.approx(second["time"])
    logger.finalize("success")
    JSONLinesLogger(path).log_metrics({"loss": 0.1}, step=30)  # appends
    assert len(path.read_text().splitlines()) == 3


def test_jsonl_logger_needs_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRIDLAB_METRICS_FILE", raising=False)
    with pytest.raises(ValueError, match="GRIDLAB_METRICS_FILE"):
        JSONLinesLogger()


def test_tensorboard_logger_without_the_package_says_how_to_install(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed")
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardLogger(tmp_path)


def test_tensorboard_logger_writes_events(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path, name="tb")
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 0.5}, step=1)
    logger.finalize("success")
    assert any(p.name.startswith("events.out.tfevents") for p in Path(logger.log_dir).iterdir())
