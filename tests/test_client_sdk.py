"""The SDK and schedctl against a small in-process fake scheduler (real gRPC, port 0).

The fake records every request with its metadata, and can break a stream with UNAVAILABLE
part way, the way a scheduler restart does.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from gridlab.client import Client, FailedPrecondition, NotFound, Run, RunStatus, Unauthenticated, Unavailable, cli
from gridlab.common import grpcopts, timeutil
from gridlab.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2

TOKEN = "glt_good"


def make_run(run_id: str, state: int = types_pb2.RUN_STATE_QUEUED, **kw: Any) -> types_pb2.Run:
    run = types_pb2.Run(id=run_id, state=state, user="alice", **kw)
    run.spec.command.extend(["python", "train.py"])
    run.spec.resources.gpus = 1
    run.created_at.CopyFrom(timeutil.ts(time.time() - 75))
    return run


class FakeScheduler(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, str]]] = []
        self.runs: dict[str, types_pb2.Run] = {}
        self.lines = [types_pb2.LogLine(text=f"line {i}", cursor=i, rank=0, seq=i) for i in range(1, 6)]
        self.events: list[types_pb2.RunEvent] = []
        self.break_after: dict[str, int] = {}  # method -> items to send before UNAVAILABLE, once
        self.hold_open = False  # keep WatchRuns open after the last event
        self.logs_hold_open = False  # keep StreamLogs(follow) open after the last line

    def _enter(self, name: str, request: Any, context: grpc.ServicerContext) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.calls.append((name, request, metadata))
        if metadata.get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown token")

    def requests(self, name: str) -> list[Any]:
        return [request for method, request, _ in self.calls if method == name]

    def _run(self, run_id: str, context: grpc.ServicerContext) -> types_pb2.Run:
        if run_id not in self.runs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"run {run_id} not found")
        return self.runs[run_id]

    def SubmitRun(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("SubmitRun", request, context)
        if not request.spec.command:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "command is empty")
        run = types_pb2.Run(id=f"run-{len(self.runs) + 1}", spec=request.spec, state=types_pb2.RUN_STATE_QUEUED)
        self.runs[run.id] = run
        return scheduler_pb2.SubmitRunResponse(run=run)

    def GetRun(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("GetRun", request, context)
        return scheduler_pb2.GetRunResponse(run=self._run(request.run_id, context))

    def ListRuns(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ListRuns", request, context)
        runs = sorted(self.runs.values(), key=lambda r: r.id, reverse=True)
        if request.states:
            runs = [r for r in runs if r.state in request.states]
        if request.page_token:
            runs = [r for r in runs if r.id < request.page_token]
        page = runs[: min(request.limit or 100, 2)]  # small pages, to exercise paging
        more = len(runs) > len(page)
        return scheduler_pb2.ListRunsResponse(runs=page, next_page_token=page[-1].id if more else "")

    def CancelRun(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("CancelRun", request, context)
        run = self._run(request.run_id, context)
        if run.state >= types_pb2.RUN_STATE_SUCCEEDED:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"run {run.id} has already ended")
        run.state = types_pb2.RUN_STATE_CANCELLED
        return scheduler_pb2.CancelRunResponse(run=run)

    def _maybe_break(self, name: str, sent: int, context: grpc.ServicerContext) -> None:
        if self.break_after.get(name) == sent:
            del self.break_after[name]
            context.abort(grpc.StatusCode.UNAVAILABLE, "scheduler restarting")

    def WatchRuns(self, request: Any, context: grpc.ServicerContext) -> Iterator[types_pb2.RunEvent]:
        self._enter("WatchRuns", request, context)
        sent = 0
        for event in self.events:
            if event.id > request.after_event_id and (not request.run_ids or event.run_id in request.run_ids):
                self._maybe_break("WatchRuns", sent, context)
                yield event
                sent += 1
        while self.hold_open and context.is_active():
            time.sleep(0.01)

    def StreamLogs(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._enter("StreamLogs", request, context)
        self._run(request.run_id, context)
        sent = 0
        for line in self.lines:
            if line.cursor > request.after_cursor:
                self._maybe_break("StreamLogs", sent, context)
                yield scheduler_pb2.StreamLogsResponse(lines=[line])
                sent += 1
        while request.follow and self.logs_hold_open and context.is_active():
            time.sleep(0.01)

    def ListAgents(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ListAgents", request, context)
        agent = types_pb2.Agent(id="agent-1", name="ws1", pool="onprem", state=types_pb2.AGENT_STATE_READY)
        agent.inventory.gpus.extend([types_pb2.Gpu(model="A100"), types_pb2.Gpu(model="A100")])
        agent.inventory.cpus = 32
        agent.inventory.memory_bytes = 256 * 1024**3
        agent.gpus_free, agent.cpus_free = 1, 30
        agent.attempt_ids.append("att-1")
        agent.last_heartbeat.CopyFrom(timeutil.ts(time.time() - 3))
        return scheduler_pb2.ListAgentsResponse(agents=[agent])

    def SetAgentState(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("SetAgentState", request, context)
        if request.name != "ws1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no agent {request.name!r}")
        state = {
            scheduler_pb2.AGENT_ACTION_CORDON: types_pb2.AGENT_STATE_CORDONED,
            scheduler_pb2.AGENT_ACTION_DRAIN: types_pb2.AGENT_STATE_DRAINING,
            scheduler_pb2.AGENT_ACTION_UNCORDON: types_pb2.AGENT_STATE_READY,
        }[request.action]
        agent = types_pb2.Agent(id="agent-1", name="ws1", pool="onprem", state=state, attempt_ids=["att-1"])
        return scheduler_pb2.SetAgentStateResponse(agent=agent)

    def CreateToken(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("CreateToken", request, context)
        return scheduler_pb2.CreateTokenResponse(token=f"glt_for_{request.user}_{request.role}")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No real config file or GRIDLAB_* variable may leak into a test."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("XDG_CONFIG_HOME", "GRIDLAB_ADDRESS", "GRIDLAB_TOKEN"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake(env: None) -> Iterator[tuple[FakeScheduler, str]]:
    servicer = FakeScheduler()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture
def client(fake: tuple[FakeScheduler, str]) -> Iterator[Client]:
    with Client(fake[1], TOKEN, timeout=5) as c:
        yield c


def event(event_id: int, state: int, run_id: str = "run-1") -> types_pb2.RunEvent:
    return types_pb2.RunEvent(id=event_id, run_id=run_id, state=state, kind=types_pb2.RunState.Name(state))


# --- SDK ------------------------------------------------------------------------------


def test_submit_sends_the_spec_and_the_token(fake: tuple[FakeScheduler, str], client: Client) -> None:
    servicer, _ = fake
    run = client.submit(
        "python train.py --lr '3e-4'", gpus=2, cpus=4, env={"A": "1"}, name="mnist", idempotency_key="k1"
    )
    assert isinstance(run, Run)
    assert (run.id, run.name) == ("run-1", "mnist")
    assert repr(run) == "Run(id='run-1', name='mnist')"
    (name, request, metadata) = servicer.calls[0]
    assert name == "SubmitRun"
    assert metadata["authorization"] == f"Bearer {TOKEN}"
    assert request.idempotency_key == "k1"
    expected = types_pb2.RunSpec(
        name="mnist",
        command=["python", "train.py", "--lr", "3e-4"],
        env={"A": "1"},
        resources=types_pb2.Resources(nodes=1, gpus=2, cpus=4.0),
    )
    assert request.spec == expected


def test_submit_sends_resources_and_placement_fields(fake: tuple[FakeScheduler, str], client: Client) -> None:
    servicer, _ = fake
    client.submit(
        ["python", "train.py"],
        gpus=2,
        gpu_type=["A100", "H100"],
        min_gpu_memory="40GiB",
        memory=64 * 1024**3,
        pool="onprem",
        labels={"zone": "b"},
        priority=5,
        preemptible=True,
        time_limit="2h",
    )
    spec = servicer.requests("SubmitRun")[0].spec
    assert list(spec.resources.gpu_types) == ["A100", "H100"]
    assert (spec.resources.min_gpu_memory_bytes, spec.resources.memory_bytes) == (40 * 1024**3, 64 * 1024**3)
    assert (spec.pool, dict(spec.labels), spec.priority, spec.preemptible) == ("onprem", {"zone": "b"}, 5, True)
    assert spec.time_limit.ToSeconds() == 7200
    with pytest.raises(ValueError, match="min_gpu_memory must be a size"):
        client.submit(["x"], gpus=1, min_gpu_memory="big")
    assert len(servicer.requests("SubmitRun")) == 1  # nothing sent


def test_cordon_drain_uncordon(fake: tuple[FakeScheduler, str], client: Client) -> None:
    servicer, _ = fake
    assert client.cordon("ws1", reason="fans").state == types_pb2.AGENT_STATE_CORDONED
    assert client.drain("ws1", deadline="30m").state == types_pb2.AGENT_STATE_DRAINING
    assert client.drain("ws1").state == types_pb2.AGENT_STATE_DRAINING
    assert client.uncordon("ws1").state == types_pb2.AGENT_STATE_READY
    cordon, drain, drain_forever, uncordon = servicer.requests("SetAgentState")
    assert (cordon.name, cordon.action, cordon.reason) == ("ws1", scheduler_pb2.AGENT_ACTION_CORDON, "fans")
    assert drain.deadline.ToSeconds() == 1800
    assert not drain_forever.HasField("deadline")
    assert uncordon.action == scheduler_pb2.AGENT_ACTION_UNCORDON
    with pytest.raises(NotFound, match="no agent 'nope'"):
        client.cordon("nope")
    with pytest.raises(ValueError, match="deadline must be"):
        client.drain("ws1", deadline="later")
    with pytest.raises(TypeError, match="name must be"):
        client.uncordon(3)  # type: ignore[arg-type]


def test_submit_checks_types_only(client: Client) -> None:
    with pytest.raises(TypeError, match="gpus"):
        client.submit(["x"], gpus="2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="gpus"):
        client.submit(["x"], gpus=True)
    with pytest.raises(TypeError, match="command"):
        client.submit(["python", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="env"):
        client.submit(["x"], env={"A": 1})  # type: ignore[dict-item]
    # Values are the server's business: it answers INVALID_ARGUMENT with its message.
    from gridlab.client import InvalidArgument

    with pytest.raises(InvalidArgument, match="command is empty"):
        client.submit("")


def test_errors_are_typed_and_name_the_token_source(fake: tuple[FakeScheduler, str], client: Client) -> None:
    with pytest.raises(NotFound, match="run run-x not found"):
        client.get_run("run-x")
    with Client(fake[1], "glt_wrong") as bad, pytest.raises(Unauthenticated, match="token argument"):
        bad.agents()


def test_status_runs_and_cancel(fake: tuple[FakeScheduler, str], client: Client) -> None:
    servicer, _ = fake
    for i in range(1, 6):
        servicer.runs[f"run-{i}"] = make_run(f"run-{i}", types_pb2.RUN_STATE_RUNNING)
    servicer.runs["run-5"].state = types_pb2.RUN_STATE_FAILED
    servicer.runs["run-5"].exit_code = 3
    servicer.runs["run-5"].attempts.add(number=1)
    assert client.status("run-5") == RunStatus(state="FAILED", exit_code=3, attempts=1)
    assert client.status("run-5").done
    assert client.status("run-4").exit_code is None

    got = client.runs(limit=3)
    assert [r.id for r in got] == ["run-5", "run-4", "run-3"]
    assert [r.limit for r in servicer.requests("ListRuns")] == [3, 1]
    assert [r.id for r in client.runs(states=["running"], limit=None)] == ["run-4", "run-3", "run-2", "run-1"]
    assert list(servicer.requests("ListRuns")[-1].states) == [types_pb2.RUN_STATE_RUNNING]
    with pytest.raises(ValueError, match="unknown run state"):
        client.runs(states=["RUNNIN"])

    assert client.cancel("run-1", grace=1.5, reason="oops").state == types_pb2.RUN_STATE_CANCELLED
    request = servicer.requests("CancelRun")[-1]
    assert (request.grace.seconds, request.grace.nanos, request.reason) == (1, 500_000_000, "oops")
    with pytest.raises(FailedPrecondition, match="already ended"):
        client.cancel("run-1")
    assert not servicer.requests("CancelRun")[-1].HasField("grace")  # unset: the agent's default


def test_logs_resume_after_unavailable(fake: tuple[FakeScheduler, str], client: Client) -> None:
    servicer, _ = fake
    servicer.runs["run-1"] = make_run("run-1")
    servicer.break_after["StreamLogs"] = 2
    assert list(client.logs("run-1", follow=True)) == [f"line {i}" for i in range(1, 6)]
    requests = servicer.requests("StreamLogs")
    assert [(r.follow, r.after_cursor) for r in requests] == [(True, 0), (True, 2)]
    assert not requests[0].has_rank


def test_logs_skip_lines_sent_twice(fake: tuple[FakeScheduler, str], client: Client) -> None:
    servicer, _ = fake
    servicer.runs["run-1"] = make_run("run-1")
    servicer.lines.insert(2, servicer.lines[1])  # a server that repeats itself
    lines = list(client.log_lines("run-1", rank=0, attempt=1))
    assert [line.cursor for line in lines] == [1, 2, 3, 4, 5]
    request = servicer.requests("StreamLogs")[0]
    assert (request.has_rank, request.rank, request.attempt_number) == (True, 0, 1)


def test_logs_leave_out_the_agents_own_lines(
    fake: tuple[FakeScheduler, str], client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, _ = fake
    servicer.runs["run-1"] = make_run("run-1")
    note = types_pb2.LogLine(text="rank 0 exited with 3", cursor=6, rank=0, stream=types_pb2.LOG_STREAM_SYSTEM)
    servicer.lines.append(note)
    assert list(client.logs("run-1"))[-1] == "line 5"
    assert list(client.log_lines("run-1"))[-1] == note
    assert schedctl(fake, "logs", "run-1") == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"line {i}" for i in range(1, 6)]
    assert captured.err == "gridlab: rank 0 exited with 3\n"


def test_following_logs_stops_at_the_timeout_naming_the_run(fake: tuple[FakeScheduler, str], client: Client) -> None:
    servicer, _ = fake
    servicer.runs["run-1"] = make_run("run-1", types_pb2.RUN_STATE_RUNNING)
    servicer.logs_hold_open = True  # a run that never ends
    for follow in (
        lambda: client.logs("run-1", follow=True, timeout=0.3),
        lambda: Run(client, "run-1").logs(True, 0.3),
    ):
        lines: list[str] = []
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="run run-1 was still sending logs after 0.3s"):
            lines.extend(follow())
        assert time.monotonic() - started < 3
        assert lines == [f"line {i}" for i in range(1, 6)]
    assert servicer.requests("StreamLogs")[-1].follow


def test_client_channel_has_keepalive(env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle WatchRuns/StreamLogs streams send nothing: without pings, a scheduler host that
    dies without a TCP reset leaves wait() and logs(follow=True) blocked forever."""
    from gridlab.client import sdk

    seen: list[dict[str, Any]] = []
    real = grpc.insecure_channel
    monkeypatch.setattr(
        sdk.grpc, "insecure_channel", lambda target, options: seen.append(dict(options)) or real(target)
    )
    with Client("h:1", "t"):
        pass
    options = seen[0]
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 0
    assert options["grpc.http2.max_pings_without_data"] == 0
    assert options["grpc.max_reconnect_backoff_ms"] == 5_000
    assert options == dict(grpcopts.CLIENT_CHANNEL_OPTIONS)


