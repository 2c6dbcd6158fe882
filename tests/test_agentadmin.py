"""Cordon, drain, uncordon (scheduler/agentadmin.py) on a real engine: a real SQLite file, agent
sessions fed by hand, a fake clock; and the servicer's status codes, and schedctl's parsing."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from gridlab.client import cli, errors
from gridlab.client.sdk import Client
from gridlab.common.config import SchedulerConfig
from gridlab.common.timeutil import FakeClock, duration
from gridlab.scheduler import agentadmin
from gridlab.scheduler.api import SchedulerService
from gridlab.scheduler.auth import METHOD_ROLES, Principal, allowed_roles
from gridlab.scheduler.engine import AgentSession, Engine
from gridlab.scheduler.errors import ApiError
from gridlab.scheduler.store import Store
from gridlab.v1 import agent_pb2, scheduler_pb2, types_pb2

PY = sys.executable
ADMIN = Principal("root", "admin")
ALICE = Principal("alice", "user")


def make_engine(path: Path, clock: FakeClock) -> Engine:
    config = SchedulerConfig(state_dir=str(path), heartbeat_interval=1, heartbeat_timeout=10)
    engine = Engine(Store(path / "s.db"), config, clock=clock)
    # What the engine loads at start (a no-op once it does so itself).
    engine.unschedulable |= agentadmin.load_unschedulable(engine.store)
    return engine


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(tmp_path: Path, clock: FakeClock) -> Engine:
    return make_engine(tmp_path, clock)


def hello(engine: Engine, name: str = "a1", gpus: int = 2) -> AgentSession:
    inv = types_pb2.Inventory(hostname=name, cpus=8, memory_bytes=64 << 30)
    for i in range(gpus):
        inv.gpus.add(index=i, uuid=f"{name}-GPU-{i}", model="A100", memory_total_bytes=80 << 30)
    return engine.agent_hello(agent_pb2.Hello(name=name, inventory=inv))


def drain_outbox(session: AgentSession) -> list[agent_pb2.SchedulerMessage]:
    out = []
    while not session.outbox.empty():
        msg = session.outbox.get_nowait()
        if msg is not None:
            out.append(msg)
    return out


def start_run(engine: Engine, session: AgentSession, gpus: int = 1) -> tuple[str, str]:
    """Submit a run, place it on `session`'s agent, report it running; (run id, attempt id)."""
    spec = types_pb2.RunSpec(command=["true"], resources=types_pb2.Resources(gpus=gpus))
    run_id, _ = engine.submit(ALICE, spec, "")
    assert engine.place_once() == 1
    (assign,) = [m for m in drain_outbox(session) if m.WhichOneof("msg") == "assign"]
    attempt_id = assign.assign.attempt_id
    engine.agent_update(session, agent_pb2.AttemptStatus(attempt_id=attempt_id, state="ATTEMPT_STATE_RUNNING"))
    return run_id, attempt_id


def cancels(session: AgentSession) -> list[agent_pb2.CancelAttempt]:
    return [m.cancel for m in drain_outbox(session) if m.WhichOneof("msg") == "cancel"]


def admin_row(engine: Engine, name: str) -> Any:
    return engine.store.one(
        "SELECT state, admin_state, admin_reason, drain_deadline FROM agents WHERE name = ?", (name,)
    )


def test_cordon_persists_across_a_restart_and_a_reconnect(tmp_path: Path, clock: FakeClock) -> None:
    engine = make_engine(tmp_path, clock)
    hello(engine, "a1")
    hello(engine, "a2")
    agent = agentadmin.set_agent_state(engine, ADMIN, "a1", "cordon", reason="fan replacement")
    assert agent.name == "a1"
    assert agent.state == types_pb2.AGENT_STATE_CORDONED
    assert engine.unschedulable == {"a1"}
    row = admin_row(engine, "a1")
    assert (row["admin_state"], row["admin_reason"], row["state"]) == ("CORDONED", "fan replacement", "READY")
    engine.store.close()

    restarted = make_engine(tmp_path, clock)
    assert agentadmin.load_unschedulable(restarted.store) == {"a1"}
    assert restarted.unschedulable == {"a1"}
    hello(restarted, "a1")  # the reconnect writes READY into `state`, not over the admin's choice
    assert admin_row(restarted, "a1")["admin_state"] == "CORDONED"
    assert agentadmin.set_agent_state(restarted, ADMIN, "a2", "cordon").state == types_pb2.AGENT_STATE_CORDONED

    agent = agentadmin.set_agent_state(restarted, ADMIN, "a1", "uncordon")
    assert agent.state == types_pb2.AGENT_STATE_READY
    assert restarted.unschedulable == {"a2"}
    row = admin_row(restarted, "a1")
    assert (row["admin_state"], row["admin_reason"], row["state"]) == (None, None, "READY")


