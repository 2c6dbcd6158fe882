"""The engine without sockets: a real SQLite file, agent sessions fed by hand, a fake clock.

These drive the same methods the gRPC shells call and check both the store and the
messages queued for agents.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from gridlab.common.config import SchedulerConfig
from gridlab.common.timeutil import FakeClock
from gridlab.scheduler.auth import Principal
from gridlab.scheduler.engine import AgentSession, Engine
from gridlab.scheduler.errors import ApiError
from gridlab.scheduler.store import Store
from gridlab.v1 import agent_pb2, types_pb2

ALICE = Principal("alice", "user")
BOB = Principal("bob", "user")


def inventory(gpus: int) -> types_pb2.Inventory:
    inv = types_pb2.Inventory(hostname="h", cpus=8, memory_bytes=64 << 30)
    for i in range(gpus):
        inv.gpus.add(index=i, uuid=f"GPU-{i}", model="A100", memory_total_bytes=80 << 30)
    return inv


def spec(*command: str, gpus: int = 0) -> types_pb2.RunSpec:
    return types_pb2.RunSpec(command=list(command) or ["true"], resources=types_pb2.Resources(gpus=gpus))


def drain(session: AgentSession) -> list[agent_pb2.SchedulerMessage]:
    out = []
    while not session.outbox.empty():
        msg = session.outbox.get_nowait()
        if msg is not None:
            out.append(msg)
    return out


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    config = SchedulerConfig(state_dir=str(tmp_path), heartbeat_interval=1, heartbeat_timeout=10)
    return Engine(Store(tmp_path / "s.db"), config, clock=FakeClock())


def hello(engine: Engine, name: str = "a1", gpus: int = 2, attempts: list[agent_pb2.AttemptStatus] | None = None):
    return engine.agent_hello(agent_pb2.Hello(name=name, inventory=inventory(gpus), attempts=attempts or []))


def status(attempt_id: str, state: str, exit_code: int = 0) -> agent_pb2.AttemptStatus:
    return agent_pb2.AttemptStatus(attempt_id=attempt_id, state=f"ATTEMPT_STATE_{state}", exit_code=exit_code)


def run_state(engine: Engine, run_id: str) -> str:
    return engine.store.one("SELECT state FROM runs WHERE id = ?", (run_id,))["state"]


def test_submit_place_run_succeed(engine: Engine) -> None:
    session = hello(engine)
    assert drain(session)[0].WhichOneof("msg") == "welcome"
    run_id, existed = engine.submit(ALICE, spec("python", "x.py", gpus=1), "")
    assert not existed
    assert engine.place_once() == 1
    (assign,) = drain(session)
    assert assign.assign.run_id == run_id
    assert list(assign.assign.gpu_uuids) == ["GPU-0"]
    assert run_state(engine, run_id) == "STARTING"
    attempt = assign.assign.attempt_id
    engine.agent_update(session, status(attempt, "RUNNING"))
    assert run_state(engine, run_id) == "RUNNING"
    engine.agent_update(session, status(attempt, "SUCCEEDED"))
    assert run_state(engine, run_id) == "SUCCEEDED"
    (release,) = drain(session)
    assert release.release.attempt_id == attempt
    kinds = [r["kind"] for r in engine.store.all("SELECT kind FROM events WHERE run_id = ? ORDER BY id", (run_id,))]
    assert kinds == ["submitted", "placed", "running", "succeeded"]


def test_idempotency_key_returns_the_first_run(engine: Engine) -> None:
    first, _ = engine.submit(ALICE, spec(), "k1")
    again, existed = engine.submit(ALICE, spec(), "k1")
    assert (again, existed) == (first, True)
    other, existed = engine.submit(BOB, spec(), "k1")  # keys are per user
    assert other != first
    assert not existed


def test_silent_agent_is_lost_and_its_run_requeued_without_spending_a_retry(engine: Engine) -> None:
    session = hello(engine)
    run_id, _ = engine.submit(ALICE, spec(gpus=2), "")
    engine.place_once()
    engine.clock.advance(9)  # type: ignore[attr-defined]
    assert engine.check_liveness() == []
    engine.clock.advance(2)  # type: ignore[attr-defined]
    assert engine.check_liveness() == ["a1"]
    row = engine.store.one("SELECT * FROM runs WHERE id = ?", (run_id,))
    assert row["state"] == "QUEUED"
    assert row["retries_used"] == 0
    assert session.closed
    # The GPUs are free again for the next agent.
    other = hello(engine, "a2")
    assert engine.place_once() == 1
    assert drain(other)[-1].assign.run_id == run_id


def test_a_lost_agent_that_comes_back_is_told_to_kill_its_stale_attempt(engine: Engine) -> None:
    session = hello(engine)
    engine.submit(ALICE, spec(), "")
    engine.place_once()
    attempt = drain(session)[-1].assign.attempt_id
    engine.clock.advance(11)  # type: ignore[attr-defined]
    engine.check_liveness()
    back = hello(engine, attempts=[status(attempt, "RUNNING")])
    msgs = drain(back)
    cancel = [m.cancel for m in msgs if m.WhichOneof("msg") == "cancel"]
    assert [c.attempt_id for c in cancel] == [attempt]
    # When it reports the end, the scheduler releases it and changes nothing else.
    engine.agent_update(back, status(attempt, "FAILED", 137))
    assert drain(back)[-1].release.attempt_id == attempt


def test_agent_reconnecting_without_an_attempt_loses_it(engine: Engine) -> None:
    session = hello(engine)
    run_id, _ = engine.submit(ALICE, spec(), "")
    engine.place_once()
    drain(session)
    hello(engine)  # the agent restarted: it reports no attempts
    assert run_state(engine, run_id) == "QUEUED"
    assert session.closed  # the old stream was replaced


def test_failure_spends_retries_then_fails(engine: Engine) -> None:
    session = hello(engine)
    s = spec()
    s.max_retries = 1
    run_id, _ = engine.submit(ALICE, s, "")
    for expected in ("QUEUED", "FAILED"):
        engine.place_once()
        attempt = drain(session)[-1].assign.attempt_id
        engine.agent_update(session, status(attempt, "FAILED", 2))
        assert run_state(engine, run_id) == expected
    row = engine.store.one("SELECT exit_code, retries_used FROM runs WHERE id = ?", (run_id,))
    assert (row["exit_code"], row["retries_used"]) == (2, 1)


def test_cancel_running_orders_the_agent_and_ends_cancelled(engine: Engine) -> None:
    session = hello(engine)
    run_id, _ = engine.submit(ALICE, spec(), "")
    engine.place_once()
    attempt = drain(session)[-1].assign.attempt_id
    with pytest.raises(ApiError) as info:
        engine.cancel(BOB, run_id, None, "")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    engine.cancel(ALICE, run_id, 5.0, "")
    (order,) = drain(session)
    assert order.cancel.attempt_id == attempt
    assert order.cancel.grace.seconds == 5
    engine.cancel(ALICE, run_id, None, "")  # idempotent while it stops
    engine.agent_update(session, status(attempt, "CANCELLED", 143))
    assert run_state(engine, run_id) == "CANCELLED"
    with pytest.raises(ApiError) as info:
        engine.cancel(ALICE, run_id, None, "")
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_logs_are_idempotent_and_fenced_by_agent(engine: Engine) -> None:
    session = hello(engine)
    hello(engine, "a2")
    run_id, _ = engine.submit(ALICE, spec(gpus=2), "")
    engine.place_once()
    attempt = drain(session)[-1].assign.attempt_id
    lines = [types_pb2.LogLine(attempt_id=attempt, rank=0, seq=i, text=f"l{i}") for i in (1, 2, 3)]
    assert engine.push_logs("a1", lines[:2]) == (2, 0)
    assert engine.push_logs("a1", lines) == (1, 2)  # a resend after a failure
    with pytest.raises(ApiError) as info:
        engine.push_logs("a2", lines)
    assert info.value.code == grpc.StatusCode.ABORTED
    with pytest.raises(ApiError):
        engine.push_logs("a1", [types_pb2.LogLine(attempt_id="att-nope", seq=1)])
    batches, _ = engine.store.logs.read(run_id, 0)
    assert [b.text for b in batches] == ["l1", "l2", "l3"]


def test_state_survives_reopening_the_store(tmp_path: Path) -> None:
    config = SchedulerConfig(state_dir=str(tmp_path))
    first = Engine(Store(tmp_path / "s.db"), config, clock=FakeClock())
    run_id, _ = first.submit(ALICE, spec("echo", "hi"), "")
    first.store.close()
    second = Engine(Store(tmp_path / "s.db"), config, clock=FakeClock())
    assert second.run_message(run_id).spec.command == ["echo", "hi"]


def test_a_draining_agent_gets_nothing_new(engine: Engine) -> None:
    session = hello(engine)
    engine.agent_heartbeat(session, agent_pb2.Heartbeat(draining=True))
    run_id, _ = engine.submit(ALICE, spec(), "")
    assert engine.place_once() == 0
    assert [a.state for a in engine.list_agents()] == [types_pb2.AGENT_STATE_DRAINING]
    hello(engine)  # restarted: ready again
    assert engine.place_once() == 1
    assert run_state(engine, run_id) == "STARTING"


def test_an_unknown_attempt_state_is_refused_before_anything_changes(engine: Engine) -> None:
    with pytest.raises(ApiError) as info:
        hello(engine, attempts=[agent_pb2.AttemptStatus(attempt_id="att-x", state=99)])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert engine.sessions == {}
    assert engine.last_seen == {}
    session = hello(engine)
    with pytest.raises(ApiError):
        engine.agent_update(session, agent_pb2.AttemptStatus(attempt_id="att-x", state=99))
    assert engine.sessions == {"a1": session}


def test_heartbeats_reconcile_attempts_so_a_lost_update_is_recovered(engine: Engine) -> None:
    session = hello(engine)
    run_id, _ = engine.submit(ALICE, spec(), "")
    engine.place_once()
    attempt = drain(session)[-1].assign.attempt_id
    engine.agent_heartbeat(session, agent_pb2.Heartbeat(attempts=[status(attempt, "SUCCEEDED")]))
    assert run_state(engine, run_id) == "SUCCEEDED"
    assert drain(session)[-1].release.attempt_id == attempt


def test_a_replaced_stream_neither_revives_liveness_nor_swallows_replies(engine: Engine) -> None:
    old = hello(engine)
    engine.submit(ALICE, spec(), "")
    engine.place_once()
    attempt = drain(old)[-1].assign.attempt_id
    new = hello(engine, attempts=[status(attempt, "RUNNING")])
    drain(new)
    engine.clock.advance(11)  # type: ignore[attr-defined]
    engine.agent_update(old, status(attempt, "SUCCEEDED"))  # the old reader, still draining
    assert drain(new)[-1].release.attempt_id == attempt  # the reply went to the live stream
    assert engine.check_liveness() == ["a1"]  # and the stale message did not count as a heartbeat


def test_log_lines_with_impossible_times_or_streams(engine: Engine) -> None:
    session = hello(engine)
    engine.submit(ALICE, spec(), "")
    engine.place_once()
    attempt = drain(session)[-1].assign.attempt_id
    line = types_pb2.LogLine(attempt_id=attempt, rank=0, seq=1, text="far future")
    line.time.seconds = 253402300799
    line.time.nanos = 999999999
    assert engine.push_logs("a1", [line]) == (1, 0)
    stored = engine.store.one("SELECT time FROM log_batches")["time"]
    assert stored == engine.clock.time()  # the arrival time replaced the impossible one
    with pytest.raises(ApiError) as info:
        engine.push_logs("a1", [types_pb2.LogLine(attempt_id=attempt, seq=2, stream=42)])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_cancel_resent_after_reconnect_keeps_its_grace(engine: Engine) -> None:
    session = hello(engine)
    run_id, _ = engine.submit(ALICE, spec(), "")
    engine.place_once()
    attempt = drain(session)[-1].assign.attempt_id
    engine.cancel(ALICE, run_id, 0.0, "")
    assert drain(session)[-1].cancel.grace.ToNanoseconds() == 0
    back = hello(engine, attempts=[status(attempt, "RUNNING")])
    (order,) = [m.cancel for m in drain(back) if m.WhichOneof("msg") == "cancel"]
    assert order.HasField("grace")
    assert order.grace.ToNanoseconds() == 0


def test_a_version_1_database_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    import sqlite_utils

    from gridlab.scheduler import store as store_mod

    conn = sqlite3.connect(tmp_path / "old.db")
    store_mod.MIGRATIONS[1](sqlite_utils.Database(conn))
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    upgraded = Store(tmp_path / "old.db")
    assert upgraded.one("PRAGMA user_version")[0] == store_mod.SCHEMA_VERSION
    assert "cancel_grace" in upgraded.db["runs"].columns_dict
    upgraded.conn.execute(f"PRAGMA user_version={store_mod.SCHEMA_VERSION + 1}")
    upgraded.close()
    with pytest.raises(RuntimeError, match="newer than this gridlab"):
        Store(tmp_path / "old.db")


def test_the_watchdog_stops_an_attempt_whose_step_stops_advancing(engine: Engine) -> None:
    session = hello(engine)
    s = spec()
    s.max_retries = 1
    s.hang_timeout.FromSeconds(30)
    run_id, _ = engine.submit(ALICE, s, "")
    engine.place_once()
    attempt = drain(session)[-1].assign.attempt_id

    def beat(step: int) -> None:
        report = status(attempt, "RUNNING")
        report.last_step = step
        engine.agent_heartbeat(session, agent_pb2.Heartbeat(attempts=[report]))

    for step in (1, 2, 3):  # advancing: never hung, however long the run
        beat(step)
        engine.clock.advance(20)  # type: ignore[attr-defined]
        assert engine.check_hangs() == []
    beat(3)  # reported again, but not advanced
    engine.clock.advance(11)  # type: ignore[attr-defined]
    assert engine.check_hangs() == [attempt]
    assert engine.check_hangs() == []  # flagged once
    (order,) = [m for m in drain(session) if m.HasField("cancel")]
    assert order.cancel.attempt_id == attempt
    assert order.cancel.final_state == types_pb2.ATTEMPT_STATE_FAILED
    assert "hung: step 3, no progress for 30s" in order.cancel.reason
    kinds = [r["kind"] for r in engine.store.all("SELECT kind FROM events WHERE run_id = ? ORDER BY id", (run_id,))]
    assert "hung" in kinds
    engine.agent_update(session, status(attempt, "FAILED", 137))
    assert run_state(engine, run_id) == "QUEUED"  # a retry spent, like a crash


def test_without_hang_timeout_a_silent_attempt_is_left_alone(engine: Engine) -> None:
    session = hello(engine)
    engine.submit(ALICE, spec(), "")
    engine.place_once()
    attempt = drain(session)[-1].assign.attempt_id
    engine.agent_heartbeat(session, agent_pb2.Heartbeat(attempts=[status(attempt, "RUNNING")]))
    engine.clock.advance(10_000)  # type: ignore[attr-defined]
    assert engine.check_hangs() == []


def running_with_hang_timeout(engine: Engine, seconds: int) -> tuple[AgentSession, str]:
    """An agent running one attempt of a run with hang_timeout, reported RUNNING once."""
    session = hello(engine)
    s = spec()
    s.hang_timeout.FromSeconds(seconds)
    engine.submit(ALICE, s, "")
    engine.place_once()
    attempt = drain(session)[-1].assign.attempt_id
    engine.agent_heartbeat(session, agent_pb2.Heartbeat(attempts=[status(attempt, "RUNNING")]))
    return session, attempt


def test_a_hang_stop_lost_with_the_agents_stream_is_sent_again_when_it_reconnects(engine: Engine) -> None:
    session, attempt = running_with_hang_timeout(engine, 5)
    engine.agent_disconnected(session)  # the stream drops; the agent has until the heartbeat timeout
    engine.clock.advance(6)  # type: ignore[attr-defined]
    assert engine.check_hangs() == [attempt]  # the order had nowhere to go
    back = hello(engine, attempts=[status(attempt, "RUNNING")])
    orders = [m.cancel for m in drain(back) if m.HasField("cancel")]
    assert [o.attempt_id for o in orders] == [attempt]
    assert orders[0].final_state == types_pb2.ATTEMPT_STATE_FAILED
    assert "hung" in orders[0].reason


def test_an_attempt_whose_ranks_exited_is_not_hung_while_its_logs_drain(engine: Engine) -> None:
    session, attempt = running_with_hang_timeout(engine, 5)
    draining = status(attempt, "RUNNING")
    draining.ranks_exited = True  # the agent is shipping the last lines before it reports the end
    for _ in range(3):
        engine.clock.advance(4)  # type: ignore[attr-defined]
        engine.agent_heartbeat(session, agent_pb2.Heartbeat(attempts=[draining]))
        assert engine.check_hangs() == []


def test_specs_naming_a_bundle_not_uploaded_or_pip_options_are_refused(engine: Engine) -> None:
    s = spec()
    s.code_digest = "sha256:" + "0" * 64
    with pytest.raises(ApiError, match="upload it first") as info:
        engine.submit(ALICE, s, "")
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    s = spec()
    s.workdir = "src"
    with pytest.raises(ApiError, match="set code_digest too"):
        engine.submit(ALICE, s, "")
    s = spec()
    s.requirements.append("-e git+https://example.com/x.git")
    with pytest.raises(ApiError, match="pip option"):
        engine.submit(ALICE, s, "")
