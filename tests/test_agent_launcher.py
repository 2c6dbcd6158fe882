"""The launcher without gRPC: real rank processes, a recording event sink."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from gridlab.agent.bundles import PrepareError
from gridlab.agent.launcher import Attempt, AttemptDirs, LaunchSettings, exit_description
from gridlab.agent.logship import expand
from gridlab.agent.metrics import MetricsTail
from gridlab.agent.reaper import attempt_processes
from gridlab.common.timeutil import ts
from gridlab.v1 import agent_pb2, types_pb2

T = TypeVar("T")
S = types_pb2.AttemptState
PY = sys.executable


def arun(coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Recorder:
    """An AttemptEvents sink that remembers everything, and what it had at drain time."""

    def __init__(self) -> None:
        self.lines: list[types_pb2.LogLine] = []
        self.updates: list[agent_pb2.AttemptStatus] = []
        self.lines_at_drain: int | None = None
        self.updates_at_drain: int | None = None

    def on_log(self, line: types_pb2.LogLine) -> None:
        self.lines.extend(expand(line))  # a pipe read's lines come as one batch

    def on_update(self, status: agent_pb2.AttemptStatus) -> None:
        self.updates.append(status)

    async def drain_logs(self, attempt_id: str) -> None:
        self.lines_at_drain = len(self.lines)
        self.updates_at_drain = len(self.updates)

    async def logs_settled(self, attempt_id: str, seqs: dict[int, int], timeout: float) -> bool:
        return True  # every line is delivered as it comes

    def texts(self, stream: int | None = None) -> list[str]:
        return [x.text for x in self.lines if stream is None or x.stream == stream]

    async def wait_for_text(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.texts():
            assert time.monotonic() < deadline, f"no line {text!r} in {self.texts()}"
            await asyncio.sleep(0.01)


def make(
    tmp_path: Path,
    command: list[str],
    *,
    procs: int = 1,
    grace: float = 5.0,
    base_env: dict[str, str] | None = None,
    **fields: Any,
) -> tuple[Attempt, Recorder]:
    spec_env = fields.pop("env", {})
    assignment = agent_pb2.Assignment(
        attempt_id=fields.pop("attempt_id", "att-1"),
        run_id="run-1",
        attempt_number=fields.pop("attempt_number", 1),
        spec=types_pb2.RunSpec(command=command, env=spec_env),
        procs_per_node=procs,
        **fields,
    )
    settings = LaunchSettings(
        state_dir=tmp_path,
        grace_period=grace,
        address="10.9.9.9",
        base_env=base_env if base_env is not None else dict(os.environ),
    )
    rec = Recorder()
    return Attempt(assignment, settings, rec), rec


def states(rec: Recorder) -> list[str]:
    """The states reported, leaving out the RUNNING update that says the ranks have exited (uploads and the
    log drain follow it)."""
    names = [types_pb2.AttemptState.Name(u.state).removeprefix("ATTEMPT_STATE_") for u in rec.updates]
    return [n for n, u in zip(names, rec.updates, strict=True) if not (n == "RUNNING" and u.ranks_exited)]


ENV_KEYS = [
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "CUDA_VISIBLE_DEVICES",
    "GRIDLAB_RUN_ID",
    "GRIDLAB_ATTEMPT",
    "GRIDLAB_ATTEMPT_ID",
    "GRIDLAB_CHECKPOINT_DIR",
    "GRIDLAB_METRICS_FILE",
    "GRIDLAB_ARTIFACT_DIR",
    "GRIDLAB_RESUME_FROM",
    "GRIDLAB_AGENT_TOKEN",
    "PYTHONUNBUFFERED",
    "FOO",
]
PRINT_ENV = (
    f"import json, os; print(json.dumps(dict(cwd=os.getcwd(), **{{k: os.environ.get(k) for k in {ENV_KEYS!r}}})))"
)


def envs(rec: Recorder) -> dict[str, dict[str, str | None]]:
    out = {}
    for line in rec.lines:
        if line.stream == types_pb2.LOG_STREAM_STDOUT:
            env = json.loads(line.text)
            out[env["RANK"]] = env
    return out


def test_env_of_two_local_ranks_on_second_node(tmp_path: Path) -> None:
    attempt, rec = make(
        tmp_path,
        [PY, "-c", PRINT_ENV],
        procs=2,
        nodes=2,
        node_rank=1,
        gpu_uuids=["GPU-a", "GPU-b"],
        master_addr="10.1.1.1",
        master_port=29500,
        resume_from="/ckpt/step-10",
        attempt_number=3,
        env={"FOO": "bar", "RANK": "99"},
        base_env={**os.environ, "GRIDLAB_AGENT_TOKEN": "secret"},
    )
    status = arun(attempt.run())
    assert status.state == S.ATTEMPT_STATE_SUCCEEDED
    by_rank = envs(rec)
    assert sorted(by_rank) == ["2", "3"]
    dirs = AttemptDirs.of(tmp_path, "att-1")
    for local, rank in enumerate(["2", "3"]):
        env = by_rank[rank]
        assert env["LOCAL_RANK"] == str(local)
        assert env["WORLD_SIZE"] == "4"
        assert env["LOCAL_WORLD_SIZE"] == "2"
        assert env["GROUP_RANK"] == "1"
        assert env["MASTER_ADDR"] == "10.1.1.1"
        assert env["MASTER_PORT"] == "29500"
        assert env["CUDA_VISIBLE_DEVICES"] == "GPU-a,GPU-b"
        assert env["GRIDLAB_RUN_ID"] == "run-1"
        assert env["GRIDLAB_ATTEMPT"] == "3"
        assert env["GRIDLAB_ATTEMPT_ID"] == "att-1"
        assert env["GRIDLAB_CHECKPOINT_DIR"] == str(dirs.checkpoints)
        assert env["GRIDLAB_METRICS_FILE"] == str(dirs.metrics)
        assert env["GRIDLAB_ARTIFACT_DIR"] == str(dirs.artifacts)
        assert env["GRIDLAB_RESUME_FROM"] == "/ckpt/step-10"
        assert env["PYTHONUNBUFFERED"] == "1"
        assert env["FOO"] == "bar"
        assert env["GRIDLAB_AGENT_TOKEN"] is None  # the agent's secret stays with the agent
        assert env["cwd"] == str(dirs.work)
    assert dirs.checkpoints.is_dir()
    assert dirs.artifacts.is_dir()


def test_env_single_node_defaults(tmp_path: Path) -> None:
    attempt, rec = make(tmp_path, [PY, "-c", PRINT_ENV])
    arun(attempt.run())
    env = envs(rec)["0"]
    assert env["MASTER_ADDR"] == "127.0.0.1"
    assert int(env["MASTER_PORT"] or 0) > 0
    assert env["WORLD_SIZE"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["GRIDLAB_RESUME_FROM"] is None


def test_success_reports_after_all_output_is_in(tmp_path: Path) -> None:
    script = "import sys; print('out1'); print('err1', file=sys.stderr); print('out2'); print('last', end='')"
    attempt, rec = make(tmp_path, [PY, "-c", script], procs=2)
    status = arun(attempt.run())
    assert status.state == S.ATTEMPT_STATE_SUCCEEDED
    assert status.exit_code == 0
    assert states(rec) == ["PREPARING", "RUNNING", "SUCCEEDED"]
    # the terminal update came after the drain, which saw every line
    assert rec.lines_at_drain == len(rec.lines)
    assert rec.updates_at_drain == 3
    assert rec.updates[2].ranks_exited  # told before the drain: no progress is due from it any more
    for rank in (0, 1):
        mine = [x for x in rec.lines if x.rank == rank]
        assert [x.seq for x in mine] == [1, 2, 3, 4]
        assert sorted(x.text for x in mine) == ["err1", "last", "out1", "out2"]
        assert {x.stream for x in mine if x.text == "err1"} == {types_pb2.LOG_STREAM_STDERR}
    assert attempt.done


def test_exit_description() -> None:
    assert exit_description(2, 3) == (3, "rank 2 exited with 3")
    code, message = exit_description(0, -signal.SIGKILL)
    assert code == 137
    assert message == "rank 0 exited with 137 (killed by SIGKILL)"


def test_first_failing_rank_fails_the_group(tmp_path: Path) -> None:
    script = "import os, sys, time\nif os.environ['LOCAL_RANK'] == '1':\n    sys.exit(3)\ntime.sleep(30)\n"
    attempt, rec = make(tmp_path, [PY, "-c", script], procs=3)
    start = time.monotonic()
    status = arun(attempt.run())
    assert time.monotonic() - start < 5  # the others were stopped, not awaited
    assert status.state == S.ATTEMPT_STATE_FAILED
    assert status.exit_code == 3
    assert status.message == "rank 1 exited with 3"
    system = [x for x in rec.lines if x.stream == types_pb2.LOG_STREAM_SYSTEM]
    assert any(x.rank == 1 and x.text == "rank 1 exited with 3" for x in system)


def test_rank_killed_by_signal(tmp_path: Path) -> None:
    attempt, _ = make(tmp_path, [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    status = arun(attempt.run())
    assert status.state == S.ATTEMPT_STATE_FAILED
    assert status.exit_code == 137
    assert "SIGKILL" in status.message


def test_command_not_found(tmp_path: Path) -> None:
    attempt, rec = make(tmp_path, ["/nonexistent/train"], procs=2)
    status = arun(attempt.run())
    assert status.state == S.ATTEMPT_STATE_FAILED
    assert status.exit_code == 127
    assert "rank 0" in status.message
    system = [x for x in rec.lines if x.stream == types_pb2.LOG_STREAM_SYSTEM]
    assert system[0].rank == 0
    assert "/nonexistent/train" in system[0].text
    assert "RUNNING" not in states(rec)


def test_command_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "train.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    attempt, _ = make(tmp_path, [str(script)])
    status = arun(attempt.run())
    assert status.state == S.ATTEMPT_STATE_FAILED
    assert status.exit_code == 126


def test_empty_command_fails(tmp_path: Path) -> None:
    attempt, _ = make(tmp_path, [])
    status = arun(attempt.run())
    assert status.state == S.ATTEMPT_STATE_FAILED
    assert status.exit_code == 127


STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: print('got SIGTERM', flush=True))\n"
    "print('ready', flush=True)\n"
    "while True: time.sleep(0.05)\n"
)


def test_cancel_escalates_to_sigkill(tmp_path: Path) -> None:
    async def go() -> tuple[agent_pb2.AttemptStatus, list[int], float]:
        attempt, rec = make(tmp_path, [PY, "-c", STUBBORN], procs=2)
        task = asyncio.create_task(attempt.run())
        await rec.wait_for_text("ready")
        while rec.texts().count("ready") < 2:
            await asyncio.sleep(0.01)
        pids = attempt.pids()
        start = time.monotonic()
        attempt.cancel(grace=0.3, reason="user asked")
        status = await task
        assert "got SIGTERM" in rec.texts()
        assert any("SIGKILL" in t for t in rec.texts(types_pb2.LOG_STREAM_SYSTEM))
        return status, pids, time.monotonic() - start

    status, pids, took = arun(go())
    assert status.state == S.ATTEMPT_STATE_CANCELLED
    assert "user asked" in status.message
    assert 0.25 < took < 3
    assert not [p for p in pids if psutil.pid_exists(p)]


def test_cancel_with_final_state_and_default_grace(tmp_path: Path) -> None:
    async def go() -> agent_pb2.AttemptStatus:
        attempt, rec = make(tmp_path, [PY, "-c", "print('ready', flush=True); import time; time.sleep(30)"])
        task = asyncio.create_task(attempt.run())
        await rec.wait_for_text("ready")
        attempt.cancel(S.ATTEMPT_STATE_PREEMPTED)
        attempt.cancel(S.ATTEMPT_STATE_CANCELLED)  # a second order does not change the end
        return await task

    status = arun(go())
    assert status.state == S.ATTEMPT_STATE_PREEMPTED


def test_cancel_before_start_runs_nothing(tmp_path: Path) -> None:
    async def go() -> tuple[agent_pb2.AttemptStatus, list[int]]:
        attempt, _ = make(tmp_path, [PY, "-c", "import time; time.sleep(30)"])
        attempt.cancel(S.ATTEMPT_STATE_CANCELLED, grace=1)
        status = await attempt.run()
        return status, attempt.pids()

    status, pids = arun(go())
    assert status.state == S.ATTEMPT_STATE_CANCELLED
    assert pids == []


def test_no_process_of_the_attempt_survives(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys\n"
        "p = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "print('spawned')\n"
    )
    attempt, rec = make(tmp_path, [PY, "-c", script])
    start = time.monotonic()
    status = arun(attempt.run())
    assert status.state == S.ATTEMPT_STATE_SUCCEEDED
    assert time.monotonic() - start < 4  # the stray held stdout open; it was killed
    assert "spawned" in rec.texts()
    grandchild = int(pidfile.read_text())
    time.sleep(0.1)
    alive = psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != "zombie"
    assert not alive


def test_work_dir_is_fresh_and_checkpoints_kept(tmp_path: Path) -> None:
    dirs = AttemptDirs.of(tmp_path, "att-1")
    dirs.work.mkdir(parents=True)
    (dirs.work / "stale").write_text("x")
    dirs.checkpoints.mkdir()
    (dirs.checkpoints / "ckpt").write_text("x")
    attempt, rec = make(tmp_path, [PY, "-c", "import os; print(sorted(os.listdir('.')))"])
    arun(attempt.run())
    assert rec.texts(types_pb2.LOG_STREAM_STDOUT) == ["[]"]
    assert (dirs.checkpoints / "ckpt").exists()


def test_unsafe_attempt_id_is_refused(tmp_path: Path) -> None:
    attempt, _ = make(tmp_path, [PY, "-c", "pass"], attempt_id="../../etc")
    status = arun(attempt.run())
    assert status.state == S.ATTEMPT_STATE_FAILED
    assert not (tmp_path.parent / "etc").exists()


def test_last_step_from_metrics_file(tmp_path: Path) -> None:
    script = (
        "import json, os\n"
        "with open(os.environ['GRIDLAB_METRICS_FILE'], 'a') as f:\n"
        "    for step in (1, 5, 3):\n"
        "        f.write(json.dumps({'step': step, 'loss': 0.5, 'time': 1234.5}) + '\\n')\n"
        "    f.write('not json\\n')\n"
    )
    attempt, _ = make(tmp_path, [PY, "-c", script])
    status = arun(attempt.run())
    assert status.last_step == 5
    assert status.last_step_time.seconds == 1234


@pytest.mark.parametrize("procs", [0, 1])
def test_zero_procs_means_one(tmp_path: Path, procs: int) -> None:
    attempt, rec = make(tmp_path, [PY, "-c", PRINT_ENV], procs=procs)
    arun(attempt.run())
    assert list(envs(rec)) == ["0"]


# -- a bad metrics file cannot break status() ---------------------------------------------

BAD_METRICS_LINES = {
    "time in ms": '{"step": 1, "time": 1700000000000}',
    "time NaN": '{"step": 1, "time": NaN}',
    "time Infinity": '{"step": 1, "time": -Infinity}',
    "time 1e400": '{"step": 1, "time": 1e400}',
    "time huge int": '{"step": 1, "time": 1' + "0" * 400 + "}",
    "time before year 1": '{"step": 1, "time": -62135596801}',
    "step 2**63": '{"step": 9223372036854775808, "time": 5}',
    "step negative": '{"step": -3, "time": 5}',
    "step float": '{"step": 2.0, "time": 5}',
    "step true": '{"step": true, "time": 5}',
    "nested too deep": "[" * 100_000,
}


@pytest.mark.parametrize("line", list(BAD_METRICS_LINES.values()), ids=list(BAD_METRICS_LINES))
def test_metrics_tail_ignores_what_protobuf_cannot_hold(tmp_path: Path, line: str) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(line + "\n")
    tail = MetricsTail(path, clock=lambda: 42.0)
    tail.poll()
    if '"step": 1,' in line:  # a good step with a bad time: the time it was read
        assert (tail.last_step, tail.last_step_time) == (1, 42.0)
    else:
        assert (tail.last_step, tail.last_step_time) == (0, None)
    status = agent_pb2.AttemptStatus(last_step=tail.last_step)
    if tail.last_step_time is not None:
        status.last_step_time.CopyFrom(ts(tail.last_step_time))


def test_metrics_tail_keeps_good_steps_and_times_at_the_edges(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 3, "time": -62135596800}, {"step": 2**63 - 1, "time": 253402300799}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    tail = MetricsTail(path, clock=lambda: 42.0)
    tail.poll()
    assert (tail.last_step, tail.last_step_time) == (2**63 - 1, 253402300799.0)
    status = agent_pb2.AttemptStatus(last_step=tail.last_step)
    status.last_step_time.CopyFrom(ts(tail.last_step_time))
    assert status.last_step_time.seconds >= 253402300798


@pytest.mark.parametrize("line", list(BAD_METRICS_LINES.values()), ids=list(BAD_METRICS_LINES))
def test_bad_metrics_line_does_not_break_status(tmp_path: Path, line: str) -> None:
    script = f"import os\nopen(os.environ['GRIDLAB_METRICS_FILE'], 'a').write({line + chr(10)!r})\n"
    attempt, rec = make(tmp_path, [PY, "-c", script])
    status = arun(attempt.run())
    assert status.state == S.ATTEMPT_STATE_SUCCEEDED
    assert attempt.status().last_step in (0, 1)
    if status.last_step == 1:
        assert abs(status.last_step_time.seconds - time.time()) < 60  # when it was read


def test_status_survives_any_error_from_the_metrics_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: MetricsTail) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(MetricsTail, "poll", broken)
    attempt, rec = make(tmp_path, [PY, "-c", "pass"])
    status = arun(attempt.run())
    assert status.state == S.ATTEMPT_STATE_SUCCEEDED
    assert states(rec) == ["PREPARING", "RUNNING", "SUCCEEDED"]
    assert status.last_step == 0


# -- no process of the attempt survives it, wherever it went --------------------------------


def attempt_procs(attempt_id: str) -> list[psutil.Process]:
    return [p for p in attempt_processes(attempt_id) if p.pid != os.getpid()]


ESCAPE = (
    "import subprocess, sys\n"
    "p = subprocess.Popen(['sleep', '123'], start_new_session=True)\n"
    "print(p.pid, flush=True)\n"
    "{then}\n"
)


@pytest.mark.parametrize("how", ["succeeded", "failed", "cancelled"])
def test_stray_that_left_the_session_is_killed_when_the_attempt_ends(tmp_path: Path, how: str) -> None:
    then = {"succeeded": "", "failed": "sys.exit(4)", "cancelled": "import time; time.sleep(60)"}[how]
    attempt_id = f"stray-{how}"

    async def go() -> agent_pb2.AttemptStatus:
        attempt, rec = make(tmp_path, [PY, "-c", ESCAPE.format(then=then)], attempt_id=attempt_id)
        task = asyncio.create_task(attempt.run())
        while not rec.texts(types_pb2.LOG_STREAM_STDOUT):
            await asyncio.sleep(0.01)
        if how == "cancelled":
            attempt.cancel(grace=0)
        return await task

    start = time.monotonic()
    status = arun(go())
    assert time.monotonic() - start < 4  # the stray held stdout; killed, not waited out
    expected = {"succeeded": S.ATTEMPT_STATE_SUCCEEDED, "failed": S.ATTEMPT_STATE_FAILED}
    assert status.state == expected.get(how, S.ATTEMPT_STATE_CANCELLED)
    assert attempt_procs(attempt_id) == []


SUBREAPER_AGENT = """\
import asyncio, ctypes, json, os, sys, psutil
from pathlib import Path
from gridlab.agent.launcher import Attempt, LaunchSettings
from gridlab.agent.reaper import attempt_processes, become_subreaper
from gridlab.v1 import agent_pb2, types_pb2

