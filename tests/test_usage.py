"""Cost accounting (issue 9): GPU-hours and cost per user, pool and run, from the attempts' running times.

Engine level with a fake clock (two priced pools, a gang, a preempted and requeued run, a CPU-only run:
every number exact), then end to end: a real scheduler and sim agents, `schedctl usage -o json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_engine import drain, inventory

from gridlab.common.config import SchedulerConfig
from gridlab.common.timeutil import FakeClock
from gridlab.scheduler import usage
from gridlab.scheduler.auth import Principal
from gridlab.scheduler.engine import AgentSession, Engine
from gridlab.scheduler.errors import ApiError
from gridlab.scheduler.store import Store
from gridlab.v1 import agent_pb2, types_pb2

ADMIN = Principal("root", "admin")
ALICE = Principal("alice", "user")
BOB = Principal("bob", "user")
CAROL = Principal("carol", "user")


def hello(engine: Engine, name: str, pool: str, gpus: int = 2) -> AgentSession:
    return engine.agent_hello(agent_pb2.Hello(name=name, pool=pool, inventory=inventory(gpus)))


def assigned(session: AgentSession) -> list[str]:
    return [m.assign.attempt_id for m in drain(session) if m.WhichOneof("msg") == "assign"]


def report(engine: Engine, session: AgentSession, attempt_id: str, state: str) -> None:
    engine.agent_update(
        session, agent_pb2.AttemptStatus(attempt_id=attempt_id, state=f"ATTEMPT_STATE_{state}", exit_code=0)
    )


def spec(gpus: int, nodes: int = 1) -> types_pb2.RunSpec:
    return types_pb2.RunSpec(command=["true"], resources=types_pb2.Resources(gpus=gpus, nodes=nodes))


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    config = SchedulerConfig(
        state_dir=str(tmp_path),
        heartbeat_interval=1000,
        heartbeat_timeout=100_000,
        burst_pools=["cloud"],
        pool_prices={"onprem": 1.0, "cloud": 3.0},
    )
    return Engine(Store(tmp_path / "s.db"), config, clock=FakeClock())


def table(rows: list[usage.Row]) -> dict[str, tuple[float, float, int]]:
    return {r.key: (round(r.gpu_hours, 9), round(r.cost, 9), r.runs) for r in rows}


def test_gpu_hours_and_cost_per_user_pool_and_run(engine: Engine) -> None:
    clock: FakeClock = engine.clock  # type: ignore[assignment]
    o1, c1, c2 = hello(engine, "o1", "onprem"), hello(engine, "c1", "cloud"), hello(engine, "c2", "cloud")
    for s in (o1, c1, c2):
        drain(s)
    start = clock.time()
    # alice's 2-GPU run takes the on-prem agent; bob's 2-node gang of 2 GPUs a node has to burst to the cloud.
    run1, _ = engine.submit(ALICE, spec(2), "")
    assert engine.place_once() == 1
    (a1,) = assigned(o1)
    gang, _ = engine.submit(BOB, spec(2, nodes=2), "")
    assert engine.place_once() == 1
    (g1,), (g2,) = assigned(c1), assigned(c2)
    assert g1 == g2
    report(engine, o1, a1, "RUNNING")
    report(engine, c1, g1, "RUNNING")
    report(engine, c2, g1, "RUNNING")
    clock.advance(1800)
    report(engine, o1, a1, "SUCCEEDED")  # 2 GPUs x 0.5 h on-prem
    clock.advance(1800)
    report(engine, c1, g1, "SUCCEEDED")
    report(engine, c2, g1, "SUCCEEDED")  # 2 nodes x 2 GPUs x 1 h in the cloud
    assert engine.store.one("SELECT state FROM runs WHERE id = ?", (gang,))["state"] == "SUCCEEDED"

    # alice's 1-GPU run is preempted after 15 minutes, requeued, and runs 30 more on its second attempt.
    run2, _ = engine.submit(ALICE, spec(1), "")
    engine.place_once()
    (b1,) = assigned(o1)
    report(engine, o1, b1, "RUNNING")
    clock.advance(900)
    report(engine, o1, b1, "PREEMPTED")
    assert engine.store.one("SELECT state FROM runs WHERE id = ?", (run2,))["state"] == "QUEUED"
    clock.advance(100)  # queued: not counted
    engine.place_once()
    (b2,) = assigned(o1)
    assert b2 != b1
    report(engine, o1, b2, "RUNNING")
    clock.advance(1800)
    report(engine, o1, b2, "SUCCEEDED")
    # carol's CPU-only run: no GPU-hours, but its wall time is kept.
    run3, _ = engine.submit(CAROL, spec(0), "")
    engine.place_once()
    (c,) = assigned(o1)
    report(engine, o1, c, "RUNNING")
    clock.advance(600)
    report(engine, o1, c, "SUCCEEDED")
    # A run still running is not counted until it ends.
    engine.submit(BOB, spec(1), "")
    engine.place_once()
    (live,) = assigned(o1)
    report(engine, o1, live, "RUNNING")
    clock.advance(60)

    by_user = usage.get_usage(engine, ADMIN, group_by="user")
    assert table(by_user) == {"alice": (1.75, 1.75, 2), "bob": (4.0, 12.0, 1), "carol": (0.0, 0.0, 1)}
    assert [r.key for r in by_user] == ["bob", "alice", "carol"]  # most costly first
    assert {r.key: round(r.wall_hours, 9) for r in by_user} == {
        "alice": 1.25,
        "bob": 2.0,
        "carol": round(600 / 3600, 9),
    }
    assert table(usage.get_usage(engine, ADMIN, group_by="pool")) == {
        "cloud": (4.0, 12.0, 1),
        "onprem": (1.75, 1.75, 3),
    }
    assert table(usage.get_usage(engine, ADMIN, group_by="run")) == {
        run1: (1.0, 1.0, 1),
        gang: (4.0, 12.0, 1),
        run2: (0.75, 0.75, 1),
        run3: (0.0, 0.0, 1),
    }
    # The window is on when attempts ended: [since, until).
    window = usage.get_usage(engine, ADMIN, group_by="run", since=start + 1800, until=start + 3600)
    assert table(window) == {run1: (1.0, 1.0, 1)}  # the gang ended at start + 3600: not before `until`
    window = usage.get_usage(engine, ADMIN, group_by="run", since=start + 3601, until=start + 4501)
    assert table(window) == {run2: (0.25, 0.25, 1)}  # the preempted attempt only
    assert table(usage.get_usage(engine, ADMIN, group_by="pool", user="alice")) == {"onprem": (1.75, 1.75, 2)}
    # Users see their own usage only.
    assert table(usage.get_usage(engine, BOB, group_by="pool")) == {"cloud": (4.0, 12.0, 1)}
    assert table(usage.get_usage(engine, BOB, group_by="user", user="bob")) == {"bob": (4.0, 12.0, 1)}
    with pytest.raises(ApiError, match="admin"):
        usage.get_usage(engine, BOB, user="alice")
    with pytest.raises(ApiError, match="group_by"):
        usage.get_usage(engine, ADMIN, group_by="team")
    with pytest.raises(ApiError, match="before"):
        usage.get_usage(engine, ADMIN, since=start + 10, until=start)


def test_the_price_and_pool_are_those_of_when_the_attempt_ended(tmp_path: Path) -> None:
    """Changing pool_prices later does not rewrite what was spent; unpriced pools cost nothing."""
    config = SchedulerConfig(state_dir=str(tmp_path), heartbeat_timeout=100_000, pool_prices={"spot": 0.5})
    engine = Engine(Store(tmp_path / "s.db"), config, clock=FakeClock())
    s1, s2 = hello(engine, "s1", "spot", gpus=4), hello(engine, "x1", "other", gpus=4)
    drain(s1), drain(s2)
    engine.submit(ALICE, types_pb2.RunSpec(command=["true"], pool="spot", resources=types_pb2.Resources(gpus=4)), "")
    engine.submit(ALICE, types_pb2.RunSpec(command=["true"], pool="other", resources=types_pb2.Resources(gpus=4)), "")
    engine.place_once()
    (a,), (b,) = assigned(s1), assigned(s2)
    for s, att in ((s1, a), (s2, b)):
        report(engine, s, att, "RUNNING")
    engine.clock.advance(7200)  # type: ignore[attr-defined]
    for s, att in ((s1, a), (s2, b)):
        report(engine, s, att, "SUCCEEDED")
    engine.store.close()
    config.pool_prices = {"spot": 100.0, "other": 100.0}
    reopened = Engine(Store(tmp_path / "s.db"), config, clock=FakeClock())
    assert table(usage.get_usage(reopened, ADMIN, group_by="pool")) == {"spot": (8.0, 4.0, 1), "other": (8.0, 0.0, 1)}


def test_pool_prices_from_the_environment() -> None:
    from gridlab.common.config import load

    config = load(
        SchedulerConfig, env_prefix="GRIDLAB_SCHEDULER_", environ={"GRIDLAB_SCHEDULER_POOL_PRICES": "spot=0.9,cloud=2"}
    )
    assert config.pool_prices == {"spot": 0.9, "cloud": 2.0}


@pytest.mark.slow
def test_schedctl_usage_matches_the_attempts_durations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real scheduler (priced by GRIDLAB_SCHEDULER_POOL_PRICES) and agents in two pools; `schedctl usage
    -o json` reports what the runs' attempts' start and end times and GPU counts make."""
    import os
    import subprocess
    import sys

    from gridlab.client.localcluster import LocalCluster
    from gridlab.common.timeutil import from_ts

    monkeypatch.setenv("GRIDLAB_SCHEDULER_POOL_PRICES", "onprem=1.5,spot=4")
    sleep = [sys.executable, "-c", "import time; time.sleep(1.5)"]
    with LocalCluster(tmp_path / "c") as cluster:
        cluster.start_scheduler()
        cluster.start_agent("w1", fake_gpus="2xA100:80")
        cluster.start_agent("w2", fake_gpus="1xA100:80", pool="spot")
        with cluster.client() as client:
            runs = [client.submit(sleep, gpus=2, pool="onprem"), client.submit(sleep, gpus=1, pool="spot")]
            for run in runs:
                assert run.wait(timeout=120).state == "SUCCEEDED"
            expected: dict[str, list[float]] = {}
            for run, price in zip(runs, (1.5, 4.0), strict=True):
                message = client.get_run(run.id)
                hours = sum(
                    message.spec.resources.gpus * (from_ts(a.finished_at) - from_ts(a.started_at)) / 3600
                    for a in message.attempts
                )
                assert hours > 0
                expected[run.id] = [hours, hours * price]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDLAB_")}
        env.update(HOME=str(tmp_path), GRIDLAB_ADDRESS=cluster.address, GRIDLAB_TOKEN=cluster.admin_token)

        def schedctl(*argv: str) -> list[dict[str, object]]:
            proc = subprocess.run(
                [sys.executable, "-m", "gridlab.client.cli", "-o", "json", "usage", *argv],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert proc.returncode == 0, proc.stderr
            return json.loads(proc.stdout)

        by_run = {r["key"]: [r["gpu_hours"], r["cost"]] for r in schedctl("--by", "run")}
        assert by_run.keys() == expected.keys()
        for key, values in expected.items():
            assert by_run[key] == pytest.approx(values, rel=1e-6)
        by_pool = {r["key"]: [r["gpu_hours"], r["cost"]] for r in schedctl("--by", "pool", "--since", "1h")}
        assert by_pool.keys() == {"onprem", "spot"}
        assert by_pool["onprem"] == pytest.approx(expected[runs[0].id], rel=1e-6)
        assert by_pool["spot"] == pytest.approx(expected[runs[1].id], rel=1e-6)
        (mine,) = schedctl("--by", "user")
        assert mine["runs"] == 2
        assert mine["gpu_hours"] == pytest.approx(sum(v[0] for v in expected.values()), rel=1e-6)
        assert schedctl("--since", "2999-01-01") == []
