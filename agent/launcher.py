"""One attempt's processes on this machine: start every local rank, watch them, stop them.

The launcher knows nothing of gRPC: it reports through an `AttemptEvents` sink (log
lines, status updates, and a wait for the logs to be delivered), so tests drive it with
a plain recorder.

    ASSIGNED -> PREPARING -> RUNNING -> SUCCEEDED | FAILED | <cancel's final state>

The ranks are a group (as in torch.distributed.elastic): the first rank to fail fails
the attempt, the others are stopped, and the report names that first rank rather than
the cascade of errors after it. The terminal state is reported only after every pipe
reached EOF and every line was acknowledged, so whoever sees SUCCEEDED has all output.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import psutil
import structlog

from gridlab.agent.bundles import PrepareError, bundle_requirements, fetch_bundle
from gridlab.agent.ckptship import CheckpointShipper, restore_checkpoint, scan_checkpoints, upload_artifacts
from gridlab.agent.envcache import BuildCancelled, EnvBuildError, EnvCache
from gridlab.agent.logfence import OutputFence, PipeCount
from gridlab.agent.logship import MAX_LINE_BYTES, METRICS_RANK, SYSTEM_RANK, AttemptLog, pump_batches
from gridlab.agent.metrics import MetricsTail
from gridlab.agent.reaper import asyncio_children, kill_attempt_processes
from gridlab.common.timeutil import ts
from gridlab.common.transfer import Metadata
from gridlab.v1 import agent_pb2, artifacts_pb2_grpc, types_pb2

T = TypeVar("T")

log = structlog.get_logger("gridlab.agent.launcher")

S = types_pb2.AttemptState
TERMINAL = frozenset(
    {
        S.ATTEMPT_STATE_SUCCEEDED,
        S.ATTEMPT_STATE_FAILED,
        S.ATTEMPT_STATE_CANCELLED,
        S.ATTEMPT_STATE_LOST,
        S.ATTEMPT_STATE_PREEMPTED,
    }
)
EXIT_NOT_FOUND = 127  # shell conventions for "command not found" / "cannot execute"
EXIT_CANNOT_EXECUTE = 126
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class AttemptEvents(Protocol):
    """What an attempt tells the rest of the agent."""

    def on_log(self, line: types_pb2.LogLine) -> None: ...

    def on_update(self, status: agent_pb2.AttemptStatus) -> None: ...

    async def drain_logs(self, attempt_id: str) -> None:
        """Return once the attempt's lines so far are delivered (or a bound passed)."""
        ...

    async def logs_settled(self, attempt_id: str, seqs: Mapping[int, int], timeout: float) -> bool:
        """Whether the attempt's lines numbered up to `seqs[rank]` for their rank are delivered, waiting up to
        `timeout`."""
        ...


@dataclass
class LaunchSettings:
    """The agent-wide knobs an attempt needs."""

    state_dir: Path
    grace_period: float = 60.0  # SIGTERM to SIGKILL
    address: str = "127.0.0.1"  # this machine: MASTER_ADDR of a multi-node run if unset
    base_env: Mapping[str, str] | None = None  # default: the agent's os.environ
    env_cache: EnvCache | None = None  # builds a run's `requirements` into a virtualenv
    pip_args: tuple[str, ...] = ()
    pipe_eof_timeout: float = 5.0  # after the processes are gone, wait this for EOF
    # The scheduler's artifact store: code bundles in, checkpoints and artifacts out. None: this agent
    # fetches no bundles and uploads nothing (tests of the launcher alone).
    artifacts: artifacts_pb2_grpc.ArtifactsAsyncStub | None = None
    metadata: Metadata = ()
    agent_name: str = ""
    bundle_dir: Path | None = None  # the bundle cache; default <state_dir>/bundles
    checkpoint_poll: float = 2.0
    upload_gate: asyncio.Lock = field(default_factory=asyncio.Lock)  # one upload at a time, agent-wide


