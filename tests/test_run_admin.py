"""ListTokens, RevokeToken, WhoAmI, SetRunPriority, ListRunEvents and ListRuns' sweep and pool filters
(scheduler/runadmin.py): against a real scheduler process over real gRPC, through raw stubs; the sweep
checks on the spec, schema 8's migration of a version-7 file, and what a priority change does to
placement, on a real engine and SQLite file with agent sessions fed by hand."""

from __future__ import annotations

import hashlib
import importlib.metadata
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlite_utils

from gridlab.client.localcluster import LocalCluster
from gridlab.common import auth
from gridlab.common.config import SchedulerConfig
from gridlab.common.timeutil import FakeClock
from gridlab.scheduler import store as store_mod
from gridlab.scheduler.auth import Principal
from gridlab.scheduler.engine import AgentSession, Engine
from gridlab.scheduler.store import Store
from gridlab.scheduler.validate import SpecError, normalize
from gridlab.v1 import agent_pb2, scheduler_pb2, scheduler_pb2_grpc, types_pb2

Code = grpc.StatusCode
ADMIN = Principal("root", "admin")
ALICE = Principal("alice", "user")


class Caller:
    """Raw Scheduler stub calls with one token."""

    def __init__(self, stub: scheduler_pb2_grpc.SchedulerStub, token: str) -> None:
        self.stub = stub
        self.token = token

    def __call__(self, method: str, **fields: Any) -> Any:
        request = getattr(scheduler_pb2, f"{method}Request")(**fields)
        return getattr(self.stub, method)(request, metadata=auth.metadata(self.token), timeout=10)


def fails(call: Any, code: grpc.StatusCode, match: str = "") -> str:
    """Run `call`, expect `code` (and `match` in the message); return the message."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    assert match in (err.value.details() or ""), err.value.details()
    return err.value.details() or ""


class Cluster:
    def __init__(self, lc: LocalCluster) -> None:
        self.lc = lc
        self.channel = grpc.insecure_channel(lc.address)
        self.stub = scheduler_pb2_grpc.SchedulerStub(self.channel)
        self.admin = Caller(self.stub, lc.admin_token)
        self.agent = Caller(self.stub, auth.read_secret(lc.agent_token_file))
        self.alice = self.user("alice", team="vision")
        self.bob = self.user("bob")

    def user(self, name: str, role: str = "user", team: str = "") -> Caller:
        reply = self.admin("CreateToken", user=name, role=role, team=team)
        return Caller(self.stub, reply.token)

    def submit(self, who: Caller, **spec: Any) -> types_pb2.Run:
        run_spec = types_pb2.RunSpec(command=["sleep", "60"], **spec)
        return who("SubmitRun", spec=run_spec).run


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One scheduler and no agent: every run stays queued until it is cancelled."""
    with LocalCluster(tmp_path_factory.mktemp("runadmin")) as lc:
        lc.start_scheduler()
        c = Cluster(lc)
        yield c
        c.channel.close()


# ------------------------------------------------------------------------------------------- WhoAmI


def test_whoami_says_who_the_token_is_and_the_server_version(cluster: Cluster) -> None:
    me = cluster.alice("WhoAmI")
    assert (me.user, me.role, me.team) == ("alice", "user", "vision")
    assert me.server_version == importlib.metadata.version("gridlab")
    admin = cluster.admin("WhoAmI")
    assert (admin.user, admin.role) == ("admin", "admin")
    fails(lambda: cluster.agent("WhoAmI"), Code.PERMISSION_DENIED, "role 'agent' may not call WhoAmI")
    fails(lambda: Caller(cluster.stub, "glt_nonsense")("WhoAmI"), Code.UNAUTHENTICATED)


# ------------------------------------------------------------------------------------------- tokens


