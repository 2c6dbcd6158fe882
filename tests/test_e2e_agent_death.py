"""A machine's agent dies (kill -9): its ranks die with it, what escaped them is cleaned up by the next
agent, and the run is requeued onto the machines that remain."""

from __future__ import annotations

import sys
import time

import psutil
import pytest

from gridlab.client.localcluster import LocalCluster

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
