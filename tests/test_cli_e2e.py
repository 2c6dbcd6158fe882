"""schedctl as people run it: real `schedctl` processes against a real scheduler and agents.

One cluster for the module (a scheduler; w1 with 2 A100s; w2, pool spot, with an A100 and an
H100), so every command, its `-o json` and its exit codes are checked with few real runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridlab.client import exitcodes
from gridlab.client.localcluster import LocalCluster

pytestmark = pytest.mark.slow

METRICS_JOB = (
    "import json, os\n"
    "print('hello from rank', os.environ['RANK'])\n"
    "with open(os.environ['GRIDLAB_METRICS_FILE'], 'a') as f:\n"
    "    for i in range(10):\n"
    "        f.write(json.dumps({'step': i, 'loss': 1 / (i + 1)}) + '\\n')\n"
    "os.makedirs(os.path.join(os.environ['GRIDLAB_ARTIFACT_DIR'], 'out'), exist_ok=True)\n"
    "open(os.path.join(os.environ['GRIDLAB_ARTIFACT_DIR'], 'out', 'result.txt'), 'w').write('42')\n"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cli")) as c:
        c.start_scheduler()
        c.start_agent("w1", fake_gpus="2xA100:80")
        c.start_agent("w2", fake_gpus="1xA100:80,1xH100:80", pool="spot")
        yield c


@pytest.fixture(scope="module")
def env(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The admin's environment; HOME is empty so no config file is read."""
    home = tmp_path_factory.mktemp("home")
    out = {k: v for k, v in os.environ.items() if not k.startswith("GRIDLAB_") or k == "GRIDLAB_TEST_SESSION"}
    out.update(HOME=str(home), GRIDLAB_ADDRESS=cluster.address, GRIDLAB_TOKEN=cluster.admin_token)
    out.pop("XDG_CONFIG_HOME", None)
    out.pop("SCHEDCTL_DEBUG", None)
    return out


@pytest.fixture(scope="module")
def bob(cluster: LocalCluster, env: dict[str, str]) -> dict[str, str]:
    """A plain user's environment."""
    with cluster.client() as client:
        token = client.create_token("bob", "user")
    return {**env, "GRIDLAB_TOKEN": token}


def schedctl(env: dict[str, str], *argv: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridlab.client.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(env: dict[str, str], *argv: str) -> str:
    proc = schedctl(env, *argv)
    assert proc.returncode == 0, f"schedctl {' '.join(argv)} -> {proc.returncode}: {proc.stderr}"
    return proc.stdout


def as_json(env: dict[str, str], *argv: str, code: int = 0) -> Any:
    """Run with -o json: exactly one JSON document on stdout, whatever the command."""
    proc = schedctl(env, "-o", "json", *argv)  # before the command: after `submit ... --` it would be argv
    assert proc.returncode == code, f"schedctl -o json {' '.join(argv)} -> {proc.returncode}: {proc.stderr}"
    return json.loads(proc.stdout)


def assert_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def done_run(env: dict[str, str]) -> str:
    """A finished run that printed a line, logged 10 metrics and left an artifact."""
    out = ok(env, "submit", "--name", "metrics-job", "--wait", "--", sys.executable, "-c", METRICS_JOB)
    run_id, final = out.splitlines()
    assert final.startswith(f"{run_id} SUCCEEDED")
    return run_id


# --- submit, wait, cancel: exit codes ---------------------------------------------------------


def test_submit_wait_and_its_exit_codes(env: dict[str, str], done_run: str) -> None:
    proc = schedctl(env, "submit", "--wait", "--", "false")
    assert proc.returncode == exitcodes.RUN_FAILED == 100
    assert "FAILED (exit code 1)" in proc.stdout
    data = as_json(env, "submit", "--wait", "--", "true")
    assert data["state"] == "RUN_STATE_SUCCEEDED"

    sleeper = ok(env, "submit", "-q", "--name", "sleeper", "--", "sleep", "60").strip()
    proc = schedctl(env, "wait", sleeper, "--timeout", "0.5")
    assert proc.returncode == exitcodes.RUN_TIMED_OUT == 102
    assert "still" in proc.stderr
    assert "keeps running" in proc.stderr
    timed_out = as_json(env, "wait", sleeper, "--timeout", "0.2", code=102)
    assert timed_out["timed_out"] is True
    assert ok(env, "cancel", "--grace", "0", sleeper).startswith(f"{sleeper}: cancel")
    proc = schedctl(env, "wait", sleeper, "--timeout", "30")
    assert proc.returncode == exitcodes.RUN_CANCELLED == 101
    assert as_json(env, "wait", done_run)["state"] == "SUCCEEDED"
    assert ok(env, "wait", done_run).startswith(f"{done_run} SUCCEEDED")

    proc = schedctl(env, "submit", "--timeout", "30", "--wait", "-o", "json", "--", "sh", "-c", "exit 3")
    assert proc.returncode == 100
    assert json.loads(proc.stdout)["exit_code"] == 3


def test_submit_follow_streams_the_logs(env: dict[str, str]) -> None:
    proc = schedctl(env, "submit", "--follow", "--", "sh", "-c", "echo line-one; echo line-two")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1:3] == ["line-one", "line-two"]
    assert "SUCCEEDED" in lines[-1]