def test_server_allows_every_channels_keepalive_pings() -> None:
    """The server must take pings as often as any channel sends them, or it ends the
    connection with GOAWAY too_many_pings. gRPC ignores option names it does not know, so
    the name is checked too: 'grpc.http2.min_recv_ping_interval_without_data_ms' (the C
    macro's wording) is silently ignored, leaving gRPC's five-minute default."""
    server = dict(grpcopts.SERVER_OPTIONS)
    assert "grpc.http2.min_recv_ping_interval_without_data_ms" not in server
    interval = server["grpc.http2.min_ping_interval_without_data_ms"]
    assert interval == 20_000
    for channel in (grpcopts.CLIENT_CHANNEL_OPTIONS, grpcopts.AGENT_CHANNEL_OPTIONS):
        assert interval < dict(channel)["grpc.keepalive_time_ms"]


def test_unreachable_scheduler_fails_fast_with_its_address(env: None) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with Client(f"127.0.0.1:{port}", TOKEN) as c, pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
        list(c.logs("run-1", follow=True))
    assert time.monotonic() - started < 3


def test_wait_ends_on_a_terminal_event(fake: tuple[FakeScheduler, str], client: Client) -> None:
    servicer, _ = fake
    servicer.runs["run-1"] = make_run("run-1", types_pb2.RUN_STATE_SUCCEEDED, exit_code=0)
    servicer.runs["run-1"].attempts.add(number=1)
    servicer.events = [
        event(1, types_pb2.RUN_STATE_QUEUED),
        event(2, types_pb2.RUN_STATE_RUNNING),
        event(3, types_pb2.RUN_STATE_SUCCEEDED),
    ]
    servicer.hold_open = True  # the stream stays open: wait() must stop at the event
    servicer.break_after["WatchRuns"] = 2
    status = Run(client, "run-1").wait(timeout=10)
    assert status == RunStatus(state="SUCCEEDED", exit_code=0, attempts=1)
    assert [(list(r.run_ids), r.after_event_id) for r in servicer.requests("WatchRuns")] == [
        (["run-1"], 0),
        (["run-1"], 2),
    ]


