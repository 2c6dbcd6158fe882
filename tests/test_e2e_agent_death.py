"""A machine's agent dies (kill -9): its ranks die with it, what escaped them is cleaned up by the next
agent, and the run is requeued onto the machines that remain."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from gridlab.client.artifacts import list_artifacts
from gridlab.client.localcluster import LocalCluster

ROOT = Path(__file__).resolve().parents[1]

ESCAPE = (
    "import subprocess, time\n"
    "p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"  # leaves the rank's group and session
    "print('escaped', p.pid, flush=True)\n"
    "time.sleep(300)\n"
)


@pytest.mark.slow
def test_a_restarted_agent_kills_what_its_killed_predecessor_left(make_cluster) -> None:
    cluster: LocalCluster = make_cluster(heartbeat_timeout=30)
    cluster.start_scheduler()
    cluster.start_agent("box")
    client = cluster.client()
    run = client.submit([sys.executable, "-c", ESCAPE], name="escape")
    line = next(line for line in client.logs(run.id, follow=True, timeout=60) if line.startswith("escaped"))
    stray = psutil.Process(int(line.split()[1]))
    (attempt,) = client.get_run(run.id).attempts
    rank = [p for p in psutil.process_iter() if p.pid != stray.pid and _attempt_of(p) == attempt.id]
    cluster.kill_agent("box")
    psutil.wait_procs(rank, timeout=10)  # the rank dies with its agent (parent-death signal)
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in rank)
    assert stray.is_running()  # out of reach of that signal and of the agent's sweep
    cluster.start_agent("box")
    deadline = time.monotonic() + 20
    while stray.is_running() and stray.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not stray.is_running() or stray.status() == psutil.STATUS_ZOMBIE
    run.cancel()


def _attempt_of(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get("GRIDLAB_ATTEMPT_ID")
    except (psutil.Error, OSError):
        return None


@pytest.mark.slow
def test_kill_9_of_the_agent_mid_run_resumes_elsewhere_from_the_uploaded_checkpoint(
    make_cluster, tmp_path: Path
) -> None:
    """The run checkpoints at each epoch end and the agent uploads each checkpoint; its agent is killed
    with SIGKILL in epoch 2; the run is requeued (infrastructure: no retry spent) onto the other agent,
    which downloads the newest uploaded checkpoint and resumes from its step; the final weights equal
    those of a run that was never interrupted."""
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

    cluster: LocalCluster = make_cluster(heartbeat_timeout=3)
    cluster.start_scheduler()
    fast = {"GRIDLAB_AGENT_CHECKPOINT_POLL": "0.2"}
    cluster.start_agent("doomed", env=fast)
    client = cluster.client()
    command = [*job, "--root", "root", "--sleep", "20,0,120", "--save-weights", str(tmp_path / "run.pt")]
    run = client.submit(command, env={"DIST_JOB_RAISE_ATTEMPT": "1"}, name="survivor")
    deadline = time.monotonic() + 90
    while not any(c.name == "epoch=0-step=16.ckpt" for c in list_artifacts(client, run.id).checkpoints):
        assert time.monotonic() < deadline, list(client.logs(run.id))[-20:]
        time.sleep(0.2)
    cluster.start_agent("spare", env=fast)  # only now, so that attempt 1 surely ran on "doomed"
    cluster.kill_agent("doomed")
    status = run.wait(timeout=180, raise_on_failure=False)
    lines = list(client.log_lines(run.id))
    assert status.state == "SUCCEEDED", [line.text for line in lines][-30:]
    detail = client.get_run(run.id)
    assert [a.nodes[0].agent_name for a in detail.attempts] == ["doomed", "spare"]
    assert detail.retries_used == 0
    notes = [line.text for line in lines if line.attempt_number == 2 and "resum" in line.text.lower()]
    assert any("epoch=0-step=16.ckpt" in note for note in notes), notes
    assert any(line.text.startswith("done world_size=1 steps=48") for line in lines)
    reference, resumed = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "run.pt")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