def test_create_token_returns_its_id_and_list_tokens_shows_it_without_the_secret(cluster: Cluster) -> None:
    reply = cluster.admin("CreateToken", user="carol", team="nlp")
    assert reply.token_id == hashlib.sha256(reply.token.encode()).hexdigest()[:16]
    listed = cluster.admin("ListTokens").tokens
    (mine,) = [t for t in listed if t.id == reply.token_id]
    assert (mine.user, mine.role, mine.team, mine.revoked) == ("carol", "user", "nlp", False)
    assert abs(mine.created_at.seconds - time.time()) < 60
    assert {"admin", "agent", "alice", "bob"} <= {t.user for t in listed}
    assert {t.role for t in listed if t.user == "agent"} == {"agent"}
    shown = cluster.admin("ListTokens").SerializeToString()
    assert reply.token.encode() not in shown
    assert hashlib.sha256(reply.token.encode()).hexdigest().encode() not in shown  # only a prefix of the hash
    times = [t.created_at.ToNanoseconds() for t in listed]
    assert times == sorted(times)


def test_token_rpcs_are_for_admins_only(cluster: Cluster) -> None:
    for caller, role in ((cluster.alice, "user"), (cluster.agent, "agent")):
        fails(lambda c=caller: c("ListTokens"), Code.PERMISSION_DENIED, f"role {role!r} may not call ListTokens")
        fails(lambda c=caller: c("RevokeToken", token_id="0" * 16), Code.PERMISSION_DENIED, "RevokeToken")
        fails(lambda c=caller: c("CreateToken", user="x"), Code.PERMISSION_DENIED, "CreateToken")


def test_revoke_by_prefix_locks_the_token_out_at_once_and_is_idempotent(cluster: Cluster) -> None:
    reply = cluster.admin("CreateToken", user="dave")
    dave = Caller(cluster.stub, reply.token)
    assert dave("WhoAmI").user == "dave"  # now cached by the server
    revoked = cluster.admin("RevokeToken", token_id=reply.token_id[:8].upper()).token
    assert (revoked.id, revoked.user, revoked.revoked) == (reply.token_id, "dave", True)
    fails(lambda: dave("WhoAmI"), Code.UNAUTHENTICATED, "not valid")
    fails(lambda: dave("ListRuns"), Code.UNAUTHENTICATED)
    again = cluster.admin("RevokeToken", token_id=reply.token_id).token  # the full id, a second time
    assert (again.id, again.revoked) == (reply.token_id, True)
    (listed,) = [t for t in cluster.admin("ListTokens").tokens if t.id == reply.token_id]
    assert listed.revoked
    fails(lambda: dave("WhoAmI"), Code.UNAUTHENTICATED)
    assert cluster.alice("WhoAmI").user == "alice"  # other tokens are untouched


def test_revoke_refuses_short_malformed_unknown_and_ambiguous_ids(cluster: Cluster) -> None:
    known = [t.id for t in cluster.admin("ListTokens").tokens]
    fails(lambda: cluster.admin("RevokeToken", token_id=known[0][:7]), Code.INVALID_ARGUMENT, "at least 8")
    fails(lambda: cluster.admin("RevokeToken", token_id=""), Code.INVALID_ARGUMENT, "too short")
    fails(
        lambda: cluster.admin("RevokeToken", token_id="glt_abcdefgh"),
        Code.INVALID_ARGUMENT,
        "a token's secret, not its id",
    )
    unknown = next(p for p in ("0" * 16, "1" * 16, "2" * 16) if not any(k.startswith(p[:8]) for k in known))
    fails(lambda: cluster.admin("RevokeToken", token_id=unknown), Code.NOT_FOUND, "no token")
    # Two tokens whose hashes share 9 hex digits (written straight into the scheduler's file: finding such
    # a pair of secrets would take billions of tries).
    with sqlite3.connect(cluster.lc.scheduler_dir / "scheduler.db", timeout=10) as conn:
        conn.executemany(
            "INSERT INTO tokens (hash, user, role, team, created_at, revoked) VALUES (?, ?, 'user', '', ?, 0)",
            [("abcdef0121" + "0" * 54, "twin1", time.time()), ("abcdef0122" + "0" * 54, "twin2", time.time())],
        )
    fails(lambda: cluster.admin("RevokeToken", token_id="abcdef012"), Code.INVALID_ARGUMENT, "more than one token")
    assert cluster.admin("RevokeToken", token_id="abcdef0122").token.user == "twin2"
    twins = {t.user: t.revoked for t in cluster.admin("ListTokens").tokens if t.user.startswith("twin")}
    assert twins == {"twin1": False, "twin2": True}