def test_drain_without_deadline_lets_attempts_finish(engine: Engine, clock: FakeClock) -> None:
    session = hello(engine)
    _, attempt_id = start_run(engine, session)
    agent = agentadmin.set_agent_state(engine, ADMIN, "a1", "drain")
    assert agent.state == types_pb2.AGENT_STATE_DRAINING
    assert list(agent.attempt_ids) == [attempt_id]
    assert agentadmin.drain_deadline(engine, "a1") is None
    clock.advance(10 * 86400)
    assert agentadmin.check_drains(engine) == []
    assert cancels(session) == []


def test_drain_deadline_preempts_once_and_requeues_without_a_retry(engine: Engine, clock: FakeClock) -> None:
    session = hello(engine)
    run_id, attempt_id = start_run(engine, session)
    agentadmin.set_agent_state(engine, ADMIN, "a1", "drain", deadline=60, reason="kernel upgrade")
    assert agentadmin.drain_deadline(engine, "a1") == clock.time() + 60
    assert admin_row(engine, "a1")["drain_deadline"] == clock.time() + 60
    clock.advance(59)
    assert agentadmin.check_drains(engine) == []
    clock.advance(2)
    assert agentadmin.check_drains(engine) == [attempt_id]
    (order,) = cancels(session)
    assert order.attempt_id == attempt_id
    assert order.final_state == types_pb2.ATTEMPT_STATE_PREEMPTED
    assert "drained" in order.reason
    assert "kernel upgrade" in order.reason
    assert agentadmin.check_drains(engine) == []  # once
    assert cancels(session) == []
    kinds = [r["kind"] for r in engine.store.all("SELECT kind FROM events WHERE run_id = ?", (run_id,))]
    assert "preempting" in kinds

    engine.agent_update(session, agent_pb2.AttemptStatus(attempt_id=attempt_id, state="ATTEMPT_STATE_PREEMPTED"))
    run = engine.store.one("SELECT state, retries_used FROM runs WHERE id = ?", (run_id,))
    assert (run["state"], run["retries_used"]) == ("QUEUED", 0)
    assert agentadmin.check_drains(engine) == []


def test_drain_order_goes_again_to_a_reconnected_agent(engine: Engine, clock: FakeClock) -> None:
    session = hello(engine)
    _, attempt_id = start_run(engine, session)
    agentadmin.set_agent_state(engine, ADMIN, "a1", "drain", deadline=5)
    engine.agent_disconnected(session)
    clock.advance(6)
    assert agentadmin.check_drains(engine) == []  # away: nobody to tell
    inv = session.inventory
    status = agent_pb2.AttemptStatus(attempt_id=attempt_id, state="ATTEMPT_STATE_RUNNING")
    again = engine.agent_hello(agent_pb2.Hello(name="a1", inventory=inv, attempts=[status]))
    assert agentadmin.check_drains(engine) == [attempt_id]
    assert [c.attempt_id for c in cancels(again)] == [attempt_id]
    assert agentadmin.check_drains(engine) == []


def test_drain_with_deadline_zero_preempts_at_once(engine: Engine) -> None:
    session = hello(engine)
    _, attempt_id = start_run(engine, session)
    agentadmin.set_agent_state(engine, ADMIN, "a1", "drain", deadline=0)
    assert [c.attempt_id for c in cancels(session)] == [attempt_id]
    assert agentadmin.check_drains(engine) == []


def test_drain_deadline_survives_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    engine = make_engine(tmp_path, clock)
    session = hello(engine)
    _, attempt_id = start_run(engine, session)
    agentadmin.set_agent_state(engine, ADMIN, "a1", "drain", deadline=30)
    engine.store.close()
    restarted = make_engine(tmp_path, clock)
    status = agent_pb2.AttemptStatus(attempt_id=attempt_id, state="ATTEMPT_STATE_RUNNING")
    again = restarted.agent_hello(agent_pb2.Hello(name="a1", inventory=session.inventory, attempts=[status]))
    assert restarted.unschedulable == {"a1"}
    clock.advance(31)
    assert agentadmin.check_drains(restarted) == [attempt_id]
    assert [c.final_state for c in cancels(again)] == [types_pb2.ATTEMPT_STATE_PREEMPTED]


def test_uncordon_ends_a_drain_and_cordon_drops_its_deadline(engine: Engine, clock: FakeClock) -> None:
    session = hello(engine)
    start_run(engine, session)
    agentadmin.set_agent_state(engine, ADMIN, "a1", "drain", deadline=10)
    agentadmin.set_agent_state(engine, ADMIN, "a1", "cordon")
    assert agentadmin.drain_deadline(engine, "a1") is None
    assert admin_row(engine, "a1")["drain_deadline"] is None
    clock.advance(11)
    assert agentadmin.check_drains(engine) == []
    agentadmin.set_agent_state(engine, ADMIN, "a1", "drain", deadline=10)
    agentadmin.set_agent_state(engine, ADMIN, "a1", "uncordon")
    assert engine.unschedulable == set()
    clock.advance(11)
    assert agentadmin.check_drains(engine) == []
    assert cancels(session) == []


