"""Issue 6's policy through the engine: preemption, time limits, fair share and quotas, with a real SQLite file
and agent sessions fed by hand (no sockets), on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_engine import drain, hello, run_state, spec, status

from gridlab.common.config import SchedulerConfig
from gridlab.common.timeutil import FakeClock, duration
from gridlab.scheduler.auth import Principal
from gridlab.scheduler.engine import Engine
from gridlab.scheduler.store import Store
from gridlab.v1 import types_pb2

ALICE, BOB = Principal("alice", "user", "vision"), Principal("bob", "user", "vision")


def make(tmp_path: Path, **config: object) -> Engine:
    cfg = SchedulerConfig(state_dir=str(tmp_path), heartbeat_interval=1, heartbeat_timeout=100, **config)  # type: ignore[arg-type]
    return Engine(Store(tmp_path / "s.db"), cfg, clock=FakeClock())


def job(gpus: int = 1, *, priority: int = 0, preemptible: bool = False, time_limit: float = 0) -> types_pb2.RunSpec:
    s = spec("python", "train.py", gpus=gpus)
    s.priority, s.preemptible = priority, preemptible
    if time_limit:
        s.time_limit.CopyFrom(duration(time_limit))
    return s


def assigned(session) -> list[str]:  # noqa: ANN001
    return [m.assign.run_id for m in drain(session) if m.WhichOneof("msg") == "assign"]


def test_a_higher_priority_run_preempts_a_preemptible_one_which_requeues_for_free(tmp_path: Path) -> None:
    engine = make(tmp_path)
    session = hello(engine, gpus=2)
    drain(session)
    low, _ = engine.submit(BOB, job(2, preemptible=True), "")
    engine.place_once()
    (assign,) = [m.assign for m in drain(session) if m.WhichOneof("msg") == "assign"]
    engine.agent_update(session, status(assign.attempt_id, "RUNNING"))
    high, _ = engine.submit(ALICE, job(2, priority=10), "")
    assert engine.place_once() == 0
    (cancel,) = [m.cancel for m in drain(session) if m.WhichOneof("msg") == "cancel"]
    assert cancel.attempt_id == assign.attempt_id
    assert cancel.final_state == types_pb2.ATTEMPT_STATE_PREEMPTED
    assert "preempting" in engine.store.one("SELECT pending_reason FROM runs WHERE id = ?", (high,))[0].lower()
    assert engine.place_once() == 0  # the victim is still stopping: not preempted twice, nothing else taken
    assert [m.WhichOneof("msg") for m in drain(session)] == []
    engine.agent_update(session, status(assign.attempt_id, "PREEMPTED"))
    row = engine.store.one("SELECT state, retries_used, message FROM runs WHERE id = ?", (low,))
    assert (row["state"], row["retries_used"]) == ("QUEUED", 0)
    assert row["message"].startswith("preempted")
    assert engine.place_once() == 1
    (again,) = [m.assign for m in drain(session) if m.WhichOneof("msg") == "assign"]
    assert again.run_id == high
    engine.agent_update(session, status(again.attempt_id, "SUCCEEDED"))
    engine.place_once()  # the victim comes back; once it runs, the requeue reason is gone
    (back,) = [m.assign for m in drain(session) if m.WhichOneof("msg") == "assign"]
    assert back.run_id == low
    engine.agent_update(session, status(back.attempt_id, "RUNNING"))
    assert engine.store.one("SELECT message FROM runs WHERE id = ?", (low,))[0] == ""


def test_a_run_past_its_time_limit_is_stopped_and_not_retried(tmp_path: Path) -> None:
    engine = make(tmp_path)
    session = hello(engine)
    drain(session)
    s = job(time_limit=60)
    s.max_retries = 3
    run_id, _ = engine.submit(ALICE, s, "")
    engine.place_once()
    (assign,) = [m.assign for m in drain(session) if m.WhichOneof("msg") == "assign"]
    engine.agent_update(session, status(assign.attempt_id, "RUNNING"))
    engine.clock.advance(59)  # type: ignore[attr-defined]
    assert engine.check_time_limits() == []
    engine.clock.advance(2)  # type: ignore[attr-defined]
    assert engine.check_time_limits() == [assign.attempt_id]
    assert engine.check_time_limits() == []  # told once
    (cancel,) = [m.cancel for m in drain(session)]
    assert "time limit of 60s reached" in cancel.reason
    engine.agent_update(session, status(assign.attempt_id, "FAILED", exit_code=143))
    assert run_state(engine, run_id) == "FAILED"


def test_fair_share_puts_the_lighter_user_first_at_equal_priority(tmp_path: Path) -> None:
    engine = make(tmp_path)
    session = hello(engine, gpus=1)
    drain(session)
    first, _ = engine.submit(BOB, job(1), "")
    engine.place_once()
    (assign,) = [m.assign for m in drain(session) if m.WhichOneof("msg") == "assign"]
    engine.agent_update(session, status(assign.attempt_id, "RUNNING"))
    engine.clock.advance(3600)  # type: ignore[attr-defined]
    engine.agent_update(session, status(assign.attempt_id, "SUCCEEDED"))  # bob used a GPU-hour
    bobs, _ = engine.submit(BOB, job(1), "")
    engine.clock.advance(1)  # type: ignore[attr-defined]
    alices, _ = engine.submit(ALICE, job(1), "")  # later, but alice used nothing
    drain(session)
    engine.place_once()
    assert assigned(session) == [alices]
    assert run_state(engine, bobs) == "QUEUED"
    assert engine.usage["bob"].gpu_seconds == pytest.approx(3600)
    assert make(tmp_path).usage["bob"].gpu_seconds == pytest.approx(3600)  # recomputed after a restart


def test_a_team_quota_holds_its_runs_with_a_reason(tmp_path: Path) -> None:
    engine = make(tmp_path, quota_teams={"vision": 2})
    session = hello(engine, gpus=4)
    drain(session)
    a, _ = engine.submit(ALICE, job(2), "")
    engine.clock.advance(1)  # type: ignore[attr-defined]
    b, _ = engine.submit(BOB, job(1), "")
    assert engine.place_once() == 1
    assert run_state(engine, a) == "STARTING"
    reason = engine.store.one("SELECT pending_reason FROM runs WHERE id = ?", (b,))[0]
    assert reason == "Quota: team vision at 2/2 GPUs"


def test_queued_runs_carry_their_place_in_the_last_pass_order(tmp_path: Path) -> None:
    engine = make(tmp_path)
    session = hello(engine, gpus=1)
    drain(session)
    first, _ = engine.submit(BOB, job(1), "")
    engine.clock.advance(1)  # type: ignore[attr-defined]  # submit time orders equals, not the random ids
    low, _ = engine.submit(BOB, job(1), "")
    high, _ = engine.submit(ALICE, job(1, priority=5), "")
    assert engine.run_message(low).queue_position == 0  # no pass has ordered it yet
    assert engine.place_once() == 1  # the high-priority run takes the only GPU
    positions = {r.id: r.queue_position for r in engine.list_runs(ALICE, [], "", 100, "")[0]}
    assert engine.run_message(high).queue_position == 0  # not queued any more
    assert [engine.run_message(r).queue_position for r in (first, low)] == [1, 2]
    assert positions.get(high, 0) == 0
