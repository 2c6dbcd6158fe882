"""Spot machines: the reclaim notice (agent/spotwatch.py, against a local fake of EC2's instance metadata), and
what the scheduler does with interrupted runs: prefer machines that are not spot after one interruption, and
after `spot_fallback_after` of them never go back to one."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_engine import ALICE, drain, inventory, run_state, spec

from gridlab.agent import spotwatch
from gridlab.common.config import SchedulerConfig
from gridlab.common.timeutil import FakeClock
from gridlab.scheduler.engine import AgentSession, Engine
from gridlab.scheduler.placement import AgentView, GpuView, RunRequest, place_gang, static_reason
from gridlab.scheduler.store import Store
from gridlab.v1 import agent_pb2

# --- a fake instance metadata service ----------------------------------------------------------------------


class FakeMetadata:
    """EC2's metadata endpoint as far as spot notices go: IMDSv2 (a PUT for a token, then the token on each
    GET) unless `v1`; 404 on spot/instance-action until `notice` is set."""

    def __init__(self, v1: bool = False) -> None:
        self.v1 = v1
        self.notice: dict[str, str] | None = None
        self.tokenless_gets = 0
        self.gets = 0
        meta = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_PUT(self) -> None:  # noqa: N802
                if meta.v1 or self.path != "/latest/api/token":
                    self.send_error(405 if meta.v1 else 404)
                    return
                if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self.send_error(400)
                    return
                self._reply(200, b"tok-123")

            def do_GET(self) -> None:  # noqa: N802
                meta.gets += 1
                if not meta.v1 and self.headers.get("X-aws-ec2-metadata-token") != "tok-123":
                    meta.tokenless_gets += 1
                    self.send_error(401)
                    return
                if self.path != "/latest/meta-data/spot/instance-action" or meta.notice is None:
                    self.send_error(404)
                    return
                self._reply(200, json.dumps(meta.notice).encode())

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/latest/meta-data/spot/instance-action"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def metadata() -> Iterator[FakeMetadata]:
    meta = FakeMetadata()
    yield meta
    meta.close()


def test_no_notice_until_the_endpoint_has_one_then_its_action_and_time(metadata: FakeMetadata) -> None:
    assert spotwatch.check(metadata.url) is None
    metadata.notice = {"action": "terminate", "time": "2026-11-28T20:00:00Z"}
    notice = spotwatch.check(metadata.url)
    assert notice == spotwatch.Notice("terminate", "2026-11-28T20:00:00Z")
    assert "terminate at 2026-11-28T20:00:00Z" in notice.describe()
    assert metadata.tokenless_gets == 0  # IMDSv2: every read carried the session token


def test_an_imdsv1_endpoint_is_read_without_a_token() -> None:
    meta = FakeMetadata(v1=True)
    try:
        assert spotwatch.check(meta.url) is None
        meta.notice = {"action": "stop"}
        assert spotwatch.check(meta.url) == spotwatch.Notice("stop", "")
    finally:
        meta.close()


def test_watch_keeps_polling_through_an_unreachable_endpoint_and_reports_the_notice_once(
    metadata: FakeMetadata,
) -> None:
    async def go() -> list[spotwatch.Notice]:
        seen: list[spotwatch.Notice] = []
        down = asyncio.create_task(spotwatch.watch("http://127.0.0.1:9/nothing", 0.01, seen.append))
        await asyncio.sleep(0.1)
        assert not down.done()  # unreachable is not a notice, nor the end of watching
        down.cancel()
        task = asyncio.create_task(spotwatch.watch(metadata.url, 0.01, seen.append))
        await asyncio.sleep(0.1)
        assert seen == []
        assert metadata.gets >= 2
        metadata.notice = {"action": "terminate", "time": "t"}
        await asyncio.wait_for(task, 5)
        return seen

    assert asyncio.run(go()) == [spotwatch.Notice("terminate", "t")]


def test_notice_url_takes_ec2_or_an_http_url() -> None:
    assert spotwatch.notice_url("ec2") == spotwatch.EC2_NOTICE_URL
    assert spotwatch.notice_url("") == ""
    assert spotwatch.notice_url("http://127.0.0.1:1/x") == "http://127.0.0.1:1/x"
    with pytest.raises(ValueError, match="'ec2' or an http"):
        spotwatch.notice_url("file:///etc/passwd")


# --- placement ---------------------------------------------------------------------------------------------


def view(name: str, *, spot: bool = False, tier: int = 1) -> AgentView:
    gpus = tuple(GpuView(f"{name}-g{i}", "A100", 80 << 30) for i in range(2))
    return AgentView(name, "cloud", (), gpus, frozenset(g.uuid for g in gpus), 8, 8, 64 << 30, 64 << 30, tier, spot)


def test_placement_prefers_non_spot_machines_after_an_interruption_and_avoids_them_after_the_fallback() -> None:
    # "a-spot" sorts first by name, so only the spot rules can put "b-ondemand" ahead of it.
    agents = {a.name: a for a in (view("a-spot", spot=True), view("b-ondemand"))}
    fresh = RunRequest("r", gpus=1, cpus=1)
    assert place_gang(agents, fresh).nodes[0].agent_name == "a-spot"  # never interrupted: no preference
    once = replace(fresh, interruptions=1)
    assert place_gang(agents, once).nodes[0].agent_name == "b-ondemand"
    only_spot = {"a-spot": agents["a-spot"]}
    assert place_gang(only_spot, once) is not None  # a preference: spot still serves when nothing else can
    fallen_back = replace(fresh, interruptions=2, no_spot=True)
    assert place_gang(only_spot, fallen_back) is None
    assert "interrupted 2 times" in (static_reason(agents["a-spot"], fallen_back) or "")
    assert static_reason(agents["b-ondemand"], fallen_back) is None
    assert place_gang({"onprem": view("onprem", tier=0), **agents}, once).nodes[0].agent_name == "onprem"


# --- the engine: interruptions counted, then the fallback ----------------------------------------------------


def spot_hello(engine: Engine, name: str, preemptible: bool) -> AgentSession:
    hello = agent_pb2.Hello(name=name, pool="cloud", inventory=inventory(2), preemptible=preemptible)
    session = engine.agent_hello(hello)
    drain(session)  # the Welcome
    return session


def interrupt(engine: Engine, session: AgentSession) -> None:
    """The run's attempt on `session` starts, then ends PREEMPTED by a spot reclaim."""
    (msg,) = drain(session)
    attempt = msg.assign.attempt_id
    engine.agent_update(session, agent_pb2.AttemptStatus(attempt_id=attempt, state="ATTEMPT_STATE_RUNNING"))
    ended = agent_pb2.AttemptStatus(
        attempt_id=attempt, state="ATTEMPT_STATE_PREEMPTED", message="spot interruption", interrupted=True
    )
    engine.agent_update(session, ended)
    drain(session)  # the Release


