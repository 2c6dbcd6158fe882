"""Tokens: 256 random bits, stored only as a SHA-256, compared in constant time, with expiry (CreateToken's ttl)
and revocation; schema 9's migration; the SDK and `schedctl tokens create --ttl` / `tokens list`; and a real
cluster (scheduler, agent, a run, schedctl calls, all logging at debug) whose every file is searched for every
token secret: none may appear."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlite_utils

from gridlab.client import Client
from gridlab.client.errors import InvalidArgument, Unauthenticated
from gridlab.client.localcluster import LocalCluster
from gridlab.common import auth
from gridlab.common.config import SchedulerConfig
from gridlab.common.timeutil import FakeClock
from gridlab.scheduler import engine as engine_mod
from gridlab.scheduler import store as store_mod
from gridlab.scheduler.auth import Principal, TokenRefused
from gridlab.scheduler.engine import Engine
from gridlab.scheduler.errors import ApiError
from gridlab.scheduler.runadmin import list_tokens, revoke_token, token_id
from gridlab.scheduler.store import Store

ROOT_ADMIN = Principal("root", "admin")


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(Store(tmp_path / "s.db"), SchedulerConfig(state_dir=str(tmp_path)), clock=FakeClock())


def test_a_token_is_256_random_bits_and_only_its_hash_is_stored(engine: Engine) -> None:
    made = [auth.new_token() for _ in range(200)]
    assert len(set(made)) == len(made)
    for token in made[:5]:
        body = token.removeprefix(auth.PREFIX)
        assert token.startswith(auth.PREFIX)
        assert len(base64.urlsafe_b64decode(body + "=")) == 32
    secret = engine.create_token("alice", "user", "vision")
    row = engine.store.one("SELECT * FROM tokens WHERE user = 'alice'")
    assert row["hash"] == hashlib.sha256(secret.encode()).hexdigest()
    dump = "\n".join(engine.store.conn.iterdump())
    assert secret not in dump
    assert secret.removeprefix(auth.PREFIX) not in dump
    assert engine.lookup_token(secret) == Principal("alice", "user", "vision")


def test_the_stored_hash_is_compared_in_constant_time(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = engine.create_token("alice", "user")
    seen: list[tuple[str, str]] = []
    real = engine_mod.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(engine_mod.hmac, "compare_digest", spy)
    assert engine.lookup_token(secret) is not None
    assert seen == [(auth.hash_token(secret), auth.hash_token(secret))]
    assert engine.lookup_token("glt_" + "A" * 43) is None


def test_a_token_expires_even_from_the_cache(engine: Engine) -> None:
    clock = engine.clock
    assert isinstance(clock, FakeClock)
    secret = engine.create_token("ci", "user", ttl=60.0)
    assert engine.lookup_token(secret) == Principal("ci", "user")  # cached from here on
    clock.advance(59.9)
    assert engine.lookup_token(secret) is not None
    clock.advance(0.2)
    with pytest.raises(TokenRefused, match=r"token expired at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC; ask an admin"):
        engine.lookup_token(secret)
    engine.forget_token(auth.hash_token(secret))  # and from the store too
    with pytest.raises(TokenRefused):
        engine.lookup_token(secret)
    forever = engine.create_token("svc", "user")
    clock.advance(10 * 365 * 86400)
    assert engine.lookup_token(forever) is not None
    (info,) = [t for t in list_tokens(engine, ROOT_ADMIN) if t.user == "ci"]
    assert info.HasField("expires_at")
    assert info.expires_at.seconds == int(info.created_at.seconds + 60)
    (never,) = [t for t in list_tokens(engine, ROOT_ADMIN) if t.user == "svc"]
    assert not never.HasField("expires_at")


@pytest.mark.parametrize("ttl", [0.0, -5.0, 20 * 366 * 86400.0])
def test_a_ttl_out_of_range_is_refused(engine: Engine, ttl: float) -> None:
    with pytest.raises(ApiError, match="ttl is"):
        engine.create_token("x", "user", ttl=ttl)


def test_a_revoked_token_is_refused_at_once(engine: Engine) -> None:
    secret = engine.create_token("alice", "user")
    assert engine.lookup_token(secret) is not None
    revoke_token(engine, ROOT_ADMIN, token_id(secret))
    assert engine.lookup_token(secret) is None


def test_schema_9_adds_expiry_to_a_version_8_file(tmp_path: Path) -> None:
    path = tmp_path / "v8.db"
    conn = sqlite3.connect(path)
    db = sqlite_utils.Database(conn)
    for version in range(1, 9):
        store_mod.MIGRATIONS[version](db)
    conn.execute("PRAGMA user_version=8")
    secret = auth.new_token()
    conn.execute(
        "INSERT INTO tokens (hash, user, role, team, created_at) VALUES (?, 'old', 'user', '', 1.0)",
        (auth.hash_token(secret),),
    )
    conn.commit()
    conn.close()
    store = Store(path)
    assert store.one("PRAGMA user_version")[0] == store_mod.SCHEMA_VERSION >= 9
    assert store.one("SELECT expires_at FROM tokens")["expires_at"] is None
    plan = " ".join(
        r[3]
        for r in store.all("EXPLAIN QUERY PLAN SELECT COUNT(*) FROM runs WHERE user = ? AND state = ?", ("a", "QUEUED"))
    )
    assert "runs_user_state" in plan
    engine = Engine(store, SchedulerConfig(state_dir=str(tmp_path)), clock=FakeClock())
    assert engine.lookup_token(secret) == Principal("old", "user")


# --- a real cluster -----------------------------------------------------------------------------------------


def schedctl(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridlab.client.cli", *argv], env=env, capture_output=True, text=True, timeout=60
    )


def client_env(cluster: LocalCluster, token: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDLAB_") or k == "GRIDLAB_TEST_SESSION"}
    env.update(HOME=str(home), GRIDLAB_ADDRESS=cluster.address, GRIDLAB_TOKEN=token)
    env.pop("XDG_CONFIG_HOME", None)
    return env


def test_ttl_through_the_sdk_and_schedctl(make_cluster: Callable[..., LocalCluster], tmp_path: Path) -> None:
    cluster = make_cluster()
    cluster.start_scheduler()
    env = client_env(cluster, cluster.admin_token, tmp_path)
    with cluster.client() as admin:
        short = admin.create_token("ci", ttl=1.0)
        with pytest.raises(ValueError, match="ttl must be more than 0"):
            admin.create_token("ci", ttl=0)
        with pytest.raises(InvalidArgument, match="ttl is"):
            admin.create_token("ci", ttl="100000d")
        with Client(cluster.address, short) as ci:
            assert ci.whoami().user == "ci"
            time.sleep(1.1)
            with pytest.raises(Unauthenticated, match="token expired at .*ask an admin for a new one"):
                ci.whoami()
        by_user = {t.user: t for t in admin.tokens()}
        assert by_user["ci"].HasField("expires_at")
        assert not by_user["admin"].HasField("expires_at")

    made = schedctl(env, "tokens", "create", "--user", "dana", "--ttl", "2h", "-o", "json")
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    assert doc["user"] == "dana"
    assert doc["expires_at"] > time.time() + 7000
    assert schedctl(client_env(cluster, doc["token"], tmp_path), "whoami").returncode == 0
    bad = schedctl(env, "tokens", "create", "--user", "x", "--ttl", "soon")
    assert bad.returncode == 2
    assert "--ttl" in bad.stderr
    listed = schedctl(env, "tokens", "list")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[1]: line for line in listed.stdout.splitlines()[1:]}
    assert "EXPIRES" in listed.stdout.splitlines()[0]
    assert " in 1h59m " in lines["dana"] or " in 2h00m " in lines["dana"], lines["dana"]
    assert " expired " in lines["ci"]
    assert " never " in lines["admin"]
    as_json = json.loads(schedctl(env, "tokens", "list", "-o", "json").stdout)
    assert {t["user"]: t.get("expires_at") is None for t in as_json} == {
        "admin": True,
        "agent": True,
        "ci": False,
        "dana": False,
    }


PRINTER = (
    "import os, sys\n"
    "for i in range(50):\n"
    "    print('line', i, 'of rank', os.environ['RANK'], flush=True)\n"
    "print('to stderr', file=sys.stderr)\n"
    "print(sorted(k for k in os.environ if k.startswith('GRIDLAB_')))\n"
)


def test_no_token_secret_is_ever_written_to_a_log(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRIDLAB_SCHEDULER_LOG_LEVEL", "debug")
    monkeypatch.setenv("GRIDLAB_AGENT_LOG_LEVEL", "debug")
    cluster = make_cluster()
    cluster.start_scheduler()
    cluster.start_agent("w1", fake_gpus="1xA100:80")
    secrets = {"admin": cluster.admin_token, "agent": auth.read_secret(cluster.agent_token_file)}
    with cluster.client() as admin:
        secrets["user"] = admin.create_token("alice", team="vision")
        secrets["expiring"] = admin.create_token("bob", ttl=0.5)
        secrets["revoked"] = admin.create_token("carol")
        admin.revoke_token(token_id(secrets["revoked"]))
    with Client(cluster.address, secrets["user"]) as alice:
        run = alice.submit(["python", "-c", PRINTER], name="printer")
        run.wait(timeout=60)
        assert sum(1 for _ in run.logs()) >= 50
    env = client_env(cluster, secrets["user"], tmp_path)
    assert schedctl(env, "runs").returncode == 0
    assert schedctl({**env, "GRIDLAB_TOKEN": ""}, "--token", secrets["user"], "describe", run.id).returncode == 0
    assert schedctl(env, "logs", run.id).returncode == 0
    assert schedctl(env, "tokens", "list").returncode != 0  # refused: a user, and said so
    time.sleep(0.6)
    for who in ("expiring", "revoked"):
        assert schedctl(client_env(cluster, secrets[who], tmp_path), "whoami").returncode != 0
    assert schedctl(client_env(cluster, "glt_" + "Z" * 43, tmp_path), "whoami").returncode != 0
    cluster.close()  # every daemon has flushed and stopped

    needles = {who: s.encode() for who, s in secrets.items()}
    needles |= {f"{who} (body)": s.removeprefix(auth.PREFIX).encode() for who, s in secrets.items()}
    searched = 0
    for path in [*cluster.root.rglob("*"), *tmp_path.rglob("*")]:
        if not path.is_file() or path.name in ("admin.token", "agent.token"):  # the 0600 files that hold them
            continue
        data = path.read_bytes()
        searched += 1
        for who, needle in needles.items():
            assert needle not in data, f"the {who} token is in {path}"
    logs = list(cluster.logs.glob("*.log"))
    assert {p.name for p in logs} >= {"scheduler.log", "agent-w1.log"}
    assert all(p.stat().st_size > 0 for p in logs)
    assert searched > len(logs)


def test_a_revoked_token_ends_the_streams_it_has_open(make_cluster: Callable[..., LocalCluster]) -> None:
    """A watch (or a followed log, an upload, an agent's stream) does not outlive its token: the interceptor
    checks it again every few seconds and ends the call UNAUTHENTICATED."""
    import grpc

    from gridlab.v1 import scheduler_pb2, scheduler_pb2_grpc

    cluster = make_cluster()
    cluster.start_scheduler()
    with cluster.client() as admin:
        secret = admin.create_token("eve")
        eve_id = next(t.id for t in admin.tokens() if t.user == "eve")
        channel = grpc.insecure_channel(cluster.address)
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        watch = stub.WatchRuns(scheduler_pb2.WatchRunsRequest(), metadata=auth.metadata(secret))  # never ends by itself
        admin.revoke_token(eve_id)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            next(iter(watch))
        channel.close()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (err.value.details() or "")
    assert time.monotonic() - started < 15