def test_submit_warns_about_a_run_no_agent_can_hold(env: dict[str, str]) -> None:
    proc = schedctl(env, "submit", "--gpus", "8", "--gpu-type", "A100", "--", "true")
    assert proc.returncode == 0
    run_id = proc.stdout.strip()
    assert "cannot be placed on any connected agent" in proc.stderr
    assert "Unsatisfiable" in proc.stderr
    assert f"schedctl cancel {run_id}" in proc.stderr
    ok(env, "cancel", run_id)


# --- runs, queue, describe, priority -------------------------------------------------------------


def test_runs_lists_filters_and_prints_ids(env: dict[str, str], bob: dict[str, str], done_run: str) -> None:
    table = ok(env, "runs")
    assert table.splitlines()[0].split()[:4] == ["ID", "NAME", "USER", "STATE"]
    assert done_run in table
    assert done_run in ok(env, "runs", "-q").split()
    assert not ok(env, "runs", "--no-headers").startswith("ID")
    runs = as_json(env, "runs", "--state", "succeeded", "--me")
    assert done_run in [r["id"] for r in runs]
    assert all(r["state"] == "RUN_STATE_SUCCEEDED" for r in runs)
    assert as_json(env, "runs", "--pool", "no-such-pool") == []
    assert "metrics-job" in ok(env, "runs", "-o", "wide")
    assert as_json(bob, "runs") == []  # bob sees only his own
    assert_error(schedctl(bob, "runs", "--user", "admin"), exitcodes.PERMISSION_DENIED)


def test_describe_shows_spec_attempts_and_events(env: dict[str, str], done_run: str) -> None:
    text = ok(env, "describe", done_run)
    for part in ("State:", "SUCCEEDED", "Attempts:", "Events:", "submitted", "metrics-job"):
        assert part in text
    assert "State:" in ok(env, "status", done_run)  # the old name
    data = as_json(env, "describe", done_run)
    assert data["id"] == done_run
    assert [e["kind"] for e in data["events"]][0] == "submitted"
    assert_error(schedctl(env, "describe", "run-nope"), exitcodes.NOT_FOUND, "run-nope")


def test_queue_orders_runs_and_priority_moves_them(env: dict[str, str]) -> None:
    low = ok(env, "submit", "-q", "--gpus", "8", "--", "true").splitlines()[0]
    high = ok(env, "submit", "-q", "--gpus", "8", "--priority", "3", "--", "true").splitlines()[0]
    try:
        queue = as_json(env, "queue")
        ids = [r["id"] for r in queue]
        assert ids.index(high) < ids.index(low)
        assert ok(env, "priority", low, "9").startswith(f"{low}: priority 9")
        assert as_json(env, "priority", low, "10")["spec"]["priority"] == 10
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the next pass reorders
            order = ok(env, "queue", "-q").split()
            if order.index(low) < order.index(high):
                break
            time.sleep(0.2)
        assert order.index(low) < order.index(high)
        table = ok(env, "queue")
        assert table.splitlines()[0].split() == ["POS", "ID", "NAME", "USER", "PRIORITY", "GPUS", "WAITING", "REASON"]
        assert "Unsatisfiable" in table
        assert_error(schedctl(env, "priority", "run-nope", "1"), exitcodes.NOT_FOUND)
    finally:
        ok(env, "cancel", low, high)


# --- logs, metrics, artifacts ------------------------------------------------------------------


def test_logs_by_rank_tail_and_json(env: dict[str, str], done_run: str) -> None:
    assert ok(env, "logs", done_run) == "hello from rank 0\n"
    assert ok(env, "logs", f"{done_run}/0", "--attempt", "1") == "hello from rank 0\n"
    assert ok(env, "logs", f"{done_run}/5") == ""
    assert ok(env, "logs", done_run, "--tail", "1") == "hello from rank 0\n"
    assert ok(env, "logs", done_run, "--tail", "0") == ""
    lines = as_json(env, "logs", done_run)
    assert [line["text"] for line in lines if line.get("stream") != "LOG_STREAM_SYSTEM"] == ["hello from rank 0"]
    assert_error(schedctl(env, "logs", "run-nope"), exitcodes.NOT_FOUND)
    assert schedctl(env, "logs", "run-x/abc").returncode == exitcodes.USAGE