def test_an_interrupted_run_requeues_free_and_after_the_fallback_count_waits_for_a_machine_not_spot(
    tmp_path: Path,
) -> None:
    config = SchedulerConfig(state_dir=str(tmp_path), spot_fallback_after=2, burst_pools=["cloud"])
    engine = Engine(Store(tmp_path / "s.db"), config, clock=FakeClock())
    spot = spot_hello(engine, "spot-1", preemptible=True)
    run_id, _ = engine.submit(ALICE, spec("train", gpus=1), "")
    for n in (1, 2):
        assert engine.place_once() == 1
        interrupt(engine, spot)
        row = engine.store.one("SELECT state, interruptions, retries_used FROM runs WHERE id = ?", (run_id,))
        assert (row["state"], row["interruptions"], row["retries_used"]) == ("QUEUED", n, 0)
    assert engine.place_once() == 0  # two interruptions: the only machine is spot, so it waits
    reason = engine.store.one("SELECT pending_reason FROM runs WHERE id = ?", (run_id,))["pending_reason"]
    assert "spot" in reason, reason
    (agent,) = engine.list_agents()
    assert agent.preemptible
    ondemand = spot_hello(engine, "ondemand-1", preemptible=False)
    assert engine.place_once() == 1
    (msg,) = drain(ondemand)
    assert msg.assign.run_id == run_id
    assert run_state(engine, run_id) == "STARTING"


def test_a_pool_marked_preemptible_in_the_config_makes_its_agents_spot(tmp_path: Path) -> None:
    pools = {"spot": {"provider": "local", "machine": "2xA100:80", "preemptible": True, "max_agents": 1}}
    config = SchedulerConfig(state_dir=str(tmp_path), pools=pools, spot_fallback_after=1)
    engine = Engine(Store(tmp_path / "s.db"), config, clock=FakeClock())
    session = engine.agent_hello(agent_pb2.Hello(name="spot-x", pool="spot", inventory=inventory(2)))
    drain(session)
    (agent,) = engine.list_agents()
    assert agent.preemptible  # the pool's word, though its Hello did not say so
    run_id, _ = engine.submit(ALICE, spec("train", gpus=1), "")
    assert engine.place_once() == 1
    interrupt(engine, session)
    assert engine.place_once() == 0  # spot_fallback_after = 1
    assert run_state(engine, run_id) == "QUEUED"


def test_schedctl_marks_spot_machines_in_the_agents_table() -> None:
    from gridlab.client.cli import agent_rows
    from gridlab.v1 import types_pb2

    agent = types_pb2.Agent(name="spot-1", pool="cloud", state="AGENT_STATE_READY", inventory=inventory(2))
    agent.preemptible = True
    (row,) = agent_rows(agent, None, 0.0, wide=False)
    assert row[:2] == ["spot-1", "cloud (spot)"]


def test_a_200_that_is_no_notice_is_an_error_not_an_interruption_and_no_proxy_is_used(
    metadata: FakeMetadata, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # unreachable: used, every poll would fail
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    assert spotwatch.check(metadata.url) is None
    for bad in ({}, {"action": ""}, {"time": "t"}):
        metadata.notice = bad
        with pytest.raises(ValueError, match="not a reclaim notice"):
            spotwatch.check(metadata.url)
