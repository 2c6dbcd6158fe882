"""Simulated agents: N machines speaking the real AgentGateway protocol from one process.

Each simulated agent holds its own `Connect` stream (real gRPC, real messages, the agent
token in metadata) to a real scheduler, and does on each order what the real agent
(`agent/daemon.py`) would, without processes:

    Assignment   -> RUNNING (at once or after `start_delay`), then SUCCEEDED (exit 0) or
                    FAILED (per `exit_code`) after `run_time`
                    a gang node (wait_for_start): PREPARING prepared=True (node 0 with a
                    port), RUNNING only on StartAttempt
    CancelAttempt-> the order's final_state (CANCELLED when unset); an ended attempt
                    repeats its end, so the scheduler can release it
    ReleaseAttempt-> forgotten (a later duplicate Assignment for it is ignored)
    heartbeats   -> every `heartbeat_interval` (default: the Welcome's), listing every
                    held attempt, as the real agent batches them
    stream lost  -> reconnect with backoff; the Hello lists what the agent still holds

Everything runs on the caller's asyncio loop: two tasks per agent (the stream's reader,
which is the session itself, and its writer) and one timer per agent for heartbeats; a
run's start and end are timers too, so the work per message stays small (5,000 agents at
one heartbeat a second cost this process about half a core). Streams share channels
(`streams_per_channel`, one TCP connection each), which gRPC multiplexes; a real agent has
a connection of its own, which costs the server more per message (a trivial servicer:
about 0.57 against 0.40 cores for 5,000 messages a second), so measure per-message costs
with 1. With thousands of agents, call `gc.freeze()` after `start()`: full collections over
their objects otherwise pause the loop for 0.1 to 0.5 s.

For tests and benchmarks, every attempt an agent receives is recorded (`AttemptRecord`:
when its Assignment arrived, on which GPUs, when it ended and was released), with an
asyncio event per end and per release:

    async with SimAgents(cluster.address, token, 20) as sim:
        ... submit runs ...
        await sim.wait_released(200)
        assert not sim.gpu_overlaps()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from gridlab.common import auth
from gridlab.common.grpcopts import AGENT_CHANNEL_OPTIONS
from gridlab.v1 import agent_pb2, agent_pb2_grpc, types_pb2

GIB = 1024**3
S = types_pb2  # AttemptState values: S.ATTEMPT_STATE_RUNNING ...
ENDED = frozenset(
    {
        S.ATTEMPT_STATE_SUCCEEDED,
        S.ATTEMPT_STATE_FAILED,
        S.ATTEMPT_STATE_CANCELLED,
        S.ATTEMPT_STATE_LOST,
        S.ATTEMPT_STATE_PREEMPTED,
    }
)
RELEASED_MEMORY = 10_000  # per agent, as the real agent: released ids whose late duplicates are ignored
WELCOME_TIMEOUT = 30.0
GANG_PORT_BASE = 29_500


@dataclass(frozen=True)
class Machine:
    """A kind of simulated machine: its GPUs as (model, GiB), cores and RAM, and its topology: groups of
    GPU indices joined by NVLink, and groups behind one PCIe switch."""

    kind: str
    gpus: tuple[tuple[str, float], ...] = ()
    cpus: float = 16.0
    memory_gb: float = 64.0
    nvlink: tuple[tuple[int, ...], ...] = ()
    pcie_switches: tuple[tuple[int, ...], ...] = ()


A100_X8 = Machine("a100x8", (("A100", 80.0),) * 8, cpus=128, memory_gb=1024, nvlink=(tuple(range(8)),))
RTX3090_X4 = Machine("rtx3090x4", (("RTX3090", 24.0),) * 4, cpus=32, memory_gb=128, pcie_switches=((0, 1), (2, 3)))
WORKSTATION = Machine("workstation", (("A6000", 48.0), ("RTX3090", 24.0), ("RTX3090", 24.0)), cpus=24, memory_gb=128)
CPU_BOX = Machine("cpu", (), cpus=16, memory_gb=64)
# (machine, weight): a lab's mix, about 3.4 GPUs per machine.
DEFAULT_MIX: tuple[tuple[Machine, float], ...] = ((A100_X8, 1), (RTX3090_X4, 4), (WORKSTATION, 3), (CPU_BOX, 2))


def draw_machines(count: int, mix: Sequence[tuple[Machine, float]] = DEFAULT_MIX, seed: int = 0) -> list[Machine]:
    """`count` machines drawn from `mix` by weight, reproducibly."""
    rng = random.Random(seed)
    kinds = [m for m, _ in mix]
    weights = [w for _, w in mix]
    return rng.choices(kinds, weights=weights, k=count)


def inventory_of(name: str, machine: Machine) -> types_pb2.Inventory:
    uuids = [f"GPU-sim-{name}-{i}" for i in range(len(machine.gpus))]

    def peers(groups: tuple[tuple[int, ...], ...], i: int) -> list[str]:
        return [uuids[j] for group in groups if i in group for j in group if j != i]

    return types_pb2.Inventory(
        hostname=name,
        address="127.0.0.1",
        gpus=[
            types_pb2.Gpu(
                index=i,
                uuid=uuids[i],
                model=model,
                memory_total_bytes=int(gb * GIB),
                nvlink_peers=peers(machine.nvlink, i),
                pcie_switch_peers=peers(machine.pcie_switches, i),
            )
            for i, (model, gb) in enumerate(machine.gpus)
        ],
        cpus=machine.cpus,
        memory_bytes=int(machine.memory_gb * GIB),
        disk_free_bytes=500 * GIB,
        fake_gpus=True,
    )


@dataclass(eq=False)
class AttemptRecord:
    """One attempt as one simulated agent saw it. Wall times (`time.time()`, comparable with
    another process's on this machine) for latency; monotonic ones for ordering."""

    attempt_id: str
    run_id: str
    agent: str
    node_rank: int
    nodes: int
    gpu_uuids: tuple[str, ...]
    assignment: agent_pb2.Assignment
    assigned_at: float  # wall clock, when the Assignment arrived
    assigned_mono: float
    running_mono: float | None = None
    ended_mono: float | None = None  # when its end was reported (or it was released still live)
    released_mono: float | None = None
    state: int = S.ATTEMPT_STATE_ASSIGNED
    exit_code: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def state_name(self) -> str:
        return types_pb2.AttemptState.Name(self.state).removeprefix("ATTEMPT_STATE_")


Duration = float | Callable[[agent_pb2.Assignment], float]


def _value(setting: Duration, assignment: agent_pb2.Assignment) -> float:
    return setting(assignment) if callable(setting) else setting


class _Held:
    """An attempt a simulated agent holds: its status as last reported, and its pending timer."""

    __slots__ = ("record", "status", "timer", "started")

    def __init__(self, record: AttemptRecord) -> None:
        self.record = record
        self.status = agent_pb2.AttemptStatus(
            attempt_id=record.attempt_id, run_id=record.run_id, state=S.ATTEMPT_STATE_ASSIGNED
        )
        self.timer: asyncio.TimerHandle | None = None
        self.started = False


class _Outbox:
    """The session's messages to the scheduler: a deque and one waiter (lighter than asyncio.Queue)."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: collections.deque[agent_pb2.AgentMessage] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None

    def put(self, message: agent_pb2.AgentMessage) -> None:
        self.items.append(message)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> agent_pb2.AgentMessage:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()


class SimAgent:
    """One simulated machine. Driven by `SimAgents`; see the module docstring. Set `draining` and its next
    heartbeat says so; `finish` ends a held attempt by hand."""

    def __init__(self, owner: SimAgents, name: str, machine: Machine, pool: str, labels: Mapping[str, str]) -> None:
        self.owner = owner
        self.name = name
        self.machine = machine
        self.pool = pool
        self.labels = dict(labels)
        self.inventory = inventory_of(name, machine)
        self.gpu_uuids = tuple(g.uuid for g in self.inventory.gpus)
        self.held: dict[str, _Held] = {}
        self._released: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.agent_id = ""
        self.welcomed = asyncio.Event()
        self.connects = 0  # Welcomes received
        self.failures: list[str] = []  # why each stream ended, when it ended badly
        self.heartbeats_sent = 0
        self.cadences = 0  # Cadence messages heeded
        self.interval = 0.0  # seconds between its heartbeats now
        self.draining = False
        self._stub: agent_pb2_grpc.AgentGatewayStub | None = None
        self._outbox: _Outbox | None = None
        self._call: Any = None
        self._beat: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, stub: agent_pb2_grpc.AgentGatewayStub) -> None:
        self._stub = stub
        self._stopped = False
        self.welcomed.clear()
        self._task = asyncio.get_running_loop().create_task(self._life(), name=f"sim-{self.name}")

    async def stop(self) -> None:
        """Close the stream and stop, keeping what it holds (a later `start` reports it in its Hello)."""
        self._stopped = True
        call = self._call
        if call is not None:
            call.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self._cancel_beat()
        if call is not None:  # its status in, gRPC's own task for the call can end too
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(call.code(), 5)

    @property
    def connected(self) -> bool:
        return self._outbox is not None

    async def _life(self) -> None:
        delay = self.owner.reconnect_min
        while not self._stopped:
            try:
                await self._session()
                reason = "the scheduler closed the stream"
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
                if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    self.failures.append(reason)
                    return
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
            self.failures.append(reason)
            if self._stopped or not self.owner.reconnect:
                return
            if self.welcomed.is_set():
                delay = self.owner.reconnect_min
            self.welcomed.clear()
            await asyncio.sleep(random.uniform(self.owner.reconnect_min, delay))  # noqa: S311 - jitter
            delay = min(delay * 2, self.owner.reconnect_max)

    async def _session(self) -> None:
        assert self._stub is not None
        call = self._stub.Connect(metadata=self.owner.metadata)
        self._call = call
        writer: asyncio.Task[None] | None = None
        try:
            hello = agent_pb2.Hello(
                name=self.name,
                pool=self.pool,
                labels=self.labels,
                inventory=self.inventory,
                attempts=[h.status for h in self.held.values()],
                version="sim",
                draining=self.draining,
            )
            await call.write(agent_pb2.AgentMessage(hello=hello))
            first = await asyncio.wait_for(call.read(), WELCOME_TIMEOUT)
            if first is grpc.aio.EOF:
                raise ConnectionError("the scheduler closed the stream before its Welcome")
            if first.WhichOneof("msg") != "welcome":
                raise ConnectionError(f"expected a Welcome, got {first.WhichOneof('msg')}")
            welcome = first.welcome
            self.agent_id = welcome.agent_id
            interval = self.owner.heartbeat_interval
            if interval is None:
                interval = welcome.heartbeat_interval.ToNanoseconds() / 1e9 or 5.0
            outbox = _Outbox()
            self._outbox = outbox
            writer = asyncio.get_running_loop().create_task(self._write_loop(call, outbox))
            self.connects += 1
            self.welcomed.set()
            self.owner._on_welcome(self)
            self.interval = interval
            self._arm_beat(interval, first=True)
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    return
                self.owner.messages_in += 1
                self._handle(message)
        finally:
            self._outbox = None
            self._cancel_beat()
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
            call.cancel()
            self._call = None

    async def _write_loop(self, call: Any, outbox: _Outbox) -> None:
        """The stream's only writer (grpc.aio writes must not overlap)."""
        owner = self.owner
        while True:
            message = await outbox.get()
            await call.write(message)
            owner.messages_out += 1

    def _send(self, message: agent_pb2.AgentMessage) -> None:
        if self._outbox is not None:  # else: the next Hello carries the attempt's state
            self._outbox.put(message)

    # -- heartbeats ------------------------------------------------------------------------

    def _arm_beat(self, interval: float, *, first: bool = False) -> None:
        loop = asyncio.get_running_loop()
        # The first beat at a random phase, so thousands of agents do not beat in step.
        due = loop.time() + (random.uniform(0, interval) if first else interval)  # noqa: S311
        self._beat = loop.call_at(due, self._heartbeat, interval, due)

    def _cancel_beat(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None

    def _heartbeat(self, interval: float, due: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        owner = self.owner
        owner.heartbeat_lag_max = max(owner.heartbeat_lag_max, now - due)
        beat = agent_pb2.Heartbeat(attempts=[h.status for h in self.held.values()], draining=self.draining)
        if owner.heartbeat_inventory:
            beat.inventory.CopyFrom(self.inventory)
        self._send(agent_pb2.AgentMessage(heartbeat=beat))
        self.heartbeats_sent += 1
        owner.heartbeats_sent += 1
        # The next beat keeps the phase (no drift); a beat more than one interval late is skipped.
        nxt = due + interval
        if nxt <= now:
            nxt = now + interval
        self._beat = loop.call_at(nxt, self._heartbeat, interval, nxt)

    # -- orders ------------------------------------------------------------------------------

    def _handle(self, message: agent_pb2.SchedulerMessage) -> None:
        kind = message.WhichOneof("msg")
        if kind == "assign":
            self._assign(message.assign)
        elif kind == "cancel":
            self._cancel(message.cancel)
        elif kind == "release":
            self._release(message.release.attempt_id)
        elif kind == "cadence":
            if self.owner.heartbeat_interval is None:  # else the harness forces its own interval
                self.cadences += 1
                self.owner.cadences += 1
                self._cancel_beat()
                self.interval = message.cadence.heartbeat_interval.ToNanoseconds() / 1e9 or 5.0
                self._arm_beat(self.interval, first=True)
        elif kind == "start":
            held = self.held.get(message.start.attempt_id)
            if held is not None and not held.started and held.status.state not in ENDED:
                self._begin(held)

    def _assign(self, a: agent_pb2.Assignment) -> None:
        if a.attempt_id in self.held or a.attempt_id in self._released:
            return  # a duplicate, as after a reconnect
        owner = self.owner
        record = AttemptRecord(
            attempt_id=a.attempt_id,
            run_id=a.run_id,
            agent=self.name,
            node_rank=a.node_rank,
            nodes=a.nodes or 1,
            gpu_uuids=tuple(a.gpu_uuids),
            assignment=a,
            assigned_at=time.time(),
            assigned_mono=time.monotonic(),
        )
        held = _Held(record)
        self.held[a.attempt_id] = held
        owner._on_assign(record)
        loop = asyncio.get_running_loop()
        if a.wait_for_start:
            delay = _value(owner.prepare_time, a)
            if delay > 0:
                held.timer = loop.call_later(delay, self._prepared, held)
            else:
                self._prepared(held)
            return
        delay = _value(owner.start_delay, a)
        if delay > 0:
            held.timer = loop.call_later(delay, self._begin, held)
        else:
            self._begin(held)

    def _prepared(self, held: _Held) -> None:
        held.timer = None
        a = held.record.assignment
        held.status.state = S.ATTEMPT_STATE_PREPARING
        held.status.prepared = True
        if a.node_rank == 0:
            held.status.master_port = GANG_PORT_BASE + (hash(a.attempt_id) % 10_000)
        self._update(held)

    def _begin(self, held: _Held) -> None:
        """The ranks are started: RUNNING now, the end after the run's time."""
        held.timer = None
        held.started = True
        owner = self.owner
        a = held.record.assignment
        held.status.state = S.ATTEMPT_STATE_RUNNING
        held.record.state = S.ATTEMPT_STATE_RUNNING
        held.record.running_mono = time.monotonic()
        self._update(held)
        code = owner.exit_code(a) if owner.exit_code is not None else 0
        delay = _value(owner.run_time, a)
        if math.isinf(delay):
            return  # until `finish` or a cancel
        if delay > 0:
            held.timer = asyncio.get_running_loop().call_later(delay, self._exit, held, code)
        else:
            self._exit(held, code)

    def _exit(self, held: _Held, code: int) -> None:
        held.timer = None
        state = S.ATTEMPT_STATE_SUCCEEDED if code == 0 else S.ATTEMPT_STATE_FAILED
        self._end(held, state, code, "" if code == 0 else f"rank 0 exited with {code}")

    def _end(self, held: _Held, state: int, code: int, message: str) -> None:
        if held.timer is not None:
            held.timer.cancel()
            held.timer = None
        held.status.state = state  # type: ignore[assignment]
        held.status.exit_code = code
        held.status.message = message
        record = held.record
        record.state = state
        record.exit_code = code
        record.ended_mono = time.monotonic()
        self._update(held)
        self.owner._on_end(record)

    def _update(self, held: _Held) -> None:
        status = agent_pb2.AttemptStatus()
        status.CopyFrom(held.status)
        self._send(agent_pb2.AgentMessage(update=status))

    def _cancel(self, order: agent_pb2.CancelAttempt) -> None:
        held = self.held.get(order.attempt_id)
        if held is None:
            return
        if held.status.state in ENDED:  # repeat how it ended, so the scheduler can release it
            self._update(held)
            return
        final = order.final_state or S.ATTEMPT_STATE_CANCELLED
        name = types_pb2.AttemptState.Name(final).removeprefix("ATTEMPT_STATE_").lower()
        self._end(held, final, 0, f"{name}: {order.reason}" if order.reason else name)

    def _release(self, attempt_id: str) -> None:
        held = self.held.pop(attempt_id, None)
        if held is None:
            return
        self._released[attempt_id] = None
        if len(self._released) > RELEASED_MEMORY:
            self._released.popitem(last=False)
        if held.timer is not None:
            held.timer.cancel()
            held.timer = None
        record = held.record
        now = time.monotonic()
        if record.ended_mono is None:  # released while live: the real agent kills it
            record.ended_mono = now
            record.state = S.ATTEMPT_STATE_CANCELLED
            record.ended.set()
        record.released_mono = now
        record.released.set()
        self.owner._on_release(record)

    # -- for tests ------------------------------------------------------------------------------

    def finish(self, attempt_id: str, exit_code: int = 0) -> None:
        """End a held attempt now (e.g. one started with run_time=inf) with this exit code."""
        held = self.held[attempt_id]
        if held.status.state in ENDED:
            return
        if not held.started:
            held.started = True
        self._exit(held, exit_code)


class SimAgents:
    """`count` simulated agents against the scheduler at `address`, on the running loop.

    Args:
        address: The scheduler's HOST:PORT.
        token: The agent join token (LocalCluster.agent_token_file).
        count: How many agents.
        machines: The machine of each agent; default: `count` drawn from `mix`.
        mix: (Machine, weight) pairs to draw from.
        name_prefix: Agents are named `<prefix>-<index>`.
        pool: Each agent's pool, or a function of (index, machine).
        labels: Each agent's labels, or a function of (index, machine).
        run_time: Seconds from RUNNING to the end, or a function of the Assignment (inf: until
            `SimAgent.finish` or a cancel).
        start_delay: Seconds from the Assignment to RUNNING (single-node attempts).
        prepare_time: Seconds from the Assignment to `prepared` (gang nodes).
        exit_code: A function of the Assignment giving the exit code (0: SUCCEEDED, else FAILED).
        heartbeat_interval: Seconds between heartbeats; None: what the Welcome says.
        heartbeat_inventory: Send the inventory in every heartbeat, as the real agent does.
        streams_per_channel: Agents sharing one channel (one TCP connection).
        connect_concurrency: Hellos in flight at once while starting.
        reconnect: Reconnect (with backoff) when a stream ends, as the real agent does.
    """

    def __init__(
        self,
        address: str,
        token: str,
        count: int,
        *,
        machines: Sequence[Machine] | None = None,
        mix: Sequence[tuple[Machine, float]] = DEFAULT_MIX,
        seed: int = 0,
        name_prefix: str = "sim",
        pool: str | Callable[[int, Machine], str] = "onprem",
        labels: Mapping[str, str] | Callable[[int, Machine], Mapping[str, str]] | None = None,
        run_time: Duration = 0.0,
        start_delay: Duration = 0.0,
        prepare_time: Duration = 0.0,
        exit_code: Callable[[agent_pb2.Assignment], int] | None = None,
        heartbeat_interval: float | None = None,
        heartbeat_inventory: bool = True,
        streams_per_channel: int = 500,
        connect_concurrency: int = 100,
        reconnect: bool = True,
        reconnect_min: float = 0.2,
        reconnect_max: float = 2.0,
    ) -> None:
        if machines is None:
            machines = draw_machines(count, mix, seed)
        if len(machines) != count:
            raise ValueError(f"{len(machines)} machines for {count} agents")
        self.address = address
        self.metadata = auth.metadata(token)
        self.run_time = run_time
        self.start_delay = start_delay
        self.prepare_time = prepare_time
        self.exit_code = exit_code
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_inventory = heartbeat_inventory
        self.streams_per_channel = max(1, streams_per_channel)
        self.connect_concurrency = max(1, connect_concurrency)
        self.reconnect = reconnect
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        width = max(4, len(str(count - 1)))
        self.agents: list[SimAgent] = []
        for i, machine in enumerate(machines):
            agent_pool = pool(i, machine) if callable(pool) else pool
            agent_labels = labels(i, machine) if callable(labels) else (labels or {})
            self.agents.append(SimAgent(self, f"{name_prefix}-{i:0{width}d}", machine, agent_pool, agent_labels))
        self.by_name = {a.name: a for a in self.agents}
        # What happened, for assertions and figures.
        self.attempts: dict[str, list[AttemptRecord]] = {}  # attempt id -> a record per node
        self.runs: dict[str, list[AttemptRecord]] = {}  # run id -> records, in arrival order
        self.assigned = 0
        self.ended = 0
        self.released = 0
        self.messages_in = 0
        self.messages_out = 0
        self.heartbeats_sent = 0
        self.cadences = 0
        self.heartbeat_lag_max = 0.0  # latest a heartbeat timer fired: the process was too busy
        self.on_assign: Callable[[AttemptRecord], None] | None = None
        self.on_release: Callable[[AttemptRecord], None] | None = None
        self._channels: list[grpc.aio.Channel] = []
        self._count_waiters: list[tuple[str, int, asyncio.Future[None]]] = []
        self._welcomed = 0
        self._tasks_before: set[asyncio.Task[Any]] = set()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, timeout: float = 120.0) -> None:
        """Connect every agent and wait until each has its Welcome."""
        self._tasks_before = set(asyncio.all_tasks())
        options = [*AGENT_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        groups = [
            self.agents[i : i + self.streams_per_channel] for i in range(0, len(self.agents), self.streams_per_channel)
        ]
        gate = asyncio.Semaphore(self.connect_concurrency)

        async def connect(agent: SimAgent, stub: agent_pb2_grpc.AgentGatewayStub) -> None:
            async with gate:
                agent.start(stub)
                assert agent._task is not None
                waiter = asyncio.ensure_future(agent.welcomed.wait())
                try:
                    await asyncio.wait({waiter, agent._task}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if not agent.welcomed.is_set():
                    raise ConnectionError(f"agent {agent.name} ended before its Welcome: {agent.failures}")

        jobs: list[asyncio.Task[None]] = []
        for group in groups:
            # A distinct channel (its own subchannel pool): its own TCP connection.
            channel = grpc.aio.insecure_channel(self.address, options=options)
            self._channels.append(channel)
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            jobs.extend(asyncio.ensure_future(connect(agent, stub)) for agent in group)
        try:
            await asyncio.wait_for(asyncio.gather(*jobs), timeout)
        except BaseException:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close every stream, end every task and timer, close the channels."""
        await asyncio.gather(*(agent.stop() for agent in self.agents), return_exceptions=True)
        for agent in self.agents:
            for held in agent.held.values():
                if held.timer is not None:
                    held.timer.cancel()
                    held.timer = None
        for channel in self._channels:
            await channel.close(grace=None)
        self._channels.clear()
        await self._grpc_settled()
        self._tasks_before = set()
        for _, _, future in self._count_waiters:
            if not future.done():
                future.cancel()
        self._count_waiters.clear()

    async def _grpc_settled(self, timeout: float = 2.0) -> None:
        """gRPC ends its own task per call only once the core has delivered the cancelled call's status, a
        few milliseconds after the cancel: wait for those, so a caller that checks for leaked tasks sees none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def pending() -> bool:
            return any(
                "_handle_status_once_received" in getattr(t.get_coro(), "__qualname__", "")
                for t in asyncio.all_tasks()
                if t not in self._tasks_before
            )

        while pending() and loop.time() < deadline:
            await asyncio.sleep(0.005)

    async def stop_agent(self, name: str) -> None:
        """One agent goes away as if its machine died: the stream closes, nothing more is sent (the
        scheduler declares it lost after its heartbeat timeout). What it held is kept for `start_agent`."""
        await self.by_name[name].stop()

    async def start_agent(self, name: str, *, forget: bool = False, timeout: float = 30.0) -> None:
        """Bring a stopped agent back and wait for its Welcome. `forget`: as after a reboot, it holds
        nothing any more (its Hello lists no attempt)."""
        agent = self.by_name[name]
        if agent._stub is None:
            raise RuntimeError(f"agent {name} was never started")
        await agent.stop()
        if forget:
            for held in agent.held.values():
                if held.timer is not None:
                    held.timer.cancel()
            agent.held.clear()
        agent.start(agent._stub)
        await asyncio.wait_for(agent.welcomed.wait(), timeout)

    async def __aenter__(self) -> SimAgents:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- bookkeeping (called by the agents) -----------------------------------------------------

    def _on_welcome(self, agent: SimAgent) -> None:
        self._welcomed += 1

    def _on_assign(self, record: AttemptRecord) -> None:
        self.assigned += 1
        self.attempts.setdefault(record.attempt_id, []).append(record)
        self.runs.setdefault(record.run_id, []).append(record)
        if self.on_assign is not None:
            self.on_assign(record)
        self._wake("assigned", self.assigned)

    def _on_end(self, record: AttemptRecord) -> None:
        self.ended += 1
        record.ended.set()
        self._wake("ended", self.ended)

    def _on_release(self, record: AttemptRecord) -> None:
        self.released += 1
        if self.on_release is not None:
            self.on_release(record)
        self._wake("released", self.released)

    def _wake(self, counter: str, value: int) -> None:
        if not self._count_waiters:
            return
        keep = []
        for entry in self._count_waiters:
            name, target, future = entry
            if name == counter and value >= target:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append(entry)
        self._count_waiters = keep

    async def _wait_count(self, counter: str, target: int, timeout: float | None) -> None:
        if getattr(self, counter) >= target:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._count_waiters.append((counter, target, future))
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"{counter} is {getattr(self, counter)} after {timeout}s, not {target}") from None

    # -- waiting and checking --------------------------------------------------------------------

    async def wait_assigned(self, count: int, timeout: float | None = None) -> None:
        """Until `count` node assignments in all have arrived (a gang's nodes count one each)."""
        await self._wait_count("assigned", count, timeout)

    async def wait_released(self, count: int, timeout: float | None = None) -> None:
        """Until the scheduler has released `count` node attempts in all."""
        await self._wait_count("released", count, timeout)

    async def wait_run_released(self, run_id: str, timeout: float | None = None) -> list[AttemptRecord]:
        """Until some attempt of `run_id` has arrived and all of its nodes were released; its records."""

        async def wait() -> list[AttemptRecord]:
            while True:
                records = self.runs.get(run_id, [])
                if records:
                    last = records[-1]
                    mine = self.attempts[last.attempt_id]
                    if len(mine) >= last.nodes and all(r.released.is_set() for r in mine):
                        return mine
                    await asyncio.gather(*(r.released.wait() for r in mine))
                    if len(mine) >= last.nodes:
                        continue
                await asyncio.sleep(0.02)

        return await asyncio.wait_for(wait(), timeout)

    def all_welcomed(self) -> bool:
        return all(a.welcomed.is_set() for a in self.agents)

    def live_attempts(self) -> int:
        return sum(1 for a in self.agents for h in a.held.values() if h.status.state not in ENDED)

    def gpu_overlaps(self) -> list[str]:
        """Pairs of attempts that held one GPU at the same time, as the agents saw them: a GPU is held from
        its Assignment's arrival until the attempt's end was reported (or it was released while live)."""
        by_gpu: dict[tuple[str, str], list[AttemptRecord]] = {}
        for records in self.attempts.values():
            for record in records:
                for uuid in record.gpu_uuids:
                    by_gpu.setdefault((record.agent, uuid), []).append(record)
        out = []
        for (agent, uuid), records in by_gpu.items():
            records.sort(key=lambda r: r.assigned_mono)
            for before, after in itertools.pairwise(records):
                end = before.ended_mono if before.ended_mono is not None else float("inf")
                if after.assigned_mono < end:
                    out.append(f"{agent} {uuid}: {after.attempt_id} arrived while {before.attempt_id} held it")
        return out

    def unknown_gpus(self) -> list[str]:
        """Assignments naming GPUs their agent does not have."""
        out = []
        for records in self.attempts.values():
            for record in records:
                mine = set(self.by_name[record.agent].gpu_uuids)
                out.extend(f"{record.attempt_id}: {u} on {record.agent}" for u in record.gpu_uuids if u not in mine)
        return out

    def stats(self) -> dict[str, float]:
        return {
            "agents": len(self.agents),
            "welcomed": sum(1 for a in self.agents if a.welcomed.is_set()),
            "reconnects": sum(max(0, a.connects - 1) for a in self.agents),
            "assigned": self.assigned,
            "ended": self.ended,
            "released": self.released,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "heartbeats_sent": self.heartbeats_sent,
            "cadences": self.cadences,
            "heartbeat_lag_max_s": round(self.heartbeat_lag_max, 3),
        }
