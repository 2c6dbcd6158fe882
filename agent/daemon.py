"""The agent's life: hold the control stream to the scheduler, run what it assigns.

    connect -> Hello -> Welcome -> { heartbeats, updates } out / { assign, cancel, release } in
       ^                                                   |
       '------ backoff with jitter <----- stream fails ----'   (attempts keep running)

The scheduler owns the desired state (assign, cancel, release) and the agent reports the
observed one. Nothing is lost while disconnected: each Hello lists every attempt the
agent still holds with its current state, so changes missed meanwhile arrive with it.
A refused token ends the agent (it will not fix itself); anything else is retried.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import random
import shlex
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import grpc
import grpc.aio
import structlog

from gridlab import __version__
from gridlab.agent.envcache import EnvCache
from gridlab.agent.inventory import InventoryCollector
from gridlab.agent.launcher import Attempt, LaunchSettings
from gridlab.agent.logship import LogShipper, status_code
from gridlab.agent.reaper import reap_orphans
from gridlab.agent.spotwatch import Notice, notice_url, watch
from gridlab.common import auth, tls
from gridlab.common.config import AgentConfig
from gridlab.common.grpcopts import AGENT_CHANNEL_OPTIONS
from gridlab.common.timeutil import from_duration
from gridlab.v1 import agent_pb2, agent_pb2_grpc, artifacts_pb2_grpc, types_pb2

log = structlog.get_logger("gridlab.agent")

EXIT_OK = 0
EXIT_CRASHED = 1
EXIT_REFUSED = 3  # the scheduler refused our token: retrying cannot help
RELEASED_MEMORY = 10_000  # released attempt ids remembered, so a stale Assignment is ignored
FATAL_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
DEFAULT_HEARTBEAT = 5.0
WELCOME_TIMEOUT = 30.0
DRAIN_TIMEOUT = 30.0  # longest stall (no line acknowledged) while draining an attempt's logs before its end
SHUTDOWN_DRAIN_TIMEOUT = 3.0  # the same wait while the agent itself is stopping
FINAL_FLUSH_TIMEOUT = 10.0  # at exit, for the last updates to reach the scheduler


class ProtocolError(Exception):
    """The scheduler said something out of turn; reconnecting starts over cleanly."""


class Agent:
    """The agent daemon. `run()` until `request_stop()`; its own attempts are `attempts`.

    It is also the `AttemptEvents` sink of its attempts: their lines go to the log
    shipper, their updates onto the control stream when one is up.
    """

    def __init__(
        self,
        config: AgentConfig,
        token: str,
        *,
        inventory: InventoryCollector | None = None,
        base_env: Mapping[str, str] | None = None,
        version: str = __version__,
        drain_timeout: float = DRAIN_TIMEOUT,
    ) -> None:
        self.config = config
        self.version = version
        self.drain_timeout = drain_timeout
        self._metadata = auth.metadata(token)
        # Read now: a bad certificate file is a configuration error at start, not a failing reconnect loop.
        self._credentials = tls.channel_credentials(config.tls_ca, config.tls_cert, config.tls_key)
        self.inventory = inventory or InventoryCollector(
            agent_name=config.name, state_dir=config.state_dir, address=config.address
        )
        state_dir = self._state_dir()
        self.launch = LaunchSettings(
            state_dir=state_dir,
            grace_period=config.grace_period,
            address=self.inventory.address,
            base_env=base_env,
            env_cache=EnvCache(Path(config.env_dir) if config.env_dir else state_dir / "envs"),
            pip_args=tuple(shlex.split(config.pip_args)),
            metadata=self._metadata,
            agent_name=config.name,
            checkpoint_poll=config.checkpoint_poll,
        )
        # A backlog past the memory cap spills to disk rather than being dropped. A previous agent's spill is
        # of attempts this one does not hold: it is removed.
        spill = state_dir / "logspill"
        shutil.rmtree(spill, ignore_errors=True)
        self.shipper = LogShipper(self._push_logs, spill_dir=spill)
        self.attempts: dict[str, Attempt] = {}
        self._released: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._tasks: dict[str, asyncio.Task[agent_pb2.AttemptStatus]] = {}
        self.agent_id = ""
        self.connected = asyncio.Event()  # a Welcome was received on the current stream
        self._outbox: asyncio.Queue[agent_pb2.AgentMessage] | None = None
        self._call: grpc.aio.StreamStreamCall | None = None
        self._stub: agent_pb2_grpc.AgentGatewayAsyncStub | None = None
        self._stop = asyncio.Event()
        self._notice: Notice | None = None  # the cloud's reclaim notice for this spot machine, once it came
        self._stopping = False
        self._closing = False  # stopping, and every attempt has ended
        self._session_welcomed = False
        self.heartbeat_interval = DEFAULT_HEARTBEAT  # the scheduler's call: its Welcome, then any Cadence
        self._cadence_changed = asyncio.Event()

    def _state_dir(self) -> Path:
        path = Path(self.config.state_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- lifecycle -----------------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: stop the attempts within their grace period, then exit. A second
        call (a second Ctrl-C) kills them at once."""
        if self._stop.is_set():
            log.warning("second stop request: killing attempts now")
            for attempt in self.attempts.values():
                attempt.kill()
        self._stop.set()

    def spot_notice(self, notice: Notice) -> None:
        """The cloud takes this machine back soon: stop as on SIGTERM, the attempts reported as interrupted."""
        self._notice = notice
        if not self._stop.is_set():
            self.request_stop()

    def _stop_reason(self) -> tuple[str, bool]:
        """Why the attempts stop as the agent stops, and whether that is a spot interruption: a notice came, or
        a spot machine got SIGTERM (how a reclaim ends when no notice was watched for)."""
        if self._notice is not None:
            return self._notice.describe(), True
        if self.config.preemptible:
            return "spot interruption: the machine is stopping", True
        return "agent shutting down", False

    async def run(self) -> int:
        """Serve until stopped (EXIT_OK) or refused by the scheduler (EXIT_REFUSED)."""
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(self.config.scheduler, options=AGENT_CHANNEL_OPTIONS)
        else:
            channel = grpc.aio.secure_channel(self.config.scheduler, self._credentials, options=AGENT_CHANNEL_OPTIONS)
        # The generated stub's overloads cannot tell an aio channel apart; it is the async stub.
        self._stub = cast("agent_pb2_grpc.AgentGatewayAsyncStub", agent_pb2_grpc.AgentGatewayStub(channel))
        self.launch.artifacts = cast("artifacts_pb2_grpc.ArtifactsAsyncStub", artifacts_pb2_grpc.ArtifactsStub(channel))
        shipper = asyncio.create_task(self.shipper.run(), name="log-shipper")
        connection = asyncio.create_task(self._connection_loop(), name="connection")
        stop = asyncio.create_task(self._stop.wait())
        url = notice_url(self.config.spot_notice_url)
        spot = asyncio.create_task(watch(url, self.config.spot_poll, self.spot_notice)) if url else None
        log.info("agent starting", scheduler=self.config.scheduler, version=self.version)
        code = EXIT_OK
        try:
            await asyncio.wait({connection, stop}, return_when=asyncio.FIRST_COMPLETED)
            if connection.done():
                try:
                    code = connection.result()
                except Exception:  # a bug: still stop the attempts before leaving
                    log.exception("connection loop crashed")
                    code = EXIT_CRASHED
            await self._shutdown()
        finally:
            tasks = [connection, stop, shipper] + ([spot] if spot is not None else [])
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await channel.close(grace=None)
            await asyncio.to_thread(self.inventory.close)
        log.info("agent stopped", exit_code=code)
        return code

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._outbox is not None:  # tell the scheduler first, so it places nothing new here
            self._outbox.put_nowait(self._heartbeat())
        live = [a for a in self.attempts.values() if not a.done]
        if live:
            log.info("stopping attempts", count=len(live), grace=self.config.grace_period)
        reason, interrupted = self._stop_reason()
        for attempt in live:
            attempt.cancel(types_pb2.ATTEMPT_STATE_PREEMPTED, reason=reason, interrupted=interrupted)
        # Not one snapshot: an assignment arriving meanwhile is preempted at once, and its
        # task must end (reporting PREEMPTED) before the stream is closed too.
        while pending := [task for task in self._tasks.values() if not task.done()]:
            await asyncio.wait(pending)
        # Every attempt has ended: no more heartbeats, so the outbox can drain to empty.
        self._closing = True
        outbox, call = self._outbox, self._call
        if outbox is not None and call is not None:  # let the last updates out, then say bye
            with contextlib.suppress(Exception):
                await asyncio.wait_for(outbox.join(), FINAL_FLUSH_TIMEOUT)
                await asyncio.wait_for(call.done_writing(), FINAL_FLUSH_TIMEOUT)
                # And wait for the scheduler to hang up: closing the channel at once could cancel the call
                # before the half-close (or the last updates) reached it.
                await asyncio.wait_for(call.code(), FINAL_FLUSH_TIMEOUT)

    # -- the control stream ---------------------------------------------------------------

    async def _connection_loop(self) -> int:
        delay = self.config.reconnect_min
        first_failure = True
        while True:
            try:
                await self._session()
                reason = "the scheduler closed the stream"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                code = status_code(exc)
                if code is None and self._call is not None and self._call.done():
                    code = await self._call.code()
                if code in FATAL_CODES:
                    log.error(
                        "the scheduler refused this agent; check its token",
                        reason=_describe(exc, code),
                        scheduler=self.config.scheduler,
                    )
                    return EXIT_REFUSED
                reason = _describe(exc, code)
                reason = tls.explain_failure(reason, address=self.config.scheduler, ca=self.config.tls_ca) or reason
            finally:
                self._call = None
            if self._session_welcomed:  # it worked for a while: start the backoff over
                delay = self.config.reconnect_min
            pause = random.uniform(self.config.reconnect_min, delay)  # noqa: S311 - jitter
            # Loud once per outage, quiet while the scheduler stays away.
            report = log.warning if self._session_welcomed or first_failure else log.info
            report("disconnected from the scheduler", reason=reason, retry_in=round(pause, 3))
            first_failure = False
            delay = min(delay * 2, self.config.reconnect_max)
            await asyncio.sleep(pause)

    async def _session(self) -> None:
        """One Connect stream, from Hello to its failure."""
        assert self._stub is not None  # noqa: S101 - set by run()
        self._session_welcomed = False
        outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
        self._outbox = outbox  # updates from now on queue here, after the Hello
        call = self._stub.Connect(metadata=self._metadata)
        self._call = call
        tasks: list[asyncio.Task[None]] = []
        try:
            inventory = await asyncio.to_thread(self.inventory.collect)
            hello = agent_pb2.Hello(
                name=self.config.name,
                pool=self.config.pool,
                labels=self.config.labels,
                inventory=inventory,
                attempts=[a.status() for a in self.attempts.values()],
                version=self.version,
                draining=self._stopping,
                preemptible=self.config.preemptible,
            )
            await call.write(agent_pb2.AgentMessage(hello=hello))
            first = await asyncio.wait_for(call.read(), WELCOME_TIMEOUT)
            if first is grpc.aio.EOF:
                raise ProtocolError("the scheduler closed the stream before its Welcome")
            if first.WhichOneof("msg") != "welcome":
                raise ProtocolError(f"expected a Welcome, got {first.WhichOneof('msg')}")
            welcome = first.welcome
            interval = self.heartbeat_interval = from_duration(welcome.heartbeat_interval) or DEFAULT_HEARTBEAT
            self.agent_id = welcome.agent_id
            structlog.contextvars.bind_contextvars(agent_id=welcome.agent_id)
            self._session_welcomed = True
            self.connected.set()
            self.shipper.kick()
            log.info(
                "connected to the scheduler",
                agent_id=welcome.agent_id,
                heartbeat_interval=interval,
                attempts=len(hello.attempts),
            )
            tasks = [
                asyncio.create_task(self._write_loop(call, outbox)),
                asyncio.create_task(self._heartbeat_loop(outbox)),
                asyncio.create_task(self._read_loop(call)),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            self.connected.clear()
            if self._outbox is outbox:
                self._outbox = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not call.done():
                call.cancel()

    async def _write_loop(self, call: grpc.aio.StreamStreamCall, outbox: asyncio.Queue[agent_pb2.AgentMessage]) -> None:
        """The only writer of the stream (grpc.aio writes must not overlap)."""
        while True:
            message = await outbox.get()
            try:
                await call.write(message)
            finally:
                outbox.task_done()

    async def _heartbeat_loop(self, outbox: asyncio.Queue[agent_pb2.AgentMessage]) -> None:
        while True:
            self._cadence_changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):  # a new cadence starts a new wait
                await asyncio.wait_for(self._cadence_changed.wait(), self.heartbeat_interval)
            reap_orphans()  # orphans that re-parented to the agent and exited by themselves
            inventory = await asyncio.to_thread(self.inventory.collect)
            if not self._closing:
                outbox.put_nowait(self._heartbeat(inventory))

    def _heartbeat(self, inventory: types_pb2.Inventory | None = None) -> agent_pb2.AgentMessage:
        beat = agent_pb2.Heartbeat(attempts=[a.status() for a in self.attempts.values()], draining=self._stopping)
        if inventory is not None:
            beat.inventory.CopyFrom(inventory)
        return agent_pb2.AgentMessage(heartbeat=beat)

    async def _read_loop(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            self.handle(message)

    # -- orders from the scheduler --------------------------------------------------------

    def handle(self, message: agent_pb2.SchedulerMessage) -> None:
        """Act on one scheduler message (public so tests can drive it without gRPC)."""
        kind = message.WhichOneof("msg")
        if kind == "assign":
            self._assign(message.assign)
        elif kind == "cancel":
            self._cancel(message.cancel)
        elif kind == "release":
            self._release(message.release.attempt_id)
        elif kind == "cadence":
            self.heartbeat_interval = from_duration(message.cadence.heartbeat_interval) or self.heartbeat_interval
            self._cadence_changed.set()
            log.info("heartbeat cadence changed", heartbeat_interval=self.heartbeat_interval)
        elif kind == "start":
            attempt = self.attempts.get(message.start.attempt_id)
            if attempt is not None:
                attempt.start(message.start)
        else:
            log.debug("ignoring scheduler message", kind=kind)

    def _assign(self, assignment: agent_pb2.Assignment) -> None:
        attempt_id = assignment.attempt_id
        if attempt_id in self.attempts or attempt_id in self._released:
            log.info("duplicate assignment ignored", attempt=attempt_id)
            return
        attempt = Attempt(assignment, self.launch, self)
        self.attempts[attempt_id] = attempt
        log.info(
            "attempt assigned",
            attempt=attempt_id,
            run=assignment.run_id,
            command=list(assignment.spec.command),
            gpus=list(assignment.gpu_uuids),
        )
        if self._stopping:  # too late to start anything: end it at once
            reason, interrupted = self._stop_reason()
            attempt.cancel(types_pb2.ATTEMPT_STATE_PREEMPTED, reason=reason, interrupted=interrupted)
        task = asyncio.create_task(attempt.run(), name=f"attempt-{attempt_id}")
        self._tasks[attempt_id] = task
        task.add_done_callback(functools.partial(self._attempt_task_done, attempt_id))

    def _attempt_task_done(self, attempt_id: str, task: asyncio.Task[agent_pb2.AttemptStatus]) -> None:
        if self._tasks.get(attempt_id) is task:
            del self._tasks[attempt_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("attempt task crashed", attempt=attempt_id, error=repr(task.exception()))

    def _cancel(self, order: agent_pb2.CancelAttempt) -> None:
        attempt = self.attempts.get(order.attempt_id)
        if attempt is None:
            log.info("cancel for an attempt not held, ignored", attempt=order.attempt_id)
            return
        if attempt.done:  # already over: repeat how it ended, so the scheduler can release it
            self.on_update(attempt.status())
            return
        # A grace that is set is meant as is (0: SIGKILL now, as `cancel --grace 0` asks);
        # only an unset one means the agent's configured grace period.
        grace = max(0.0, from_duration(order.grace)) if order.HasField("grace") else None
        log.info("cancelling attempt", attempt=order.attempt_id, reason=order.reason, grace=grace)
        attempt.cancel(order.final_state, grace, order.reason)

    def _release(self, attempt_id: str) -> None:
        attempt = self.attempts.pop(attempt_id, None)
        if attempt is None:
            return
        self._released[attempt_id] = None
        if len(self._released) > RELEASED_MEMORY:
            self._released.popitem(last=False)
        if not attempt.done:
            log.warning("released attempt still running; killing it", attempt=attempt_id)
            attempt.kill()
        log.info("attempt released", attempt=attempt_id)

    # -- AttemptEvents ---------------------------------------------------------------------

    def on_log(self, line: types_pb2.LogLine) -> None:
        self.shipper.add(line)

    def on_update(self, status: agent_pb2.AttemptStatus) -> None:
        if status.attempt_id not in self.attempts:  # released: the scheduler is done with it
            return
        if self._outbox is not None:
            self._outbox.put_nowait(agent_pb2.AgentMessage(update=status))

    async def drain_logs(self, attempt_id: str) -> None:
        """Wait for the attempt's lines to be acknowledged before its end is reported (a following
        client stops at the end). The bound is on *stalls*: while acknowledgements keep coming, a long
        backlog drains whole; `drain_timeout` without progress gives up. Once the agent is stopping,
        the bound is short and absolute, so a missing scheduler cannot hold up the exit."""
        start = progress_at = time.monotonic()
        pending = self.shipper.pending(attempt_id)
        while pending:
            if self._stopping:
                left = min(SHUTDOWN_DRAIN_TIMEOUT, self.drain_timeout) - (time.monotonic() - start)
            else:
                left = self.drain_timeout - (time.monotonic() - progress_at)
            if left <= 0:
                log.warning(
                    "logs not acknowledged in time; reporting the end anyway",
                    attempt=attempt_id,
                    unacked=self.shipper.pending(attempt_id),
                )
                return
            await self.shipper.wait_acked(attempt_id, min(left, 0.5))
            now_pending = self.shipper.pending(attempt_id)
            if now_pending < pending:
                progress_at = time.monotonic()
            pending = now_pending

    async def logs_settled(self, attempt_id: str, seqs: Mapping[int, int], timeout: float) -> bool:
        return await self.shipper.wait_settled(attempt_id, seqs, timeout)

    async def _push_logs(self, lines: list[types_pb2.LogLine]) -> None:
        assert self._stub is not None  # noqa: S101 - set by run()
        request = agent_pb2.PushLogsRequest(agent_name=self.config.name, lines=lines)
        await self._stub.PushLogs(iter([request]), metadata=self._metadata, timeout=self.shipper.timeout)


def _describe(exc: BaseException, code: grpc.StatusCode | None) -> str:
    if code is None:
        return f"{type(exc).__name__}: {exc}"
    details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
    return f"{code.name}: {details}"
