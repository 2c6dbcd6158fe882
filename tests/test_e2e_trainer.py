"""The trainer under a real agent: a gridlab.trainer script submitted through the
scheduler checkpoints into GRIDLAB_CHECKPOINT_DIR and reports progress through
GRIDLAB_METRICS_FILE, with no gridlab-specific code in the script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    status = run.wait(timeout=120, raise_on_failure=False)
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
    status = run.wait(timeout=120, raise_on_failure=False)
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


@pytest.mark.slow
def test_a_retried_attempt_on_the_same_machine_resumes_from_the_earlier_attempts_checkpoint(
    make_cluster, tmp_path: Path
) -> None:
    """Attempt 1 checkpoints at its epoch end, then fails; attempt 2 (a retry, on the same agent) gets
    GRIDLAB_RESUME_FROM, continues from that step instead of starting over, and ends with the weights of a
    run that never failed."""
    job = [sys.executable, str(ROOT / "tests" / "dist_job.py"), "--epochs", "3", "--checkpoint"]
    ref = subprocess.run(
        [*job, "--root", str(tmp_path / "ref"), "--save-weights", str(tmp_path / "ref.pt")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert ref.returncode == 0, ref.stderr[-2000:]

    cluster: LocalCluster = make_cluster()
    cluster.start_scheduler()
    cluster.start_agent("retry-box")
    client = cluster.client()
    command = [
        *job,
        "--root",
        "root",
        "--raise-at",
        "20",
        "--raise-rank",
        "0",
        "--save-weights",
        str(tmp_path / "run.pt"),
    ]
    run = client.submit(command, max_retries=1, env={"DIST_JOB_RAISE_ATTEMPT": "1"}, name="retry-resume")
    status = run.wait(timeout=180, raise_on_failure=False)
    lines = [line for line in client.log_lines(run.id)]
    assert status.state == "SUCCEEDED", [line.text for line in lines][-30:]
    assert status.attempts == 2
    notes = [line.text for line in lines if line.attempt_number == 2 and "resuming from" in line.text]
    assert len(notes) == 1
    assert "epoch=0-step=16.ckpt" in notes[0]  # attempt 1 failed at step 20, in its second epoch
    assert any(line.text.startswith("done world_size=1 steps=48") for line in lines)
    reference, resumed = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "run.pt")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
