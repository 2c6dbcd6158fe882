"""Gangs in the engine: a multi-node attempt prepares apart, starts together, and ends as one."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_engine import ALICE, drain, run_state, spec, status

from gridlab.common.config import SchedulerConfig
from gridlab.common.timeutil import FakeClock
from gridlab.scheduler.engine import AgentSession, Engine
from gridlab.scheduler.gang import GangTracker, gang_end
from gridlab.scheduler.state import AttemptState
from gridlab.scheduler.store import Store
from gridlab.v1 import agent_pb2, types_pb2

A = AttemptState


def node_hello(engine: Engine, name: str, attempts: list[agent_pb2.AttemptStatus] | None = None) -> AgentSession:
    inv = types_pb2.Inventory(hostname=name, address=f"10.0.0.{len(engine.sessions) + 1}", cpus=8, memory_bytes=1 << 34)
    return engine.agent_hello(agent_pb2.Hello(name=name, inventory=inv, attempts=attempts or []))


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    config = SchedulerConfig(state_dir=str(tmp_path), heartbeat_interval=1, heartbeat_timeout=10, prepare_timeout=60)
    return Engine(Store(tmp_path / "s.db"), config, clock=FakeClock())


def placed_gang(engine: Engine, nodes: int = 2) -> tuple[str, list[AgentSession], list[agent_pb2.Assignment]]:
    sessions = [node_hello(engine, f"n{i}") for i in range(nodes)]
    for s in sessions:
        drain(s)
    run = spec("python", "train.py")
    run.resources.nodes = nodes
    run_id, _ = engine.submit(ALICE, run, "")
    assert engine.place_once() == 1
    assigns = [drain(s)[0].assign for s in sessions]
    return run_id, sessions, assigns


def prepared(attempt_id: str, port: int = 0) -> agent_pb2.AttemptStatus:
    out = status(attempt_id, "PREPARING")
    out.prepared, out.master_port = True, port
    return out


def test_gang_end_rules() -> None:
    assert gang_end({0: A.SUCCEEDED, 1: A.RUNNING}, 0) is None
    assert gang_end({0: A.SUCCEEDED, 1: A.SUCCEEDED}, 1) is A.SUCCEEDED
    assert gang_end({0: A.RUNNING, 1: A.FAILED}, 1) is A.FAILED
    tracker = GangTracker()
    tracker.add("g", 2, "h", deadline=10)
    assert tracker.prepared("g", 1, 0) is None
    assert tracker.prepared("g", 5, 0) is None  # no such node
    assert tracker.expired(11) == [("g", [0])]
    assert tracker.expired(12) == []  # each expiry is reported once


def test_every_node_gets_its_rank_and_starts_only_when_all_are_prepared(engine: Engine) -> None:
    run_id, (s0, s1), (a0, a1) = placed_gang(engine)
    assert (a0.node_rank, a1.node_rank, a0.nodes, a0.attempt_id) == (0, 1, 2, a1.attempt_id)
    assert a0.wait_for_start
    assert a1.wait_for_start
    assert a0.master_addr == a1.master_addr == "10.0.0.1"  # node 0's machine hosts the rendezvous
    attempt = a0.attempt_id
    engine.agent_update(s1, prepared(attempt))
    assert drain(s0) == drain(s1) == []  # node 0 is not ready yet
    engine.agent_update(s0, prepared(attempt, port=29500))
    (start0,), (start1,) = drain(s0), drain(s1)
    assert (
        start0.start
        == start1.start
        == agent_pb2.StartAttempt(attempt_id=attempt, master_addr="10.0.0.1", master_port=29500)
    )
    engine.agent_heartbeat(s1, agent_pb2.Heartbeat(attempts=[prepared(attempt)]))  # missed it: sent again, to it alone
    assert [m.WhichOneof("msg") for m in drain(s1)] == ["start"]
    assert drain(s0) == []
    engine.agent_update(s0, status(attempt, "RUNNING"))
    assert run_state(engine, run_id) == "STARTING"  # node 1 has not started its ranks yet
    engine.agent_update(s1, status(attempt, "RUNNING"))
    assert run_state(engine, run_id) == "RUNNING"


def test_a_gang_succeeds_when_every_node_has_and_finished_nodes_free_their_agent(engine: Engine) -> None:
    run_id, (s0, s1), (a0, _) = placed_gang(engine)
    attempt = a0.attempt_id
    for s in (s0, s1):
        engine.agent_update(s, status(attempt, "RUNNING"))
    engine.agent_update(s1, status(attempt, "SUCCEEDED"))
    assert run_state(engine, run_id) == "RUNNING"
    assert [m.WhichOneof("msg") for m in drain(s1)] == ["release"]
    assert {a.name: list(a.attempt_ids) for a in engine.list_agents()} == {"n0": [attempt], "n1": []}
    # n1 reconnects without the attempt it was released from: that must not end the gang.
    s1 = node_hello(engine, "n1")
    assert run_state(engine, run_id) == "RUNNING"
    engine.agent_update(s0, status(attempt, "SUCCEEDED"))
    assert run_state(engine, run_id) == "SUCCEEDED"


def test_a_failed_node_stops_the_others_and_spends_a_retry(engine: Engine) -> None:
    run_id, (s0, s1), (a0, _) = placed_gang(engine)
    attempt = a0.attempt_id
    for s in (s0, s1):
        engine.agent_update(s, status(attempt, "RUNNING"))
    failed = status(attempt, "FAILED", exit_code=3)
    failed.message = "rank 1 exited with 3"
    engine.agent_update(s1, failed)
    assert run_state(engine, run_id) == "FAILED"  # max_retries is 0
    (cancel,) = drain(s0)
    assert cancel.cancel.attempt_id == attempt
    assert "gang stopped" in cancel.cancel.reason
    reason = engine.store.one("SELECT reason FROM attempts WHERE id = ?", (attempt,))["reason"]
    assert reason == "node 1 (n1): rank 1 exited with 3"
    engine.agent_update(s0, status(attempt, "FAILED", exit_code=137))  # its end after the cancel: released
    assert [m.WhichOneof("msg") for m in drain(s0)] == ["release"]


def test_a_lost_node_requeues_the_gang_and_stops_the_rest(engine: Engine) -> None:
    run_id, (s0, s1), (a0, _) = placed_gang(engine)
    for s in (s0, s1):
        engine.agent_update(s, status(a0.attempt_id, "RUNNING"))
    engine.clock.advance(8)  # type: ignore[attr-defined]
    engine.agent_heartbeat(s0, agent_pb2.Heartbeat())
    engine.clock.advance(3)  # type: ignore[attr-defined]
    assert engine.check_liveness() == ["n1"]
    assert run_state(engine, run_id) == "QUEUED"
    assert [m.cancel.attempt_id for m in drain(s0)] == [a0.attempt_id]
    assert engine.store.one("SELECT retries_used FROM runs WHERE id = ?", (run_id,))[0] == 0


def test_a_gang_not_prepared_by_the_deadline_is_released_whole(engine: Engine) -> None:
    run_id, (s0, s1), (a0, _) = placed_gang(engine)
    engine.agent_update(s0, prepared(a0.attempt_id, port=1234))
    engine.clock.advance(30)  # type: ignore[attr-defined]
    assert engine.check_gangs() == []
    engine.clock.advance(31)  # type: ignore[attr-defined]
    assert engine.check_gangs() == [a0.attempt_id]
    assert run_state(engine, run_id) == "QUEUED"
    reason = engine.store.one("SELECT reason FROM attempts WHERE id = ?", (a0.attempt_id,))["reason"]
    assert reason == "gang not prepared within 60s: node 1 (n1) not ready"
    assert [m.WhichOneof("msg") for m in drain(s0)] == ["cancel"]
    assert [m.WhichOneof("msg") for m in drain(s1)] == ["cancel"]


def test_a_restarted_scheduler_learns_a_preparing_gang_again(engine: Engine, tmp_path: Path) -> None:
    run_id, _, (a0, _) = placed_gang(engine)
    fresh = Engine(Store(tmp_path / "s.db"), engine.config, clock=FakeClock())
    s0 = node_hello(fresh, "n0", [prepared(a0.attempt_id, port=777)])
    s1 = node_hello(fresh, "n1", [prepared(a0.attempt_id)])
    (start,) = [m for m in drain(s1) if m.WhichOneof("msg") == "start"]
    assert start.start.master_port == 777
    assert start.start.master_addr == "10.0.0.1"
    assert [m.WhichOneof("msg") for m in drain(s0)] == ["welcome", "start"]


def test_gpus_of_a_stopped_node_are_held_until_its_ranks_are_gone(engine: Engine) -> None:
    """A peer failed: the other node is told to stop, and its GPUs stay taken while its ranks wind down."""
    for name in ("n0", "n1"):
        inv = types_pb2.Inventory(hostname=name, address=name, cpus=8, memory_bytes=1 << 34)
        inv.gpus.add(uuid=f"{name}-GPU-0", model="A100", memory_total_bytes=80 << 30)
        engine.agent_hello(agent_pb2.Hello(name=name, inventory=inv))
    s0, s1 = engine.sessions["n0"], engine.sessions["n1"]
    run = spec("python", "t.py", gpus=1)
    run.resources.nodes = 2
    engine.submit(ALICE, run, "")
    engine.place_once()
    attempt = [m for m in drain(s0) if m.WhichOneof("msg") == "assign"][0].assign.attempt_id
    drain(s1)
    for s in (s0, s1):
        engine.agent_update(s, status(attempt, "RUNNING"))
    engine.agent_update(s1, status(attempt, "FAILED", exit_code=1))
    one_gpu = spec("python", "other.py", gpus=1)
    other, _ = engine.submit(ALICE, one_gpu, "")
    assert engine.place_once() == 1  # n1's GPU is free: its node reported its end
    assert [m.WhichOneof("msg") for m in drain(s1)][-1] == "assign"
    second, _ = engine.submit(ALICE, one_gpu, "")
    assert engine.place_once() == 0  # n0's ranks are still stopping
    engine.agent_update(s0, status(attempt, "CANCELLED"))  # now they are gone
    assert [m.WhichOneof("msg") for m in drain(s0)][-1] == "release"
    assert engine.place_once() == 1
    assert run_state(engine, second) == "STARTING"
    assert run_state(engine, other) == "STARTING"


def test_a_node_that_finished_is_not_flagged_hung_while_its_peer_finishes(engine: Engine) -> None:
    run_id, (s0, s1), (a0, _) = placed_gang(engine)
    attempt = a0.attempt_id
    engine.watchdog.track(attempt, 5.0, engine.clock.monotonic())
    for s in (s0, s1):
        engine.agent_update(s, status(attempt, "RUNNING"))
    engine.agent_update(s0, status(attempt, "SUCCEEDED"))  # node 0 is done; node 1 uploads its last files
    exited = status(attempt, "RUNNING")
    exited.ranks_exited = True
    engine.agent_heartbeat(s1, agent_pb2.Heartbeat(attempts=[exited]))
    engine.clock.advance(10)  # type: ignore[attr-defined]
    assert engine.check_hangs() == []
    engine.agent_update(s1, status(attempt, "SUCCEEDED"))
    assert run_state(engine, run_id) == "SUCCEEDED"


def test_a_restarted_scheduler_restarts_a_gang_whose_node_missed_the_start(engine: Engine, tmp_path: Path) -> None:
    _, (s0, s1), (a0, _) = placed_gang(engine)
    attempt = a0.attempt_id
    engine.agent_update(s0, prepared(attempt, port=4242))
    engine.agent_update(s1, prepared(attempt))
    running = status(attempt, "RUNNING")
    running.prepared, running.master_port = True, 4242  # node 0 started; node 1 never got the order
    fresh = Engine(Store(tmp_path / "s.db"), engine.config, clock=FakeClock())
    n0 = node_hello(fresh, "n0", [running])
    n1 = node_hello(fresh, "n1", [prepared(attempt)])
    starts = [m.start for m in drain(n1) if m.WhichOneof("msg") == "start"]
    assert [s.master_port for s in starts] == [4242]
    drain(n0)
    fresh.agent_heartbeat(n0, agent_pb2.Heartbeat(attempts=[running]))
    assert drain(n0) == []  # a running node is not sent the order again and again


def test_a_run_is_running_even_when_one_node_finished_before_the_others_start_was_seen(engine: Engine) -> None:
    run_id, (s0, s1), (a0, _) = placed_gang(engine)
    attempt = a0.attempt_id
    engine.agent_update(s0, status(attempt, "RUNNING"))
    engine.agent_update(s0, status(attempt, "SUCCEEDED"))
    engine.agent_update(s1, status(attempt, "RUNNING"))
    assert run_state(engine, run_id) == "RUNNING"


def test_an_infrastructure_failure_requeues_without_spending_a_retry(engine: Engine) -> None:
    session = node_hello(engine, "solo")
    drain(session)
    run_id, _ = engine.submit(ALICE, spec("python", "t.py"), "")
    engine.place_once()
    (assign,) = drain(session)
    failed = status(assign.assign.attempt_id, "FAILED", exit_code=1)
    failed.infrastructure = True
    failed.message = "could not download code bundle: UNAVAILABLE"
    engine.agent_update(session, failed)
    row = engine.store.one("SELECT state, retries_used FROM runs WHERE id = ?", (run_id,))
    assert (row["state"], row["retries_used"]) == ("QUEUED", 0)
