"""The trainer's half of the stop protocol (DESIGN.md): SIGTERM sets a flag; at the next optimizer
step boundary the ranks agree (an all-reduce: any rank's flag stops all), save a checkpoint and exit 0,
so the next attempt resumes from it. A second SIGTERM ends the process at once (exit 143); the grace
period and SIGKILL are the agent's business.

"At once" holds even while the main thread is blocked inside a collective or a long kernel, where a
Python signal handler cannot run (and CPython would merge the two signals into one call): the
signals are counted by a thread reading `signal.set_wakeup_fd`, which gets one byte per delivery.

The agent signals the whole process group, so processes forked during fit (DataLoader workers above
all) get the same SIGTERM: in them the pipe and handler are reset at fork, and DataLoader workers
ignore SIGTERM (`ignore_sigterm_in_worker`), so the rank finishes its step and saves instead of
failing on "worker killed by signal".
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

PREEMPTION_CHECKPOINT = "preempted.ckpt"
SECOND_SIGTERM_EXIT = 128 + signal.SIGTERM


class Preempted(Exception):  # noqa: N818 - an outcome, not an error
    """Raised inside fit once the preemption checkpoint is written; the Trainer turns it into exit 0."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class _Deliveries:
    """One install's count: a counting thread left over from an earlier fit never adds to a later one."""

    def __init__(self) -> None:
        self.count = 0
        self.requested = False

    def delivered(self) -> None:
        self.count += 1
        self.requested = True
        if self.count >= 2:
            with contextlib.suppress(OSError):
                os.write(sys.stderr.fileno(), b"gridlab.trainer: second SIGTERM: exiting now, without a checkpoint\n")
            os._exit(SECOND_SIGTERM_EXIT)


_installed_pipe: tuple[int, int] | None = None  # the active install's pipe, for the at-fork reset


def _reset_in_child() -> None:
    """After a fork during fit: the child is not the rank; it must not count or catch the rank's SIGTERM."""
    global _installed_pipe
    if _installed_pipe is None:
        return
    pipe, _installed_pipe = _installed_pipe, None
    with contextlib.suppress(ValueError, OSError):  # ValueError: forked from a thread other than main
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for fd in pipe:
        with contextlib.suppress(OSError):
            os.close(fd)


os.register_at_fork(after_in_child=_reset_in_child)


def _ignore_sigterm_then(init: Callable[[int], Any] | None, worker_id: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if init is not None:
        init(worker_id)


def ignore_sigterm_in_worker(init: Callable[[int], Any] | None) -> Callable[[int], Any]:
    """A DataLoader worker_init_fn that makes the worker ignore SIGTERM, then runs `init`. The rank stops
    its workers itself when it exits; the agent's SIGKILL after the grace period catches any left."""
    if isinstance(init, functools.partial) and init.func is _ignore_sigterm_then:
        return init
    return functools.partial(_ignore_sigterm_then, init)


class SigtermFlag:
    """Installs SIGTERM handling for the duration of fit (main thread only; elsewhere it is inert)."""

    def __init__(self) -> None:
        self._deliveries = _Deliveries()
        self._previous: Any = None
        self._installed = False
        self._pipe: tuple[int, int] | None = None
        self._previous_fd = -1

    @property
    def requested(self) -> bool:
        return self._deliveries.requested

    def install(self) -> None:
        global _installed_pipe
        self._deliveries = deliveries = _Deliveries()
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
        self._pipe = _installed_pipe = (r, w)
        thread = threading.Thread(target=_count, args=(r, deliveries), name="gridlab-sigterm", daemon=True)
        thread.start()

    def uninstall(self) -> None:
        global _installed_pipe
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_fd)
            os.close(self._pipe[1])  # the counting thread reads EOF, closes its end and ends
            self._pipe = _installed_pipe = None
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._deliveries.requested = True
        if self._pipe is None:  # no counting thread: count here (merged deliveries count once)
            self._deliveries.delivered()


def _count(fd: int, deliveries: _Deliveries) -> None:
    with contextlib.suppress(OSError):
        while data := os.read(fd, 256):
            for _ in range(data.count(bytes([signal.SIGTERM]))):
                deliveries.delivered()
    with contextlib.suppress(OSError):
        os.close(fd)
