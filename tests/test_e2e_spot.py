"""A spot interruption end to end: a trainer run on a spot agent gets the cloud's reclaim notice (a local fake of
EC2's instance metadata) mid-run; the agent preempts it (the Trainer saves preempted.ckpt on SIGTERM), the
checkpoint is uploaded, the run is requeued without spending a retry, and it finishes on another agent,
resumed from that checkpoint rather than restarted. The spot agent then stops, as its machine would go."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from test_spot import FakeMetadata

from gridlab.client.localcluster import LocalCluster
from gridlab.v1 import types_pb2

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 300  # 16 steps each: long enough that the notice lands mid-run


@pytest.mark.slow
def test_a_spot_interruption_checkpoints_requeues_and_resumes_on_another_agent(make_cluster) -> None:
    metadata = FakeMetadata()
    try:
        cluster: LocalCluster = make_cluster()
        cluster.start_scheduler()
        spot_env = {
            "GRIDLAB_AGENT_PREEMPTIBLE": "true",
            "GRIDLAB_AGENT_SPOT_NOTICE_URL": metadata.url,
            "GRIDLAB_AGENT_SPOT_POLL": "0.2",
        }
        spot = cluster.start_agent("spot-1", fake_gpus="1xA100:80", pool="spot", env=spot_env)
        client = cluster.client()
        (agent,) = client.agents()
        assert agent.preemptible
        job = [sys.executable, str(ROOT / "tests" / "dist_job.py"), "--root", "root", "--print-every", "50"]
        run = client.submit([*job, "--epochs", str(EPOCHS)], gpus=1, name="on-spot")
        for line in client.logs(run.id, follow=True, timeout=120):
            if line.startswith("step 100"):
                break
        cluster.start_agent("onprem-1", fake_gpus="1xA100:80")
        metadata.notice = {"action": "terminate", "time": "2026-11-28T20:00:00Z"}
        assert spot.wait(timeout=60) == 0  # it preempted its attempt and stopped, as the machine goes

        status = run.wait(timeout=180, raise_on_failure=False)
        lines = list(client.log_lines(run.id))
        texts = [f"{x.attempt_number}: {x.text}" for x in lines]
        assert status.state == "SUCCEEDED", texts[-30:]
        record = client.get_run(run.id)
        first, second = record.attempts
        assert first.state == types_pb2.ATTEMPT_STATE_PREEMPTED
        assert "spot interruption" in first.reason, first.reason
        assert [n.agent_name for n in first.nodes] == ["spot-1"]
        assert [n.agent_name for n in second.nodes] == ["onprem-1"]
        assert (record.interruptions, record.retries_used) == (1, 0)  # an interruption is not the run's failure

        by_attempt = {n: [x.text for x in lines if x.attempt_number == n] for n in (1, 2)}
        assert any("SIGTERM received; saved" in t for t in by_attempt[1]), by_attempt[1][-10:]
        resumed = [t for t in by_attempt[2] if "resuming from checkpoint preempted.ckpt" in t]
        assert len(resumed) == 1, by_attempt[2][:10]
        steps = [int(m.group(1)) for t in by_attempt[2] if (m := re.fullmatch(r"step (\d+)", t))]
        assert steps
        assert steps[0] > 100  # it went on from where the first attempt stopped, not from step 0
        assert any(t.startswith(f"done world_size=1 steps={EPOCHS * 16}") for t in by_attempt[2])
    finally:
        metadata.close()