# ------------------------------------------------------------------------------------------- priority


def test_set_run_priority_owner_lowers_admin_raises(cluster: Cluster) -> None:
    fails(lambda: cluster.submit(cluster.alice, priority=101), Code.PERMISSION_DENIED, "max_user_priority")
    run = cluster.submit(cluster.alice, priority=1)
    assert cluster.alice("SetRunPriority", run_id=run.id, priority=2).run.spec.priority == 2  # up to the cap
    message = fails(
        lambda: cluster.alice("SetRunPriority", run_id=run.id, priority=101),
        Code.PERMISSION_DENIED,
        "above 100, the most a user may give a run (max_user_priority): ask an admin",
    )
    assert "priority 2" in message
    lowered = cluster.alice("SetRunPriority", run_id=run.id, priority=-1).run
    assert (lowered.id, lowered.spec.priority) == (run.id, -1)
    assert cluster.alice("GetRun", run_id=run.id).run.spec.priority == -1
    kept = cluster.alice("SetRunPriority", run_id=run.id, priority=-1).run  # keeping it is allowed, and a no-op
    assert kept.spec.priority == -1
    raised = cluster.admin("SetRunPriority", run_id=run.id, priority=5).run
    assert (raised.spec.priority, raised.state) == (5, types_pb2.RUN_STATE_QUEUED)
    events = [(e.kind, e.message) for e in cluster.alice("ListRunEvents", run_id=run.id).events]
    assert events == [
        ("submitted", "submitted by alice"),
        ("priority", "priority 1 -> 2 by alice"),
        ("priority", "priority 2 -> -1 by alice"),
        ("priority", "priority -1 -> 5 by admin"),
    ]
    # The rest of the spec is as submitted.
    assert list(raised.spec.command) == ["sleep", "60"]
    cluster.alice("CancelRun", run_id=run.id)


def test_set_run_priority_errors(cluster: Cluster) -> None:
    run = cluster.submit(cluster.alice)
    fails(lambda: cluster.bob("SetRunPriority", run_id=run.id, priority=-1), Code.NOT_FOUND, run.id)
    fails(lambda: cluster.alice("SetRunPriority", run_id="run-nope", priority=0), Code.NOT_FOUND, "run-nope")
    fails(lambda: cluster.alice("SetRunPriority", run_id="", priority=0), Code.INVALID_ARGUMENT, "run_id is empty")
    fails(
        lambda: cluster.admin("SetRunPriority", run_id=run.id, priority=2_000_000),
        Code.INVALID_ARGUMENT,
        "between -1000000 and 1000000",
    )
    fails(lambda: cluster.agent("SetRunPriority", run_id=run.id, priority=0), Code.PERMISSION_DENIED)
    cluster.alice("CancelRun", run_id=run.id)
    for caller in (cluster.alice, cluster.admin):
        fails(
            lambda c=caller: c("SetRunPriority", run_id=run.id, priority=-5),
            Code.FAILED_PRECONDITION,
            "already ended (CANCELLED)",
        )
    assert cluster.alice("GetRun", run_id=run.id).run.spec.priority == 0


# ------------------------------------------------------------------------------------------- events


def test_list_run_events_oldest_first_for_the_owner_and_admins(cluster: Cluster) -> None:
    run = cluster.submit(cluster.alice)
    cluster.alice("CancelRun", run_id=run.id, reason="changed my mind")
    events = cluster.alice("ListRunEvents", run_id=run.id).events
    assert [e.kind for e in events] == ["submitted", "cancelled"]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert events[-1].message == "changed my mind"
    assert events[-1].state == types_pb2.RUN_STATE_CANCELLED
    assert all(e.run_id == run.id and e.time.seconds > 0 for e in events)
    assert list(cluster.admin("ListRunEvents", run_id=run.id).events) == list(events)
    fails(lambda: cluster.bob("ListRunEvents", run_id=run.id), Code.NOT_FOUND, f"no run {run.id!r}")
    fails(lambda: cluster.alice("ListRunEvents", run_id="run-nope"), Code.NOT_FOUND)
    fails(lambda: cluster.alice("ListRunEvents", run_id=""), Code.INVALID_ARGUMENT)
    fails(lambda: cluster.agent("ListRunEvents", run_id=run.id), Code.PERMISSION_DENIED)


