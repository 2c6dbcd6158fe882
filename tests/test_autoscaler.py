"""Autoscaled pools: the pure decision (`decide`) rule by rule, config parsing, and a real burst with the
`local` provider: runs the on-prem agent cannot hold grow the pool, finish, and the pool shrinks to zero."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest

from gridlab.client.localcluster import LocalCluster
from gridlab.common.config import ConfigError
from gridlab.scheduler.autoscaler import GIB, Action, Machine, Pool, decide, is_demand, parse_machine, parse_pools
from gridlab.scheduler.placement import RunRequest
from gridlab.v1 import types_pb2

PY = sys.executable
POOL = Pool("burst", "local", "2xA100:80", parse_machine("2xA100:80"), max_agents=3, idle_seconds=60)


def req(run_id: str, gpus: int = 1, nodes: int = 1, **kw: object) -> RunRequest:
    return RunRequest(run_id=run_id, gpus=gpus, cpus=1, nodes=nodes, **kw)  # type: ignore[arg-type]


def m(name: str, *, joined: bool = True, busy: bool = False, free: int = 2, idle: float | None = 0.0) -> Machine:
    return Machine(name, created_at=0.0, joined=joined, busy=busy, free_gpus=free, idle_since=None if busy else idle)


def test_nothing_waiting_and_no_machines_does_nothing() -> None:
    assert decide([POOL], {}, [], now=100) == []


def test_waiting_runs_open_as_many_machines_as_they_fill() -> None:
    assert decide([POOL], {}, [req("a"), req("b"), req("c")], now=0) == [Action("burst", create=2)]


def test_growth_stops_at_max_agents() -> None:
    assert decide([POOL], {}, [req(str(i), gpus=2) for i in range(9)], now=0) == [Action("burst", create=3)]
    full = {"burst": [m(f"x{i}", busy=True, free=0) for i in range(3)]}
    assert decide([POOL], full, [req("a")], now=0) == []


def test_booting_and_free_machines_absorb_demand_so_it_does_not_flap() -> None:
    booting = {"burst": [m("b1", joined=False, idle=None)]}
    assert decide([POOL], booting, [req("a"), req("b")], now=1) == []
    assert decide([POOL], booting, [req("a"), req("b"), req("c")], now=1) == [Action("burst", create=1)]
    half = {"burst": [m("h", busy=True, free=1)]}
    assert decide([POOL], half, [req("a")], now=1) == []


def test_runs_the_pool_cannot_serve_do_not_grow_it() -> None:
    waiting = [
        req("big", gpus=4),
        req("other", pool="onprem"),
        req("h100", gpu_types=("H100",)),
        req("mem", min_gpu_memory_bytes=100 * GIB),
        req("label", labels=(("zone", "b"),)),
        req("gang", gpus=1, nodes=4),
    ]
    assert decide([POOL], {}, waiting, now=0) == []
    assert decide([POOL], {}, [req("ok", pool="burst", gpu_types=("A100",))], now=0) == [Action("burst", create=1)]


def test_a_gang_gets_distinct_machines() -> None:
    assert decide([POOL], {}, [req("g", gpus=1, nodes=2)], now=0) == [Action("burst", create=2)]


def test_a_gang_that_cannot_fit_does_not_block_smaller_runs() -> None:
    busy = {"burst": [m("x", busy=True, free=0), m("y", busy=True, free=0)]}
    assert decide([POOL], busy, [req("g", nodes=2), req("s")], now=0) == [Action("burst", create=1)]


def test_each_run_counts_for_the_first_pool_that_fits_only() -> None:
    second = Pool("cloud", "local", "8", parse_machine("8"), max_agents=5)
    assert decide([POOL, second], {}, [req("a")], now=0) == [Action("burst", create=1)]
    assert decide([POOL, second], {}, [req("a", gpus=8)], now=0) == [Action("cloud", create=1)]


def test_idle_machines_are_released_after_idle_seconds_not_before() -> None:
    idle = {"burst": [m("i", idle=10.0)]}
    assert decide([POOL], idle, [], now=69) == []
    assert decide([POOL], idle, [], now=70) == [Action("burst", terminate=("i",))]


def test_a_busy_machine_is_never_released() -> None:
    assert decide([POOL], {"burst": [m("b", busy=True, free=1)]}, [], now=10_000) == []


def test_an_idle_machine_that_waiting_demand_would_use_is_kept() -> None:
    idle = {"burst": [m("i", idle=0.0)]}
    assert decide([POOL], idle, [req("a")], now=1000) == []


def test_min_agents_are_kept_and_started() -> None:
    pool = Pool("warm", "local", "1", parse_machine("1"), min_agents=1, max_agents=2, idle_seconds=5)
    assert decide([pool], {}, [], now=0) == [Action("warm", create=1)]
    two = {"warm": [m("a", idle=0.0), m("b", idle=1.0)]}
    assert decide([pool], two, [], now=100) == [Action("warm", terminate=("a",))]
    assert decide([pool], {"warm": [m("a", idle=0.0)]}, [], now=100) == []


def test_a_machine_that_never_joins_is_released_after_boot_seconds() -> None:
    pool = Pool("p", "local", "1", parse_machine("1"), max_agents=2, boot_seconds=30)
    stuck = {"p": [Machine("s", created_at=0.0, joined=False, busy=False)]}
    assert decide([pool], stuck, [], now=29) == []
    assert decide([pool], stuck, [req("a")], now=31) == [Action("p", create=1, terminate=("s",))]


def test_quota_and_preemption_waits_are_not_demand() -> None:
    assert is_demand("Resources: no agent has 1 free GPU")
    assert is_demand("Unsatisfiable: no agent could ever hold 1 GPU")
    assert not is_demand("Quota: user ann at 4/4 GPUs")
    assert not is_demand("Unsatisfiable: quota: user ann may hold 4 GPUs, the run needs 8")
    assert not is_demand("Preempting: 1 lower-priority run(s) are stopping to make room")
    assert not is_demand("")


def test_pools_config_is_checked() -> None:
    (pool,) = parse_pools({"spot": {"provider": "local", "machine": "2xA100:80", "labels": {"zone": "a"}}})
    assert pool.gpus == (("A100", 80 * GIB),) * 2
    assert pool.labels == (("zone", "a"),)
    assert pool.max_agents == 1
    for bad in (
        {"provider": "nope"},
        {"provider": "local", "max_agent": 2},
        {"provider": "local", "min_agents": 3, "max_agents": 2},
        {"provider": "local", "labels": {"a": 1}},
        {"provider": "local", "machine": "2xA100:lots"},
    ):
        with pytest.raises(ConfigError):
            parse_pools({"p": bad})


def _pool_agents(cluster: LocalCluster) -> list[str]:
    return [a.name for a in cluster.list_agents() if a.pool == "burst" and a.state == types_pb2.AGENT_STATE_READY]


def _agent_procs(root: Path) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "gridlab.agent.main" in cmd and any(str(root / "scheduler" / "pools") in c for c in cmd):
            out.append(proc)
    return out


def test_a_burst_grows_the_local_pool_the_runs_finish_and_it_shrinks_to_zero(tmp_path: Path) -> None:
    config = tmp_path / "scheduler.toml"
    config.write_text(
        "[pools.burst]\n"
        'provider = "local"\nmachine = "2xA100:80"\nmax_agents = 2\nidle_seconds = 3\npreemptible = true\n'
    )
    with LocalCluster(tmp_path / "c", config_file=config) as cluster:
        cluster.start_scheduler()
        cluster.start_agent("onprem1", fake_gpus="1xRTX:24")
        client = cluster.client()
        runs = [client.submit([PY, "-c", "import time; time.sleep(1)"], gpus=1) for _ in range(5)]
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(r.status().state == "SUCCEEDED" for r in runs):
            seen.update(_pool_agents(cluster))
            time.sleep(0.1)
        assert 1 <= len(seen) <= 2, seen
        for run in runs:
            assert run.wait(timeout=10).state == "SUCCEEDED"
        on_pool = {a.name for a in cluster.list_agents() if a.pool == "burst"}
        assert on_pool == seen
        deadline = time.monotonic() + 3 + 8
        while time.monotonic() < deadline and (_pool_agents(cluster) or _agent_procs(cluster.root)):
            time.sleep(0.2)
        assert _pool_agents(cluster) == []
        assert _agent_procs(cluster.root) == []


def test_a_machine_adopted_after_a_restart_still_loses_its_token_when_it_goes(tmp_path: Path) -> None:
    """The autoscaler's memory of the machines it made is lost with the scheduler; a machine its provider still
    lists is adopted, and when it is released its join token is revoked all the same (found by review)."""
    from gridlab.common.config import SchedulerConfig
    from gridlab.common.timeutil import FakeClock
    from gridlab.scheduler.autoscaler import Autoscaler
    from gridlab.scheduler.engine import Engine
    from gridlab.scheduler.store import Store

    engine = Engine(Store(tmp_path / "s.db"), SchedulerConfig(state_dir=str(tmp_path)), clock=FakeClock())
    before = Autoscaler(engine, [POOL], {})
    (made,) = before._new(POOL, 1)
    other = before._new(POOL, 1)[0]  # a machine that stays
    after = Autoscaler(engine, [POOL], {})  # the scheduler restarted: nothing known
    assert made.name not in after.known
    after._forget([made.name])
    revoked = {
        row["user"]: row["revoked"] for row in engine.store.all("SELECT user, revoked FROM tokens WHERE role = 'agent'")
    }
    assert revoked[f"pool:{made.name}"] == 1
    assert revoked[f"pool:{other.name}"] == 0
