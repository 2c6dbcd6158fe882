"""The trainer's half of the stop protocol (DESIGN.md): SIGTERM sets a flag; at the next optimizer
step boundary the ranks agree (an all-reduce: any rank's flag stops all), save a checkpoint and exit 0,
so the next attempt resumes from it. A second SIGTERM ends the process at once (the default action);
the grace period and SIGKILL are the agent's business."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

PREEMPTION_CHECKPOINT = "preempted.ckpt"


class Preempted(Exception):  # noqa: N818 - an outcome, not an error
    """Raised inside fit once the preemption checkpoint is written; the Trainer turns it into exit 0."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class SigtermFlag:
    """Installs a SIGTERM handler for the duration of fit (main thread only; elsewhere it is inert)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        self.requested = False
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second one: stop now
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.requested = True
