"""Limits: a user's queued runs and submit rate (RESOURCE_EXHAUSTED naming the limit; admins exempt), message
sizes on the server and on clients, and the per-stream window that bounds what one agent's Connect stream
holds in the group-commit queue."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import grpc
import pytest

from gridlab.client.localcluster import LocalCluster
from gridlab.common import auth, grpcopts
from gridlab.common.config import SchedulerConfig
from gridlab.common.timeutil import FakeClock
from gridlab.scheduler.auth import Principal
from gridlab.scheduler.engine import Engine
from gridlab.scheduler.errors import ApiError
from gridlab.scheduler.gateway import _Window
from gridlab.scheduler.store import Store
from gridlab.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2

Code = grpc.StatusCode
ALICE = Principal("alice", "user")
ROOT = Principal("root", "admin")


def make_engine(tmp_path: Path, **config: object) -> Engine:
    cfg = SchedulerConfig(state_dir=str(tmp_path), **config)  # type: ignore[arg-type]
    return Engine(Store(tmp_path / "s.db"), cfg, clock=FakeClock())


def spec() -> types_pb2.RunSpec:
    return types_pb2.RunSpec(command=["true"])


def exhausted(engine: Engine, who: Principal, key: str = "") -> str:
    with pytest.raises(ApiError) as err:
        engine.submit(who, spec(), key)
    assert err.value.code == Code.RESOURCE_EXHAUSTED
    return err.value.message


def test_queued_runs_per_user_are_capped(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, max_queued_runs_per_user=3, max_submits_per_second_per_user=0)
    ids = [engine.submit(ALICE, spec(), f"k{i}")[0] for i in range(3)]
    message = exhausted(engine, ALICE)
    assert message.startswith("you have 3 queued runs, the most a user may have (max_queued_runs_per_user)")
    assert engine.submit(ALICE, spec(), "k1") == (ids[1], True)  # a retry of a queued submit still answers
    engine.submit(Principal("bob", "user"), spec(), "")  # per user
    engine.submit(ROOT, spec(), "")  # admins are exempt
    engine.cancel(ALICE, ids[0], None, "")
    engine.submit(ALICE, spec(), "")  # room again
    engine.config.max_queued_runs_per_user = 0  # 0: no cap
    for _ in range(5):
        engine.submit(ALICE, spec(), "")


def test_submits_per_second_are_a_token_bucket(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, max_submits_per_second_per_user=5.0)
    clock = engine.clock
    assert isinstance(clock, FakeClock)
    for i in range(5):  # a burst of the rate's size
        engine.submit(ALICE, spec(), f"k{i}")
    message = exhausted(engine, ALICE)
    assert "more than 5 submits per second, the most a user may send (max_submits_per_second_per_user)" in message
    assert "retry in 0.20s" in message
    engine.submit(ALICE, spec(), "k0")  # a retry costs nothing
    engine.submit(Principal("bob", "user"), spec(), "")  # per user
    for _ in range(20):
        engine.submit(ROOT, spec(), "")  # admins are exempt
    clock.advance(0.2)
    engine.submit(ALICE, spec(), "")  # one more token
    exhausted(engine, ALICE)
    clock.advance(100)
    for _ in range(5):  # refilled to the burst, not beyond
        engine.submit(ALICE, spec(), "")
    exhausted(engine, ALICE)
    engine.config.max_submits_per_second_per_user = 0.5  # below one a second, one still goes now and then
    clock.advance(2.0)
    engine.submit(ALICE, spec(), "")
    exhausted(engine, ALICE)
    engine.config.max_submits_per_second_per_user = 0
    for _ in range(10):
        engine.submit(ALICE, spec(), "")


def test_a_bad_spec_spends_nothing(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, max_submits_per_second_per_user=1.0)
    with pytest.raises(ApiError) as err:
        engine.submit(ALICE, types_pb2.RunSpec(), "")
    assert err.value.code == Code.INVALID_ARGUMENT
    engine.submit(ALICE, spec(), "")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("limits")) as lc:
        with mock.patch.dict(os.environ, {"GRIDLAB_SCHEDULER_MAX_QUEUED_RUNS_PER_USER": "2"}):
            lc.start_scheduler()
        yield lc


def test_the_status_and_message_reach_the_caller(cluster: LocalCluster) -> None:
    with cluster.client() as admin:
        token = admin.create_token("capped")
    with grpc.insecure_channel(cluster.address, options=grpcopts.CLIENT_CHANNEL_OPTIONS) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        request = scheduler_pb2.SubmitRunRequest(spec=spec())
        for _ in range(2):
            stub.SubmitRun(request, metadata=auth.metadata(token), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitRun(request, metadata=auth.metadata(token), timeout=10)
        assert err.value.code() == Code.RESOURCE_EXHAUSTED
        assert "you have 2 queued runs" in (err.value.details() or "")
        assert "(max_queued_runs_per_user)" in (err.value.details() or "")


def test_an_oversized_message_is_refused_by_the_server_and_by_our_clients(cluster: LocalCluster) -> None:
    for options in (grpcopts.SERVER_OPTIONS, grpcopts.CLIENT_CHANNEL_OPTIONS, grpcopts.AGENT_CHANNEL_OPTIONS):
        limits = dict(options)
        assert limits["grpc.max_receive_message_length"] == limits["grpc.max_send_message_length"]
        assert limits["grpc.max_send_message_length"] == grpcopts.MAX_MESSAGE_BYTES
    big = types_pb2.RunSpec(command=["true"], env={"BLOB": "x" * (grpcopts.MAX_MESSAGE_BYTES + 1)})
    request = scheduler_pb2.SubmitRunRequest(spec=big)
    metadata = auth.metadata(cluster.admin_token)
    with grpc.insecure_channel(cluster.address) as channel:  # gRPC's default: no send limit
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitRun(request, metadata=metadata, timeout=10)
        assert err.value.code() == Code.RESOURCE_EXHAUSTED
        assert stub.WhoAmI(scheduler_pb2.WhoAmIRequest(), metadata=metadata, timeout=10).role == "admin"  # still up
    with grpc.insecure_channel(cluster.address, options=grpcopts.CLIENT_CHANNEL_OPTIONS) as channel:
        with pytest.raises(grpc.RpcError) as err:
            scheduler_pb2_grpc.SchedulerStub(channel).SubmitRun(request, metadata=metadata, timeout=10)
        assert err.value.code() == Code.RESOURCE_EXHAUSTED
        assert "larger than max" in (err.value.details() or "")  # refused before it left


def test_a_stream_window_holds_back_its_reader() -> None:
    async def scenario() -> None:
        window = _Window(limit=100)
        await window.take(60)
        await window.take(40)
        blocked = asyncio.create_task(window.take(10))
        await asyncio.sleep(0.01)
        assert not blocked.done()
        assert window.held == 100
        window.give(60)
        await asyncio.wait_for(blocked, 1)
        assert window.held == 50
        window.give(40)
        window.give(10)
        await asyncio.wait_for(window.take(1000), 1)  # one message always goes, however big
        late = asyncio.create_task(window.take(1))
        await asyncio.sleep(0.01)
        assert not late.done()
        window.give(1000)
        await asyncio.wait_for(late, 1)

    asyncio.run(scenario())


def test_a_listing_page_fits_in_one_reply_however_big_the_specs(tmp_path: Path) -> None:
    """Runs with big specs (env near its cap) make pages shorter, not replies past the 4 MiB cap; paging
    still reaches every run once."""
    engine = make_engine(tmp_path, max_submits_per_second_per_user=0)
    who = Principal("mallory", "user")
    big = spec()
    big.env.update({f"K{i}": "x" * 4000 for i in range(60)})  # about 240 KB each
    ids = {engine.submit(who, big, "")[0] for _ in range(20)}
    seen: list[str] = []
    token = ""
    while True:
        runs, token = engine.list_runs(who, [], "", 100, token)
        assert sum(r.ByteSize() for r in runs) <= 4 * 1024 * 1024
        seen += [r.id for r in runs]
        if not token:
            break
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen))