@dataclass(frozen=True)
class AttemptDirs:
    root: Path
    work: Path
    checkpoints: Path
    artifacts: Path
    metrics: Path

    @classmethod
    def of(cls, state_dir: Path, attempt_id: str) -> AttemptDirs:
        root = Path(state_dir) / "attempts" / attempt_id
        return cls(root, root / "work", root / "checkpoints", root / "artifacts", root / "metrics.jsonl")

    def prepare(self, run_id: str = "") -> None:
        """A fresh working directory; checkpoints and artifacts are kept if present. The run's id is
        recorded beside them, so a later attempt of the run on this machine can find its checkpoints."""
        if self.work.exists():
            shutil.rmtree(self.work)
        for path in (self.work, self.checkpoints, self.artifacts):
            path.mkdir(parents=True, exist_ok=True)
        if run_id:
            (self.root / RUN_ID_FILE).write_text(run_id)


RUN_ID_FILE = "run_id"


def _link_copy(src: Path, dest: Path) -> Path:
    """`src` (a file or a sharded folder) at `dest` through hard links (a copy across file systems)."""
    if dest.is_dir():
        shutil.rmtree(dest)
    elif dest.exists():
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if src.is_dir():
        shutil.copytree(src, dest, copy_function=link, symlinks=False)
    else:
        link(str(src), str(dest))
    return dest


def newest_checkpoint(state_dir: Path, run_id: str) -> Path | None:
    """The newest complete checkpoint that an earlier attempt of `run_id` wrote on this machine, by the rule
    the shipper uploads by (`ckptship.scan_checkpoints`: no temp files, saves in progress, links or times
    in the future)."""
    found: list[tuple[int, Path]] = []
    for marker in (Path(state_dir) / "attempts").glob(f"*/{RUN_ID_FILE}"):
        try:
            if marker.read_text() != run_id:
                continue
        except OSError:
            continue
        folder = marker.parent / "checkpoints"
        found.extend((entry.newest_ns, folder / entry.name) for entry in scan_checkpoints(folder).entries)
    return max(found)[1] if found else None


@contextlib.contextmanager
def reserved_port(fixed: int = 0) -> Iterator[int]:
    """MASTER_PORT: `fixed`, or a free port held (bound, not listening) until the block ends, so nothing
    else on the machine takes it while a gang waits for its other nodes; rank 0 binds it right after."""
    if fixed:
        yield fixed
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        yield int(sock.getsockname()[1])


def rank_env(
    assignment: agent_pb2.Assignment,
    *,
    local_rank: int,
    dirs: AttemptDirs,
    master_addr: str,
    master_port: int,
    base_env: Mapping[str, str],
    venv: Path | None = None,
    resume_from: str = "",
) -> dict[str, str]:
    """A rank's environment: the agent's, then the spec's, then torchrun's variables and
    gridlab's (which win, so a spec cannot break the group's wiring). The agent's own
    settings (GRIDLAB_AGENT_*, its token among them) are not passed on."""
    procs = max(1, assignment.procs_per_node)
    nodes = max(1, assignment.nodes)
    env = {k: v for k, v in base_env.items() if not k.startswith("GRIDLAB_AGENT_") and k != "GRIDLAB_RESUME_FROM"}
    env.update(assignment.spec.env)
    env.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        WORLD_SIZE=str(nodes * procs),
        RANK=str(assignment.node_rank * procs + local_rank),
        LOCAL_RANK=str(local_rank),
        LOCAL_WORLD_SIZE=str(procs),
        GROUP_RANK=str(assignment.node_rank),
        CUDA_VISIBLE_DEVICES=",".join(assignment.gpu_uuids),
        GRIDLAB_RUN_ID=assignment.run_id,
        GRIDLAB_ATTEMPT=str(assignment.attempt_number),
        GRIDLAB_ATTEMPT_ID=assignment.attempt_id,
        GRIDLAB_NODE_RANK=str(assignment.node_rank),
        GRIDLAB_CHECKPOINT_DIR=str(dirs.checkpoints),
        GRIDLAB_METRICS_FILE=str(dirs.metrics),
        GRIDLAB_ARTIFACT_DIR=str(dirs.artifacts),
        PYTHONUNBUFFERED="1",
    )
    if resume_from or assignment.resume_from:
        env["GRIDLAB_RESUME_FROM"] = resume_from or assignment.resume_from
    if venv is not None:  # the run's requirements: its `python` is the environment's
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", os.defpath)])
    return env


def exit_description(rank: int, returncode: int) -> tuple[int, str]:
    """(exit code, message) for a rank's returncode; death by signal N becomes 128+N,
    as a shell reports it."""
    if returncode >= 0:
        return returncode, f"rank {rank} exited with {returncode}"
    signum = -returncode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return 128 + signum, f"rank {rank} exited with {128 + signum} (killed by {name})"