# ------------------------------------------------------------------------------------------- ListRuns filters


def trial(name: str, index: int, size: int = 5, **params: str) -> types_pb2.SweepTrial:
    return types_pb2.SweepTrial(name=name, index=index, size=size, params=params, metric="val/loss")


def test_list_runs_filters_by_sweep_and_pool_with_paging(cluster: Cluster) -> None:
    carol = cluster.user("carol")
    erin = cluster.user("erin")
    trials = [
        cluster.submit(carol, sweep=trial("swp-a", i, lr=str(0.1 * i)), pool="p1" if i % 2 else "p2").id
        for i in range(5)
    ]
    mine = set(trials)
    other_sweep = cluster.submit(carol, sweep=trial("swp-b", 0), pool="p1").id
    plain = cluster.submit(carol, pool="p1").id
    theirs = cluster.submit(erin, sweep=trial("swp-a", 0), pool="p1").id

    def ids(caller: Caller, **fields: Any) -> list[str]:
        """Every page's ids, two at a time, checking the order."""
        out: list[str] = []
        token = ""
        while True:
            reply = caller("ListRuns", limit=2, page_token=token, **fields)
            out += [r.id for r in reply.runs]
            token = reply.next_page_token
            if not token:
                assert out == sorted(out, reverse=True)
                return out

    assert set(ids(carol, sweep="swp-a")) == mine
    assert len(ids(carol, sweep="swp-a")) == 5
    assert set(ids(carol, pool="p1")) == {trials[1], trials[3], other_sweep, plain}
    assert set(ids(carol, pool="p2")) == {trials[0], trials[2], trials[4]}
    assert set(ids(carol, sweep="swp-a", pool="p1")) == {trials[1], trials[3]}
    runs = carol("ListRuns", sweep="swp-a", pool="p1").runs
    assert {r.spec.sweep.index for r in runs} == {1, 3}
    assert {r.spec.sweep.params["lr"] for r in runs} == {str(0.1), str(0.1 * 3)}
    assert set(ids(carol, sweep="swp-b")) == {other_sweep}
    assert ids(carol, sweep="swp-none") == []
    assert set(ids(cluster.admin, sweep="swp-a")) == mine | {theirs}
    assert set(ids(cluster.admin, sweep="swp-a", user="erin")) == {theirs}
    assert set(ids(carol, sweep="swp-a", states=[types_pb2.RUN_STATE_QUEUED])) == mine
    first = sorted(mine)[0]
    carol("CancelRun", run_id=first)
    assert set(ids(carol, sweep="swp-a", states=[types_pb2.RUN_STATE_QUEUED])) == mine - {first}
    assert set(ids(carol, sweep="swp-a", states=[types_pb2.RUN_STATE_CANCELLED])) == {first}
    for run_id in (mine - {first}) | {other_sweep, plain}:
        carol("CancelRun", run_id=run_id)
    erin("CancelRun", run_id=theirs)


def test_submit_refuses_a_bad_sweep_over_grpc(cluster: Cluster) -> None:
    fails(
        lambda: cluster.submit(cluster.alice, sweep=types_pb2.SweepTrial(name="s", index=5, size=5)),
        Code.INVALID_ARGUMENT,
        "sweep.index is 5 but sweep.size is 5",
    )


# ------------------------------------------------------------------------------------------- spec checks