def test_non_admin_is_refused(engine: Engine) -> None:
    hello(engine)
    with pytest.raises(ApiError) as err:
        agentadmin.set_agent_state(engine, ALICE, "a1", "cordon")
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert admin_row(engine, "a1")["admin_state"] is None
    assert allowed_roles("/gridlab.v1.Scheduler/SetAgentState") == frozenset({"admin"})
    assert "/gridlab.v1.Scheduler/SetAgentState" in METHOD_ROLES


@pytest.mark.parametrize(
    ("name", "action", "deadline", "reason", "code", "match"),
    [
        ("ghost", "cordon", None, "", grpc.StatusCode.NOT_FOUND, "no agent 'ghost'"),
        ("", "cordon", None, "", grpc.StatusCode.INVALID_ARGUMENT, "name must be"),
        ("a1", "reboot", None, "", grpc.StatusCode.INVALID_ARGUMENT, "cordon, drain, uncordon"),
        ("a1", "cordon", 5.0, "", grpc.StatusCode.INVALID_ARGUMENT, "deadline is for drain only"),
        ("a1", "drain", -1.0, "", grpc.StatusCode.INVALID_ARGUMENT, "between 0"),
        ("a1", "drain", 400 * 86400.0, "", grpc.StatusCode.INVALID_ARGUMENT, "365 days"),
        ("a1", "drain", float("nan"), "", grpc.StatusCode.INVALID_ARGUMENT, "between 0"),
        ("a1", "drain", None, "two\nlines", grpc.StatusCode.INVALID_ARGUMENT, "control character"),
        ("a1", "drain", None, "x" * 2000, grpc.StatusCode.INVALID_ARGUMENT, "limit is 1024"),
    ],
)
def test_bad_requests(
    engine: Engine, name: str, action: str, deadline: float | None, reason: str, code: grpc.StatusCode, match: str
) -> None:
    hello(engine)
    with pytest.raises(ApiError, match=match) as err:
        agentadmin.set_agent_state(engine, ADMIN, name, action, deadline, reason)
    assert err.value.code == code
    assert engine.unschedulable == set()


def test_action_words() -> None:
    assert agentadmin.parse_action("AGENT_ACTION_DRAIN") == "drain"
    assert agentadmin.parse_action(" Cordon ") == "cordon"


@pytest.mark.parametrize(
    ("row_state", "connected", "self_draining", "admin", "shown"),
    [
        ("READY", True, False, None, "READY"),
        ("READY", False, False, None, "OFFLINE"),
        ("READY", True, True, None, "DRAINING"),
        ("READY", True, False, "CORDONED", "CORDONED"),
        ("READY", False, False, "DRAINING", "DRAINING"),
        ("LOST", False, False, "CORDONED", "LOST"),
        ("LOST", False, False, None, "LOST"),
    ],
)
def test_state_word(row_state: str, connected: bool, self_draining: bool, admin: str | None, shown: str) -> None:
    assert agentadmin.state_word(row_state, connected, self_draining, admin) == shown


# --- the servicer: parse, call, convert -------------------------------------------------


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.message = ""

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message
        raise _Aborted


def _call(engine: Engine, request: scheduler_pb2.SetAgentStateRequest) -> tuple[Any, _Context]:
    from gridlab.scheduler import auth

    async def go() -> Any:
        auth._current.set(ADMIN)
        return await SchedulerService(engine).SetAgentState(request, context)

    context = _Context()
    try:
        return asyncio.run(go()), context
    except _Aborted:
        return None, context


def test_servicer_converts_the_request_and_the_errors(engine: Engine, clock: FakeClock) -> None:
    hello(engine)
    request = scheduler_pb2.SetAgentStateRequest(
        name="a1", action=scheduler_pb2.AGENT_ACTION_DRAIN, deadline=duration(90), reason="disk"
    )
    response, _ = _call(engine, request)
    assert response.agent.state == types_pb2.AGENT_STATE_DRAINING
    assert response.deadline.ToSeconds() == int(clock.time() + 90)

    response, context = _call(engine, scheduler_pb2.SetAgentStateRequest(name="a1"))
    assert response is None
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    response, context = _call(
        engine, scheduler_pb2.SetAgentStateRequest(name="zz", action=scheduler_pb2.AGENT_ACTION_CORDON)
    )
    assert context.code == grpc.StatusCode.NOT_FOUND

    response, _ = _call(
        engine, scheduler_pb2.SetAgentStateRequest(name="a1", action=scheduler_pb2.AGENT_ACTION_UNCORDON)
    )
    assert response.agent.state == types_pb2.AGENT_STATE_READY
    assert not response.HasField("deadline")