def test_wait_times_out_naming_run_and_state(fake: tuple[FakeScheduler, str], client: Client) -> None:
    servicer, _ = fake
    servicer.runs["run-1"] = make_run("run-1", types_pb2.RUN_STATE_RUNNING)
    servicer.events = [event(1, types_pb2.RUN_STATE_RUNNING)]
    servicer.hold_open = True
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="run run-1 is still RUNNING after waiting 0.3s"):
        client.wait("run-1", timeout=0.3)
    assert time.monotonic() - started < 3


def test_watch_yields_events_in_order(fake: tuple[FakeScheduler, str], client: Client) -> None:
    servicer, _ = fake
    servicer.events = [event(1, 1), event(2, 1, "run-2"), event(3, 4)]
    assert [e.id for e in client.watch("run-1")] == [1, 3]
    assert [e.id for e in client.watch(after_event_id=1)] == [2, 3]


def test_agents_and_tokens(fake: tuple[FakeScheduler, str], client: Client) -> None:
    servicer, _ = fake
    assert [a.name for a in client.agents(pool="onprem")] == ["ws1"]
    assert servicer.requests("ListAgents")[0].pool == "onprem"
    assert client.create_token("bob", "admin", team="vision") == "glt_for_bob_admin"
    assert servicer.requests("CreateToken")[0].team == "vision"


