"""The trainer's half of the stop protocol (DESIGN.md): SIGTERM sets a flag; at the next optimizer
step boundary the ranks agree (an all-reduce: any rank's flag stops all), save a checkpoint and exit 0,
so the next attempt resumes from it. A second SIGTERM ends the process at once (exit 143); the grace
period and SIGKILL are the agent's business.

"At once" holds even while the main thread is blocked inside a collective or a long kernel, where a
Python signal handler cannot run (and CPython would merge the two signals into one call): the
signals are counted by a thread reading `signal.set_wakeup_fd`, which gets one byte per delivery.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

PREEMPTION_CHECKPOINT = "preempted.ckpt"
SECOND_SIGTERM_EXIT = 128 + signal.SIGTERM


class Preempted(Exception):  # noqa: N818 - an outcome, not an error
    """Raised inside fit once the preemption checkpoint is written; the Trainer turns it into exit 0."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class SigtermFlag:
    """Installs SIGTERM handling for the duration of fit (main thread only; elsewhere it is inert)."""

    def __init__(self) -> None:
        self.requested = False
        self._count = 0
        self._previous: Any = None
        self._installed = False
        self._pipe: tuple[int, int] | None = None
        self._previous_fd = -1

    def install(self) -> None:
        self.requested, self._count = False, 0
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        self._installed = True
        r, w = os.pipe()
        os.set_blocking(w, False)
        try:
            self._previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except ValueError:  # pragma: no cover - main thread checked above
            os.close(r)
            os.close(w)
            return
        self._pipe = (r, w)
        threading.Thread(target=self._count_deliveries, args=(r,), name="gridlab-sigterm", daemon=True).start()

    def uninstall(self) -> None:
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_fd)
            os.close(self._pipe[1])  # the counting thread reads EOF, closes its end and ends
            self._pipe = None
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self._pipe is None:  # no counting thread: count here (merged deliveries count once)
            self._delivered()

    def _count_deliveries(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            while data := os.read(fd, 256):
                for _ in range(data.count(bytes([signal.SIGTERM]))):
                    self._delivered()
        with contextlib.suppress(OSError):
            os.close(fd)

    def _delivered(self) -> None:
        self._count += 1
        self.requested = True
        if self._count >= 2:
            with contextlib.suppress(OSError):
                os.write(sys.stderr.fileno(), b"gridlab.trainer: second SIGTERM: exiting now, without a checkpoint\n")
            os._exit(SECOND_SIGTERM_EXIT)
