"""Multi-node runs end to end: real agents (two on this machine), one gloo process group across them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gridlab.client.localcluster import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
JOB = [sys.executable, str(ROOT / "tests" / "dist_job.py"), "--root", "root"]
LOCAL = {"GRIDLAB_AGENT_ADDRESS": "127.0.0.1"}  # both "machines" are this one


@pytest.mark.slow
def test_a_two_node_ddp_run_trains_to_completion_with_logs_of_both_ranks(make_cluster) -> None:
    cluster: LocalCluster = make_cluster()
    cluster.start_scheduler()
    for name in ("node-a", "node-b"):
        cluster.start_agent(name, env=LOCAL)
    client = cluster.client()
    run = client.submit([*JOB, "--epochs", "2", "--say-hello"], nodes=2, name="two-nodes")
    status = run.wait(timeout=180)
    lines = list(client.log_lines(run.id))
    assert status.state == "SUCCEEDED", [line.text for line in lines][-30:]
    hellos = {line.rank: line.text for line in lines if line.text.startswith("rank ")}
    assert hellos == {0: "rank 0 of 2", 1: "rank 1 of 2"}
    assert any(line.rank == 0 and line.text.startswith("done world_size=2 steps=32") for line in lines)
    (attempt,) = client.get_run(run.id).attempts
    assert sorted(n.agent_name for n in attempt.nodes) == ["node-a", "node-b"]
    assert sorted(n.node_rank for n in attempt.nodes) == [0, 1]


@pytest.mark.slow
def test_a_failing_rank_on_one_node_stops_the_gang(make_cluster) -> None:
    """Rank 1 raises; its node fails; the scheduler stops node 0, whose rank would otherwise wait in a
    collective for its dead peer until the process group's timeout (30 min by default)."""
    cluster: LocalCluster = make_cluster()
    cluster.start_scheduler()
    for name in ("node-a", "node-b"):
        cluster.start_agent(name, env=LOCAL)
    client = cluster.client()
    run = client.submit([*JOB, "--epochs", "50", "--raise-at", "5", "--raise-rank", "1"], nodes=2, name="doomed")
    status = run.wait(timeout=120)
    assert status.state == "FAILED"
    (attempt,) = client.get_run(run.id).attempts
    assert attempt.reason.startswith("node 1 (node-"), attempt.reason
    assert any("boom on rank 1" in line for line in client.logs(run.id)), list(client.logs(run.id))[-20:]