def test_metrics_table_json_and_chart(env: dict[str, str], done_run: str) -> None:
    table = ok(env, "metrics", done_run).splitlines()
    assert table[0].split() == ["ATTEMPT", "STEP", "LOSS"]
    assert table[1].split() == ["1", "0", "1"]
    assert len(table) == 11
    records = as_json(env, "metrics", done_run)
    assert [r["step"] for r in records] == list(range(10))
    chart = ok(env, "metrics", done_run, "--chart", "loss", "--width", "30", "--height", "5")
    lines = chart.splitlines()
    assert lines[0] == f"loss ({done_run})"
    assert lines[1].strip().startswith("1 |*")
    assert lines[-1].split() == ["0", "9"]
    points = as_json(env, "metrics", done_run, "--chart", "loss")["points"]
    assert points[0] == [0.0, 1.0]
    assert_error(schedctl(env, "metrics", done_run, "--chart", "acc"), exitcodes.NOT_FOUND, "it logged: loss")


def test_artifacts_and_download(env: dict[str, str], done_run: str, tmp_path: Path) -> None:
    deadline = time.monotonic() + 20
    while "out/result.txt" not in ok(env, "artifacts", done_run) and time.monotonic() < deadline:
        time.sleep(0.2)
    listing = as_json(env, "artifacts", done_run)
    assert [a["file"]["path"] for a in listing["artifacts"]] == ["out/result.txt"]
    assert ok(env, "artifacts", done_run, "-q").split() == ["out/result.txt"]
    out = ok(env, "download", done_run, "out/result.txt", "-o", str(tmp_path))
    assert (tmp_path / "out" / "result.txt").read_text() == "42"
    assert out.strip() == str(tmp_path / "out" / "result.txt")
    proc = schedctl(env, "download", done_run, "--checkpoint", "latest", "-o", str(tmp_path))
    assert_error(proc, exitcodes.NOT_FOUND)


# --- sweeps ------------------------------------------------------------------------------------


def test_sweep_submit_list_wait_and_cancel(env: dict[str, str]) -> None:
    data = as_json(env, "submit", "--sweep", "x=[1,2]", "--wait", "--", "sh", "-c", "echo x={x}")
    assert sorted(t["params"]["x"] for t in data["trials"]) == ["1", "2"]
    assert all(t["state"] == "SUCCEEDED" for t in data["trials"])
    sweep = data["sweep"]
    assert len(ok(env, "runs", "--sweep", sweep, "-q").split()) == 2

    proc = schedctl(env, "submit", "--sweep", "s=[60,61]", "--name", "sleepy", "--", "sleep", "{s}")
    assert proc.returncode == 0, proc.stderr
    sleepy = proc.stdout.splitlines()[0]
    assert sleepy.startswith("swp-")
    assert "TRIAL" in proc.stdout
    cancelled = ok(env, "cancel", "--sweep", sleepy, "--grace", "0", "-q").split()
    assert len(cancelled) == 2
    for run_id in cancelled:
        assert schedctl(env, "wait", run_id, "--timeout", "30").returncode == exitcodes.RUN_CANCELLED
    proc = schedctl(env, "submit", "--sweep", "x=oops(1)", "--", "echo", "{x}")
    assert_error(proc, exitcodes.USAGE, "x")


def test_a_sweep_wait_that_times_out_prints_its_json_document(env: dict[str, str]) -> None:
    argv = ["submit", "--sweep", "s=[60,61]", "--wait", "--timeout", "0.5", "--", "sleep", "{s}"]
    data = as_json(env, *argv, code=exitcodes.RUN_TIMED_OUT)
    try:
        assert data["timed_out"] is True
        assert data["sweep"].startswith("swp-")
        assert sorted(t["params"]["s"] for t in data["trials"]) == ["60", "61"]
    finally:
        ok(env, "cancel", "--sweep", data["sweep"], "--grace", "0")
    for trial in data["trials"]:
        assert schedctl(env, "wait", trial["run_id"], "--timeout", "30").returncode == exitcodes.RUN_CANCELLED