def sweep_spec(**fields: Any) -> types_pb2.RunSpec:
    return types_pb2.RunSpec(command=["true"], sweep=types_pb2.SweepTrial(**fields))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"index": 0}, "sweep.name '' must be 1 to 128 printable characters"),
        ({"name": "x" * 129}, "1 to 128"),
        ({"name": "a\nb"}, "printable"),
        ({"name": "s", "index": -1}, "sweep.index is -1: trials are numbered from 0"),
        ({"name": "s", "size": -2}, "sweep.size is -2"),
        ({"name": "s", "index": 3, "size": 3}, "must be below it"),
        ({"name": "s", "params": {f"p{i}": "1" for i in range(65)}}, "65 parameters; the limit is 64"),
        ({"name": "s", "params": {"1lr": "1"}}, "sweep.params key '1lr' must be an identifier"),
        ({"name": "s", "params": {"l-r": "1"}}, "identifier"),
        ({"name": "s", "params": {"k" * 101: "1"}}, "at most 100 characters"),
        ({"name": "s", "params": {"lr": "1" * 1001}}, "sweep.params[lr] is 1001 characters; the limit is 1000"),
        ({"name": "s", "params": {"lr": "a\x00b"}}, "NUL"),
        ({"name": "s", "metric": "m" * 201}, "sweep.metric must be at most 200"),
    ],
)
def test_sweep_checks(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(SpecError, match=match.replace("[", r"\[").replace("]", r"\]")):
        normalize(sweep_spec(**fields))


def test_a_good_sweep_and_no_sweep_pass() -> None:
    spec = sweep_spec(
        name="swp-" + "x" * 124, index=63, size=64, params={f"p{i}": "v" * 1000 for i in range(64)}, metric="m" * 200
    )
    normalize(spec)
    assert spec.sweep.index == 63
    normalize(sweep_spec(name="s", index=7))  # size 0: unknown
    plain = types_pb2.RunSpec(command=["true"])
    normalize(plain)
    assert not plain.HasField("sweep")


# ------------------------------------------------------------------------------------------- migration 8


def test_a_version_7_database_gets_sweep_and_pool_columns_backfilled(tmp_path: Path) -> None:
    path = tmp_path / "v7.db"
    conn = sqlite3.connect(path)
    db = sqlite_utils.Database(conn)
    for version in range(1, 8):
        store_mod.MIGRATIONS[version](db)
    conn.execute("PRAGMA user_version=7")
    old = {
        "run-1": types_pb2.RunSpec(command=["a"], pool="p1", sweep=types_pb2.SweepTrial(name="swp-a", index=0)),
        "run-2": types_pb2.RunSpec(command=["b"], sweep=types_pb2.SweepTrial(name="swp-a", index=1)),
        "run-3": types_pb2.RunSpec(command=["c"], pool="p2"),
        "run-4": types_pb2.RunSpec(command=["d"]),
    }
    blobs = {k: v.SerializeToString() for k, v in old.items()}
    blobs["run-5"] = b"\xff\xff\xff"  # damaged: migrated as '' rather than stopping the scheduler
    for i, (run_id, blob) in enumerate(blobs.items()):
        conn.execute(
            "INSERT INTO runs (id, user, spec, state, priority, created_at) VALUES (?, 'alice', ?, 'QUEUED', 0, ?)",
            (run_id, blob, 1000.0 + i),
        )
    conn.commit()
    conn.close()

    store = Store(path)
    assert store.one("PRAGMA user_version")[0] == store_mod.SCHEMA_VERSION >= 8
    got = {r["id"]: (r["sweep"], r["pool"]) for r in store.all("SELECT id, sweep, pool FROM runs")}
    assert got == {
        "run-1": ("swp-a", "p1"),
        "run-2": ("swp-a", ""),
        "run-3": ("", "p2"),
        "run-4": ("", ""),
        "run-5": ("", ""),
    }
    assert any(index.columns[0] == "sweep" for index in store.db["runs"].indexes)  # type: ignore[union-attr]
    plan = " ".join(str(r[3]) for r in store.all("EXPLAIN QUERY PLAN SELECT id FROM runs WHERE sweep = ?", ("x",)))
    assert "runs_sweep" in plan
    store.conn.execute("DELETE FROM runs WHERE id = 'run-5'")  # not a spec the engine can read
    engine = Engine(store, SchedulerConfig(state_dir=str(tmp_path)), clock=FakeClock())
    runs, _ = engine.list_runs(ALICE, [], "", 0, "", sweep="swp-a")
    assert [r.id for r in runs] == ["run-2", "run-1"]
    runs, _ = engine.list_runs(ALICE, [], "", 0, "", pool="p2")
    assert [r.id for r in runs] == ["run-3"]
    # New runs fill the columns as they are submitted.
    new_id, _ = engine.submit(ALICE, types_pb2.RunSpec(command=["e"], pool="p2", sweep=trial("swp-c", 0)), "")
    assert tuple(store.one("SELECT sweep, pool FROM runs WHERE id = ?", (new_id,))) == ("swp-c", "p2")
    store.close()


# ------------------------------------------------------------------------------------------- placement


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    config = SchedulerConfig(state_dir=str(tmp_path), heartbeat_interval=1, heartbeat_timeout=10)
    return Engine(Store(tmp_path / "s.db"), config, clock=FakeClock())


def hello(engine: Engine, gpus: int = 1) -> AgentSession:
    inv = types_pb2.Inventory(hostname="a1", cpus=8, memory_bytes=64 << 30)
    for i in range(gpus):
        inv.gpus.add(index=i, uuid=f"GPU-{i}", model="A100", memory_total_bytes=80 << 30)
    return engine.agent_hello(agent_pb2.Hello(name="a1", inventory=inv))


def sent(session: AgentSession, kind: str) -> list[Any]:
    out = []
    while not session.outbox.empty():
        msg = session.outbox.get_nowait()
        if msg is not None and msg.WhichOneof("msg") == kind:
            out.append(getattr(msg, kind))
    return out


def one_gpu(**fields: Any) -> types_pb2.RunSpec:
    return types_pb2.RunSpec(command=["true"], resources=types_pb2.Resources(gpus=1), **fields)


def test_a_raised_priority_puts_a_queued_run_first(engine: Engine) -> None:
    from gridlab.scheduler import runadmin

    first, _ = engine.submit(ALICE, one_gpu(), "")
    engine.clock.advance(1)  # type: ignore[attr-defined]
    second, _ = engine.submit(ALICE, one_gpu(), "")
    engine._spec(second)  # parsed and cached, as a pass would
    engine._kick.clear()
    run = runadmin.set_run_priority(engine, ADMIN, second, 10)
    assert run.spec.priority == 10
    assert engine._kick.is_set()  # placement is asked for a pass
    assert engine._spec(second).priority == 10  # the cached parse was dropped
    session = hello(engine)
    assert engine.place_once() == 1
    (assign,) = sent(session, "assign")
    assert assign.run_id == second
    assert assign.spec.priority == 10


def test_raising_a_queued_run_over_a_live_preemptible_one_preempts_it(engine: Engine) -> None:
    from gridlab.scheduler import runadmin

    session = hello(engine)
    low, _ = engine.submit(ALICE, one_gpu(preemptible=True), "")
    assert engine.place_once() == 1
    (assign,) = sent(session, "assign")
    engine.agent_update(session, agent_pb2.AttemptStatus(attempt_id=assign.attempt_id, state="ATTEMPT_STATE_RUNNING"))
    waiting, _ = engine.submit(ALICE, one_gpu(), "")
    assert engine.place_once() == 0
    assert sent(session, "cancel") == []  # same priority: no preemption
    # The live run's priority is read afresh: raised to 3, a waiting run of 1 cannot preempt it, one of 4 can.
    runadmin.set_run_priority(engine, ADMIN, low, 3)
    runadmin.set_run_priority(engine, ADMIN, waiting, 1)
    assert engine.place_once() == 0
    assert sent(session, "cancel") == []
    runadmin.set_run_priority(engine, ADMIN, waiting, 4)
    assert engine.place_once() == 0
    (cancel,) = sent(session, "cancel")
    assert cancel.attempt_id == assign.attempt_id
    assert cancel.final_state == types_pb2.ATTEMPT_STATE_PREEMPTED
    kinds = [e.kind for e in runadmin.list_run_events(engine, ALICE, low)]
    assert kinds == ["submitted", "placed", "running", "priority", "preempting"]
