"""The Trainer's own launchers for `devices=N` without torchrun.

- From a script: this process becomes rank 0 and re-runs the same command line (script or
  `-m module`) for ranks 1..N-1, as Lightning's subprocess launcher does (no pickled closures,
  so anything the script defines works in every rank).
- From a notebook, a REPL or `python -c` (no script to re-run): `fit` forks N ranks (Lightning's
  "ddp_notebook"); the forked children share what the session defined, train, and rank 0 hands
  the results (weights, counters, metrics, callback state) back to this process, which waits.

The group fails as a unit: a watcher thread in rank 0 stops every rank and exits with the failing
rank's code as soon as one rank exits non-zero, and each child asks the kernel to kill it when
rank 0 dies (PR_SET_PDEATHSIG), so no orphan outlives the launch.
"""

from __future__ import annotations

import atexit
import builtins
import ctypes
import ctypes.util
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from .environment import LAUNCHED_ENV, LAUNCHER_PID_ENV, ClusterEnvironment, free_port
from .errors import MisconfigurationError

_PR_SET_PDEATHSIG = 1


def is_interactive() -> bool:
    """A notebook, a REPL or `python -c`: nothing on disk that another process could run again."""
    main = sys.modules.get("__main__")
    script = sys.argv[0] if sys.argv else ""
    if "ipykernel" in sys.modules or hasattr(builtins, "__IPYTHON__"):
        return True
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return False  # python -m module
    return script in ("", "-c", "-") or not os.path.isfile(script) or not getattr(main, "__file__", None)


def run_forked(num_processes: int, fn: Callable[[], Any], *, grace: float = 5.0) -> Any:
    """Fork ranks 0..N-1 of a one-node group, each running `fn`; return rank 0's result.

    Raises RuntimeError naming the first rank that failed (the others are stopped)."""
    import multiprocessing

    import torch

    if torch.cuda.is_initialized():
        raise MisconfigurationError(
            "devices>1 from a notebook forks one process per GPU, and CUDA was already initialised in this "
            "session (forked children cannot use it). Restart the kernel and call trainer.fit before anything "
            "touches CUDA, or run the training as a script."
        )
    ctx = multiprocessing.get_context("fork")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gridlab-fork-") as tmp:
        result_path = os.path.join(tmp, _RESULT)
        procs = [
            ctx.Process(target=_forked_rank, args=(rank, num_processes, port, os.getpid(), fn, tmp))
            for rank in range(num_processes)
        ]
        for p in procs:
            p.start()
        failed: tuple[int, int] | None = None
        deadline = math.inf
        try:
            while any(p.is_alive() for p in procs):
                if failed is None and (failed := _first_failure(procs)) is not None:
                    deadline = time.monotonic() + grace  # let the others fail on their own and report
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                p.join()
        failed = failed or _first_failure(procs)
        if failed is not None:
            raise RuntimeError(_failure_message(tmp, failed, num_processes))
        if not os.path.exists(result_path):  # rank 0 ended without a result (a preemption exit)
            return None
        return torch.load(result_path, weights_only=False)  # noqa: S614 - written by our own rank 0 just now


def _first_failure(procs: list[Any]) -> tuple[int, int] | None:
    for rank, p in enumerate(procs):
        if p.exitcode:
            return rank, int(p.exitcode)
    return None


_RESULT = "rank0.pt"


def _forked_rank(rank: int, world: int, port: int, parent: int, fn: Callable[[], Any], folder: str) -> None:
    import torch

    from .distributed import is_secondary_failure

    set_parent_death_signal(parent)
    os.environ.update(ClusterEnvironment(rank, world, rank, world, 0, "127.0.0.1", port).to_env())
    try:
        out = fn()
    except BaseException as exc:
        if not isinstance(exc, SystemExit) or exc.code:
            # For the parent's message: the rank whose own error started it, not the peers it took down.
            with open(os.path.join(folder, f"error-{rank}"), "w") as f:
                f.write(f"{int(is_secondary_failure(exc))}\t{time.time()}\t{type(exc).__name__}: {exc}"[:2000])
        raise
    if rank == 0 and out is not None:
        torch.save(out, os.path.join(folder, _RESULT))


def _failure_message(folder: str, failed: tuple[int, int], world: int) -> str:
    errors = []
    for rank in range(world):
        path = os.path.join(folder, f"error-{rank}")
        if os.path.exists(path):
            with open(path) as f:
                secondary, when, text = f.read().split("\t", 2)
            errors.append((int(secondary), float(when), rank, text))
    if errors:
        _, _, rank, text = min(errors)
        return f"rank {rank} of {world} failed: {text} (its traceback is printed above)"
    rank, code = failed
    return f"rank {rank} of {world} exited with {_describe_exit(code)} (its traceback is printed above)"


def _describe_exit(code: int) -> str:
    """A child's returncode in words: negative means killed by that signal."""
    return f"signal {-code}" if code < 0 else f"code {code}"


def _exit_status(code: int) -> int:
    """The status to exit with for a child's returncode, as a shell reports it (128 + signal)."""
    return 128 - code if code < 0 else code


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
    if is_interactive():
        raise MisconfigurationError(
            "devices>1 from an interactive session forks its ranks (run_forked); there is no script to re-run."
        )
    if spec is not None and spec.name and spec.name != "__main__":
        return [sys.executable, "-m", spec.name, *sys.argv[1:]]
    return [sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:]]


def _with_parent_death_signal(cmd: list[str]) -> list[str]:
    """Arm PR_SET_PDEATHSIG before Python even starts (setpriv, util-linux), so a child still importing or
    preparing data dies with rank 0 too; without setpriv it is armed when the child joins the group."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *cmd] if setpriv and sys.platform.startswith("linux") else cmd


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
            self.procs.append(subprocess.Popen(_with_parent_death_signal(cmd), env=env))  # noqa: S603 - our script
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
        why = _describe_exit(code)
        print(f"gridlab.trainer: rank {rank} exited with {why}; stopping every rank", file=sys.stderr, flush=True)
        # A moment for this rank to fail on its own (its collective errors out) and report the first error;
        # a rank stuck in NCCL would not, so then it is stopped here.
        time.sleep(self.grace)
        self._kill_all()
        os._exit(_exit_status(code))

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
                failed = _exit_status(code)
        if failed:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(failed)