def test_module_submit_uses_the_environment(fake: tuple[FakeScheduler, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from gridlab.client import sdk

    monkeypatch.setenv("GRIDLAB_ADDRESS", fake[1])
    monkeypatch.setenv("GRIDLAB_TOKEN", TOKEN)
    monkeypatch.setattr(sdk, "_default", None)
    run = sdk.submit(["echo", "hi"])
    assert run.id == "run-1"
    assert sdk.default_client() is sdk.default_client()
    sdk.default_client().close()


# --- schedctl against the fake ----------------------------------------------------------


def schedctl(fake: tuple[FakeScheduler, str], *argv: str) -> int:
    return cli.main(["--address", fake[1], "--token", TOKEN, *argv])


def test_cli_submit_prints_the_id(fake: tuple[FakeScheduler, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert schedctl(fake, "submit", "--gpus", "1", "-e", "A=1", "--", "echo", "--gpus") == 0
    assert capsys.readouterr().out == "run-1\n"
    spec = fake[0].requests("SubmitRun")[0].spec
    assert (list(spec.command), dict(spec.env), spec.resources.gpus) == (["echo", "--gpus"], {"A": "1"}, 1)


def test_cli_submit_resources(fake: tuple[FakeScheduler, str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["submit", "--gpus", "1", "--gpu-type", "A100", "--min-gpu-memory", "40GB", "--memory", "8G"]
    argv += ["--pool", "lab", "--label", "zone=b", "--priority", "3", "--preemptible", "--time-limit", "1:00:00"]
    assert schedctl(fake, *argv, "--", "echo") == 0
    spec = fake[0].requests("SubmitRun")[0].spec
    assert (list(spec.resources.gpu_types), spec.resources.min_gpu_memory_bytes) == (["A100"], 40 * 10**9)
    assert (spec.resources.memory_bytes, spec.pool, dict(spec.labels)) == (8 * 1024**3, "lab", {"zone": "b"})
    assert (spec.priority, spec.preemptible, spec.time_limit.ToSeconds()) == (3, True, 3600)
    assert schedctl(fake, "status", "run-1") == 0
    out = capsys.readouterr().out
    assert "1 GPU of A100 with >= 37.3GiB, 1 CPU, 8.0GiB" in out
    assert "pool lab, labels zone=b, priority 3, preemptible, time limit 1h00m" in out


def test_cli_agents_cordon_drain_uncordon(fake: tuple[FakeScheduler, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert schedctl(fake, "agents", "cordon", "ws1", "--reason", "fans") == 0
    assert capsys.readouterr().out == "ws1: cordoned: no new runs are placed on it (1 attempt still on it)\n"
    assert schedctl(fake, "agents", "drain", "ws1", "--deadline", "2h") == 0
    assert "ws1: draining: attempts still running in 2h00m are preempted and requeued" in capsys.readouterr().out
    assert fake[0].requests("SetAgentState")[1].deadline.ToSeconds() == 7200
    assert schedctl(fake, "agents", "uncordon", "ws1", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "AGENT_STATE_READY"
    assert schedctl(fake, "agents", "drain", "nope") == 3  # not found
    assert capsys.readouterr().err.startswith("error: no agent 'nope'")
    assert schedctl(fake, "agents") == 0  # the listing
    assert "ws1" in capsys.readouterr().out


def test_cli_submit_follow_exit_code(fake: tuple[FakeScheduler, str], capsys: pytest.CaptureFixture[str]) -> None:
    servicer, _ = fake

    def fail_soon() -> None:
        while "run-1" not in servicer.runs:
            time.sleep(0.01)
        run = servicer.runs["run-1"]
        run.attempts.add(number=1)
        run.exit_code, run.message, run.state = 2, "rank 0 exited 2", types_pb2.RUN_STATE_FAILED
        servicer.events.append(event(1, types_pb2.RUN_STATE_FAILED))

    thread = threading.Thread(target=fail_soon)
    thread.start()
    code = schedctl(fake, "submit", "--follow", "--", "python", "x.py")
    thread.join()
    assert code == 100  # the run failed
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "run-1"
    assert out[1:6] == [f"line {i}" for i in range(1, 6)]
    assert out[-1] == "run-1 FAILED (exit code 2): rank 0 exited 2"


def test_cli_submit_follow_timeout_bounds_the_logs(
    fake: tuple[FakeScheduler, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--timeout counts from the start, while the logs are followed too: a run that never
    ends must not hang `schedctl submit --follow --timeout N`."""
    servicer, _ = fake
    servicer.logs_hold_open = True
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(schedctl(fake, "submit", "--follow", "--timeout", "0.5", "--", "sleep", "inf")),
        daemon=True,
    )
    started = time.monotonic()
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "schedctl submit --follow --timeout 0.5 did not return"
    assert time.monotonic() - started < 5
    assert codes == [102]  # timed out
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["run-1", *(f"line {i}" for i in range(1, 6))]
    assert captured.err == (
        "error: run run-1 is still QUEUED after 0.5s; it keeps running (stop it with `schedctl cancel run-1`)\n"
    )


def test_cli_tables_and_json(fake: tuple[FakeScheduler, str], capsys: pytest.CaptureFixture[str]) -> None:
    servicer, _ = fake
    run = make_run("run-1", types_pb2.RUN_STATE_QUEUED, pending_reason="waiting for 1 free GPU")
    servicer.runs["run-1"] = run
    assert schedctl(fake, "runs") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "USER", "STATE", "GPUS", "AGE", "DURATION", "REASON"]
    assert lines[1].split()[:7] == ["run-1", "-", "alice", "QUEUED", "1", "1m", "ago"]
    assert lines[1].endswith("waiting for 1 free GPU")

    assert schedctl(fake, "runs", "-o", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["id"] == "run-1"
    assert data[0]["state"] == "RUN_STATE_QUEUED"

    assert schedctl(fake, "status", "run-1") == 0
    out = capsys.readouterr().out
    assert "State:      QUEUED" in out
    assert "Reason:     waiting for 1 free GPU" in out

    assert schedctl(fake, "agents") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "POOL", "STATE", "MODEL", "MEMORY", "UTIL", "FREE", "CPUS", "LIVE", "HEARTBEAT"]
    assert lines[1].split() == ["ws1", "onprem", "READY", "A100", "-", "0%", "1/2", "30/32", "1", "3s", "ago"]

    assert schedctl(fake, "logs", "run-1") == 0
    assert capsys.readouterr().out.splitlines() == [f"line {i}" for i in range(1, 6)]

    assert schedctl(fake, "token", "create", "--user", "bob") == 0
    assert capsys.readouterr().out == "glt_for_bob_user\n"


def test_cli_errors_are_one_line(fake: tuple[FakeScheduler, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert schedctl(fake, "status", "run-x") == 3
    assert capsys.readouterr().err == "error: run run-x not found\n"
    fake[0].runs["run-1"] = make_run("run-1", types_pb2.RUN_STATE_SUCCEEDED)
    fake[0].runs["run-2"] = make_run("run-2", types_pb2.RUN_STATE_RUNNING)
    assert schedctl(fake, "cancel", "run-1", "run-2") == 1
    captured = capsys.readouterr()
    assert captured.err == "error: run run-1 has already ended\n"
    assert captured.out == "run-2: cancelled\n"
    assert cli.main(["--address", fake[1], "--token", "nope", "agents"]) == 4  # permission: unknown token
    assert "unknown token (the token came from the token argument)" in capsys.readouterr().err
