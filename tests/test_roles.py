"""Roles and isolation: the role table walked RPC x caller against a real scheduler, and who may read or touch
which run (owners, teammates when share_runs_with_team is on, everyone else, admins).

The walk sends each RPC an empty request (streams: one empty message, then read one reply or the status), as
admin, user, agent, with no token, a revoked token and an expired one, and checks UNAUTHENTICATED and
PERMISSION_DENIED exactly where the table says, and neither anywhere else."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor

from gridlab.client.localcluster import LocalCluster
from gridlab.common import auth
from gridlab.common.config import SchedulerConfig
from gridlab.common.timeutil import FakeClock, duration
from gridlab.scheduler import auth as roles
from gridlab.scheduler.auth import Principal
from gridlab.scheduler.engine import Engine
from gridlab.scheduler.errors import ApiError
from gridlab.scheduler.store import Store
from gridlab.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    artifacts_pb2,
    artifacts_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    types_pb2,
)

Code = grpc.StatusCode
A, U, G = "admin", "user", "agent"

# What the table must say, written out again here: a change to who may call what is made twice, on purpose.
EXPECTED = {
    "Scheduler/SubmitRun": {A, U},
    "Scheduler/GetRun": {A, U},
    "Scheduler/ListRuns": {A, U},
    "Scheduler/CancelRun": {A, U},
    "Scheduler/WatchRuns": {A, U},
    "Scheduler/StreamLogs": {A, U},
    "Scheduler/ListAgents": {A, U},
    "Scheduler/SetAgentState": {A},
    "Scheduler/CreateToken": {A},
    "Scheduler/ListTokens": {A},
    "Scheduler/RevokeToken": {A},
    "Scheduler/WhoAmI": {A, U},
    "Scheduler/SetRunPriority": {A, U},
    "Scheduler/ListRunEvents": {A, U},
    "Scheduler/GetUsage": {A, U},
    "AgentGateway/Connect": {G},
    "AgentGateway/PushLogs": {G},
    "Artifacts/StatBlob": {A, U, G},
    "Artifacts/UploadBlob": {A, U, G},
    "Artifacts/DownloadBlob": {A, U, G},
    "Artifacts/RecordCheckpoint": {G},
    "Artifacts/RecordArtifacts": {G},
    "Artifacts/ListArtifacts": {A, U},
}


def _methods() -> dict[str, MethodDescriptor]:
    out = {}
    for module in (scheduler_pb2, agent_pb2, artifacts_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                out[f"/{service.full_name}/{method.name}"] = method
    return out


METHODS = _methods()


def test_the_table_names_every_rpc_and_says_what_this_test_expects() -> None:
    assert set(METHODS) == set(roles.rpc_methods()) == set(roles.METHOD_ROLES)
    assert {k: set(v) for k, v in roles.METHOD_ROLES.items()} == {f"/gridlab.v1.{k}": v for k, v in EXPECTED.items()}
    roles.check_table()


def test_a_new_rpc_without_an_entry_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    table = dict(roles.METHOD_ROLES)
    table.pop("/gridlab.v1.Scheduler/WhoAmI")
    table["/gridlab.v1.Scheduler/Gone"] = frozenset({A})
    monkeypatch.setattr(roles, "METHOD_ROLES", table)
    with pytest.raises(RuntimeError, match=r"no entry for \['/gridlab.v1.Scheduler/WhoAmI'\].*Gone"):
        roles.check_table()
    assert roles.allowed_roles("/gridlab.v1.Scheduler/WhoAmI") == frozenset()  # unlisted: nobody


def call(channel: grpc.Channel, path: str, token: str | None, timeout: float = 3.0) -> tuple[Code, str]:
    """Send `path` an empty request as `token`; the status it ends with (OK when it answered)."""
    method = METHODS[path]
    request_cls: Any = message_factory.GetMessageClass(method.input_type)
    response_cls: Any = message_factory.GetMessageClass(method.output_type)
    kw = {"request_serializer": request_cls.SerializeToString, "response_deserializer": response_cls.FromString}
    metadata = auth.metadata(token) if token else None
    request = request_cls()
    try:
        if method.client_streaming and method.server_streaming:
            next(iter(channel.stream_stream(path, **kw)(iter([request]), metadata=metadata, timeout=timeout)))
        elif method.client_streaming:
            channel.stream_unary(path, **kw)(iter([request]), metadata=metadata, timeout=timeout)
        elif method.server_streaming:
            next(iter(channel.unary_stream(path, **kw)(request, metadata=metadata, timeout=timeout)), None)
        else:
            channel.unary_unary(path, **kw)(request, metadata=metadata, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return Code.OK, ""


class Cluster:
    """A real scheduler (no agent: runs stay queued) with share_runs_with_team on, and tokens of every kind."""

    def __init__(self, lc: LocalCluster) -> None:
        self.lc = lc
        self.channel = grpc.insecure_channel(lc.address)
        self.stub = scheduler_pb2_grpc.SchedulerStub(self.channel)
        self.artifacts = artifacts_pb2_grpc.ArtifactsStub(self.channel)
        self.tokens = {A: lc.admin_token, G: auth.read_secret(lc.agent_token_file)}
        self.tokens[U] = self.create("walker")
        self.alice = self.create("alice", team="vision")
        self.bob = self.create("bob", team="vision")
        self.carol = self.create("carol", team="nlp")
        revoked = self.create("gone")
        self.stub.RevokeToken(
            scheduler_pb2.RevokeTokenRequest(token_id=auth.hash_token(revoked)[:16]), metadata=self.md(A), timeout=10
        )
        self.tokens["revoked"] = revoked
        self.tokens["expired"] = self.create("late", ttl=0.5)
        self.tokens["none"] = ""

    def md(self, who: str) -> tuple[tuple[str, str], ...]:
        return auth.metadata(self.tokens.get(who, who))

    def create(self, user: str, team: str = "", ttl: float | None = None) -> str:
        request = scheduler_pb2.CreateTokenRequest(user=user, role=U, team=team)
        if ttl is not None:
            request.ttl.CopyFrom(duration(ttl))
        return str(self.stub.CreateToken(request, metadata=self.md(A), timeout=10).token)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with LocalCluster(tmp_path_factory.mktemp("roles")) as lc:
        with mock.patch.dict(os.environ, {"GRIDLAB_SCHEDULER_SHARE_RUNS_WITH_TEAM": "true"}):
            lc.start_scheduler()
        c = Cluster(lc)
        time.sleep(0.6)  # the expired token's ttl
        yield c
        c.channel.close()


@pytest.mark.parametrize("path", sorted(METHODS))
def test_every_rpc_as_every_caller(cluster: Cluster, path: str) -> None:
    allowed = EXPECTED[path.removeprefix("/gridlab.v1.")]
    for who in (A, U, G):
        code, message = call(cluster.channel, path, cluster.tokens[who])
        if who in allowed:
            assert code not in (Code.PERMISSION_DENIED, Code.UNAUTHENTICATED), (who, code, message)
        else:
            assert code == Code.PERMISSION_DENIED, (who, code, message)
            assert f"role {who!r} may not call {path.rsplit('/', 1)[1]}" in message
    code, message = call(cluster.channel, path, None)
    assert (code, message.split(":")[0]) == (Code.UNAUTHENTICATED, "no token")
    code, message = call(cluster.channel, path, cluster.tokens["revoked"])
    assert (code, message) == (Code.UNAUTHENTICATED, "the token is not valid (unknown or revoked)")
    code, message = call(cluster.channel, path, cluster.tokens["expired"])
    assert code == Code.UNAUTHENTICATED
    assert "token expired at" in message
    assert "ask an admin" in message
    code, message = call(cluster.channel, path, "glt_" + "x" * 43)
    assert code == Code.UNAUTHENTICATED, message


def test_teammates_read_but_do_not_touch_and_others_see_nothing(cluster: Cluster) -> None:
    stub = cluster.stub
    spec = types_pb2.RunSpec(command=["sleep", "60"])
    run = stub.SubmitRun(scheduler_pb2.SubmitRunRequest(spec=spec), metadata=cluster.md(cluster.alice), timeout=10).run
    bob, carol = cluster.md(cluster.bob), cluster.md(cluster.carol)

    # Bob (team vision, as the run) reads it everywhere a run is read.
    assert stub.GetRun(scheduler_pb2.GetRunRequest(run_id=run.id), metadata=bob, timeout=10).run.user == "alice"
    listed = stub.ListRuns(scheduler_pb2.ListRunsRequest(user="alice"), metadata=bob, timeout=10).runs
    assert [r.id for r in listed] == [run.id]
    assert not stub.ListRuns(scheduler_pb2.ListRunsRequest(), metadata=bob, timeout=10).runs  # his own: none
    events = stub.ListRunEvents(scheduler_pb2.ListRunEventsRequest(run_id=run.id), metadata=bob, timeout=10).events
    assert events[0].kind == "submitted"
    assert list(stub.StreamLogs(scheduler_pb2.StreamLogsRequest(run_id=run.id), metadata=bob, timeout=10)) == []
    watch = stub.WatchRuns(scheduler_pb2.WatchRunsRequest(run_ids=[run.id]), metadata=bob, timeout=10)
    assert next(watch).run_id == run.id
    watch.cancel()
    cluster.artifacts.ListArtifacts(artifacts_pb2.ListArtifactsRequest(run_id=run.id), metadata=bob, timeout=10)
    download = artifacts_pb2.DownloadBlobRequest(run_id=run.id, digest="sha256:" + "0" * 64)
    with pytest.raises(grpc.RpcError) as err:
        next(cluster.artifacts.DownloadBlob(download, metadata=bob, timeout=10))
    assert err.value.code() == Code.NOT_FOUND
    assert "has no blob" in (err.value.details() or "")

    # ... but may not cancel it or change its priority.
    for attempt in (
        lambda md: stub.CancelRun(scheduler_pb2.CancelRunRequest(run_id=run.id), metadata=md, timeout=10),
        lambda md: stub.SetRunPriority(
            scheduler_pb2.SetRunPriorityRequest(run_id=run.id, priority=5), metadata=md, timeout=10
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            attempt(bob)
        assert err.value.code() == Code.PERMISSION_DENIED
        assert "is alice's: only its owner or an admin may" in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:
            attempt(carol)  # another team: no such run, as far as carol can tell
        assert err.value.code() == Code.NOT_FOUND

    # Carol (team nlp) sees nothing of it.
    for read in (
        lambda: stub.GetRun(scheduler_pb2.GetRunRequest(run_id=run.id), metadata=carol, timeout=10),
        lambda: stub.ListRunEvents(scheduler_pb2.ListRunEventsRequest(run_id=run.id), metadata=carol, timeout=10),
        lambda: list(stub.StreamLogs(scheduler_pb2.StreamLogsRequest(run_id=run.id), metadata=carol, timeout=10)),
        lambda: next(stub.WatchRuns(scheduler_pb2.WatchRunsRequest(run_ids=[run.id]), metadata=carol, timeout=10)),
        lambda: cluster.artifacts.ListArtifacts(
            artifacts_pb2.ListArtifactsRequest(run_id=run.id), metadata=carol, timeout=10
        ),
        lambda: next(cluster.artifacts.DownloadBlob(download, metadata=carol, timeout=10)),
    ):
        with pytest.raises(grpc.RpcError) as err:
            read()
        assert err.value.code() == Code.NOT_FOUND
        assert "no run" in (err.value.details() or "")
    assert not stub.ListRuns(scheduler_pb2.ListRunsRequest(user="alice"), metadata=carol, timeout=10).runs

    # The owner and an admin may.
    stub.SetRunPriority(
        scheduler_pb2.SetRunPriorityRequest(run_id=run.id, priority=3), metadata=cluster.md(cluster.alice), timeout=10
    )
    cancelled = stub.CancelRun(scheduler_pb2.CancelRunRequest(run_id=run.id), metadata=cluster.md(A), timeout=10).run
    assert cancelled.state == types_pb2.RUN_STATE_CANCELLED


def test_agents_speak_only_of_their_own_attempts(cluster: Cluster) -> None:
    md = cluster.md(G)
    push = agent_pb2.PushLogsRequest(
        agent_name="w9", lines=[types_pb2.LogLine(attempt_id="att-nobody", rank=0, seq=1, text="x")]
    )
    with pytest.raises(grpc.RpcError) as err:
        agent_pb2_grpc.AgentGatewayStub(cluster.channel).PushLogs(iter([push]), metadata=md, timeout=10)
    assert err.value.code() == Code.ABORTED
    assert "unknown" in (err.value.details() or "")
    record = artifacts_pb2.RecordArtifactsRequest(
        agent_name="w9",
        attempt_id="att-nobody",
        files=[types_pb2.FileRef(path="a.txt", digest="sha256:" + "0" * 64, size=1)],
    )
    with pytest.raises(grpc.RpcError) as err:
        cluster.artifacts.RecordArtifacts(record, metadata=md, timeout=10)
    assert err.value.code() == Code.ABORTED


# --- the same rules on the engine, sharing off (the default) -------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(Store(tmp_path / "s.db"), SchedulerConfig(state_dir=str(tmp_path)), clock=FakeClock())


def test_without_sharing_a_teammate_is_anyone_else(engine: Engine) -> None:
    alice, bob = Principal("alice", U, "vision"), Principal("bob", U, "vision")
    run_id, _ = engine.submit(alice, types_pb2.RunSpec(command=["true"]), "")
    with pytest.raises(ApiError) as err:
        engine.visible_run(bob, run_id)
    assert err.value.code == Code.NOT_FOUND
    with pytest.raises(ApiError) as err:
        engine.list_runs(bob, [], "alice", 0, "")
    assert err.value.code == Code.PERMISSION_DENIED
    with pytest.raises(ApiError) as err:
        engine.cancel(bob, run_id, None, "")
    assert err.value.code == Code.NOT_FOUND
    assert engine.visible_run(Principal("root", A), run_id)["user"] == "alice"


def test_sharing_follows_the_team_the_run_was_submitted_under(engine: Engine) -> None:
    engine.config.share_runs_with_team = True
    alice = Principal("alice", U, "vision")
    old, _ = engine.submit(Principal("alice", U, ""), types_pb2.RunSpec(command=["true"]), "")
    new, _ = engine.submit(alice, types_pb2.RunSpec(command=["true"]), "")
    bob = Principal("bob", U, "vision")
    assert engine.visible_run(bob, new)["id"] == new
    with pytest.raises(ApiError):
        engine.visible_run(bob, old)  # submitted with no team: alice's alone
    runs, _ = engine.list_runs(bob, [], "alice", 0, "")
    assert [r.id for r in runs] == [new]
    loner = Principal("dan", U, "")  # no team: shares with no one, however many others have none
    with pytest.raises(ApiError):
        engine.visible_run(loner, old)