# Sets the parent-death signal, then becomes the rank (same pid, same process group).
# A preexec_fn would do the same, but it forces a plain fork() in a process full of gRPC
# threads, and gRPC's fork handlers can crash such a child (observed: SIGSEGV before
# exec); without one, Python spawns with vfork, which runs no fork handlers.
_PDEATHSIG_EXEC = """\
import ctypes, os, sys
ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
if os.getppid() != int(sys.argv[1]):  # the agent died before prctl took effect
    os._exit(1)
try:
    os.execv(sys.argv[2], sys.argv[3:])
except OSError as exc:
    sys.stderr.write(f"cannot execute {sys.argv[2]}: {exc.strerror}\\n")
    os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
"""


def _find_setpriv() -> str | None:
    """util-linux's setpriv, if it knows --pdeathsig (2.33 and newer)."""
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return path if "--pdeathsig" in out.stdout else None


_SETPRIV = _find_setpriv() if sys.platform.startswith("linux") else None


def resolve_executable(program: str, *, cwd: Path, env: Mapping[str, str]) -> str:
    """The file exec would run for `program` (PATH from the rank's env, relative paths
    from its cwd). Raises FileNotFoundError or PermissionError as exec would."""
    if "/" in program:
        path = Path(program) if os.path.isabs(program) else cwd / program
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        if path.is_dir() or not os.access(path, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
        return str(path)
    found = shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "not found on PATH", program)
    return os.path.abspath(found)


class _ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Resolves `exited` as soon as the process ends. Process.wait() on Python 3.11 also
    waits for the pipes to close, which a rank's stray child can hold open forever."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=MAX_LINE_BYTES, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()
        self._pid: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if isinstance(transport, asyncio.SubprocessTransport):
            self._pid = transport.get_pid()
            asyncio_children.add(self._pid)  # the reaper must leave this pid to asyncio

    def process_exited(self) -> None:
        super().process_exited()
        if self._pid is not None:  # asyncio has collected its exit status by now
            asyncio_children.discard(self._pid)
        if not self.exited.done():
            self.exited.set_result(None)


async def spawn(
    command: list[str], *, cwd: Path, env: Mapping[str, str]
) -> tuple[asyncio.subprocess.Process, asyncio.SubprocessTransport, asyncio.Future[None]]:
    """Start one rank: argv (never a shell), its own session and process group, stdin
    closed, stdout and stderr piped. On Linux it gets SIGKILL when the agent dies (even
    by kill -9), so no rank outlives its agent; the signal follows the thread that
    spawned it, and the agent spawns from its event loop, in the main thread."""
    executable = resolve_executable(command[0], cwd=cwd, env=env)
    argv = [executable, *command[1:]]
    if sys.platform.startswith("linux"):
        if _SETPRIV:
            # util-linux's setpriv sets the signal and execs: about 1 ms, against about
            # 15 ms for starting the Python trampoline below.
            argv = [_SETPRIV, "--pdeathsig", "KILL", "--", executable, *command[1:]]
        elif sys.executable:
            argv = [sys.executable, "-I", "-S", "-c", _PDEATHSIG_EXEC, str(os.getpid()), executable, *command]
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        lambda: _ExitProtocol(loop),
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    return asyncio.subprocess.Process(transport, protocol, loop), transport, protocol.exited


@dataclass
class _Rank:
    rank: int
    local_rank: int
    proc: asyncio.subprocess.Process
    transport: asyncio.SubprocessTransport
    exited: asyncio.Future[None]
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    returncode: int | None = None