def test_cancel_sweep_cancels_only_the_sweeps_owners_runs(
    cluster: LocalCluster, env: dict[str, str], bob: dict[str, str]
) -> None:
    from gridlab.client import Client

    mine = as_json(env, "submit", "--sweep", "s=[60,61]", "--", "sleep", "{s}")["sweep"]
    with Client(cluster.address, bob["GRIDLAB_TOKEN"]) as client:
        forged = client.submit(["sleep", "60"]).id  # then the same sweep id on a run of bob's
        spec = client.get_run(forged).spec
        spec.sweep.name, spec.sweep.index, spec.sweep.size = mine, 0, 2
        client.cancel(forged)
        stray = client._submit_spec(spec, "").id
        try:
            cancelled = ok(env, "cancel", "--sweep", mine, "--grace", "0", "-q").split()
            assert len(cancelled) == 2
            assert stray not in cancelled
            assert client.status(stray).state in ("QUEUED", "STARTING", "RUNNING")
        finally:
            client.cancel(stray, grace=0)
            client.wait(stray, timeout=30)
            client.wait(forged, timeout=30)
    for run_id in cancelled:
        assert schedctl(env, "wait", run_id, "--timeout", "30").returncode == exitcodes.RUN_CANCELLED


def test_a_cancelled_running_run_reads_once(env: dict[str, str]) -> None:
    run_id = ok(env, "submit", "-q", "--", "sleep", "60").strip()
    deadline = time.monotonic() + 30
    while as_json(env, "describe", run_id)["state"] != "RUN_STATE_RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    ok(env, "cancel", run_id, "--grace", "0", "--reason", "enough")
    proc = schedctl(env, "wait", run_id, "--timeout", "30")
    assert proc.returncode == exitcodes.RUN_CANCELLED
    assert proc.stdout.strip() == f"{run_id} CANCELLED: enough"


def test_metrics_json_is_strict_when_a_run_logged_nan(env: dict[str, str]) -> None:
    job = (
        "import json, os\n"
        "with open(os.environ['GRIDLAB_METRICS_FILE'], 'a') as f:\n"
        "    for i, v in enumerate([1.0, float('nan'), float('inf'), -2.5]):\n"
        "        f.write(json.dumps({'step': i, 'loss': v}) + '\\n')\n"
    )
    run_id = ok(env, "submit", "-q", "--wait", "--", sys.executable, "-c", job).split()[0]

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in -o json output")

    for argv in (["metrics", run_id], ["metrics", run_id, "--chart", "loss"]):
        proc = schedctl(env, "-o", "json", *argv)
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout, parse_constant=refuse)
        values = [r["loss"] for r in data] if isinstance(data, list) else [p[1] for p in data["points"]]
        assert values == [1.0, None, None, -2.5]
    assert ok(env, "metrics", run_id, "--chart", "loss", "--width", "20", "--height", "4")


# --- the cluster ------------------------------------------------------------------------------


def test_agents_one_row_per_gpu_model(env: dict[str, str], bob: dict[str, str]) -> None:
    lines = ok(env, "agents").splitlines()
    assert lines[0].split()[:7] == ["NAME", "POOL", "STATE", "MODEL", "MEMORY", "UTIL", "FREE"]
    rows = sorted(line.split()[:4] for line in lines[1:])
    assert rows == [
        ["w1", "onprem", "READY", "A100"],
        ["w2", "spot", "READY", "A100"],
        ["w2", "spot", "READY", "H100"],
    ]
    assert sorted(ok(env, "agents", "-q").split()) == ["w1", "w2"]
    assert [a["name"] for a in as_json(env, "agents", "--pool", "spot")] == ["w2"]
    assert "LABELS" in ok(env, "agents", "-o", "wide")


def test_cordon_drain_uncordon(env: dict[str, str], bob: dict[str, str]) -> None:
    try:
        assert ok(env, "cordon", "w2", "--reason", "fans").startswith("w2: cordoned")
        assert "CORDONED" in ok(env, "agents", "--pool", "spot")
        assert as_json(env, "drain", "w2", "--deadline", "1h")["state"] == "AGENT_STATE_DRAINING"
        assert ok(env, "agents", "uncordon", "w2").startswith("w2: uncordoned")  # the old spelling
        assert ok(env, "agents", "cordon", "w2").startswith("w2: cordoned")
    finally:
        ok(env, "uncordon", "w2")
    assert_error(schedctl(env, "cordon", "nope"), exitcodes.NOT_FOUND, "nope")
    assert_error(schedctl(bob, "cordon", "w1"), exitcodes.PERMISSION_DENIED)


