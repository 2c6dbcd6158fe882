"""End to end: real scheduler and agent processes, real gRPC on ephemeral ports, real
worker subprocesses. The walking skeleton's promises, each tried for real."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest
from conftest import gridlab_processes

from gridlab.client import errors
from gridlab.client.localcluster import LocalCluster
from gridlab.client.sdk import Client
from gridlab.common import auth
from gridlab.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2

PY = sys.executable


def wait_state(client: Client, run_id: str, states: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get_run(run_id).state
        word = types_pb2.RunState.Name(state).removeprefix("RUN_STATE_")
        if word in states:
            return word
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {states}; it is {word}")


def test_a_run_succeeds_and_its_logs_arrive_complete_and_in_order(cluster: LocalCluster) -> None:
    client = cluster.client()
    code = "import sys\nfor i in range(300): print(f'line {i}')\nprint('to stderr', file=sys.stderr)"
    run = client.submit([PY, "-c", code], name="printer")
    status = run.wait(timeout=60)
    assert status.state == "SUCCEEDED"
    assert status.exit_code == 0
    lines = list(run.logs())
    stdout = [line for line in lines if line.startswith("line ")]
    assert stdout == [f"line {i}" for i in range(300)]
    assert "to stderr" in lines
    assert len(lines) == 301
    # Following a finished run gives the same lines and ends.
    assert list(run.logs(follow=True)) == lines


def test_logs_can_be_followed_while_the_run_prints(cluster: LocalCluster) -> None:
    client = cluster.client()
    code = "import time\nfor i in range(5):\n    print(i, flush=True)\n    time.sleep(0.2)"
    run = client.submit([PY, "-c", code])
    assert list(run.logs(follow=True)) == ["0", "1", "2", "3", "4"]
    assert run.wait(timeout=30).state == "SUCCEEDED"


def test_the_worker_gets_the_torchrun_compatible_environment(cluster: LocalCluster) -> None:
    client = cluster.client()
    code = (
        "import os\nfor k in ['RANK','WORLD_SIZE','LOCAL_RANK','LOCAL_WORLD_SIZE','GROUP_RANK','MASTER_ADDR',"
        "'GRIDLAB_ATTEMPT','MY_VAR']: print(k, os.environ[k])\n"
        "print('GPUS', os.environ['CUDA_VISIBLE_DEVICES'])\nprint('RUN', os.environ['GRIDLAB_RUN_ID'])\n"
        "print('CKPT', os.path.isdir(os.environ['GRIDLAB_CHECKPOINT_DIR']))"
    )
    run = client.submit([PY, "-c", code], gpus=1, env={"MY_VAR": "hello"})
    assert run.wait(timeout=60).state == "SUCCEEDED"
    out = dict(line.split(" ", 1) for line in run.logs())
    assert out["RANK"] == "0"
    assert out["WORLD_SIZE"] == "1"
    assert out["MASTER_ADDR"] == "127.0.0.1"
    assert out["GRIDLAB_ATTEMPT"] == "1"
    assert out["MY_VAR"] == "hello"
    assert out["RUN"] == run.id
    assert out["CKPT"] == "True"
    assert out["GPUS"].startswith("GPU-fake-w1-")
    assert "," not in out["GPUS"]


def test_a_failing_command_ends_failed_with_its_exit_code(cluster: LocalCluster) -> None:
    client = cluster.client()
    run = client.submit([PY, "-c", "import sys; print('bye'); sys.exit(3)"])
    status = run.wait(timeout=60, raise_on_failure=False)
    assert status.state == "FAILED"
    assert status.exit_code == 3
    assert list(run.logs()) == ["bye"]


def test_a_missing_program_fails_with_127_and_says_why(cluster: LocalCluster) -> None:
    run = cluster.client().submit(["/nonexistent/program", "x"])
    status = run.wait(timeout=60, raise_on_failure=False)
    assert status.state == "FAILED"
    assert status.exit_code == 127


def test_cancel_stops_a_sleeping_run_and_leaves_no_process(cluster: LocalCluster) -> None:
    client = cluster.client()
    code = "import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    code += "print('started', flush=True)\ntime.sleep(600)"
    run = client.submit([PY, "-c", code])
    logs = run.logs(follow=True)
    assert next(logs) == "started"
    procs = gridlab_processes(run.id)
    assert len(procs) == 2  # the rank and the grandchild it started
    run.cancel()
    status = run.wait(timeout=60, raise_on_failure=False)
    assert status.state == "CANCELLED"
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive
    assert not gridlab_processes(run.id)
    with pytest.raises(errors.FailedPrecondition):
        run.cancel()


def test_bad_input_gets_the_right_status_and_says_what_to_fix(cluster: LocalCluster) -> None:
    client = cluster.client()
    with pytest.raises(errors.InvalidArgument, match="command is empty"):
        client.submit([])
    with pytest.raises(errors.InvalidArgument, match="gpus is -1"):
        client.submit(["true"], gpus=-1)
    with pytest.raises(errors.NotFound, match="no run"):
        client.get_run("run-doesnotexist")
    # More GPUs than any agent has: accepted, and queued with a reason.
    run = client.submit(["true"], gpus=64)
    deadline = time.monotonic() + 10
    while "no agent has 64" not in run.status().pending_reason and time.monotonic() < deadline:
        time.sleep(0.05)
    status = run.status()
    assert status.state == "QUEUED"
    assert "no agent has 64 suitable GPUs (the most on one agent is 2)" in status.pending_reason
    run.cancel()
    assert run.status().state == "CANCELLED"


def test_no_token_and_wrong_token_are_unauthenticated(cluster: LocalCluster) -> None:
    with grpc.insecure_channel(cluster.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        for metadata in ((), auth.metadata("glt_not-a-real-token")):
            with pytest.raises(grpc.RpcError) as info:
                stub.ListRuns(scheduler_pb2.ListRunsRequest(), metadata=metadata, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The agent's join token opens the agent gateway only.
        agent_token = auth.read_secret(cluster.agent_token_file)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListRuns(scheduler_pb2.ListRunsRequest(), metadata=auth.metadata(agent_token), timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(errors.Unauthenticated):
        Client(cluster.address, "glt_wrong").runs()


def test_users_see_and_touch_only_their_own_runs(cluster: LocalCluster) -> None:
    admin = cluster.client()
    alice = Client(cluster.address, admin.create_token("alice"))
    bob = Client(cluster.address, admin.create_token("bob"))
    run = alice.submit([PY, "-c", "print('secret')"])
    assert run.wait(timeout=60).state == "SUCCEEDED"
    with pytest.raises(errors.NotFound):
        bob.get_run(run.id)
    with pytest.raises(errors.NotFound):
        list(bob.logs(run.id))
    with pytest.raises(errors.NotFound):
        bob.cancel(run.id)
    assert run.id not in [r.id for r in bob.runs()]
    assert [r.id for r in alice.runs()] == [run.id]
    assert run.id in [r.id for r in admin.runs()]
    with pytest.raises(errors.PermissionDenied):
        bob.create_token("mallory", role="admin")


@pytest.mark.slow
def test_after_kill_9_of_the_agent_the_run_finishes_on_a_second_agent(make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(heartbeat_timeout=2.0)
    cluster.start_scheduler()
    cluster.start_agent("doomed", fake_gpus="1xA100:80")
    client = cluster.client()
    marker = tmp_path / "starts"
    code = (
        f"import os, time\nopen({str(marker)!r}, 'a').write(os.environ['GRIDLAB_ATTEMPT'] + '\\n')\n"
        "print('attempt', os.environ['GRIDLAB_ATTEMPT'], flush=True)\n"
        "time.sleep(2 if os.environ['GRIDLAB_ATTEMPT'] != '1' else 600)"
    )
    run = client.submit([PY, "-c", code], gpus=1)
    wait_state(client, run.id, {"RUNNING"})
    first = gridlab_processes(run.id)
    cluster.start_agent("survivor", fake_gpus="1xA100:80")
    cluster.kill_agent("doomed", signal.SIGKILL)
    status = run.wait(timeout=60)
    assert status.state == "SUCCEEDED"
    detail = client.get_run(run.id)
    assert [types_pb2.AttemptState.Name(a.state) for a in detail.attempts] == [
        "ATTEMPT_STATE_LOST",
        "ATTEMPT_STATE_SUCCEEDED",
    ]
    assert [a.nodes[0].agent_name for a in detail.attempts] == ["doomed", "survivor"]
    assert detail.retries_used == 0  # an infrastructure failure spends no retry
    assert marker.read_text().split() == ["1", "2"]
    assert list(run.logs()) == ["attempt 1", "attempt 2"]
    # The dead agent's rank died with it (parent-death signal), not left as an orphan.
    psutil.wait_procs(first, timeout=10)
    assert not any(p.is_running() for p in first)


@pytest.mark.slow
def test_after_kill_9_of_the_scheduler_every_run_survives_and_none_starts_twice(make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(heartbeat_timeout=5.0)
    cluster.start_scheduler()
    cluster.start_agent("w", fake_gpus="1xA100:80")
    client = cluster.client()
    marker = tmp_path / "starts"
    release = tmp_path / "release"
    code = (
        f"import os, time\nopen({str(marker)!r}, 'a').write('start\\n')\nprint('up', flush=True)\n"
        f"while not os.path.exists({str(release)!r}): time.sleep(0.05)\nprint('done', flush=True)"
    )
    running = client.submit([PY, "-c", code], gpus=1)
    queued = [client.submit(["true"], gpus=1, name=f"q{i}") for i in range(3)]
    wait_state(client, running.id, {"RUNNING"})
    port = cluster.port
    cluster.kill_scheduler(signal.SIGKILL)
    release.write_text("go")  # the run finishes while the scheduler is down
    time.sleep(0.5)
    cluster.start_scheduler(port=port)
    client = Client(cluster.address, cluster.admin_token)
    status = client.get_run(running.id)
    assert status.id == running.id
    for run in queued:
        assert client.get_run(run.id).id == run.id
    final = client.run(running.id).wait(timeout=60)
    assert final.state == "SUCCEEDED"
    assert marker.read_text().split() == ["start"]
    assert len(client.get_run(running.id).attempts) == 1
    assert list(client.logs(running.id)) == ["up", "done"]
    for run in queued:
        assert client.run(run.id).wait(timeout=60).state == "SUCCEEDED"


def test_the_watchdog_stops_a_run_whose_step_stops_advancing(cluster: LocalCluster) -> None:
    """A rank that writes three steps to GRIDLAB_METRICS_FILE and then hangs (a deadlocked collective, say)
    is stopped by the scheduler after hang_timeout, through the real agent's heartbeats."""
    code = (
        "import json, os, time\n"
        "with open(os.environ['GRIDLAB_METRICS_FILE'], 'a') as f:\n"
        "    for step in range(1, 4):\n"
        "        f.write(json.dumps({'step': step, 'loss': 1.0}) + '\\n'); f.flush(); time.sleep(0.2)\n"
        "print('stuck', flush=True)\n"
        "time.sleep(600)\n"
    )
    client = cluster.client()
    run = client.submit([sys.executable, "-c", code], hang_timeout=2.0, name="hangs")
    status = run.wait(timeout=60, raise_on_failure=False)
    assert status.state == "FAILED"
    assert "hung: step 3, no progress for 2s" in status.message
    hung = [e for e in client.watch([run.id]) if e.kind == "hung"]  # the run's history, replayed
    assert len(hung) == 1
    assert "no progress for 2s" in hung[0].message


