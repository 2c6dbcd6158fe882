"""Simulated agents (tests/simagents.py) against a real scheduler process: the harness speaks the
real protocol well enough for the scheduler to run a busy mixed queue to the end, and what the
agents saw shows that no GPU ever held two live attempts."""

from __future__ import annotations

import asyncio
import math
import random
import time
import zlib

from simagents import A100_X8, CPU_BOX, RTX3090_X4, WORKSTATION, AttemptRecord, SimAgents, draw_machines

from gridlab.client.localcluster import LocalCluster
from gridlab.common import auth
from gridlab.v1 import agent_pb2, types_pb2


def _run_time(assignment: agent_pb2.Assignment) -> float:
    # Short and uneven, so GPUs are freed and reused out of order.
    return 0.05 + (zlib.crc32(assignment.run_id.encode()) % 8) * 0.03


def test_twenty_mixed_agents_run_two_hundred_runs_and_no_gpu_is_shared(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: LocalCluster = make_cluster(heartbeat_interval=0.5, heartbeat_timeout=10)
    cluster.start_scheduler()
    token = auth.read_secret(cluster.agent_token_file)
    # Every kind of machine at least once, then a seeded draw from the default mix.
    machines = [A100_X8, RTX3090_X4, WORKSTATION, CPU_BOX, *draw_machines(16, seed=6)]
    client = cluster.client()
    rng = random.Random(6)
    shapes = [rng.choice([1, 1, 1, 2, 4]) for _ in range(199)]

    def submit_all() -> list[str]:
        ids = [client.submit(["true"], gpus=g, name=f"r{i}").id for i, g in enumerate(shapes)]
        ids.append(client.submit(["true"], gpus=2, nodes=2, name="gang").id)
        return ids

    async def scenario() -> tuple[list[str], SimAgents]:
        sim = SimAgents(cluster.address, token, len(machines), machines=machines, run_time=_run_time)
        async with sim:
            assert sim.all_welcomed()
            run_ids = await asyncio.to_thread(submit_all)
            for run_id in run_ids:
                await sim.wait_run_released(run_id, timeout=30)
        # A clean stop: every stream closed, no task or timer of the harness left behind.
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        return run_ids, sim

    run_ids, sim = asyncio.run(scenario())

    states = {rid: client.status(rid).state for rid in run_ids}
    assert {rid: s for rid, s in states.items() if s != "SUCCEEDED"} == {}
    assert sim.gpu_overlaps() == []
    assert sim.unknown_gpus() == []
    for records in sim.runs.values():  # one attempt each, on as many GPUs as asked
        assert len({r.attempt_id for r in records}) == 1
    gang = sim.runs[run_ids[-1]]
    assert sorted(r.node_rank for r in gang) == [0, 1]
    assert len({r.agent for r in gang}) == 2
    assert all(len(r.gpu_uuids) == 2 and r.assignment.wait_for_start for r in gang)
    by_run = {rid: len(sim.runs[rid][0].gpu_uuids) for rid in run_ids[:-1]}
    assert by_run == dict(zip(run_ids[:-1], shapes, strict=True))
    cpu_boxes = {a.name for a in sim.agents if a.machine is CPU_BOX}
    assert not any(r.agent in cpu_boxes for rs in sim.runs.values() for r in rs)
    assert sim.live_attempts() == 0
    deadline = time.monotonic() + 10
    while {a.state for a in cluster.list_agents()} != {types_pb2.AGENT_STATE_OFFLINE}:
        assert time.monotonic() < deadline, "the scheduler still sees connected sim agents after stop()"
        time.sleep(0.05)


def test_agents_reconnect_after_a_scheduler_restart_and_report_what_they_hold(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """The harness survives what the real agent survives: a scheduler kill -9 and restart on the same port.
    The runs placed before the kill keep running on their agents and still end SUCCEEDED."""
    cluster: LocalCluster = make_cluster(heartbeat_interval=0.5, heartbeat_timeout=10)
    cluster.start_scheduler()
    port = cluster.port
    token = auth.read_secret(cluster.agent_token_file)
    client = cluster.client()

    async def scenario() -> list[str]:
        sim = SimAgents(cluster.address, token, 4, machines=[RTX3090_X4] * 4, run_time=2.0)
        async with sim:
            run_ids = await asyncio.to_thread(lambda: [client.submit(["true"], gpus=1).id for _ in range(4)])
            await sim.wait_assigned(4, timeout=10)
            await asyncio.to_thread(cluster.kill_scheduler)
            await asyncio.to_thread(cluster.start_scheduler, port)
            for run_id in run_ids:
                await sim.wait_run_released(run_id, timeout=30)
            holders = {r.agent for rid in run_ids for r in sim.runs[rid]}
            assert all(sim.by_name[name].connects >= 2 for name in holders)
            assert sim.gpu_overlaps() == []
        return run_ids

    run_ids = asyncio.run(scenario())
    assert [cluster.client().status(rid).state for rid in run_ids] == ["SUCCEEDED"] * 4


def test_the_overlap_check_finds_a_gpu_held_twice() -> None:
    """The harness's own check can fail: two attempts on one GPU whose lifetimes cross are reported."""
    sim = SimAgents("127.0.0.1:1", "unused", 1, machines=[RTX3090_X4])
    gpu = sim.agents[0].gpu_uuids[0]

    def record(attempt_id: str, start: float, end: float | None) -> AttemptRecord:
        assignment = agent_pb2.Assignment(attempt_id=attempt_id, run_id=f"run-{attempt_id}", gpu_uuids=[gpu])
        return AttemptRecord(
            attempt_id=attempt_id,
            run_id=assignment.run_id,
            agent=sim.agents[0].name,
            node_rank=0,
            nodes=1,
            gpu_uuids=(gpu,),
            assignment=assignment,
            assigned_at=start,
            assigned_mono=start,
            ended_mono=end,
        )

    sim._on_assign(record("a", 1.0, 2.0))
    sim._on_assign(record("b", 2.5, None))
    assert sim.gpu_overlaps() == []
    sim._on_assign(record("c", 3.0, 4.0))  # arrives while b still holds the GPU
    assert sim.gpu_overlaps() == [f"{sim.agents[0].name} {gpu}: c arrived while b held it"]
    assert sim.unknown_gpus() == []


def test_a_stopped_agent_is_declared_lost_its_run_moves_and_it_comes_back_after_a_reboot(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: LocalCluster = make_cluster(heartbeat_interval=0.2, heartbeat_timeout=1.5)
    cluster.start_scheduler()
    token = auth.read_secret(cluster.agent_token_file)
    client = cluster.client()

    async def scenario() -> str:
        sim = SimAgents(cluster.address, token, 2, machines=[RTX3090_X4] * 2, run_time=math.inf)
        async with sim:
            run_id = (await asyncio.to_thread(client.submit, ["true"], gpus=1)).id
            await sim.wait_assigned(1, timeout=10)
            first = sim.runs[run_id][0]
            await sim.stop_agent(first.agent)
            await sim.wait_assigned(2, timeout=15)  # requeued once the agent is lost, placed on the other
            second = sim.runs[run_id][1]
            assert second.agent != first.agent
            sim.by_name[second.agent].finish(second.attempt_id)
            await asyncio.wait_for(second.released.wait(), 10)
            await sim.start_agent(first.agent, forget=True)
            states = {a.name: a.state for a in await asyncio.to_thread(cluster.list_agents)}
            assert states == dict.fromkeys(sim.by_name, types_pb2.AGENT_STATE_READY)
        return run_id

    run_id = asyncio.run(scenario())
    assert client.status(run_id).state == "SUCCEEDED"
