"""A scheduler `kill -9` in the middle of a busy queue, with group commit on: every submit that was
acknowledged survives, a submit retried with its idempotency key after the crash is not doubled, every
run ends SUCCEEDED, and no run ever had two attempts alive at once (nor a GPU two holders)."""

from __future__ import annotations

import asyncio
import threading
import time
import zlib

import pytest
from simagents import SimAgents, draw_machines

from gridlab.client.errors import GridlabError
from gridlab.client.localcluster import LocalCluster
from gridlab.common import auth
from gridlab.v1 import agent_pb2

RUNS = 240
KILL_AFTER = 80  # acknowledged submits before the kill


def _run_time(assignment: agent_pb2.Assignment) -> float:
    return 0.05 + (zlib.crc32(assignment.run_id.encode()) % 10) * 0.04


@pytest.mark.slow
def test_a_kill_9_mid_queue_loses_no_acknowledged_run_and_runs_none_twice(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: LocalCluster = make_cluster(heartbeat_interval=0.5, heartbeat_timeout=20)
    cluster.start_scheduler()
    port = cluster.port
    token = auth.read_secret(cluster.agent_token_file)
    acked: dict[int, str] = {}  # submit number -> run id the scheduler acknowledged
    failures: list[str] = []
    lock = threading.Lock()

    def submitter(first: int, step: int) -> None:
        client = cluster.client()
        for k in range(first, RUNS, step):
            deadline = time.monotonic() + 60
            while True:  # retried through the crash with the same key: at most one run per k
                try:
                    run = client.submit(["true"], gpus=1 + k % 2, name=f"k{k}", idempotency_key=f"key-{k}")
                    break
                except GridlabError as exc:
                    if time.monotonic() > deadline:
                        failures.append(f"k{k}: {exc}")
                        return
                    time.sleep(0.1)
            with lock:
                acked[k] = run.id

    async def scenario() -> SimAgents:
        sim = SimAgents(cluster.address, token, 12, machines=draw_machines(12, seed=3), run_time=_run_time)
        async with sim:
            threads = [threading.Thread(target=submitter, args=(i, 4), daemon=True) for i in range(4)]
            for t in threads:
                t.start()
            while len(acked) < KILL_AFTER:
                await asyncio.sleep(0.01)
            before = dict(acked)
            await asyncio.to_thread(cluster.kill_scheduler)  # SIGKILL, mid-submit and mid-placement
            await asyncio.sleep(0.5)
            await asyncio.to_thread(cluster.start_scheduler, port)
            for t in threads:
                await asyncio.to_thread(t.join, 120)
            assert not failures, failures
            assert all(acked[k] == run_id for k, run_id in before.items())  # the same run for a retried key
            for run_id in acked.values():
                await sim.wait_run_released(run_id, timeout=60)
        return sim

    sim = asyncio.run(scenario())
    client = cluster.client()
    assert len(set(acked.values())) == RUNS  # one run per key, none lost
    states = {rid: client.status(rid).state for rid in acked.values()}
    assert {rid: s for rid, s in states.items() if s != "SUCCEEDED"} == {}
    listed = client.runs(limit=1000)
    assert sorted(r.id for r in listed) == sorted(acked.values())  # no run the client never heard of
    assert sim.gpu_overlaps() == []
    for run_id, records in sim.runs.items():  # attempts of one run never overlap in time
        spans = sorted((r.assigned_mono, r.ended_mono or r.released_mono or float("inf")) for r in records)
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"{run_id} had two attempts alive at once: {spans}"
