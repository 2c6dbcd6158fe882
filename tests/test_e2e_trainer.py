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