@pytest.mark.slow
def test_a_run_with_requirements_gets_them_installed_once_per_machine(make_cluster, tmp_path: Path) -> None:
    """requirements -> a cached virtualenv on the agent (pip options from the agent's config: here an
    offline wheel folder); `python` in the command is that environment's, and it still sees torch."""
    from test_envcache import build_tiny_wheel

    wheels = build_tiny_wheel(tmp_path / "src", tmp_path / "wheels")
    cluster: LocalCluster = make_cluster()
    cluster.start_scheduler()
    cluster.start_agent("env-box", env={"GRIDLAB_AGENT_PIP_ARGS": f"--no-index --find-links {wheels}"})
    client = cluster.client()
    code = "import importlib.util, tinypkg; print(tinypkg.VALUE, importlib.util.find_spec('torch') is not None)"
    outputs = []
    for name in ("first", "second"):
        run = client.submit(["python", "-c", code], requirements=["tinypkg==0.1"], name=name)
        assert run.wait(timeout=180).state == "SUCCEEDED", list(client.logs(run.id))
        outputs.append([line.text for line in client.log_lines(run.id)])
    assert "tiny 0.1 True" in outputs[0]
    assert "tiny 0.1 True" in outputs[1]
    assert any("pip" in line.lower() or "install" in line.lower() for line in outputs[0])  # the build log
    assert any("reusing cached environment" in line for line in outputs[1])

    bad = client.submit(["python", "-c", "pass"], requirements=["nosuchpkg==1.0"], max_retries=2)
    status = bad.wait(timeout=180, raise_on_failure=False)
    assert status.state == "FAILED"
    assert "nosuchpkg" in status.message
    assert status.attempts == 1  # a build that cannot succeed is not retried

    with pytest.raises(errors.InvalidArgument, match="pip option"):
        client.submit(["python", "-c", "pass"], requirements=["--index-url=http://evil/simple"])
