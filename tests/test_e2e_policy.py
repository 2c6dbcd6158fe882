"""Issue 6's scheduling behaviours end to end: a real scheduler process (LocalCluster), simulated agents
speaking the real AgentGateway protocol (tests/simagents.py), and the SDK as a user sees it.

The simulated agents run on an asyncio loop in a background thread, so each test reads as a plain story:
submit through the SDK, wait for what the scheduler and the agents say, assert. Their runs last until a
test ends them by hand (`Sim.finish`), so which run holds which GPU at each step is the test's choice,
never a race against a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import pytest
from simagents import AttemptRecord, Machine, SimAgents

from gridlab.client.localcluster import LocalCluster
from gridlab.client.sdk import Client
from gridlab.common import auth
from gridlab.v1 import agent_pb2, types_pb2

T = TypeVar("T")

A100_X1 = Machine("a100x1", (("A100", 80.0),), cpus=16, memory_gb=64)
A100_X2 = Machine("a100x2", (("A100", 80.0),) * 2, cpus=32, memory_gb=128)
A100_X4 = Machine("a100x4", (("A100", 80.0),) * 4, cpus=64, memory_gb=256)
WORKSTATION = Machine("workstation", (("A6000", 48.0), ("RTX3090", 24.0), ("RTX3090", 24.0)), cpus=24, memory_gb=128)


# --- harness ------------------------------------------------------------------------------------


class Sim:
    """SimAgents on a loop of their own (a background thread), driven from the test's thread."""

    def __init__(self, address: str, token: str, machines: list[Machine], **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="simagents", daemon=True)
        self.thread.start()

        async def make() -> SimAgents:
            return SimAgents(address, token, len(machines), machines=machines, **kw)

        self.agents: SimAgents = self.call(make())
        self.call(self.agents.start(timeout=30))
        self.names = [a.name for a in self.agents.agents]

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def do(self, fn: Callable[[], T]) -> T:
        """`fn()` on the agents' loop (their state is only ever touched there)."""

        async def run() -> T:
            return fn()

        return self.call(run())

    def records(self, run_id: str) -> list[AttemptRecord]:
        """What the agents received for `run_id`: one record per node of each attempt, in arrival order."""
        return self.do(lambda: list(self.agents.runs.get(run_id, [])))

    def on_agent(self, name: str) -> list[AttemptRecord]:
        return self.do(lambda: [r for rs in self.agents.runs.values() for r in rs if r.agent == name])

    def finish(self, run_id: str, exit_code: int = 0) -> None:
        """End the newest attempt of `run_id` on every node, as if its ranks exited with `exit_code`."""

        def end() -> None:
            records = self.agents.runs[run_id]
            last = records[-1].attempt_id
            for record in self.agents.attempts[last]:
                self.agents.by_name[record.agent].finish(last, exit_code)

        self.do(end)

    def close(self) -> None:
        try:
            self.call(self.agents.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def wait_for(check: Callable[[], T], what: str, timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {value!r}")
        time.sleep(0.02)


def wait_state(client: Client, run_id: str, state: str, timeout: float = 10.0) -> types_pb2.Run:
    def check() -> types_pb2.Run | None:
        run = client.get_run(run_id)
        return run if types_pb2.RunState.Name(run.state).removeprefix("RUN_STATE_") == state else None

    try:
        return wait_for(check, f"{run_id} to be {state}", timeout)
    except AssertionError:
        status = client.status(run_id)
        raise AssertionError(f"{run_id} is {status}, not {state}, after {timeout}s") from None


def wait_reason(client: Client, run_id: str, *parts: str, timeout: float = 10.0) -> str:
    """Until the queued run's pending reason holds every one of `parts`; returns it."""
    last = [""]

    def check() -> str:
        status = client.status(run_id)
        assert status.state == "QUEUED", f"{run_id} left the queue: {status}"
        last[0] = status.pending_reason
        return status.pending_reason if all(p in status.pending_reason for p in parts) else ""

    try:
        return wait_for(check, f"{run_id}'s reason to hold {parts}", timeout)
    except AssertionError as exc:
        if "left the queue" in str(exc):
            raise
        raise AssertionError(f"{run_id}'s pending reason is {last[0]!r}, without all of {parts}") from None


def planned_reason(client: Client, run_id: str, timeout: float = 10.0) -> str:
    """The first reason a placement pass gave the queued run (not the placeholder set at submit or requeue)."""

    def check() -> str:
        why = client.status(run_id).pending_reason
        return "" if not why or "waiting for the scheduler's next pass" in why else why

    return wait_for(check, f"a placement pass to give {run_id} a reason", timeout)


def stays_queued(client: Client, sim: Sim, run_ids: list[str], seconds: float = 0.6) -> None:
    """The runs stay QUEUED, and no agent receives them, over several placement passes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for run_id in run_ids:
            assert client.status(run_id).state == "QUEUED", f"{run_id}: {client.status(run_id)}"
            assert sim.records(run_id) == [], f"{run_id} was sent to {[r.agent for r in sim.records(run_id)]}"
        time.sleep(0.05)


def slow_stops(sim: Sim, name: str, seconds: float) -> Callable[[], list[str]]:
    """From now on the agent `name` carries out each stop order `seconds` late, as a real agent whose trainer
    saves a checkpoint before it exits. Returns a function that lists the attempts it was ordered to stop
    (the same attempt may be ordered twice)."""
    orders: list[str] = []

    def patch() -> None:
        agent = sim.agents.by_name[name]
        cancel = agent._cancel

        def later(order: agent_pb2.CancelAttempt) -> None:
            orders.append(order.attempt_id)
            asyncio.get_running_loop().call_later(seconds, cancel, order)

        agent._cancel = later  # type: ignore[method-assign]

    sim.do(patch)
    return lambda: sim.do(lambda: list(orders))


def attempt_states(client: Client, run_id: str) -> list[str]:
    return [
        types_pb2.AttemptState.Name(a.state).removeprefix("ATTEMPT_STATE_") for a in client.get_run(run_id).attempts
    ]


Start = Callable[..., tuple[LocalCluster, Client, Sim]]


@pytest.fixture
def start(make_cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Start]:  # type: ignore[no-untyped-def]
    """start(machines, env={...}, **SimAgents kwargs): a scheduler with `env` (GRIDLAB_SCHEDULER_* keys) and
    one simulated agent per machine, named sim-0000, sim-0001, ... in order. Runs last until finished by hand."""
    sims: list[Sim] = []

    def run(
        machines: list[Machine], *, env: Mapping[str, str] | None = None, **kw: Any
    ) -> tuple[LocalCluster, Client, Sim]:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        cluster: LocalCluster = make_cluster(heartbeat_interval=0.25, heartbeat_timeout=10)
        cluster.start_scheduler()
        kw.setdefault("run_time", math.inf)
        sim = Sim(cluster.address, auth.read_secret(cluster.agent_token_file), machines, **kw)
        sims.append(sim)
        return cluster, cluster.client(), sim

    yield run
    for sim in sims:
        with contextlib.suppress(Exception):
            sim.close()


# --- 1. priority ----------------------------------------------------------------------------------


def test_a_higher_priority_run_submitted_later_starts_first(start: Start) -> None:
    _, client, sim = start([A100_X1])
    blocker = client.submit(["true"], gpus=1, name="blocker").id
    wait_state(client, blocker, "RUNNING")
    low = client.submit(["true"], gpus=1, name="low", priority=0).id
    high = client.submit(["true"], gpus=1, name="high", priority=10).id
    # The high run heads the queue: it holds the reservation, and the earlier low run waits behind it.
    assert "holds a reservation on sim-0000" in wait_reason(client, high, "holds a reservation")
    wait_reason(client, low, f"behind {high}")

    sim.finish(blocker)
    wait_state(client, high, "RUNNING")
    stays_queued(client, sim, [low], 0.4)
    sim.finish(high)
    wait_state(client, low, "RUNNING")
    (first,), (second,) = sim.records(high), sim.records(low)
    assert first.assigned_mono < second.assigned_mono
    assert client.status(low).pending_reason == ""


# --- 2. gangs -------------------------------------------------------------------------------------


def test_a_gang_waits_whole_and_starts_on_distinct_agents_when_a_second_one_frees(start: Start) -> None:
    _, client, sim = start([A100_X4, A100_X4])
    blocker = client.submit(["true"], gpus=4, name="blocker").id
    wait_state(client, blocker, "RUNNING")
    (held,) = sim.records(blocker)
    free_agent = next(n for n in sim.names if n != held.agent)

    gang = client.submit(["true"], gpus=4, nodes=2, gpu_type="A100", min_gpu_memory="40GiB", name="gang").id
    reason = wait_reason(client, gang, "largest feasible set now: 1 node")
    assert reason.startswith("Resources: needs 2 nodes x 4 GPUs of A100 >= 40 GB; largest feasible set now: 1 node")
    assert "gang" in reason
    # No partial hold: the free agent was sent nothing while the gang waits.
    stays_queued(client, sim, [gang])
    assert sim.on_agent(free_agent) == []

    sim.finish(blocker)
    run = wait_state(client, gang, "RUNNING")
    nodes = sim.records(gang)
    assert len({r.attempt_id for r in nodes}) == 1
    assert sorted(r.agent for r in nodes) == sorted(sim.names)
    assert sorted(r.node_rank for r in nodes) == [0, 1]
    assert all(r.assignment.wait_for_start and len(r.gpu_uuids) == 4 for r in nodes)
    (attempt,) = run.attempts
    assert sorted(n.agent_name for n in attempt.nodes) == sorted(sim.names)
    assert sim.do(sim.agents.gpu_overlaps) == []


# --- 3. preemption --------------------------------------------------------------------------------


def test_a_higher_priority_run_preempts_the_one_cheapest_victim_which_requeues_without_a_retry(start: Start) -> None:
    _, client, sim = start([A100_X4])
    # The four GPUs: three preemptible runs of priorities 2, 1 and 3, and one run that may not be preempted.
    shapes = [("p2", 2, True), ("p1", 1, True), ("keep", 0, False), ("p3", 3, True)]
    ids = {}
    for name, priority, preemptible in shapes:
        ids[name] = client.submit(
            ["true"], gpus=1, name=name, priority=priority, preemptible=preemptible, max_retries=2
        ).id
        wait_state(client, ids[name], "RUNNING")

    high = client.submit(["true"], gpus=1, name="high", priority=10).id
    run = wait_state(client, high, "RUNNING")
    # One GPU is enough: only the lowest-priority preemptible run was stopped.
    victim = client.get_run(ids["p1"])
    assert attempt_states(client, ids["p1"])[0] == "PREEMPTED"
    assert f"preempted for higher-priority run {high}" in victim.attempts[0].reason
    assert victim.retries_used == 0
    assert types_pb2.RunState.Name(victim.state) == "RUN_STATE_QUEUED"
    (old,) = sim.records(ids["p1"])
    assert old.state_name == "PREEMPTED"
    (new,) = sim.records(high)
    assert new.gpu_uuids == old.gpu_uuids  # it took the victim's GPU
    assert run.attempts[0].nodes[0].gpu_uuids == list(old.gpu_uuids)
    time.sleep(0.5)  # a few passes more: nothing else is stopped, the victim waits
    for name in ("p2", "keep", "p3"):
        assert attempt_states(client, ids[name]) == ["RUNNING"], name
        assert [r.state_name for r in sim.records(ids[name])] == ["RUNNING"], name
    assert client.status(ids["p1"]).state == "QUEUED"

    sim.finish(high)  # the victim comes back on a new attempt, still without a retry spent
    again = wait_state(client, ids["p1"], "RUNNING")
    assert attempt_states(client, ids["p1"]) == ["PREEMPTED", "RUNNING"]
    assert again.retries_used == 0
    assert sim.do(sim.agents.gpu_overlaps) == []


def test_preemption_stops_the_victims_whose_gpus_form_a_placement(start: Start) -> None:
    """Two GPUs on one machine are needed. sim-0000 has a preemptible run beside one that may not be
    preempted; sim-0001 has a preemptible run beside a free GPU: only stopping the second forms a placement."""
    _, client, sim = start([A100_X2, A100_X2])
    first, second = sim.names
    ids = {}
    for name, preemptible in (("v-first", True), ("keep", False), ("v-second", True)):
        ids[name] = client.submit(["true"], gpus=1, name=name, preemptible=preemptible).id
        wait_state(client, ids[name], "RUNNING")
    assert [sim.records(ids[n])[0].agent for n in ("v-first", "keep", "v-second")] == [first, first, second]

    high = client.submit(["true"], gpus=2, name="high", priority=5).id
    wait_state(client, high, "RUNNING")
    assert sim.records(high)[0].agent == second
    assert attempt_states(client, ids["v-second"])[0] == "PREEMPTED"
    time.sleep(0.3)
    assert attempt_states(client, ids["v-first"]) == ["RUNNING"]
    assert attempt_states(client, ids["keep"]) == ["RUNNING"]


def test_runs_that_are_not_preemptible_or_not_of_lower_priority_are_never_stopped(start: Start) -> None:
    _, client, sim = start([A100_X2])
    keep = client.submit(["true"], gpus=1, name="keep", priority=0).id
    peer = client.submit(["true"], gpus=1, name="peer", priority=5, preemptible=True).id
    for run_id in (keep, peer):
        wait_state(client, run_id, "RUNNING")
    high = client.submit(["true"], gpus=1, name="high", priority=5).id
    wait_reason(client, high, "Resources", "holds a reservation")
    stays_queued(client, sim, [high])
    assert attempt_states(client, keep) == ["RUNNING"]
    assert attempt_states(client, peer) == ["RUNNING"]


def test_a_gang_victim_is_stopped_on_every_node_and_requeued_without_a_retry(start: Start) -> None:
    _, client, sim = start([A100_X1, A100_X1])
    gang = client.submit(["true"], gpus=1, nodes=2, name="gang", preemptible=True, max_retries=1).id
    wait_state(client, gang, "RUNNING")
    high = client.submit(["true"], gpus=1, name="high", priority=5).id
    wait_state(client, high, "RUNNING")
    run = client.get_run(gang)
    assert types_pb2.RunState.Name(run.state) == "RUN_STATE_QUEUED"
    assert attempt_states(client, gang) == ["PREEMPTED"]
    assert run.retries_used == 0
    assert all(r.ended.is_set() for r in sim.records(gang))  # both nodes were told to stop
    wait_reason(client, gang, "largest feasible set now: 1 node")
    sim.finish(high)
    again = wait_state(client, gang, "RUNNING")
    assert len(again.attempts) == 2
    assert again.retries_used == 0


def test_a_run_waiting_for_slow_victims_to_stop_does_not_preempt_more(start: Start) -> None:
    """Victims take a while to stop (a real trainer checkpoints first): the preemptor waits for the one it
    chose, over many placement passes, instead of choosing another each pass."""
    _, client, sim = start([A100_X4])
    ids = [client.submit(["true"], gpus=1, name=f"p{i}", preemptible=True, max_retries=1).id for i in range(4)]
    for run_id in ids:
        wait_state(client, run_id, "RUNNING")

    stop_orders = slow_stops(sim, sim.names[0], 2.0)
    high = client.submit(["true"], gpus=1, name="high", priority=5).id
    reason = wait_reason(client, high, "Preempting")
    assert reason in (
        "Preempting: 1 lower-priority run(s) are stopping to make room",
        "Preempting: waiting for 1 preempted run(s) to stop",
    ), reason
    wait_state(client, high, "RUNNING", timeout=8)  # 2 s: passes (at least one a second) ran meanwhile
    time.sleep(0.3)
    assert len(set(stop_orders())) == 1, stop_orders()
    states = [attempt_states(client, r) for r in ids]
    assert sorted(states) == [["PREEMPTED"], ["RUNNING"], ["RUNNING"], ["RUNNING"]], states


# --- 4. quotas ------------------------------------------------------------------------------------


def test_a_team_at_its_gpu_quota_waits_while_another_team_starts(start: Start) -> None:
    cluster, admin, sim = start([A100_X4], env={"GRIDLAB_SCHEDULER_QUOTA_TEAMS": "vision=2"})
    alice = Client(cluster.address, admin.create_token("alice", team="vision"))
    bob = Client(cluster.address, admin.create_token("bob", team="nlp"))
    try:
        first = [alice.submit(["true"], gpus=1, name=f"v{i}").id for i in range(2)]
        for run_id in first:
            wait_state(alice, run_id, "RUNNING")
        third = alice.submit(["true"], gpus=1, name="v2").id
        other = bob.submit(["true"], gpus=1, name="n0").id  # behind the vision run in the queue
        wait_state(bob, other, "RUNNING")
        assert wait_reason(alice, third, "Quota") == "Quota: team vision at 2/2 GPUs"
        stays_queued(alice, sim, [third])
        assert alice.get_run(third).team == "vision"
        # A GPU is still free: only the quota holds it back.
        assert sum(len(sim.records(r)[0].gpu_uuids) for r in [*first, other]) == 3

        sim.finish(first[0])
        wait_state(alice, third, "RUNNING")
    finally:
        alice.close()
        bob.close()


def test_a_preemptor_counts_against_its_team_quota_while_its_victims_stop(start: Start) -> None:
    """vision=2 holds one GPU; two high-priority vision runs need preemption: the first takes the last GPU
    of the quota (one victim), the second waits for the quota rather than stopping a second victim."""
    cluster, admin, sim = start([A100_X4], env={"GRIDLAB_SCHEDULER_QUOTA_TEAMS": "vision=2"})
    alice = Client(cluster.address, admin.create_token("alice", team="vision"))
    bob = Client(cluster.address, admin.create_token("bob", team="nlp"))
    try:
        v0 = alice.submit(["true"], gpus=1, name="v0").id
        wait_state(admin, v0, "RUNNING")
        victims = [bob.submit(["true"], gpus=1, name=f"n{i}", preemptible=True).id for i in range(3)]
        for run_id in victims:
            wait_state(admin, run_id, "RUNNING")
        stop_orders = slow_stops(sim, sim.names[0], 1.5)  # h1 still waits for its victim when h2 comes
        h1 = alice.submit(["true"], gpus=1, name="h1", priority=10).id
        wait_reason(alice, h1, "Preempting")
        h2 = alice.submit(["true"], gpus=1, name="h2", priority=10).id
        assert wait_reason(alice, h2, "Quota") == "Quota: team vision at 2/2 GPUs"
        assert alice.status(h1).state == "QUEUED"  # still waiting: the quota counts what it will hold
        wait_state(admin, h1, "RUNNING")
        assert wait_reason(alice, h2, "Quota") == "Quota: team vision at 2/2 GPUs"
        time.sleep(0.3)
        assert len(set(stop_orders())) == 1, stop_orders()
        states = sorted(attempt_states(admin, r)[0] for r in victims)
        assert states == ["PREEMPTED", "RUNNING", "RUNNING"]
    finally:
        alice.close()
        bob.close()


# --- 5. burst pools -------------------------------------------------------------------------------


def test_runs_go_on_prem_first_and_to_a_burst_pool_only_when_on_prem_is_full(start: Start) -> None:
    # The cloud agent sorts first by name and is the tighter fit for one GPU: only the pool tier sends runs
    # to the on-prem agent first.
    _, client, sim = start(
        [A100_X1, A100_X2],
        env={"GRIDLAB_SCHEDULER_BURST_POOLS": "cloud"},
        pool=lambda i, _m: "cloud" if i == 0 else "onprem",
    )
    cloud, onprem = sim.names
    runs = []
    for i in range(3):
        runs.append(client.submit(["true"], gpus=1, name=f"r{i}").id)
        wait_state(client, runs[-1], "RUNNING")
    assert [sim.records(r)[0].agent for r in runs] == [onprem, onprem, cloud]
    # One GPU free on each: the tie goes to on-prem, though the cloud agent's name sorts first.
    sim.finish(runs[0])
    sim.finish(runs[2])
    wait_state(client, runs[0], "SUCCEEDED")
    wait_state(client, runs[2], "SUCCEEDED")
    nxt = client.submit(["true"], gpus=1, name="r3").id
    wait_state(client, nxt, "RUNNING")
    assert sim.records(nxt)[0].agent == onprem


# --- 6. cordon and drain --------------------------------------------------------------------------


def test_cordon_keeps_new_runs_off_uncordon_lets_them_in_and_a_drain_deadline_preempts_for_free(start: Start) -> None:
    _, client, sim = start([A100_X1, A100_X1])
    first, second = sim.names  # `first` wins ties by name: without the cordon, runs would go there
    agent = client.cordon(first, reason="fan")
    assert agent.state == types_pb2.AGENT_STATE_CORDONED
    r1 = client.submit(["true"], gpus=1, name="r1", max_retries=1).id
    wait_state(client, r1, "RUNNING")
    assert sim.records(r1)[0].agent == second
    r2 = client.submit(["true"], gpus=1, name="r2", max_retries=1).id
    wait_reason(client, r2, "Resources")
    stays_queued(client, sim, [r2])
    assert sim.on_agent(first) == []

    client.uncordon(first)
    wait_state(client, r2, "RUNNING")
    assert sim.records(r2)[0].agent == first

    agent = client.drain(first, deadline=0, reason="kernel upgrade")
    assert agent.state == types_pb2.AGENT_STATE_DRAINING
    wait_state(client, r2, "QUEUED")
    run = client.get_run(r2)
    assert attempt_states(client, r2) == ["PREEMPTED"]
    assert f"agent {first} drained" in run.attempts[0].reason
    assert run.retries_used == 0
    assert sim.records(r2)[0].state_name == "PREEMPTED"
    time.sleep(0.4)  # a few placement passes
    assert len(sim.records(r2)) == 1  # the draining agent takes nothing new, and the other one is full
    assert {a.name: a.state for a in client.agents()}[first] == types_pb2.AGENT_STATE_DRAINING

    sim.finish(r1)
    again = wait_state(client, r2, "RUNNING")
    assert [r.agent for r in sim.records(r2)] == [first, second]
    assert again.retries_used == 0
    assert [r.agent for r in sim.on_agent(first)] == [first]  # still only the preempted attempt


def test_a_drain_deadline_in_the_future_waits_and_a_drain_without_one_lets_the_run_finish(start: Start) -> None:
    _, client, sim = start([A100_X1, A100_X1])
    first, second = sim.names
    run_id = client.submit(["true"], gpus=1, name="r").id
    wait_state(client, run_id, "RUNNING")
    assert sim.records(run_id)[0].agent == first
    asked = time.monotonic()
    client.drain(first, deadline=1)
    wait_for(lambda: len(sim.records(run_id)) == 2, "the run to move off the drained agent", 8)
    assert time.monotonic() - asked >= 0.9
    assert [(r.agent, r.state_name) for r in sim.records(run_id)] == [(first, "PREEMPTED"), (second, "RUNNING")]
    assert client.get_run(run_id).retries_used == 0

    client.drain(second)  # no deadline: what runs there finishes
    time.sleep(0.6)
    assert [r.state_name for r in sim.records(run_id)] == ["PREEMPTED", "RUNNING"]
    sim.finish(run_id)
    wait_state(client, run_id, "SUCCEEDED")
    late = client.submit(["true"], gpus=1, name="late").id
    stays_queued(client, sim, [late])


# --- 7. time limits -------------------------------------------------------------------------------


def test_a_run_past_its_time_limit_is_stopped_and_fails_without_a_retry(start: Start) -> None:
    _, client, sim = start([A100_X1], run_time=lambda a: 30.0 if a.spec.name == "slow" else 0.0)
    run_id = client.submit(["true"], gpus=1, name="slow", time_limit=1, max_retries=2).id
    run = wait_state(client, run_id, "FAILED", timeout=8)
    assert len(run.attempts) == 1
    assert run.retries_used == 0
    assert "time limit of 1s reached" in run.attempts[0].reason, run.attempts[0].reason
    assert "time limit" in run.message
    (record,) = sim.records(run_id)
    assert record.state_name == "FAILED"  # the agent was told to stop it
    assert record.ended_mono is not None
    assert record.running_mono is not None
    assert 0.9 <= record.ended_mono - record.running_mono < 5
    time.sleep(0.5)
    assert len(sim.records(run_id)) == 1
    assert client.status(run_id).state == "FAILED"


def test_a_gang_past_its_time_limit_is_stopped_on_every_node(start: Start) -> None:
    _, client, sim = start([A100_X1, A100_X1])
    run_id = client.submit(["true"], gpus=1, nodes=2, name="gang", time_limit=1, max_retries=2).id
    run = wait_state(client, run_id, "FAILED", timeout=8)
    assert len(run.attempts) == 1
    assert run.retries_used == 0
    assert "time limit of 1s reached" in run.attempts[0].reason
    assert sorted(r.state_name for r in sim.records(run_id)) == ["FAILED", "FAILED"]


# --- fair share -----------------------------------------------------------------------------------


def test_at_equal_priority_the_user_with_less_recent_usage_goes_first(start: Start) -> None:
    cluster, admin, sim = start([A100_X1])
    alice = Client(cluster.address, admin.create_token("alice"))
    bob = Client(cluster.address, admin.create_token("bob"))
    try:
        used = alice.submit(["true"], gpus=1, name="a0").id
        wait_state(admin, used, "RUNNING")
        time.sleep(0.3)  # alice's running attempt counts in her share
        a1 = alice.submit(["true"], gpus=1, name="a1").id
        b1 = bob.submit(["true"], gpus=1, name="b1").id  # later, but bob has used nothing
        wait_reason(admin, b1, "holds a reservation")
        wait_reason(admin, a1, f"behind {b1}")
        sim.finish(used)
        wait_state(admin, b1, "RUNNING")
        assert admin.status(a1).state == "QUEUED"
        sim.finish(b1)
        wait_state(admin, a1, "RUNNING")
    finally:
        alice.close()
        bob.close()


# --- 8. reservation and backfill ------------------------------------------------------------------


def test_the_blocked_head_holds_a_reservation_that_only_short_time_limited_runs_backfill(start: Start) -> None:
    _, client, sim = start([A100_X4])
    # Two GPUs busy until at most 20 s from now; two free.
    holder = client.submit(["true"], gpus=2, name="holder", time_limit=20).id
    wait_state(client, holder, "RUNNING")
    head = client.submit(["true"], gpus=4, name="head").id
    assert "(soonest)" in wait_reason(client, head, "holds a reservation on sim-0000")
    # All fit in the two free GPUs now; only the reservation decides.
    unlimited = client.submit(["true"], gpus=1, name="unlimited").id
    too_long = client.submit(["true"], gpus=1, name="too-long", time_limit=60).id
    short = client.submit(["true"], gpus=1, name="short", time_limit=5).id
    wait_state(client, short, "RUNNING")
    for run_id in (unlimited, too_long):
        reason = wait_reason(client, run_id, f"behind {head}")
        assert reason.endswith(f"behind {head}, which holds a reservation"), reason
    stays_queued(client, sim, [head, unlimited, too_long])

    sim.finish(holder)
    sim.finish(short)
    wait_state(client, head, "RUNNING")
    stays_queued(client, sim, [unlimited, too_long], 0.3)
    assert sim.do(sim.agents.gpu_overlaps) == []


# --- 9. why pending -------------------------------------------------------------------------------


def unordered(reason: str) -> tuple[str, frozenset[str]]:
    """A reason that lists agents ("Unsatisfiable: a: why; b: why"), in whatever order they connected."""
    kind, _, rest = reason.partition(": ")
    return kind, frozenset(rest.split("; "))


def test_why_a_run_waits_is_shown_through_the_client(start: Start) -> None:
    _, client, sim = start([A100_X4, WORKSTATION])
    a100, ws = sim.names
    offer = f"the biggest machine offers {a100}: 4x A100 80 GB"  # what would fit, for the user to size down
    cases = {
        f"Unsatisfiable: no agent has 1 suitable GPUs (the most on one agent is 0); {offer}": dict(
            gpus=1, gpu_type="H100"
        ),
        # Per device: the workstation has one A6000, not two, even though it has three GPUs.
        f"Unsatisfiable: no agent has 2 suitable GPUs (the most on one agent is 1); {offer}": dict(
            gpus=2, gpu_type="A6000"
        ),
        f"Unsatisfiable: no agent has 8 suitable GPUs (the most on one agent is 4); {offer}": dict(gpus=8),
        f"Unsatisfiable: {a100}: label rack=b missing; {ws}: label rack=b missing": dict(gpus=1, labels={"rack": "b"}),
        f"Unsatisfiable: {a100}: pool is onprem, not cloud; {ws}: pool is onprem, not cloud": dict(
            gpus=1, pool="cloud"
        ),
        "Unsatisfiable: a gang of 3 nodes needs 3 agents that fit; 2 connected do": dict(gpus=1, nodes=3),
    }
    waiting = {client.submit(["true"], name=f"w{i}", **kw).id: want for i, (want, kw) in enumerate(cases.items())}
    memory = client.submit(["true"], gpus=1, min_gpu_memory="100GiB", name="big-memory").id
    for run_id, want in waiting.items():
        assert unordered(wait_reason(client, run_id, "Unsatisfiable")) == unordered(want)
    assert wait_reason(client, memory, "Unsatisfiable") == (
        f"Unsatisfiable: no agent has 1 suitable GPUs (the most on one agent is 0); {offer}"
    )
    # The same reasons in a listing, and none once a run is placed.
    listed = {r.id: r.pending_reason for r in client.runs(states="QUEUED", limit=None)}
    assert {rid: unordered(listed[rid]) for rid in waiting} == {rid: unordered(w) for rid, w in waiting.items()}
    fits = client.submit(["true"], gpus=1, gpu_type="A6000", name="fits").id
    wait_state(client, fits, "RUNNING")
    assert sim.records(fits)[0].agent == ws
    assert client.status(fits).pending_reason == ""
    big = client.submit(["true"], gpus=4, name="big").id
    wait_state(client, big, "RUNNING")
    busy = client.submit(["true"], gpus=4, name="busy").id
    assert wait_reason(client, busy, "Resources: needs 4 GPUs; waiting for GPUs or CPUs to free up")


def test_a_run_that_waits_only_for_a_cordoned_agent_is_not_called_unsatisfiable(start: Start) -> None:
    _, client, sim = start([A100_X1, WORKSTATION])
    a100, ws = sim.names
    client.cordon(a100)
    wants_a100 = client.submit(["true"], gpus=1, gpu_type="A100", name="a100").id
    gang = client.submit(["true"], gpus=1, nodes=2, name="gang").id
    reasons = {
        "only fitting agent cordoned": planned_reason(client, wants_a100),
        "gang with one agent cordoned": planned_reason(client, gang),
    }
    client.cordon(ws)
    anything = client.submit(["true"], gpus=1, name="any").id
    reasons["every agent cordoned"] = planned_reason(client, anything)
    client.uncordon(a100)
    wait_state(client, wants_a100, "RUNNING")  # it was never unsatisfiable
    wrong = {
        case: why
        for case, why in reasons.items()
        if not why or why.startswith("Unsatisfiable") or why == "no agent is connected"
    }
    assert wrong == {}, reasons
    assert a100 in reasons["only fitting agent cordoned"]  # it names the agents that could hold it