def test_top_once_json_and_live(env: dict[str, str]) -> None:
    text = ok(env, "top", "--once")
    assert "\x1b" not in text
    assert "agents 2" in text
    assert "w2" in text
    snapshot = as_json(env, "top")
    assert {a["name"] for a in snapshot["agents"]} == {"w1", "w2"}
    live = subprocess.Popen(
        [sys.executable, "-m", "gridlab.client.cli", "top", "--interval", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
        live.send_signal(signal.SIGINT)
        out, err = live.communicate(timeout=20)
    finally:
        if live.poll() is None:
            live.kill()
    assert live.returncode == 0, err
    assert out.count("\x1b[H\x1b[2J") >= 2  # redrawn
    assert out.startswith("\x1b[?25l")
    assert "\x1b[?25h" in out
    assert "Traceback" not in err


# --- tokens and identity -------------------------------------------------------------------------


def test_tokens_create_list_revoke(env: dict[str, str], bob: dict[str, str]) -> None:
    created = as_json(env, "tokens", "create", "--user", "carol", "--team", "vision")
    carol = {**env, "GRIDLAB_TOKEN": created["token"]}
    assert as_json(carol, "whoami")["user"] == "carol"
    listing = as_json(env, "tokens", "list")
    mine = [t for t in listing if t["user"] == "carol"]
    assert len(mine) == 1
    assert mine[0]["team"] == "vision"
    assert mine[0]["id"] in ok(env, "tokens", "list", "-q").split()
    assert "carol" in ok(env, "tokens", "list")
    assert ok(env, "token", "create", "--user", "dave").startswith("glt_")  # the old spelling
    assert_error(schedctl(bob, "tokens", "list"), exitcodes.PERMISSION_DENIED)
    assert ok(env, "tokens", "revoke", mine[0]["id"]).startswith(f"{mine[0]['id']}: revoked")
    assert_error(schedctl(carol, "runs"), exitcodes.PERMISSION_DENIED, "hint:", "tokens create")
    assert mine[0]["id"] not in ok(env, "tokens", "list", "-q").split()
    assert mine[0]["id"] in ok(env, "tokens", "list", "--all", "-q").split()
    assert_error(schedctl(env, "tokens", "revoke", "0123456789abcdef"), exitcodes.NOT_FOUND)


def test_version_and_whoami(env: dict[str, str], bob: dict[str, str]) -> None:
    data = as_json(env, "version")
    assert data["client"]
    assert data["server"]
    assert data["error"] is None
    assert ok(env, "version").startswith(f"Client: {data['client']}\nServer: {data['server']}")
    down = {**env, "GRIDLAB_ADDRESS": "127.0.0.1:1"}
    proc = schedctl(down, "version")
    assert proc.returncode == 0
    assert "Server: not reached" in proc.stdout
    assert as_json(bob, "whoami") == {
        "user": "bob",
        "role": "user",
        "team": "",
        "server_version": data["server"],
        "address": env["GRIDLAB_ADDRESS"],
    }


# --- what a newcomer meets -------------------------------------------------------------------------


def test_errors_a_newcomer_meets_read_well(env: dict[str, str]) -> None:
    down = {**env, "GRIDLAB_ADDRESS": "127.0.0.1:1"}
    proc = schedctl(down, "runs")
    assert_error(proc, exitcodes.UNREACHABLE, "127.0.0.1:1", "gridlab-scheduler --state-dir")
    assert proc.stderr.count("gridlab-scheduler") == 1  # the hint said once, not by the SDK and again as hint:
    no_token = {k: v for k, v in env.items() if k != "GRIDLAB_TOKEN"}
    assert_error(schedctl(no_token, "runs"), exitcodes.ERROR, "no token", "admin.token")
    no_address = {k: v for k, v in env.items() if k != "GRIDLAB_ADDRESS"}
    proc = schedctl(no_address, "runs")
    assert_error(proc, exitcodes.ERROR, "no scheduler address", "gridlab-scheduler")
    assert proc.stderr.count("gridlab-scheduler") == 1
    bad_token = {**env, "GRIDLAB_TOKEN": "glt_not-a-token"}
    assert_error(schedctl(bad_token, "runs"), exitcodes.PERMISSION_DENIED)
    assert_error(schedctl(env, "wait", "run-nope"), exitcodes.NOT_FOUND, "run-nope")
    assert schedctl(env, "submit", "--gpus", "1").returncode == exitcodes.USAGE
    assert schedctl(env, "frobnicate").returncode == exitcodes.USAGE


def test_completion_scripts_come_without_a_scheduler(env: dict[str, str]) -> None:
    offline = {k: v for k, v in env.items() if not k.startswith("GRIDLAB_")}
    bash = ok(offline, "completion", "bash")
    assert "complete -o default -F _schedctl schedctl" in bash
    assert ok(offline, "completion", "zsh").startswith("#compdef schedctl")