class Sink:
    def on_log(self, line): pass
    def on_update(self, status): pass
    async def drain_logs(self, attempt_id): pass
    async def logs_settled(self, attempt_id, seqs, timeout): return True

async def main():
    out = {"subreaper": become_subreaper()}
    value = ctypes.c_int(0)
    ctypes.CDLL(None).prctl(37, ctypes.byref(value), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
    out["prctl"] = value.value
    settings = LaunchSettings(state_dir=Path(sys.argv[1]), grace_period=5)
    for attempt_id, code in (("sr-ok", 0), ("sr-fail", 3)):
        script = ("import subprocess, sys\\n"
                  "subprocess.Popen(['sleep', '123'], start_new_session=True)\\n"
                  "subprocess.Popen(['sh', '-c', 'sleep 124 &'])\\n"  # an orphan at once
                  f"sys.exit({code})\\n")
        a = agent_pb2.Assignment(attempt_id=attempt_id, run_id="run-sr", procs_per_node=1,
                                 spec=types_pb2.RunSpec(command=[sys.executable, "-c", script]))
        status = await Attempt(a, settings, Sink()).run()
        out[attempt_id] = [status.state, status.exit_code, len(attempt_processes(attempt_id))]
    out["zombies"] = [c.pid for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE]
    out["children"] = len(psutil.Process().children())
    print(json.dumps(out))

asyncio.run(main())
"""


def test_as_subreaper_orphans_are_killed_and_reaped(tmp_path: Path) -> None:
    """In a process of its own (as the agent is): orphans re-parent to it, are killed by
    attempt id and reaped, while the ranks' exit codes still come from asyncio."""
    out = subprocess.run(
        [PY, "-c", SUBREAPER_AGENT, str(tmp_path)], capture_output=True, text=True, timeout=30, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["subreaper"] is True
    assert result["prctl"] == 1
    assert result["sr-ok"] == [S.ATTEMPT_STATE_SUCCEEDED, 0, 0]
    assert result["sr-fail"] == [S.ATTEMPT_STATE_FAILED, 3, 0]  # not 255: asyncio reaped its rank
    assert result["zombies"] == []
    assert result["children"] == 0


def test_newest_checkpoint_is_the_runs_newest_complete_one(tmp_path: Path) -> None:
    from gridlab.agent.launcher import AttemptDirs, newest_checkpoint

    old, new, other = (AttemptDirs.of(tmp_path, a) for a in ("att-1", "att-2", "att-x"))
    old.prepare("run-1")
    new.prepare("run-1")
    other.prepare("run-2")
    (old.checkpoints / "epoch=0.ckpt").write_bytes(b"x")
    (new.checkpoints / ".tmp-abc.ckpt").write_bytes(b"half")  # a writer's temp file
    (new.checkpoints / "last.ckpt.partial").mkdir()  # a sharded save in progress
    (other.checkpoints / "epoch=9.ckpt").write_bytes(b"another run's")
    assert newest_checkpoint(tmp_path, "run-1") == old.checkpoints / "epoch=0.ckpt"
    sharded = new.checkpoints / "epoch=1.ckpt"
    sharded.mkdir()
    (sharded / "meta.pt").write_bytes(b"")
    os.utime(old.checkpoints / "epoch=0.ckpt", (1, 1))
    assert newest_checkpoint(tmp_path, "run-1") == sharded
    assert newest_checkpoint(tmp_path, "run-3") is None


def test_newest_checkpoint_ignores_links_and_times_from_the_future(tmp_path: Path) -> None:
    from gridlab.agent.launcher import AttemptDirs, newest_checkpoint

    mine, planted = AttemptDirs.of(tmp_path, "att-1"), AttemptDirs.of(tmp_path, "att-2")
    mine.prepare("run-1")
    planted.prepare("run-1")
    (mine.checkpoints / "epoch=0.ckpt").write_bytes(b"x")
    (planted.checkpoints / "x.ckpt").symlink_to(tmp_path / "elsewhere.pickle")  # a link could point anywhere
    future = planted.checkpoints / "y.ckpt"
    future.write_bytes(b"y")
    os.utime(future, (4_000_000_000, 4_000_000_000))  # year 2096: it would win forever
    assert newest_checkpoint(tmp_path, "run-1") == mine.checkpoints / "epoch=0.ckpt"


def test_a_cancel_during_the_final_uploads_does_not_undo_a_success(tmp_path: Path) -> None:
    attempt, _ = make(tmp_path, [PY, "-c", "pass"])
    uploading = asyncio.Event()

    async def slow_ship_last() -> None:  # the last checkpoint upload, taking a while
        uploading.set()
        await asyncio.sleep(0.3)

    attempt._ship_last = slow_ship_last  # type: ignore[method-assign]

    async def main() -> agent_pb2.AttemptStatus:
        task = asyncio.create_task(attempt.run())
        await uploading.wait()  # every rank exited 0
        attempt.cancel(S.ATTEMPT_STATE_PREEMPTED, reason="agent shutting down")
        return await task

    assert arun(main()).state == S.ATTEMPT_STATE_SUCCEEDED


def test_a_cancel_stops_a_long_preparation_at_once(tmp_path: Path) -> None:
    attempt, rec = make(tmp_path, [PY, "-c", "pass"])
    started = asyncio.Event()

    async def slow_fetch(dirs: Any) -> Any:  # a bundle download of many GB
        started.set()
        await asyncio.sleep(60)

    attempt._fetch_code = slow_fetch  # type: ignore[method-assign]

    async def main() -> agent_pb2.AttemptStatus:
        task = asyncio.create_task(attempt.run())
        await started.wait()
        attempt.cancel(S.ATTEMPT_STATE_CANCELLED, reason="user")
        return await task

    status = arun(main(), timeout=10)
    assert status.state == S.ATTEMPT_STATE_CANCELLED
    assert not attempt.pids()


@pytest.mark.parametrize("permanent", [True, False])
def test_a_preparation_failure_says_whether_a_retry_could_help(tmp_path: Path, permanent: bool) -> None:
    attempt, rec = make(tmp_path, [PY, "-c", "pass"])

    async def failing_fetch(dirs: Any) -> Any:
        raise PrepareError("could not fetch the code bundle", permanent=permanent)

    attempt._fetch_code = failing_fetch  # type: ignore[method-assign]
    status = arun(attempt.run())
    assert status.state == S.ATTEMPT_STATE_FAILED
    assert (status.permanent, status.infrastructure) == (permanent, not permanent)
    assert "could not fetch the code bundle" in rec.texts()
