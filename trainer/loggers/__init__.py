"""Loggers: CSV (the default), JSON lines for the gridlab agent, TensorBoard (optional)."""

from .base import Logger
from .csv import CSVLogger
from .jsonl import JSONLinesLogger
from .tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "JSONLinesLogger", "Logger", "TensorBoardLogger"]