# --- schedctl ---------------------------------------------------------------------------


def test_schedctl_agents_actions_parse() -> None:
    args = cli.parse_args(["agents", "cordon", "ws-01", "--reason", "fans"])
    assert (args.func, args.name, args.reason) == (cli.cmd_agents_cordon, "ws-01", "fans")
    args = cli.parse_args(["agents", "drain", "ws-01", "--deadline", "1:30:00"])
    assert (args.func, args.name, args.deadline) == (cli.cmd_agents_drain, "ws-01", 5400.0)
    assert cli.parse_args(["agents", "drain", "ws-01"]).deadline is None
    assert cli.parse_args(["agents", "drain", "ws-01", "--deadline", "0"]).deadline == 0
    args = cli.parse_args(["agents", "uncordon", "ws-01", "-o", "json"])
    assert (args.func, args.name, args.output) == (cli.cmd_agents_uncordon, "ws-01", "json")
    args = cli.parse_args(["agents", "--pool", "onprem"])  # listing still works
    assert (args.func, args.pool) == (cli.cmd_agents, "onprem")
    assert cli.parse_args(["agents"]).func is cli.cmd_agents


@pytest.mark.parametrize(
    "argv",
    [["agents", "cordon"], ["agents", "drain", "ws", "--deadline", "soon"], ["agents", "reboot", "ws"]],
)
def test_schedctl_agents_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert "Traceback" not in err


# --- end to end: a real scheduler and agent --------------------------------------------------


def _wait_for(what: str, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_e2e_cordon_drain_uncordon(make_cluster: Any) -> None:
    cluster = make_cluster()
    cluster.start_scheduler()
    cluster.start_agent("w1", fake_gpus="1xA100:80")
    admin = cluster.client()
    _wait_for("the agent", lambda: [a.name for a in admin.agents()] == ["w1"])
    alice = Client(cluster.address, admin.create_token("alice"))
    with pytest.raises(errors.PermissionDenied, match="SetAgentState"):
        alice.cordon("w1")
    with pytest.raises(errors.NotFound, match="no agent 'w9'"):
        admin.drain("w9")
    with pytest.raises(errors.InvalidArgument, match="365 days"):
        admin.drain("w1", deadline=400 * 86400)
    # Spec fields are checked on the way in, too.
    with pytest.raises(errors.InvalidArgument, match="resources.gpu_types is set but resources.gpus is 0"):
        alice.submit(["true"], gpu_type="A100")

    run = alice.submit([PY, "-c", "import time; time.sleep(60)"], gpus=1, gpu_type="A100", time_limit="10m")
    _wait_for("the run to start", lambda: run.status().state == "RUNNING")
    agent = admin.drain("w1", deadline=0, reason="maintenance")  # preempt at once
    assert agent.state == types_pb2.AGENT_STATE_DRAINING
    # Stopped as PREEMPTED, requeued without spending a retry, and not placed back on w1.
    _wait_for("the preemption", lambda: run.status().state == "QUEUED" and run.status().attempts == 1)
    record = alice.get_run(run.id)
    assert record.attempts[0].state == types_pb2.ATTEMPT_STATE_PREEMPTED
    assert "maintenance" in record.attempts[0].reason
    assert record.retries_used == 0
    time.sleep(1.0)
    assert run.status().state == "QUEUED"

    assert admin.uncordon("w1").state == types_pb2.AGENT_STATE_READY
    _wait_for("the run to start again", lambda: run.status().state == "RUNNING")
    assert run.status().attempts == 2
    run.cancel(grace=0)
    assert run.wait(timeout=30, raise_on_failure=False).state == "CANCELLED"


def test_an_emptied_drain_costs_no_more_queries(engine: Engine, clock: FakeClock) -> None:
    session = hello(engine)
    _, attempt_id = start_run(engine, session)
    agentadmin.set_agent_state(engine, ADMIN, "a1", "drain", deadline=1)
    clock.advance(2)
    assert agentadmin.check_drains(engine) == [attempt_id]
    engine.agent_update(session, agent_pb2.AttemptStatus(attempt_id=attempt_id, state="ATTEMPT_STATE_PREEMPTED"))
    assert agentadmin.check_drains(engine) == []  # finds it empty
    queries: list[str] = []
    engine.store.conn.set_trace_callback(queries.append)
    assert agentadmin.check_drains(engine) == []
    engine.store.conn.set_trace_callback(None)
    assert queries == []
