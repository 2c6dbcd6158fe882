"""gridlab.trainer: a Lightning-style training engine (Module, DataModule, Trainer). Imports torch only.

Callbacks and loggers are imported lazily (module `__getattr__`), so `import gridlab.trainer` stays
light and does not depend on optional packages.
"""

from __future__ import annotations

import importlib
from typing import Any

from .callbacks.base import Callback
from .datamodule import DataModule
from .errors import MisconfigurationError
from .loggers.base import Logger
from .module import Module
from .optim import LRSchedulerConfig
from .seed import seed_everything
from .strategy import SingleDeviceStrategy, Strategy
from .trainer import Trainer

_LAZY = {
    "DDPStrategy": ".ddp",
    "FSDPStrategy": ".fsdp",
    "ModelCheckpoint": ".callbacks.checkpoint",
    "EarlyStopping": ".callbacks.early_stopping",
    "LearningRateMonitor": ".callbacks.lr_monitor",
    "StochasticWeightAveraging": ".callbacks.swa",
    "ProgressBar": ".callbacks.progress",
    "Timer": ".callbacks.timer",
    "CSVLogger": ".loggers.csv",
    "TensorBoardLogger": ".loggers.tensorboard",
    "JSONLinesLogger": ".loggers.jsonl",
}

__all__ = [
    "Callback",
    "DataModule",
    "LRSchedulerConfig",
    "Logger",
    "MisconfigurationError",
    "Module",
    "SingleDeviceStrategy",
    "Strategy",
    "Trainer",
    "seed_everything",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
