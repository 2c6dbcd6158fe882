"""Callbacks: checkpointing, early stopping, LR monitoring, SWA, progress, time limits."""

from .base import Callback
from .checkpoint import ModelCheckpoint
from .early_stopping import EarlyStopping
from .lr_monitor import LearningRateMonitor
from .progress import ProgressBar
from .swa import StochasticWeightAveraging
from .timer import Timer

__all__ = [
    "Callback",
    "EarlyStopping",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ProgressBar",
    "StochasticWeightAveraging",
    "Timer",
]
