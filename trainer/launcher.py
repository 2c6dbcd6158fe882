"""The Trainer's own launcher for `devices=N` without torchrun: this process becomes rank 0 and
re-runs the same command line (script or `-m module`) for ranks 1..N-1, as Lightning's subprocess
launcher does (no pickled closures, so anything the script defines works in every rank).

The group fails as a unit: a watcher thread in rank 0 stops every rank and exits with the failing
rank's code as soon as one rank exits non-zero, and each child asks the kernel to kill it when
rank 0 dies (PR_SET_PDEATHSIG), so no orphan outlives the launch.
"""

from __future__ import annotations

import atexit
import builtins
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time

from .environment import LAUNCHED_ENV, LAUNCHER_PID_ENV, ClusterEnvironment, free_port
from .errors import MisconfigurationError

_PR_SET_PDEATHSIG = 1


def script_command() -> list[str]:
    """The command that started this interpreter, runnable again from any rank."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if "pytest" in os.path.basename(sys.argv[0] if sys.argv else "") or (
        spec is not None and spec.name in ("pytest", "pytest.__main__", "_pytest")
    ):
        raise MisconfigurationError(
            "devices>1 re-runs the command that started Python, and that is pytest here: start the training in "
            "a script (subprocess) instead."
        )
    script = sys.argv[0] if sys.argv else ""
    interactive = "ipykernel" in sys.modules or hasattr(builtins, "__IPYTHON__")
    if not interactive and spec is not None and spec.name and spec.name != "__main__":
        return [sys.executable, "-m", spec.name, *sys.argv[1:]]
    if interactive or script in ("", "-c", "-") or not os.path.isfile(script) or not getattr(main, "__file__", None):
        raise MisconfigurationError(
            "devices>1 starts one process per device by re-running your script, but this is an interactive "
            "session (notebook, REPL or `python -c`). Put the training in a .py file and run it, or launch it "
            "with `torchrun --nproc-per-node N file.py`."
        )
    return [sys.executable, os.path.abspath(script), *sys.argv[1:]]


def set_parent_death_signal(parent_pid: int) -> None:
    """Linux: die with SIGKILL when the launching rank 0 dies; exit at once if it already has."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


class SubprocessLauncher:
    """Starts ranks 1..N-1 of a one-node group; `launch()` returns rank 0's environment."""

    def __init__(self, num_processes: int, *, poll_interval: float = 0.2, grace: float = 5.0) -> None:
        self.num_processes = num_processes
        self.poll_interval = poll_interval
        self.grace = grace
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._rank0_failed = False

    def launch(self) -> ClusterEnvironment:
        cmd = script_command()
        port = free_port()
        n = self.num_processes
        for rank in range(1, n):
            env = os.environ.copy()
            env.update(ClusterEnvironment(rank, n, rank, n, 0, "127.0.0.1", port).to_env())
            env[LAUNCHED_ENV] = "1"
            env[LAUNCHER_PID_ENV] = str(os.getpid())
            self.procs.append(subprocess.Popen(cmd, env=env))  # noqa: S603 - our own interpreter and script
        rank0 = ClusterEnvironment(0, n, 0, n, 0, "127.0.0.1", port)
        os.environ.update(rank0.to_env())  # so user code and torch see what the other ranks see
        threading.Thread(target=self._watch, name="gridlab-rank-watcher", daemon=True).start()
        atexit.register(self._wait_at_exit)
        return rank0

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            for rank, proc in enumerate(self.procs, start=1):
                code = proc.poll()
                if code:
                    self._fail(rank, code)

    def _fail(self, rank: int, code: int) -> None:
        why = f"signal {-code}" if code < 0 else f"code {code}"
        print(f"gridlab.trainer: rank {rank} exited with {why}; stopping every rank", file=sys.stderr, flush=True)
        # A moment for this rank to fail on its own (its collective errors out) and report the first error;
        # a rank stuck in NCCL would not, so then it is stopped here.
        time.sleep(self.grace)
        self._kill_all()
        os._exit(128 - code if code < 0 else code)

    def _kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()

    def abort(self) -> None:
        """Rank 0 failed: at exit, give the other ranks a moment, then kill them. (They may be blocked in a
        collective on rank 0, whose sockets stay open while this process waits for them.)"""
        self._rank0_failed = True

    def _wait_at_exit(self) -> None:
        """Rank 0 ends after its peers, so the launch exits with the group's status."""
        self._stop.set()
        if self._rank0_failed:
            deadline = time.monotonic() + 2.0
            for proc in self.procs:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            return  # exit with rank 0's own status
        failed = 0
        for proc in self.procs:
            code = proc.wait()
            if code and not failed:
                failed = 128 - code if code < 0 else code
        if failed:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(failed)