class Attempt:
    """One attempt's local ranks. `run()` drives it to the end; `cancel()` may come at
    any time; `status()` is what Hello and Heartbeat report."""

    def __init__(
        self,
        assignment: agent_pb2.Assignment,
        settings: LaunchSettings,
        events: AttemptEvents,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.assignment = assignment
        self.attempt_id = assignment.attempt_id
        self.run_id = assignment.run_id
        self.settings = settings
        self._events = events
        self._clock = clock
        self._log = AttemptLog(self.attempt_id, clock)
        self._fence = OutputFence(
            self._log.last_seqs, lambda seqs, timeout: events.logs_settled(self.attempt_id, seqs, timeout)
        )
        self._ranks: list[_Rank] = []
        self._outcome: tuple[types_pb2.AttemptState, int, str] | None = None
        self._kill_at: float | None = None  # loop time when SIGKILL is (or was) due
        self._kill_timer: asyncio.TimerHandle | None = None
        self._done = asyncio.Event()
        self._metrics: MetricsTail | None = None
        self._build_stop = threading.Event()  # set on cancel: a requirements build in progress gives up
        self._metrics_warned = False
        self._shipper: CheckpointShipper | None = None
        self._go = asyncio.Event()  # a gang's start order came (or the attempt was stopped while it waited)
        self._stopped = asyncio.Event()  # cancel() or kill(): preparation steps in progress give up
        self._start_order: agent_pb2.StartAttempt | None = None
        self._status = agent_pb2.AttemptStatus(
            attempt_id=self.attempt_id,
            run_id=self.run_id,
            state=S.ATTEMPT_STATE_ASSIGNED,
            time=ts(clock()),
        )

    # -- what the agent reads ----------------------------------------------------------

    @property
    def done(self) -> bool:
        """The terminal state has been reported."""
        return self._done.is_set()

    @property
    def state(self) -> types_pb2.AttemptState:
        return self._status.state

    def status(self) -> agent_pb2.AttemptStatus:
        """The state as last reported, with progress from the metrics file."""
        out = agent_pb2.AttemptStatus()
        out.CopyFrom(self._status)
        if self._metrics is not None:
            # Heartbeats, every Hello and every update come through here: nothing in the
            # user's metrics file may make it raise (MetricsTail validates; this is the
            # backstop), or the agent could not report anything at all.
            try:
                self._metrics.poll()
                self._forward_metrics()
                step, when = self._metrics.last_step, self._metrics.last_step_time
                progress = agent_pb2.AttemptStatus(last_step=step)
                if when is not None:
                    progress.last_step_time.CopyFrom(ts(when))
            except Exception as exc:
                if not self._metrics_warned:
                    self._metrics_warned = True
                    log.warning("metrics file progress not reportable", error=f"{type(exc).__name__}: {exc}")
            else:
                out.MergeFrom(progress)
        return out

    def _forward_metrics(self) -> None:
        """The metrics file's new records, as log lines: ordered, lossless, resumable like the logs."""
        assert self._metrics is not None  # noqa: S101 - the caller checked
        for record in self._metrics.take_records():
            self._events.on_log(self._log.line(METRICS_RANK, types_pb2.LOG_STREAM_METRICS, record))

    def _final_metrics(self) -> None:
        """Read the metrics file to its end (a poll reads at most MAX_READ) before the last logs drain."""
        if self._metrics is None:
            return
        with contextlib.suppress(Exception):  # the user's file must not stop the attempt's end
            while self._metrics.poll():
                self._forward_metrics()
            self._forward_metrics()

    def pids(self) -> list[int]:
        return [r.proc.pid for r in self._ranks]

    async def wait(self) -> agent_pb2.AttemptStatus:
        await self._done.wait()
        return self.status()

    # -- orders ------------------------------------------------------------------------

    def cancel(
        self,
        final_state: types_pb2.AttemptState = S.ATTEMPT_STATE_CANCELLED,
        grace: float | None = None,
        reason: str = "",
        interrupted: bool = False,
    ) -> None:
        """Stop the ranks: SIGTERM now, SIGKILL after `grace` (default: the configured
        grace period). The attempt ends in `final_state` unless it had already ended; `interrupted`: because
        its machine, a spot instance, is being reclaimed."""
        if final_state == S.ATTEMPT_STATE_UNSPECIFIED:
            final_state = S.ATTEMPT_STATE_CANCELLED
        grace = self.settings.grace_period if grace is None else grace
        self._build_stop.set()  # a run's environment being built: give up on it
        self._go.set()  # a gang node waiting for its start: it will not come
        self._stopped.set()
        if self._outcome is None:
            name = types_pb2.AttemptState.Name(final_state).removeprefix("ATTEMPT_STATE_")
            message = f"{name.lower()}: {reason}" if reason else name.lower()
            self._outcome = (final_state, 0, message)
            self._status.interrupted = interrupted and final_state == S.ATTEMPT_STATE_PREEMPTED
            self._system(SYSTEM_RANK, f"stopping ({message}), grace {grace:g}s")
        self._stop(grace)

    def start(self, order: agent_pb2.StartAttempt) -> None:
        """Every node of the gang is prepared: start the ranks, with rank 0 where the order says."""
        if self._start_order is None:
            self._start_order = order
        self._go.set()

    def kill(self) -> None:
        """SIGKILL every process of the attempt now."""
        self._build_stop.set()
        self._go.set()
        self._stopped.set()
        if self._outcome is None:
            self._outcome = (S.ATTEMPT_STATE_CANCELLED, 0, "killed")
        self._stop(0)

    # -- the life of the attempt -------------------------------------------------------

    async def run(self) -> agent_pb2.AttemptStatus:
        """Start the ranks, wait for them, report the end. Never raises for a rank's
        failure; cancelling the task kills the processes."""
        with structlog.contextvars.bound_contextvars(attempt=self.attempt_id, run=self.run_id):
            try:
                await self._start_and_wait()
            except asyncio.CancelledError:
                self._signal_all(signal.SIGKILL)
                if self._ranks:  # no time to wait here: kill, and reap what is already dead
                    kill_attempt_processes(self.attempt_id, self.assignment.node_rank, reap_timeout=0.2)
                raise
            except Exception as exc:  # a bug or an OS error in the agent itself
                log.exception("attempt failed inside the agent")
                message = f"agent error: {type(exc).__name__}: {exc}"
                self._system(SYSTEM_RANK, message)
                if self._outcome is None:
                    self._outcome = (S.ATTEMPT_STATE_FAILED, 1, message)
            finally:
                if self._kill_timer is not None:
                    self._kill_timer.cancel()
            await self._finish_pipes()
            if self._outcome is None:  # every rank exited 0: a cancel arriving during the uploads cannot undo it
                self._outcome = (S.ATTEMPT_STATE_SUCCEEDED, 0, "")
            self._status.ranks_exited = True  # during the uploads and the drain: no progress is due
            self._events.on_update(self.status())
            await self._ship_last()
            state, code, message = self._outcome or (S.ATTEMPT_STATE_SUCCEEDED, 0, "")
            self._final_metrics()  # so its last records go out with the last logs
            await self._events.drain_logs(self.attempt_id)
            self._set(state, exit_code=code, message=message)
            log.info(
                "attempt ended",
                state=types_pb2.AttemptState.Name(state),
                exit_code=code,
                reason=message,
            )
            self._done.set()
            return self.status()

    async def _start_and_wait(self) -> None:
        a = self.assignment
        if not _SAFE_ID.match(self.attempt_id) or ".." in self.attempt_id:
            self._fail(SYSTEM_RANK, 1, f"attempt id {self.attempt_id!r} is not a safe name")
            return
        self._set(S.ATTEMPT_STATE_PREPARING)
        dirs = AttemptDirs.of(self.settings.state_dir, self.attempt_id)
        await asyncio.to_thread(dirs.prepare, self.run_id)
        try:
            fetched = await self._unless_stopped(self._fetch_code(dirs))
            resume_from = await self._unless_stopped(self._resume_from(dirs))
        except PrepareError as exc:
            self._fail(SYSTEM_RANK, 1, str(exc))
            self._status.permanent = exc.permanent  # a hostile bundle fails the same way every time
            self._status.infrastructure = not exc.permanent  # e.g. the scheduler was unreachable: not the run's
            return
        if fetched is None or resume_from is None:  # stopped while preparing
            return
        cwd, requirements = fetched
        self._metrics = MetricsTail(dirs.metrics, self._clock)
        command = list(a.spec.command)
        procs = max(1, a.procs_per_node)
        if not command:
            self._fail(SYSTEM_RANK, EXIT_NOT_FOUND, "the run's command is empty")
            return
        venv = None
        if requirements:
            python = await self._build_env(requirements)
            if python is None or self._outcome is not None:  # failed, or cancelled while building
                return
            venv = python.parent.parent
        master_addr = a.master_addr or ("127.0.0.1" if a.nodes <= 1 else self.settings.address)
        with reserved_port(a.master_port) as master_port:
            if a.wait_for_start:
                master = await self._wait_for_gang(master_port if a.node_rank == 0 else 0)
                if master is None:
                    return
                master_addr, master_port = master
        base_env = os.environ if self.settings.base_env is None else self.settings.base_env
        for local_rank in range(procs):
            if self._outcome is not None:  # cancelled while starting
                break
            rank = a.node_rank * procs + local_rank
            env = rank_env(
                a,
                local_rank=local_rank,
                dirs=dirs,
                master_addr=master_addr,
                master_port=master_port,
                base_env=base_env,
                venv=venv,
                resume_from=resume_from,
            )
            try:
                proc, transport, exited = await spawn(command, cwd=cwd, env=env)
            except (OSError, ValueError) as exc:  # ValueError: a NUL byte in argv or env
                code = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_EXECUTE
                self._fail(rank, code, f"rank {rank} could not start {command[0]!r}: {exc}")
                break
            self._ranks.append(_Rank(rank, local_rank, proc, transport, exited))
            self._read_output(self._ranks[-1])
            log.debug("rank started", rank=rank, pid=proc.pid)
        if self._outcome is not None:
            self._stop(self.settings.grace_period, resignal=True)
        else:
            self._set(S.ATTEMPT_STATE_RUNNING)
        self._shipper = self._checkpoint_shipper(dirs)
        shipping = asyncio.create_task(self._shipper.run()) if self._shipper is not None else None
        try:
            await self._wait_ranks()
        finally:
            if shipping is not None:
                shipping.cancel()
                await asyncio.gather(shipping, return_exceptions=True)

    async def _unless_stopped(self, step: Awaitable[T]) -> T | None:
        """`step`'s result, or None when the attempt is stopped first (the step is cancelled: a long download
        must not hold the machine, or the agent's shutdown, until it completes)."""
        task = asyncio.ensure_future(step)
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return None if task.cancelled() else task.result()

    async def _fetch_code(self, dirs: AttemptDirs) -> tuple[Path, list[str]]:
        """The folder the ranks start in (the run's code bundle, extracted, or an empty folder) and the
        requirements to build (the spec's, else the bundle's requirements.txt)."""
        a = self.assignment
        requirements = list(a.spec.requirements)
        if not a.spec.code_digest:
            return dirs.work, requirements
        if self.settings.artifacts is None:
            raise PrepareError(
                "this agent is not connected to an artifact store: it cannot fetch code", permanent=False
            )
        cache = self.settings.bundle_dir or self.settings.state_dir / "bundles"
        cwd = await fetch_bundle(
            self.settings.artifacts,
            self.settings.metadata,
            a.spec.code_digest,
            cache,
            dirs.work,
            workdir=a.spec.workdir,
        )
        self._system(SYSTEM_RANK, f"code bundle {a.spec.code_digest[:19]} extracted")
        if not requirements:
            requirements = await asyncio.to_thread(bundle_requirements, dirs.work)
        return cwd, requirements

    async def _resume_from(self, dirs: AttemptDirs) -> str:
        """What GRIDLAB_RESUME_FROM says: the checkpoint the scheduler chose (downloaded from its store); else,
        on an agent with no artifact store, for a one-node run, the newest one an earlier attempt left on this
        machine; "" to start fresh.

        An agent with a store never resumes from a local checkpoint the scheduler did not choose: one that was
        never recorded may follow log lines that were never delivered (the agent died holding them, see
        `logfence`), and a resume from it would skip them for good."""
        a = self.assignment
        if a.resume_from:
            return a.resume_from
        if a.resume_files and self.settings.artifacts is not None:
            # Outside GRIDLAB_CHECKPOINT_DIR, so the shipper does not upload it again as this attempt's.
            path = await restore_checkpoint(self.settings.artifacts, self.settings.metadata, a, dirs.root / "resume")
            if path is not None:
                step = f", step {a.resume_step}" if a.resume_step >= 0 else ""
                self._system(
                    SYSTEM_RANK,
                    f"resuming from checkpoint {a.resume_name} (attempt {a.resume_attempt_number}{step}), "
                    "downloaded from the scheduler",
                )
                return str(path)
        if a.nodes > 1 or self.settings.artifacts is not None:  # (other nodes could not read this machine's file)
            return ""
        newest = await asyncio.to_thread(newest_checkpoint, self.settings.state_dir, self.run_id)
        if newest is None:
            return ""
        # Hard-linked into this attempt: the earlier attempt may still be stopping and rotate it away.
        path = await asyncio.to_thread(_link_copy, newest, dirs.root / "resume" / newest.name)
        self._system(SYSTEM_RANK, f"resuming from {newest} (the newest checkpoint of an earlier attempt)")
        return str(path)

    def _checkpoint_shipper(self, dirs: AttemptDirs) -> CheckpointShipper | None:
        if self.settings.artifacts is None:
            return None
        return CheckpointShipper(
            self.settings.artifacts,
            self.settings.metadata,
            agent_name=self.settings.agent_name,
            attempt_id=self.attempt_id,
            node_rank=self.assignment.node_rank,
            checkpoint_dir=dirs.checkpoints,
            step=self._step,
            poll=self.settings.checkpoint_poll,
            note=lambda text: self._system(SYSTEM_RANK, text),
            gate=self.settings.upload_gate,
            fence=self._fence,
        )

    def _step(self) -> int:
        """The run's last step as its metrics file says now; -1 when unknown."""
        if self._metrics is None:
            return -1
        try:
            self._metrics.poll()
        except Exception:  # the user's file: reported by status(), never fatal here
            return self._metrics.last_step
        return self._metrics.last_step

    async def _ship_last(self) -> None:
        """After the ranks exited, before the end is reported: the checkpoints written since the last scan (a
        preempted run's preempted.ckpt), and the files of GRIDLAB_ARTIFACT_DIR."""
        if self._shipper is None or self.settings.artifacts is None:
            return
        await self._shipper.flush()
        await upload_artifacts(
            self.settings.artifacts,
            self.settings.metadata,
            self.settings.agent_name,
            self.attempt_id,
            self.assignment.node_rank,
            AttemptDirs.of(self.settings.state_dir, self.attempt_id).artifacts,
            lambda text: self._system(SYSTEM_RANK, text),
            gate=self.settings.upload_gate,
        )

    async def _wait_for_gang(self, port: int) -> tuple[str, int] | None:
        """A node of a multi-node gang: report that it is prepared (node 0 with the port it reserved for the
        rendezvous) and wait for the scheduler's order to start, which comes once every node is. None when the
        attempt was stopped meanwhile."""
        self._status.prepared = True
        self._status.master_port = port
        self._set(S.ATTEMPT_STATE_PREPARING)
        self._system(SYSTEM_RANK, f"prepared; waiting for the other {self.assignment.nodes - 1} node(s) of the gang")
        await self._go.wait()
        order = self._start_order
        if self._outcome is not None or order is None:
            return None
        return order.master_addr or self.assignment.master_addr, order.master_port

    async def _build_env(self, requirements: list[str]) -> Path | None:
        """The run's environment (built, or reused from the cache); its build log goes to the run's logs.
        None when it could not be built: the attempt has failed with pip's error."""
        cache = self.settings.env_cache
        if cache is None:
            self._fail(SYSTEM_RANK, 1, "this agent builds no environments (no env cache): drop `requirements`")
            return None
        loop = asyncio.get_running_loop()

        def log_line(text: str) -> None:  # called from the build thread
            loop.call_soon_threadsafe(self._system, SYSTEM_RANK, text)

        try:
            return await asyncio.to_thread(
                cache.ensure, requirements, log=log_line, pip_args=self.settings.pip_args, stop=self._build_stop
            )
        except asyncio.CancelledError:
            self._build_stop.set()  # the thread cannot be cancelled: it kills pip and ends by itself
            raise
        except (EnvBuildError, ValueError) as exc:
            self._fail(SYSTEM_RANK, 1, f"environment for the run's requirements: {exc}")
            if not isinstance(exc, BuildCancelled):
                self._status.permanent = True  # retrying would fail the same way
            return None

    def _read_output(self, r: _Rank) -> None:
        for fd, reader, stream in (
            (1, r.proc.stdout, types_pb2.LOG_STREAM_STDOUT),
            (2, r.proc.stderr, types_pb2.LOG_STREAM_STDERR),
        ):
            if reader is not None:
                position = self._fence.add(reader, r.transport.get_pipe_transport(fd))
                r.readers.append(asyncio.create_task(self._pump(r.rank, stream, position)))

    async def _pump(self, rank: int, stream: types_pb2.LogStream, position: PipeCount) -> None:
        """A rank's pipe to EOF: each read's complete lines go out as one batch (a LogLine with count); a
        busy pipe is read every 2 ms, so a rank writing line by line still makes big batches. `position`
        counts what was read, for the checkpoints' fence."""

        def emit(text: str, count: int) -> None:
            self._events.on_log(self._log.batch(rank, stream, text, count))

        def consumed(n: int) -> None:
            position.consumed += n

        pipe = position.transport if isinstance(position.transport, asyncio.ReadTransport) else None
        try:
            await pump_batches(position.reader, emit, gather=0.002, pipe=pipe, consumed=consumed)
        finally:
            position.ended = True

    async def _wait_ranks(self) -> None:
        waits: dict[asyncio.Future[None], _Rank] = {r.exited: r for r in self._ranks}
        pending = set(waits)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: waits[f].rank):
                r = waits[fut]
                returncode = r.returncode = r.transport.get_returncode()
                log.debug("rank exited", rank=r.rank, returncode=returncode)
                if returncode != 0 and returncode is not None and self._outcome is None:
                    code, message = exit_description(r.rank, returncode)
                    self._fail(r.rank, code, message)
                    if pending:
                        self._stop(self.settings.grace_period)

    async def _finish_pipes(self) -> None:
        """Kill whatever is left of the attempt: the process groups, then every process
        carrying the attempt's id (a stray that left the group or was re-parented), and
        read the pipes to EOF, within a bound (a process we could not kill may hold them)."""
        self._signal_all(signal.SIGKILL)
        alive = [r.exited for r in self._ranks if not r.exited.done()]
        if alive:  # only after an error inside the agent
            await asyncio.wait(alive, timeout=self.settings.pipe_eof_timeout)
        if self._ranks:
            try:
                await asyncio.to_thread(kill_attempt_processes, self.attempt_id, self.assignment.node_rank)
            except Exception:  # best effort: never let it cost the attempt its report
                log.exception("could not sweep the attempt's leftover processes")
        readers = [t for r in self._ranks for t in r.readers]
        if not readers:
            return
        _, late = await asyncio.wait(readers, timeout=self.settings.pipe_eof_timeout)
        for task in late:
            task.cancel()
        for r in self._ranks:
            if any(t in late for t in r.readers):
                r.transport.close()  # let go of the pipes the stray holds
        if late:
            self._system(SYSTEM_RANK, "output still open after the ranks ended; stopped reading")
            await asyncio.gather(*late, return_exceptions=True)

    # -- helpers -------------------------------------------------------------------------

    def _fail(self, rank: int, code: int, message: str) -> None:
        """Record a failure if nothing decided the outcome yet (the first one wins)."""
        self._system(rank, message)
        if self._outcome is None:
            self._outcome = (S.ATTEMPT_STATE_FAILED, code, message)

    def _system(self, rank: int, text: str) -> None:
        self._events.on_log(self._log.line(rank, types_pb2.LOG_STREAM_SYSTEM, text))

    def _set(self, state: types_pb2.AttemptState, *, exit_code: int = 0, message: str = "") -> None:
        self._status.state = state
        self._status.exit_code = exit_code
        self._status.message = message
        self._status.time.CopyFrom(ts(self._clock()))
        self._events.on_update(self.status())

    def _stop(self, grace: float, *, resignal: bool = False) -> None:
        """SIGTERM the ranks now and SIGKILL them at now+grace; a later order with an
        earlier deadline moves the SIGKILL up."""
        loop = asyncio.get_running_loop()
        grace = max(0.0, grace)
        deadline = loop.time() + grace
        first = self._kill_at is None
        if first or resignal:
            self._signal_all(signal.SIGTERM)
        if self._kill_at is not None and self._kill_at <= deadline:
            return
        self._kill_at = deadline
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if grace == 0:
            self._escalate()
        else:
            self._kill_timer = loop.call_later(grace, self._escalate)

    def _escalate(self) -> None:
        if any(r.returncode is None and r.proc.returncode is None for r in self._ranks):
            self._system(SYSTEM_RANK, "grace period over: sending SIGKILL")
        self._signal_all(signal.SIGKILL)

    def _signal_all(self, sig: signal.Signals) -> None:
        """Signal each rank's process group, and descendants that left it (best effort)."""
        for r in self._ranks:
            strays: list[psutil.Process] = []
            if r.proc.returncode is None:
                with contextlib.suppress(psutil.Error):
                    strays = psutil.Process(r.proc.pid).children(recursive=True)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(r.proc.pid, sig)
            for child in strays:
                with contextlib.suppress(psutil.Error, OSError):
                    if os.getpgid(child.pid) != r.proc.pid:
                        child.send_signal(sig)
