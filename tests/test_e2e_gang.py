"""Multi-node runs end to end: real agents (two on this machine), one gloo process group across them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gridlab.client import artifacts
from gridlab.client.localcluster import LocalCluster
from gridlab.trainer.checkpoint import read

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
    status = run.wait(timeout=180, raise_on_failure=False)
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
    status = run.wait(timeout=120, raise_on_failure=False)
    assert status.state == "FAILED"
    (attempt,) = client.get_run(run.id).attempts
    assert attempt.reason.startswith("node 1 (node-"), attempt.reason
    assert any("boom on rank 1" in line for line in client.logs(run.id)), list(client.logs(run.id))[-20:]


@pytest.mark.slow
def test_a_two_node_fsdp_checkpoint_is_whole_in_the_store_without_shared_storage(make_cluster, tmp_path: Path) -> None:
    """Each node's agent has its own checkpoint folder: each node finishes its own part of the sharded folder,
    uploads it, and the store's checkpoint (the union) loads in one process to the run's final weights."""
    cluster: LocalCluster = make_cluster()
    cluster.start_scheduler()
    for name in ("node-a", "node-b"):
        cluster.start_agent(name, env={**LOCAL, "GRIDLAB_AGENT_CHECKPOINT_POLL": "0.2"})
    client = cluster.client()
    weights = tmp_path / "final.pt"
    command = [*JOB, "--strategy", "fsdp", "--epochs", "2", "--checkpoint", "--save-weights", str(weights)]
    run = client.submit(command, nodes=2, name="fsdp-two-nodes")
    status = run.wait(timeout=180, raise_on_failure=False)
    assert status.state == "SUCCEEDED", list(client.logs(run.id))[-20:]
    newest = artifacts.pick_checkpoint(artifacts.list_artifacts(client, run.id).checkpoints)
    shards = sorted(f.path.rsplit("/", 1)[1] for f in newest.files if f.path.endswith(".distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # one from each machine
    path = artifacts.download_checkpoint(client, run.id, dest=tmp_path / "dl")
    model = nn.Module()
    model.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))  # the job's module, as it names it
    loaded = read(path, model, no_dist=True)["state_dict"]
    final = torch.load(weights)
    assert set(loaded) == set(final)
    assert all(torch.equal(loaded[k], final[k]) for k in final)
