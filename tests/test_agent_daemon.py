"""The agent daemon against a fake AgentGateway: real gRPC on an ephemeral port, real ranks,
no scheduler. Covers the protocol (Hello, Welcome, heartbeats, orders, updates), the
logs-before-terminal-state rule, reconnection, a refused token, shutdown and the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import psutil
import pytest
import structlog

from gridlab.agent import main as agent_main
from gridlab.agent.daemon import EXIT_OK, EXIT_REFUSED, Agent
from gridlab.agent.inventory import InventoryCollector
from gridlab.agent.logship import expand
from gridlab.common import auth
from gridlab.common.config import AgentConfig
from gridlab.common.timeutil import duration
from gridlab.v1 import agent_pb2, agent_pb2_grpc, types_pb2

T = TypeVar("T")
S = types_pb2.AttemptState
PY = sys.executable
TOKEN = "glt_test"


# One event loop for the whole module. grpc.aio ties its poller thread to the loop it first
# runs on; a fresh asyncio.run() per test left pollers of closed loops behind, and the final
# garbage collection of the test session could then block forever joining one of them.
_RUNNER = asyncio.Runner()


@pytest.fixture(scope="module", autouse=True)
def _one_loop() -> Iterator[None]:
    yield
    _RUNNER.close()


def arun(coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
    return _RUNNER.run(asyncio.wait_for(coro, timeout))


async def until(predicate: Callable[[], object], timeout: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        await asyncio.sleep(0.01)


def gone(pid: int) -> bool:
    """Exited (a zombie counts: in a container nobody may reap an orphan)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class FakeGateway(agent_pb2_grpc.AgentGatewayServicer):
    """Just enough scheduler: welcomes, records what arrives (in order), sends orders."""

    def __init__(self) -> None:
        self.hellos: list[agent_pb2.Hello] = []
        self.events: list[tuple[str, Any]] = []  # ("update", status) / ("log", line) / ...
        self.logs: dict[tuple[str, int, int], types_pb2.LogLine] = {}
        self.orders: asyncio.Queue[agent_pb2.SchedulerMessage] = asyncio.Queue()
        self.aborted_attempts: set[str] = set()

    def _check(self, context: grpc.aio.ServicerContext) -> bool:
        return auth.token_from_metadata(context.invocation_metadata()) == TOKEN

    async def Connect(  # noqa: N802 - the generated name
        self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: Any
    ) -> AsyncIterator[agent_pb2.SchedulerMessage]:
        if not self._check(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        first = await anext(aiter(request_iterator))
        self.hellos.append(first.hello)
        yield agent_pb2.SchedulerMessage(
            welcome=agent_pb2.Welcome(agent_id="agent-1", heartbeat_interval=duration(0.1))
        )

        async def read() -> None:
            async for msg in request_iterator:
                kind = msg.WhichOneof("msg")
                self.events.append((kind, getattr(msg, kind)))
            self.events.append(("closed", None))

        reader = asyncio.create_task(read())
        try:
            while True:
                order = asyncio.ensure_future(self.orders.get())
                await asyncio.wait({order, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not order.done():  # the agent said bye: hang up, as the scheduler does
                    order.cancel()
                    return
                yield order.result()
        finally:
            reader.cancel()

    async def PushLogs(  # noqa: N802
        self, request_iterator: AsyncIterator[agent_pb2.PushLogsRequest], context: Any
    ) -> agent_pb2.PushLogsResponse:
        if not self._check(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        accepted = 0
        async for request in request_iterator:
            assert request.agent_name == "t1"
            for line in (one for entry in request.lines for one in expand(entry)):  # batches to lines
                if line.attempt_id in self.aborted_attempts:
                    await context.abort(grpc.StatusCode.ABORTED, "not yours")
                key = (line.attempt_id, line.rank, line.seq)
                if key not in self.logs:
                    self.logs[key] = line
                    self.events.append(("log", line))
                    accepted += 1
        return agent_pb2.PushLogsResponse(accepted=accepted)

    # -- helpers for tests --

    def updates(self, attempt_id: str) -> list[int]:
        return [e[1].state for e in self.events if e[0] == "update" and e[1].attempt_id == attempt_id]

    def texts(self, attempt_id: str) -> list[str]:
        lines = sorted((k, v) for k, v in self.logs.items() if k[0] == attempt_id)
        return [v.text for _, v in lines if v.stream != types_pb2.LOG_STREAM_SYSTEM]

    def heartbeats(self) -> list[agent_pb2.Heartbeat]:
        return [e[1] for e in self.events if e[0] == "heartbeat"]

    def send(self, **kw: Any) -> None:
        self.orders.put_nowait(agent_pb2.SchedulerMessage(**kw))


async def start_server(gateway: FakeGateway, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentGatewayServicer_to_server(gateway, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    assert bound, f"could not bind port {port}"
    assert port in (0, bound)
    await server.start()
    return server, bound


def make_agent(tmp_path: Path, port: int, token: str = TOKEN, grace: float = 2.0, drain_timeout: float = 30.0) -> Agent:
    config = AgentConfig(
        scheduler=f"127.0.0.1:{port}",
        name="t1",
        pool="lab",
        labels={"zone": "a"},
        state_dir=str(tmp_path / "agent"),
        grace_period=grace,
        reconnect_min=0.05,
        reconnect_max=0.2,
    )
    inventory = InventoryCollector(agent_name="t1", state_dir=tmp_path, environ={"GRIDLAB_FAKE_GPUS": "2xA100:80"})
    return Agent(config, token, inventory=inventory, drain_timeout=drain_timeout)


def assignment(attempt_id: str, code: str, **kw: Any) -> agent_pb2.Assignment:
    return agent_pb2.Assignment(
        attempt_id=attempt_id,
        run_id="run-" + attempt_id,
        attempt_number=1,
        spec=types_pb2.RunSpec(command=[PY, "-c", code]),
        nodes=1,
        procs_per_node=1,
        **kw,
    )


def test_hello_assignment_logs_before_terminal_update_and_release(tmp_path: Path) -> None:
    async def go() -> None:
        gw = FakeGateway()
        server, port = await start_server(gw)
        agent = make_agent(tmp_path, port)
        run = asyncio.create_task(agent.run())
        await until(lambda: gw.hellos, what="hello")
        hello = gw.hellos[0]
        assert (hello.name, hello.pool, dict(hello.labels)) == ("t1", "lab", {"zone": "a"})
        assert hello.inventory.fake_gpus
        assert [g.uuid for g in hello.inventory.gpus] == ["GPU-fake-t1-0", "GPU-fake-t1-1"]
        assert hello.version
        assert list(hello.attempts) == []

        code = "import sys\nfor i in range(200): print(f'line {i}')\nprint('bye', file=sys.stderr)"
        gw.send(assign=assignment("a1", code, gpu_uuids=["GPU-fake-t1-1"]))
        gw.send(assign=assignment("a1", code))  # a duplicate is ignored
        await until(lambda: S.ATTEMPT_STATE_SUCCEEDED in gw.updates("a1"), what="SUCCEEDED")
        assert gw.updates("a1") == [
            S.ATTEMPT_STATE_PREPARING,
            S.ATTEMPT_STATE_RUNNING,
            S.ATTEMPT_STATE_RUNNING,  # the ranks exited: the last uploads and logs follow
            S.ATTEMPT_STATE_SUCCEEDED,
        ]
        # every line was stored before the terminal update arrived
        terminal = next(
            i for i, e in enumerate(gw.events) if e[0] == "update" and e[1].state == S.ATTEMPT_STATE_SUCCEEDED
        )
        logged_before = [e for e in gw.events[:terminal] if e[0] == "log"]
        assert len(logged_before) == 201
        texts = gw.texts("a1")  # in seq order; stderr's line may come anywhere among stdout's (two pipes)
        assert [t for t in texts if t != "bye"] == [f"line {i}" for i in range(200)]
        assert texts.count("bye") == 1

        await until(lambda: any(hb.attempts for hb in gw.heartbeats()), what="heartbeat with attempt")
        beat = gw.heartbeats()[-1]
        assert beat.inventory.gpus
        # a cancel for an attempt that already ended repeats how it ended
        gw.send(cancel=agent_pb2.CancelAttempt(attempt_id="a1"))
        await until(lambda: len(gw.updates("a1")) == 5, what="repeated terminal update")
        assert gw.updates("a1")[-1] == S.ATTEMPT_STATE_SUCCEEDED
        gw.send(release=agent_pb2.ReleaseAttempt(attempt_id="a1"))
        await until(lambda: not agent.attempts, what="release")
        gw.send(assign=assignment("a1", code))  # a stale assignment of a released attempt
        n = len(gw.heartbeats())
        await until(lambda: len(gw.heartbeats()) > n + 1, what="more heartbeats")
        assert not gw.heartbeats()[-1].attempts
        assert len(gw.updates("a1")) == 5

        agent.request_stop()
        assert await run == EXIT_OK
        await until(lambda: ("closed", None) in gw.events, what="clean half-close")
        await server.stop(None)

    arun(go())


def test_cancel_order_with_final_state_and_grace(tmp_path: Path) -> None:
    stubborn = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )

    async def go() -> None:
        gw = FakeGateway()
        server, port = await start_server(gw)
        agent = make_agent(tmp_path, port, grace=30)
        run = asyncio.create_task(agent.run())
        gw.send(assign=assignment("c1", stubborn))
        await until(lambda: "ready" in gw.texts("c1"), what="ready")
        pids = agent.attempts["c1"].pids()
        gw.send(cancel=agent_pb2.CancelAttempt(attempt_id="nope"))  # unknown: ignored
        start = time.monotonic()
        gw.send(
            cancel=agent_pb2.CancelAttempt(
                attempt_id="c1", grace=duration(0.2), reason="preempted by run-x", final_state=S.ATTEMPT_STATE_PREEMPTED
            )
        )
        await until(lambda: S.ATTEMPT_STATE_PREEMPTED in gw.updates("c1"), what="PREEMPTED")
        assert time.monotonic() - start < 5  # the cancel's grace, not the agent's 30 s
        assert all(gone(p) for p in pids)
        final = [e[1] for e in gw.events if e[0] == "update"][-1]
        assert "preempted by run-x" in final.message
        agent.request_stop()
        assert await run == EXIT_OK
        await server.stop(None)

    arun(go())


def test_reconnects_and_reports_what_happened_meanwhile(tmp_path: Path) -> None:
    async def go() -> None:
        gw = FakeGateway()
        server, port = await start_server(gw)
        agent = make_agent(tmp_path, port, drain_timeout=0.5)
        run = asyncio.create_task(agent.run())
        gw.send(
            assign=assignment(
                "r1", "import time, sys\nprint('before', flush=True)\ntime.sleep(0.5)\nprint('after')\nsys.exit(3)"
            )
        )
        await until(lambda: "before" in gw.texts("r1"), what="first line")
        await server.stop(None)  # the scheduler goes away; the attempt keeps running
        await until(lambda: agent.attempts["r1"].done, what="attempt end while disconnected")
        gw2 = FakeGateway()
        server2, _ = await start_server(gw2, port)  # the scheduler is back
        await until(lambda: gw2.hellos, what="second hello")
        (held,) = gw2.hellos[0].attempts
        assert (held.attempt_id, held.state, held.exit_code) == ("r1", S.ATTEMPT_STATE_FAILED, 3)
        assert held.message == "rank 0 exited with 3"
        await until(lambda: "after" in gw2.texts("r1"), what="late line")  # resent
        agent.request_stop()
        assert await run == EXIT_OK
        await server2.stop(None)

    arun(go(), timeout=60)


def test_refused_token_exits_non_zero(tmp_path: Path) -> None:
    async def go() -> int:
        gw = FakeGateway()
        server, port = await start_server(gw)
        agent = make_agent(tmp_path, port, token="wrong")
        code = await asyncio.wait_for(agent.run(), 10)
        await server.stop(None)
        return code

    assert arun(go()) == EXIT_REFUSED


def test_aborted_logs_are_dropped_not_retried_forever(tmp_path: Path) -> None:
    async def go() -> None:
        gw = FakeGateway()
        gw.aborted_attempts.add("x1")
        server, port = await start_server(gw)
        agent = make_agent(tmp_path, port)
        run = asyncio.create_task(agent.run())
        start = time.monotonic()
        gw.send(assign=assignment("x1", "print('hello')"))
        await until(lambda: S.ATTEMPT_STATE_SUCCEEDED in gw.updates("x1"), what="end")
        assert time.monotonic() - start < 5  # did not wait out the drain bound
        assert agent.shipper.pending() == 0
        agent.request_stop()
        assert await run == EXIT_OK
        await server.stop(None)

    arun(go())


def test_stop_ends_running_attempts_and_exits_zero(tmp_path: Path) -> None:
    async def go() -> None:
        gw = FakeGateway()
        server, port = await start_server(gw)
        agent = make_agent(tmp_path, port, grace=5)
        run = asyncio.create_task(agent.run())
        gw.send(assign=assignment("s1", "print('up', flush=True)\nimport time\ntime.sleep(60)"))
        await until(lambda: "up" in gw.texts("s1"), what="up")
        pids = agent.attempts["s1"].pids()
        agent.request_stop()
        assert await asyncio.wait_for(run, 10) == EXIT_OK
        assert all(gone(p) for p in pids)
        assert gw.updates("s1")[-1] == S.ATTEMPT_STATE_PREEMPTED
        await server.stop(None)

    arun(go())


# -- the command line ---------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No GRIDLAB_* from the outside; and undo main()'s logging set-up, which binds
    structlog to this test's (soon closed) captured stderr."""
    for key in list(os.environ):
        if key.startswith("GRIDLAB_"):
            monkeypatch.delenv(key)
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.mark.usefixtures("clean_env")
def test_cli_missing_token_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert agent_main.main(["--scheduler", "127.0.0.1:1", "--state-dir", str(tmp_path)]) == 2
    assert "no join token" in capsys.readouterr().err
    assert agent_main.main(["--token-file", str(tmp_path / "missing"), "--state-dir", str(tmp_path)]) == 2


@pytest.mark.usefixtures("clean_env")
def test_cli_bad_fake_gpus_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GRIDLAB_AGENT_TOKEN", "t")
    monkeypatch.setenv("GRIDLAB_FAKE_GPUS", "2x")
    assert agent_main.main(["--state-dir", str(tmp_path)]) == 2
    assert "GRIDLAB_FAKE_GPUS" in capsys.readouterr().err


@pytest.mark.usefixtures("clean_env")
def test_cli_config_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('pool = "cloud"\nlabels = { zone = "a", rack = "1" }\ngrace_period = 9\n')
    token = tmp_path / "token"
    token.write_text("glt_x\n")
    monkeypatch.setenv("GRIDLAB_AGENT_NAME", "from-env")
    args = agent_main.build_parser().parse_args(
        ["--config", str(cfg), "--token-file", str(token), "--label", "rack=2", "--grace-period", "3"]
    )
    config, tok = agent_main.load_config(args)
    assert tok == "glt_x"
    assert (config.pool, config.name, config.grace_period) == ("cloud", "from-env", 3.0)
    assert config.labels == {"zone": "a", "rack": "2"}


def test_agent_process_sigterm_and_kill_9(tmp_path: Path) -> None:
    """As a subprocess: SIGTERM exits 0; after kill -9 its ranks die with it."""

    async def start(gw: FakeGateway, port: int, name: str) -> asyncio.subprocess.Process:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDLAB_")}
        env.update(GRIDLAB_AGENT_TOKEN=TOKEN, GRIDLAB_FAKE_GPUS="1")
        return await asyncio.create_subprocess_exec(
            PY, "-m", "gridlab.agent.main", "--scheduler", f"127.0.0.1:{port}", "--name", "t1",
            "--state-dir", str(tmp_path / name), "--log-format", "json",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    async def go() -> None:
        gw = FakeGateway()
        server, port = await start_server(gw)
        proc = await start(gw, port, "a")
        await until(lambda: gw.hellos, what="hello from the process")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0

        proc = await start(gw, port, "b")
        gw.send(assign=assignment("k1", "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)"))
        await until(lambda: gw.texts("k1"), what="rank pid")
        rank_pid = int(gw.texts("k1")[0])
        proc.kill()
        await proc.wait()
        await until(lambda: gone(rank_pid), timeout=5, what="rank to die with its agent")
        await server.stop(None)

    arun(go(), timeout=40)


STUBBORN = (
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)\n"
)


class _Held:
    """Stands for an Attempt: records the cancel orders it gets."""

    done = False

    def __init__(self) -> None:
        self.orders: list[tuple[int, float | None, str]] = []

    def cancel(self, final_state: int, grace: float | None, reason: str) -> None:
        self.orders.append((final_state, grace, reason))


def test_cancel_grace_zero_means_now_and_unset_means_configured(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, 1, grace=30)
    held = _Held()
    agent.attempts["g1"] = held  # type: ignore[assignment]
    agent.handle(agent_pb2.SchedulerMessage(cancel=agent_pb2.CancelAttempt(attempt_id="g1", grace=duration(0))))
    agent.handle(agent_pb2.SchedulerMessage(cancel=agent_pb2.CancelAttempt(attempt_id="g1", grace=duration(1.5))))
    agent.handle(agent_pb2.SchedulerMessage(cancel=agent_pb2.CancelAttempt(attempt_id="g1")))
    assert [grace for _, grace, _ in held.orders] == [0.0, 1.5, None]


def test_cancel_with_grace_zero_kills_at_once(tmp_path: Path) -> None:
    async def go() -> None:
        gw = FakeGateway()
        server, port = await start_server(gw)
        agent = make_agent(tmp_path, port, grace=30)
        run = asyncio.create_task(agent.run())
        gw.send(assign=assignment("z1", STUBBORN))
        await until(lambda: "ready" in gw.texts("z1"), what="ready")
        start = time.monotonic()
        gw.send(cancel=agent_pb2.CancelAttempt(attempt_id="z1", grace=duration(0)))
        await until(lambda: S.ATTEMPT_STATE_CANCELLED in gw.updates("z1"), what="CANCELLED")
        assert time.monotonic() - start < 5  # SIGKILL at once, not after the agent's 30 s
        agent.request_stop()
        assert await run == EXIT_OK
        await server.stop(None)

    arun(go())


def test_hello_after_reconnect_while_stopping_says_draining(tmp_path: Path) -> None:
    async def go() -> None:
        gw = FakeGateway()
        server, port = await start_server(gw)
        agent = make_agent(tmp_path, port, grace=2)
        run = asyncio.create_task(agent.run())
        gw.send(assign=assignment("d1", STUBBORN))
        await until(lambda: "ready" in gw.texts("d1"), what="ready")
        assert gw.hellos[0].draining is False
        agent.request_stop()  # the rank ignores SIGTERM: the agent drains for 2 s
        await until(lambda: any(hb.draining for hb in gw.heartbeats()), what="draining heartbeat")
        await server.stop(None)
        gw2 = FakeGateway()
        server2, _ = await start_server(gw2, port)
        await until(lambda: gw2.hellos, what="hello after reconnect")
        assert gw2.hellos[0].draining is True
        assert [a.attempt_id for a in gw2.hellos[0].attempts] == ["d1"]
        assert await run == EXIT_OK
        await server2.stop(None)

    arun(go())


def test_shutdown_waits_for_attempts_assigned_while_stopping(tmp_path: Path) -> None:
    async def go() -> None:
        gw = FakeGateway()
        server, port = await start_server(gw)
        agent = make_agent(tmp_path, port, grace=1)
        drain = agent.drain_logs

        async def slow_drain(attempt_id: str) -> None:  # "late" ends after "first"
            if attempt_id == "late":
                await asyncio.sleep(2)
            await drain(attempt_id)

        agent.drain_logs = slow_drain  # type: ignore[method-assign]
        run = asyncio.create_task(agent.run())
        gw.send(assign=assignment("first", STUBBORN))
        await until(lambda: "ready" in gw.texts("first"), what="ready")
        agent.request_stop()  # "first" takes its 1 s grace
        await until(lambda: agent._stopping, what="stopping")
        gw.send(assign=assignment("late", "print('never')"))  # preempted at once, ends in 2 s
        assert await asyncio.wait_for(run, 10) == EXIT_OK
        # Written before the agent said bye; the fake server's reader (another task here) may lag behind.
        for attempt_id in ("first", "late"):  # "late": awaited, reported, then bye
            await until(lambda a=attempt_id: gw.updates(a)[-1:] == [S.ATTEMPT_STATE_PREEMPTED], what=attempt_id)
        await until(lambda: ("closed", None) in gw.events, what="bye after the last updates")
        await server.stop(None)

    arun(go())


@pytest.mark.usefixtures("clean_env")
def test_cli_makes_the_agent_a_subreaper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    async def serve(agent: Agent) -> int:
        calls.append("serve")
        return 0

    monkeypatch.setenv("GRIDLAB_AGENT_TOKEN", "t")
    monkeypatch.setattr(agent_main, "become_subreaper", lambda: calls.append("subreaper") or True)
    monkeypatch.setattr(agent_main, "serve", serve)
    assert agent_main.main(["--state-dir", str(tmp_path), "--scheduler", "127.0.0.1:1"]) == 0
    assert calls == ["subreaper", "serve"]


class SlowAcks:
    """A shipper stand-in acknowledging one line every 0.1 s: slow, but never stalled."""

    def __init__(self, lines: int) -> None:
        self.left = lines

    def pending(self, attempt_id: str | None = None) -> int:
        return self.left

    async def wait_acked(self, attempt_id: str, timeout: float) -> bool:
        await asyncio.sleep(min(timeout, 0.1))
        self.left = max(0, self.left - 1)
        return self.left == 0


def test_draining_waits_out_a_long_backlog_while_acks_progress_and_gives_up_on_a_stall(tmp_path: Path) -> None:
    async def go() -> None:
        agent = make_agent(tmp_path, 1, drain_timeout=0.3)
        slow = SlowAcks(10)  # 1 s in all: more than drain_timeout, but progressing
        agent.shipper = slow  # type: ignore[assignment]
        await agent.drain_logs("a1")
        assert slow.left == 0  # drained whole: the bound is on stalls, not on the total

        stalled = SlowAcks(5)
        stalled.wait_acked = lambda attempt_id, timeout: asyncio.sleep(min(timeout, 0.1), False)  # type: ignore[method-assign]
        t0 = time.monotonic()
        agent.shipper = stalled  # type: ignore[assignment]
        await agent.drain_logs("a1")
        assert stalled.left == 5
        assert time.monotonic() - t0 < 2

    arun(go())


def test_the_agent_beats_at_the_cadence_the_scheduler_sets(tmp_path: Path) -> None:
    """The Welcome's interval (0.1 s here), then a Cadence message's: the next beat goes at once and the
    following ones at the new pace."""

    async def go() -> None:
        gw = FakeGateway()
        server, port = await start_server(gw)
        agent = make_agent(tmp_path, port)
        run = asyncio.create_task(agent.run())
        await until(lambda: len(gw.heartbeats()) >= 3, what="heartbeats at the Welcome's pace")
        gw.send(cadence=agent_pb2.Cadence(heartbeat_interval=duration(1.0), heartbeat_timeout=duration(6.0)))
        await until(lambda: agent.heartbeat_interval == 1.0, what="the new cadence")
        await asyncio.sleep(0.3)  # the beat the change set off has gone
        n = len(gw.heartbeats())
        await asyncio.sleep(1.5)
        assert 1 <= len(gw.heartbeats()) - n <= 2  # at 0.1 s it would be about 15
        agent.request_stop()
        assert await run == EXIT_OK
        await server.stop(None)

    arun(go())
