"""The trainer under a real agent: a gridlab.trainer script submitted through the
scheduler checkpoints into GRIDLAB_CHECKPOINT_DIR and reports progress through
GRIDLAB_METRICS_FILE, with no gridlab-specific code in the script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from gridlab.client.localcluster import LocalCluster

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_trainer_script_checkpoints_and_reports_metrics_under_an_agent(make_cluster) -> None:
    cluster: LocalCluster = make_cluster()
    cluster.start_scheduler()
    cluster.start_agent("trainer-box", fake_gpus="1xA100:80")
    client = cluster.client()
    command = [sys.executable, str(ROOT / "examples" / "autoencoder.py"), "--max-epochs", "2", "--no-progress-bar"]
    run = client.submit(command, gpus=1, name="autoencoder")
    status = run.wait(timeout=120)
    assert status.state == "SUCCEEDED", list(client.log_lines(run.id))
    (attempt,) = client.get_run(run.id).attempts
    attempt_dir = cluster.root / "agents" / "trainer-box" / "attempts" / attempt.id
    checkpoints = sorted((attempt_dir / "checkpoints").glob("*.ckpt"))
    assert checkpoints, "the trainer wrote no checkpoint into GRIDLAB_CHECKPOINT_DIR"
    rows = [json.loads(line) for line in (attempt_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows
    assert all(isinstance(r["step"], int) for r in rows)
    assert any("val_loss" in r for r in rows)
    assert rows[-1]["step"] >= rows[0]["step"]
    # Forwarded to the scheduler and readable by the client: every record, in order, none of them in the logs.
    forwarded = list(client.metrics(run.id))
    assert [{k: v for k, v in r.items() if k != "attempt"} for r in forwarded] == rows
    assert {r["attempt"] for r in forwarded} == {1}
    assert not any(line.startswith("{") and '"step"' in line for line in client.logs(run.id))


@pytest.mark.slow
def test_a_two_rank_ddp_run_under_an_agent_checkpoints_on_cancel_and_resumes(make_cluster) -> None:
    """The stop protocol end to end: the agent starts two ranks (RANK, WORLD_SIZE, MASTER_* from the
    agent, no gridlab code in the script); cancel sends SIGTERM; the ranks agree, save preempted.ckpt
    into GRIDLAB_CHECKPOINT_DIR and exit 0; a new run resumes from it and finishes."""
    cluster: LocalCluster = make_cluster()
    cluster.start_scheduler()
    cluster.start_agent("ddp-box", fake_gpus="2xA100:80")
    client = cluster.client()
    job = [sys.executable, str(ROOT / "tests" / "dist_job.py"), "--root", "root", "--print-every", "5"]
    run = client.submit([*job, "--epochs", "1000"], gpus=2, name="ddp-long")
    for line in client.logs(run.id, follow=True, timeout=120):
        if line.startswith("step 10"):
            break
    run.cancel(grace=60)
    status = run.wait(timeout=120)
    assert status.state == "CANCELLED"
    lines = list(client.logs(run.id))
    saved = [line for line in lines if "SIGTERM received; saved" in line]
    assert len(saved) == 1, lines[-20:]  # rank 0 says it, once
    (attempt,) = client.get_run(run.id).attempts
    ckpt = cluster.root / "agents" / "ddp-box" / "attempts" / attempt.id / "checkpoints" / "preempted.ckpt"
    assert ckpt.is_file()
    assert str(ckpt) in saved[0]

    resumed = client.submit([*job, "--epochs", "3", "--ckpt-path", str(ckpt)], gpus=2, name="ddp-resume")
    assert resumed.wait(timeout=120).state == "SUCCEEDED", list(client.logs(resumed.id))
    assert any(line.startswith("done world_size=2 steps=48") for line in client.logs(resumed.id))
