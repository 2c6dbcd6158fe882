"""The scheduler's engine: every state change, applied to the store, with its effects.

The gRPC servicers (`api.py`, `gateway.py`) are thin: they call one method here and turn
`ApiError` into a status. The engine owns the store (the one writer), the connected agent
sessions (their outboxes), heartbeat times (in memory, never in the database), and the
two background loops: placement and liveness. Decisions are delegated to pure modules:
`state` (what a run becomes) and `placement` (where a run goes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import grpc
import structlog

from gridlab.common import auth as tokens
from gridlab.common.config import SchedulerConfig
from gridlab.common.ids import new_id
from gridlab.common.timeutil import Clock, duration, ts
from gridlab.v1 import agent_pb2, types_pb2

from . import agentadmin, artifacts, placement, queue, snapshot
from .auth import ADMIN, AGENT, ROLES, Principal, TokenRefused
from .batch import Batcher
from .cadence import Cadence, cadence_for, needs_telling, timeout_after_change
from .convert import PAGE_BYTES, run_pb
from .errors import ApiError, denied, exhausted, invalid, not_found, precondition
from .gang import GangTracker, gang_end
from .queue import Quotas, Usage
from .state import (
    LIVE_STATES_SQL,
    AttemptState,
    RunState,
    RunView,
    attempt_ended,
    check_attempt_transition,
    check_run_transition,
)
from .store import Store, dumps
from .validate import SpecError, normalize
from .watchdog import Watchdog

log = structlog.get_logger("gridlab.scheduler")

# A node of an attempt that still holds its share of the agent (GPUs, CPUs, memory).
_HELD_SQL = f"n.state IN {LIVE_STATES_SQL}"
# Every pass reads the live nodes. From the partial index of them, by name: ordered by attempt, SQLite would
# rather walk the primary key over every node there ever was than sort the few live ones.
LIVE_NODES_SQL = (
    "SELECT n.attempt_id, a.run_id, a.started_at, a.created_at, n.agent_name, n.gpu_uuids, n.cpus, n.memory_bytes, "
    "r.user, r.team, r.priority FROM attempt_nodes n INDEXED BY attempt_nodes_held "
    f"JOIN attempts a ON a.id = n.attempt_id JOIN runs r ON r.id = a.run_id WHERE {_HELD_SQL} "
    "ORDER BY n.attempt_id, n.node_rank"
)
PASS_GAP = 0.005  # seconds the placement loop lets changes gather before a pass
MAX_TOKEN_TTL = 10 * 366 * 86400.0  # seconds: a longer-lived token is better made with no expiry
ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 - a file name
AGENT_TOKEN_FILE = "agent.token"  # noqa: S105 - a file name


class Notifier:
    """Wakes every waiter when something was appended (events, log lines)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        event = self._event
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


@dataclass(eq=False)
class AgentSession:
    """One connected Connect stream. Messages for the agent go through `outbox`. What placement reads of it
    (inventory, draining; and the sessions table itself) changes only with a `ViewCache.touch` of its name, so
    that the next pass sees it (`snapshot.ViewCache.snapshot`)."""

    name: str
    agent_id: str
    pool: str
    labels: dict[str, str]
    inventory: types_pb2.Inventory
    outbox: asyncio.Queue[agent_pb2.SchedulerMessage | None] = field(default_factory=asyncio.Queue)
    closed: bool = False
    draining: bool = False  # the agent is stopping: place nothing new on it
    preemptible: bool = False  # a spot machine (its Hello says so)
    cadence: Cadence | None = None  # the heartbeat cadence it was told (Welcome or Cadence)

    def send(self, msg: agent_pb2.SchedulerMessage) -> None:
        if not self.closed:
            self.outbox.put_nowait(msg)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)

    def abort(self) -> None:
        """Close the stream with nothing more sent: what is queued described changes that were not committed."""
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.closed = False
        self.close()


def _attempt_state(state: int) -> AttemptState:
    """The state an agent reports, or INVALID_ARGUMENT for a value this scheduler does not know."""
    if state not in types_pb2.AttemptState.values() or state == types_pb2.ATTEMPT_STATE_UNSPECIFIED:
        raise invalid(f"attempt state {state} is not one this scheduler knows")
    return AttemptState(types_pb2.AttemptState.Name(state).removeprefix("ATTEMPT_STATE_"))


def check_status(status: agent_pb2.AttemptStatus) -> AttemptState:
    """Validate one attempt report from an agent before anything is changed for it."""
    if not status.attempt_id or len(status.attempt_id) > 128:
        raise invalid("attempt_id must be 1 to 128 characters")
    return _attempt_state(status.state)


class Engine:
    def __init__(self, store: Store, config: SchedulerConfig, clock: Clock | None = None) -> None:
        self.store = store
        self.config = config
        self.clock = clock or Clock()
        self.sessions: dict[str, AgentSession] = {}
        self.last_seen: dict[str, float] = {}  # agent name -> monotonic time
        self.timeouts: dict[str, float] = {}  # agent name -> silence allowed (its cadence's; more while it changes)
        self.events_changed = Notifier()
        self.logs_changed = Notifier()
        self._kick = asyncio.Event()
        self._token_cache: dict[str, tuple[Principal, float | None]] = {}  # token hash -> who, expires_at
        self._submit_buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens left, monotonic time)
        # attempt id -> run, number, its agents, the global ranks each agent's node runs (_ranks_of)
        self._attempt_owner: dict[str, tuple[str, int, frozenset[str], dict[str, range]]] = {}
        self.watchdog = Watchdog()
        self.gangs = GangTracker()
        self.unschedulable: set[str] = agentadmin.load_unschedulable(store)  # cordoned or draining: nothing new
        self._specs: dict[str, types_pb2.RunSpec] = {}  # run id -> spec, while queued or live
        self._requests: dict[str, placement.RunRequest] = {}  # run id -> what placement needs of it, likewise
        spot_pools = [name for name, t in config.pools.items() if isinstance(t, dict) and t.get("preemptible")]
        self._views = snapshot.ViewCache(config.burst_pools, spot_pools)  # each agent's static view, rebuilt on change
        self._fit_index = placement.FitIndex()  # which agents fit which request shapes, kept across passes
        self.queue_positions: dict[str, int] = {}  # queued run -> its place in the last pass's order (1-based)
        self._stopping: dict[str, str] = {}  # attempt being preempted -> the run it makes room for
        self._timed_out: set[str] = set()  # attempts stopped at their run's time limit: they end for good
        self.usage: dict[str, Usage] = self._load_usage()
        self.batcher = Batcher(store, on_commit_failure=self._drop_sessions)  # group commit; `run()` it
        self.batcher.tail = self._pass_if_due
        self._pass_took = 0.0  # seconds the last placement pass took
        self._pass_ended = 0.0  # time.perf_counter() when it ended
        self._restart_liveness()

    def _restart_liveness(self) -> None:
        """After a restart (or a failed group commit) every agent the store thinks is ready gets a full
        timeout, at the cadence a cluster of that size has, to reconnect before it is declared lost."""
        ready = [row["name"] for row in self.store.all("SELECT name FROM agents WHERE state = 'READY'")]
        c = self.config
        timeout = cadence_for(len(ready), c.heartbeat_interval, c.heartbeat_timeout, c.heartbeat_max_rate).timeout
        now = self.clock.monotonic()
        for name in ready:
            self.last_seen[name] = now
            self.timeouts[name] = max(timeout, self.timeouts.get(name, 0.0))

    def _load_usage(self) -> dict[str, Usage]:
        """Each user's decayed GPU-seconds, from the attempts that ended within ten half-lives (older ones
        count less than a thousandth)."""
        half_life = self.config.fair_share_half_life
        since = self.clock.time() - 10 * half_life
        usage: dict[str, Usage] = {}
        for row in self.store.all(
            "SELECT a.started_at, a.finished_at, r.user, r.spec FROM attempts a JOIN runs r ON r.id = a.run_id "
            "WHERE a.started_at IS NOT NULL AND a.finished_at > ? ORDER BY a.finished_at",
            (since,),
        ):
            res = types_pb2.RunSpec.FromString(row["spec"]).resources
            used = res.gpus * max(1, res.nodes) * max(0.0, row["finished_at"] - row["started_at"])
            usage[row["user"]] = usage.get(row["user"], Usage()).add(used, row["finished_at"], half_life)
        return usage

    # ---------------------------------------------------------------- tokens

    def bootstrap_tokens(self, state_dir: Path) -> None:
        """On first start, create an admin token and an agent join token in 0600 files."""
        for role, filename, user in (
            (ADMIN, ADMIN_TOKEN_FILE, "admin"),
            (AGENT, AGENT_TOKEN_FILE, "agent"),
        ):
            usable = "role = ? AND revoked = 0 AND (expires_at IS NULL OR expires_at > ?)"
            if self.store.one(f"SELECT 1 FROM tokens WHERE {usable}", (role, self.clock.time())):
                continue  # else (none, or all revoked or expired) a new one, so nobody is locked out
            token = self.create_token(user, role)
            path = state_dir / filename
            tokens.write_secret(path, token)
            log.info("token_created", role=role, path=str(path))

    def create_token(self, user: str, role: str, team: str = "", ttl: float | None = None) -> str:
        """A new token's secret (returned once; only its SHA-256 is stored). With `ttl` seconds it expires."""
        if role not in ROLES:
            raise invalid(f"role {role!r} is not one of {', '.join(ROLES)}")
        if not user or len(user) > 128 or not user.isprintable():
            raise invalid("user must be 1 to 128 printable characters")
        if len(team) > 128 or not team.isprintable():
            raise invalid("team must be at most 128 printable characters")
        if ttl is not None and not 0 < ttl <= MAX_TOKEN_TTL:
            raise invalid(f"ttl is {ttl:g}s: give more than 0 and at most {MAX_TOKEN_TTL:g}s (or none: no expiry)")
        token = tokens.new_token()
        now = self.clock.time()
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO tokens (hash, user, role, team, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (tokens.hash_token(token), user, role, team, now, None if ttl is None else now + ttl),
            )
        return token

    def lookup_token(self, token: str) -> Principal | None:
        """Who `token` is, or None (unknown or revoked); TokenRefused once it has expired. The stored hash is
        compared in constant time after the (indexed) lookup, and the cache keeps the expiry with the principal,
        so a cached token expires on time too."""
        digest = tokens.hash_token(token)
        cached = self._token_cache.get(digest)
        if cached is None:
            row = self.store.one(
                "SELECT hash, user, role, team, expires_at FROM tokens WHERE hash = ? AND revoked = 0", (digest,)
            )
            if row is None or not hmac.compare_digest(row["hash"], digest):
                return None
            cached = (Principal(row["user"], row["role"], row["team"] or ""), row["expires_at"])
            self._token_cache[digest] = cached
        who, expires_at = cached
        if expires_at is not None and self.clock.time() >= expires_at:
            when = datetime.fromtimestamp(expires_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            raise TokenRefused(f"token expired at {when}; ask an admin for a new one")
        return who

    def forget_token(self, digest: str) -> None:
        """Drop a token (by its stored hash) from the cache: after a revoke, the next call looks it up again."""
        self._token_cache.pop(digest, None)

    # ---------------------------------------------------------------- helpers

    def _event(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        attempt_id: str,
        kind: str,
        state: RunState,
        message: str,
    ) -> None:
        conn.execute(
            "INSERT INTO events (run_id, attempt_id, kind, state, message, time) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, attempt_id, kind, state.value, message, self.clock.time()),
        )

    def _run_row(self, run_id: str) -> sqlite3.Row | None:
        return self.store.one("SELECT * FROM runs WHERE id = ?", (run_id,))

    def may_read(self, who: Principal, run: sqlite3.Row) -> bool:
        """The one rule for reading a run (its record, events, logs, metrics, checkpoints, artifacts): an admin,
        its owner, or, with share_runs_with_team, a user of the team it was submitted under."""
        if who.admin or run["user"] == who.user:
            return True
        return self.config.share_runs_with_team and bool(who.team) and run["team"] == who.team

    def visible_run(self, who: Principal, run_id: str) -> sqlite3.Row:
        """The run, if `who` may read it (`may_read`). One they may not is NOT_FOUND, not hidden-but-there."""
        if not run_id:
            raise invalid("run_id is empty")
        row = self._run_row(run_id)
        if row is None or not self.may_read(who, row):
            raise not_found(f"no run {run_id!r}")
        return row

    def owned_run(self, who: Principal, run_id: str, doing: str) -> sqlite3.Row:
        """The run, if `who` may change it (cancel, reprioritize): its owner or an admin. A teammate who may
        read it is told why not (PERMISSION_DENIED); anyone else gets NOT_FOUND, as from `visible_run`."""
        row = self.visible_run(who, run_id)
        if not who.admin and row["user"] != who.user:
            raise denied(f"run {run_id} is {row['user']}'s: only its owner or an admin may {doing} it")
        return row

    def run_message(self, run_id: str, *, with_attempts: bool = True) -> types_pb2.Run:
        row = self._run_row(run_id)
        assert row is not None  # noqa: S101 - callers pass ids they just read
        return self._with_position(run_pb(self.store, row, with_attempts=with_attempts))

    def _with_position(self, run: types_pb2.Run) -> types_pb2.Run:
        if run.state == types_pb2.RUN_STATE_QUEUED:
            run.queue_position = self.queue_positions.get(run.id, 0)
        return run

    def priority_cap_message(self, priority: int) -> str:
        cap = self.config.max_user_priority
        return f"priority {priority} is above {cap}, the most a user may give a run (max_user_priority): ask an admin"

    def kick(self) -> None:
        self._kick.set()

    # ---------------------------------------------------------------- runs

    def submit(self, who: Principal, spec: types_pb2.RunSpec, idempotency_key: str) -> tuple[str, bool]:
        """Validate and queue a run; returns (run id, whether the key matched an earlier one)."""
        try:
            normalize(spec)
        except SpecError as exc:
            raise invalid(str(exc)) from None
        if spec.code_digest and not artifacts.is_bundle(self.store, spec.code_digest):
            raise precondition(
                f"code bundle {spec.code_digest} is not in the scheduler's store: upload it first (Client.upload_code)"
            )
        if spec.priority > self.config.max_user_priority and not who.admin:
            raise denied(self.priority_cap_message(spec.priority))
        if len(idempotency_key) > 200:
            raise invalid("idempotency_key is longer than 200 characters")
        if idempotency_key:
            row = self.store.one(
                "SELECT id FROM runs WHERE user = ? AND idempotency_key = ?",
                (who.user, idempotency_key),
            )
            if row is not None:
                return str(row["id"]), True
        if not who.admin:
            self._check_submit_limits(who.user)
        run_id = new_id("run")
        now = self.clock.time()
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO runs (id, user, team, name, spec, state, priority, max_retries, idempotency_key, "
                "created_at, pending_reason, sweep, pool) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    who.user,
                    who.team,
                    spec.name,
                    spec.SerializeToString(deterministic=True),
                    RunState.QUEUED.value,
                    spec.priority,
                    spec.max_retries,
                    idempotency_key or None,
                    now,
                    "Priority: waiting for the scheduler's next pass",
                    spec.sweep.name,
                    spec.pool,
                ),
            )
            self._event(conn, run_id, "", "submitted", RunState.QUEUED, f"submitted by {who.user}")
        log.debug("run_submitted", run_id=run_id, gpus=spec.resources.gpus, command=spec.command[0])
        self.events_changed.notify()
        self.kick()
        return run_id, False

    def _check_submit_limits(self, user: str) -> None:
        """RESOURCE_EXHAUSTED past a user's queued-runs cap or submit rate (admins are exempt: they clean up
        and migrate in bulk). The count is one indexed COUNT (runs_user_state); the rate a token bucket kept
        in memory, refilled at max_submits_per_second_per_user up to as many (at least 1), spent only by a run
        queued."""
        cap = self.config.max_queued_runs_per_user
        if cap > 0:
            row = self.store.one("SELECT COUNT(*) FROM runs WHERE user = ? AND state = 'QUEUED'", (user,))
            queued = int(row[0]) if row is not None else 0
            if queued >= cap:
                raise exhausted(
                    f"you have {queued} queued runs, the most a user may have (max_queued_runs_per_user): "
                    "wait for some to start, or cancel some"
                )
        rate = self.config.max_submits_per_second_per_user
        if rate > 0:
            burst = max(1.0, rate)
            now = self.clock.monotonic()
            left, then = self._submit_buckets.get(user, (burst, now))
            left = min(burst, left + (now - then) * rate)
            if left < 1.0 - 1e-9:  # (a refill of exactly one token may land a hair below it)
                raise exhausted(
                    f"more than {rate:g} submits per second, the most a user may send "
                    f"(max_submits_per_second_per_user): retry in {(1.0 - left) / rate:.2f}s"
                )
            self._submit_buckets[user] = (max(0.0, left - 1.0), now)

    def list_runs(
        self,
        who: Principal,
        states: Iterable[str],
        user: str,
        limit: int,
        page_token: str,
        *,
        sweep: str = "",
        pool: str = "",
    ) -> tuple[list[types_pb2.Run], str]:
        """A page of runs, newest first: the caller's (or `user`'s, or everyone's for an admin), narrowed by
        state, sweep name and pool (all ANDed); `page_token` is the last id of the page before."""
        if limit < 0:
            raise invalid(f"limit is {limit}: it must be 0 (default 100) or more")
        limit = min(limit or 100, 1000)
        where, params = [], []
        if user or not who.admin:
            where.append("user = ?")
            params.append(user or who.user)
        if user and user != who.user and not who.admin:
            if not (self.config.share_runs_with_team and who.team):
                raise denied("only an admin may list another user's runs")
            where.append("team = ?")  # a teammate's runs submitted under this team (`may_read`)
            params.append(who.team)
        state_list = list(states)
        if state_list:
            where.append("state IN (" + ",".join("?" * len(state_list)) + ")")
            params.extend(state_list)
        for column, value in (("sweep", sweep), ("pool", pool)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if page_token:
            where.append("id < ?")
            params.append(page_token)
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        rows = self.store.all(sql, (*params, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        runs: list[types_pb2.Run] = []
        size = 0
        for row in rows:  # a page fits in one message: runs with big specs (env, argv) make it shorter
            run = self._with_position(run_pb(self.store, row))
            size += run.ByteSize()
            if runs and size > PAGE_BYTES:
                return runs, runs[-1].id
            runs.append(run)
        return runs, (rows[-1]["id"] if more else "")

    def cancel(self, who: Principal, run_id: str, grace: float | None, reason: str) -> None:
        row = self.owned_run(who, run_id, "cancel")
        state = RunState(row["state"])
        if state.terminal:
            raise precondition(f"run {run_id} has already ended ({state.value}); nothing to cancel")
        message = reason or f"cancelled by {who.user}"
        if state is RunState.QUEUED:
            with self.store.transaction() as conn:
                check_run_transition(run_id, state, RunState.CANCELLED)
                conn.execute(
                    "UPDATE runs SET state = ?, message = ?, finished_at = ?, pending_reason = '', "
                    "cancel_requested = 1 WHERE id = ?",
                    (RunState.CANCELLED.value, message, self.clock.time(), run_id),
                )
                self._event(conn, run_id, "", "cancelled", RunState.CANCELLED, message)
            self.forget_spec(run_id)
            self.events_changed.notify()
            return
        if not row["cancel_requested"]:
            with self.store.transaction() as conn:
                conn.execute("UPDATE runs SET cancel_requested = 1, cancel_grace = ? WHERE id = ?", (grace, run_id))
                self._event(conn, run_id, "", "cancel_requested", state, message)
            self.events_changed.notify()
        for attempt in self.store.all(
            f"SELECT a.id, n.agent_name FROM attempts a JOIN attempt_nodes n ON n.attempt_id = a.id "
            f"WHERE a.run_id = ? AND a.state IN {LIVE_STATES_SQL}",
            (run_id,),
        ):
            self._send_cancel(attempt["agent_name"], attempt["id"], message, AttemptState.CANCELLED, grace)

    def _send_cancel(
        self,
        agent_name: str,
        attempt_id: str,
        reason: str,
        final: AttemptState,
        grace: float | None = None,
    ) -> None:
        session = self.sessions.get(agent_name)
        if session is None:
            return  # sent again when the agent reconnects (see agent_hello)
        order = agent_pb2.CancelAttempt(
            attempt_id=attempt_id,
            reason=reason,
            final_state=f"ATTEMPT_STATE_{final.value}",
        )
        if grace is not None:
            order.grace.CopyFrom(duration(grace))
        session.send(agent_pb2.SchedulerMessage(cancel=order))

    # ---------------------------------------------------------------- attempts

    def _end_attempt(
        self,
        conn: sqlite3.Connection,
        attempt: sqlite3.Row,
        state: AttemptState,
        exit_code: int,
        reason: str,
        permanent: bool = False,
        infrastructure: bool = False,
        interrupted: bool = False,
    ) -> RunState:
        """Record the end of a live attempt and move its run on. Inside a transaction. `interrupted`: its
        machine, a spot instance, was reclaimed (counted in runs.interruptions)."""
        check_attempt_transition(attempt["id"], AttemptState(attempt["state"]), state)
        self._attempt_owner.pop(attempt["id"], None)
        self.watchdog.forget(attempt["id"])
        self.gangs.forget(attempt["id"])
        self._stopping.pop(attempt["id"], None)
        now = self.clock.time()
        self._timed_out.discard(attempt["id"])
        limit = self._spec(attempt["run_id"]).time_limit.ToNanoseconds() / 1e9
        if limit > 0 and attempt["started_at"] and now - attempt["started_at"] >= limit:
            permanent = True  # it ran out of time: another attempt would too (Slurm's TIMEOUT), even across a restart
        conn.execute(
            "UPDATE attempts SET state = ?, exit_code = ?, reason = ?, finished_at = ? WHERE id = ?",
            (state.value, exit_code, reason, now, attempt["id"]),
        )
        self._stop_nodes(conn, attempt["id"], state, reason)
        run = conn.execute("SELECT * FROM runs WHERE id = ?", (attempt["run_id"],)).fetchone()
        view = RunView(
            id=run["id"],
            state=RunState(run["state"]),
            retries_used=run["retries_used"],
            max_retries=run["max_retries"],
            cancel_requested=bool(run["cancel_requested"]),
        )
        outcome = attempt_ended(view, state, exit_code, reason, permanent=permanent, infrastructure=infrastructure)
        check_run_transition(run["id"], view.state, outcome.state)
        ended_by_exit = state in (AttemptState.SUCCEEDED, AttemptState.FAILED)
        conn.execute(
            "UPDATE runs SET state = ?, message = ?, exit_code = ?, retries_used = retries_used + ?, "
            "interruptions = interruptions + ?, finished_at = ?, pending_reason = ? WHERE id = ?",
            (
                outcome.state.value,
                outcome.message,
                exit_code if ended_by_exit else run["exit_code"],
                1 if outcome.spend_retry else 0,
                1 if interrupted else 0,
                now if outcome.state.terminal else None,
                "Requeued: waiting for the scheduler's next pass" if outcome.requeue else "",
                run["id"],
            ),
        )
        self._event(conn, run["id"], attempt["id"], outcome.kind, outcome.state, outcome.message)
        self._account(run, attempt, now)
        self._record_cost(conn, run, attempt, now)
        if outcome.state.terminal or interrupted:
            self.forget_spec(run["id"])  # (interrupted: its placement request changes)
        log.info(
            "attempt_ended",
            run_id=run["id"],
            attempt_id=attempt["id"],
            attempt_state=state.value,
            run_state=outcome.state.value,
            exit_code=exit_code,
            reason=reason,
        )
        return outcome.state

    def _stop_nodes(self, conn: sqlite3.Connection, attempt_id: str, state: AttemptState, reason: str) -> None:
        """The attempt has ended while other nodes of its gang still run: their agents are told to stop the
        ranks now (they would otherwise wait for their dead peer until the collective timeout). Each such node
        keeps its GPUs until its agent reports the ranks gone, or is lost: they are still in use meanwhile."""
        if state is not AttemptState.SUCCEEDED:
            self._cancel_nodes(conn, attempt_id, f"gang stopped: {reason}", AttemptState.FAILED)

    def _cancel_nodes(self, conn: sqlite3.Connection, attempt_id: str, reason: str, final: AttemptState) -> None:
        """Tell the agent of every node of the attempt still running to stop it."""
        for node in conn.execute(
            f"SELECT n.agent_name FROM attempt_nodes n WHERE n.attempt_id = ? AND {_HELD_SQL}", (attempt_id,)
        ).fetchall():
            self._send_cancel(node["agent_name"], attempt_id, reason, final)

    def _set_node_state(self, conn: sqlite3.Connection, attempt_id: str, agent_name: str, state: AttemptState) -> None:
        # `+agent_name`: look the node up by its attempt (the primary key), not by the agent's index, which
        # SQLite would otherwise pick and walk through every node the agent ever ran.
        conn.execute(
            "UPDATE attempt_nodes SET state = ? WHERE attempt_id = ? AND +agent_name = ?",
            (state.value, attempt_id, agent_name),
        )

    def _lose_nodes(self, conn: sqlite3.Connection, agent_name: str, keep: set[str], reason: str) -> None:
        """The agent no longer runs its live nodes (other than those of attempts in `keep`): each node ends
        LOST, and so does its attempt if that was still live."""
        nodes = conn.execute(
            f"SELECT a.*, n.agent_name FROM attempts a JOIN attempt_nodes n ON n.attempt_id = a.id "
            f"WHERE n.agent_name = ? AND {_HELD_SQL}",
            (agent_name,),
        ).fetchall()
        for row in nodes:
            if row["id"] in keep:
                continue
            self._set_node_state(conn, row["id"], agent_name, AttemptState.LOST)
            if AttemptState(row["state"]).live:
                self._end_attempt(conn, row, AttemptState.LOST, -1, reason)

    def _account(self, run: sqlite3.Row, attempt: sqlite3.Row, now: float) -> None:
        """Add the attempt's GPU-seconds to its user's fair-share usage."""
        started = attempt["started_at"]
        if not started:
            return
        res = self._spec(run["id"], run["spec"]).resources
        used = res.gpus * max(1, res.nodes) * max(0.0, now - started)
        if used:
            self.usage[run["user"]] = self.usage.get(run["user"], Usage()).add(
                used, now, self.config.fair_share_half_life
            )

    def _record_cost(self, conn: sqlite3.Connection, run: sqlite3.Row, attempt: sqlite3.Row, now: float) -> None:
        """Cost accounting (scheduler/usage.py): each node of the ended attempt held its GPUs from the attempt's
        start to now (as fair share counts it), in the pool its agent is in now, at that pool's price."""
        attempt_id, started = attempt["id"], attempt["started_at"]  # (read in the transaction that ends it)
        if not started:
            return
        gpus = self._spec(run["id"], run["spec"]).resources.gpus
        seconds = max(0.0, now - started)
        prices = self.config.pool_prices
        for node in conn.execute(
            "SELECT n.node_rank, n.agent_name, COALESCE(g.pool, '') AS pool FROM attempt_nodes n "
            "LEFT JOIN agents g ON g.name = n.agent_name WHERE n.attempt_id = ?",
            (attempt_id,),
        ).fetchall():
            gpu_seconds = gpus * seconds
            conn.execute(
                "INSERT OR IGNORE INTO usage (attempt_id, node_rank, run_id, user, pool, agent_name, gpus, "
                "started_at, finished_at, gpu_seconds, cost) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    attempt_id,
                    node["node_rank"],
                    run["id"],
                    run["user"],
                    node["pool"],
                    node["agent_name"],
                    gpus,
                    started,
                    now,
                    gpu_seconds,
                    gpu_seconds / 3600.0 * float(prices.get(node["pool"], 0.0)),
                ),
            )

    def check_time_limits(self) -> list[str]:
        """Stop running attempts past their run's time limit. They end FAILED without a retry (the next attempt
        would run out of time as well)."""
        now = self.clock.time()
        over = []
        for row in self.store.all(
            "SELECT a.id, a.run_id, a.started_at FROM attempts a WHERE a.state = 'RUNNING' AND a.started_at IS NOT NULL"
        ):
            limit = self._spec(row["run_id"]).time_limit.ToNanoseconds() / 1e9
            if limit <= 0 or now - row["started_at"] <= limit or row["id"] in self._timed_out:
                continue
            self._timed_out.add(row["id"])
            over.append(row["id"])
            reason = f"time limit of {limit:g}s reached"
            with self.store.transaction() as conn:
                run = conn.execute("SELECT state FROM runs WHERE id = ?", (row["run_id"],)).fetchone()
                self._event(conn, row["run_id"], row["id"], "time_limit", RunState(run["state"]), reason)
                self._cancel_nodes(conn, row["id"], reason, AttemptState.FAILED)
        if over:
            self.events_changed.notify()
        return over

    def _attempt_rows(self, agent_name: str) -> list[sqlite3.Row]:
        """Attempts with a live node on this agent (a node that already ended does not count: its gang may
        still run elsewhere)."""
        return self.store.all(
            f"SELECT a.* FROM attempts a JOIN attempt_nodes n ON n.attempt_id = a.id "
            f"WHERE n.agent_name = ? AND a.state IN {LIVE_STATES_SQL} AND {_HELD_SQL}",
            (agent_name,),
        )

    def _apply_status(self, session: AgentSession, status: agent_pb2.AttemptStatus, *, hello: bool) -> None:
        """Reconcile what an agent says about its node of one attempt with what the store holds.

        Replies go to the agent's current session: `session` may be an older stream whose
        reader is still draining after the agent reconnected."""
        reported = check_status(status)
        session = self.sessions.get(session.name, session)
        release = agent_pb2.SchedulerMessage(release=agent_pb2.ReleaseAttempt(attempt_id=status.attempt_id))
        reported_end = not reported.live
        row = self.store.one(
            "SELECT a.*, n.agent_name, n.node_rank, n.state AS node_state, r.state AS run_state, "
            "(SELECT COUNT(*) FROM attempt_nodes WHERE attempt_id = a.id) AS nodes "
            "FROM attempts a JOIN attempt_nodes n ON n.attempt_id = a.id JOIN runs r ON r.id = a.run_id "
            "WHERE a.id = ? AND n.attempt_id = ? AND n.agent_name = ?",
            (status.attempt_id, status.attempt_id, session.name),
        )
        if row is None or not AttemptState(row["state"]).live or not AttemptState(row["node_state"]).live:
            # Unknown to us, another agent's, already ended here (e.g. declared lost and requeued while the
            # agent was away), or a gang node stopping after its attempt ended: it must not keep running.
            if reported_end:
                if row is not None and AttemptState(row["node_state"]).live:  # its GPUs are free now
                    with self.store.transaction() as conn:
                        self._set_node_state(conn, row["id"], session.name, reported)
                    self.logs_changed.notify()  # a follower waits for the last node of an ended run
                    self.kick()
                session.send(release)
            else:
                gone = row is None or not AttemptState(row["node_state"]).live
                state = "unknown to the scheduler" if row is None else row["node_state" if gone else "state"]
                why = state if row is None else f"already {state} on the scheduler"
                log.warning("stale_attempt", attempt_id=status.attempt_id, agent=session.name, why=why)
                self._send_cancel(session.name, status.attempt_id, f"attempt {why}", AttemptState.FAILED)
            return
        if reported_end:
            with self.store.transaction() as conn:
                self._node_ended(conn, row, reported, status)
            session.send(release)
            self.events_changed.notify()
            self.logs_changed.notify()
            self.kick()
            return
        if reported is AttemptState.RUNNING and status.ranks_exited:  # only its last logs are on the way
            self.watchdog.ranks_exited(row["id"], session.name, row["nodes"], self.clock.monotonic())
        elif reported is AttemptState.RUNNING:
            self._watch_progress(row, status.last_step)
        if status.prepared and row["nodes"] > 1:  # also RUNNING: a restarted scheduler learns node 0's port
            self._gang_prepared(row, status.master_port, waiting=reported is AttemptState.PREPARING)
        if reported is AttemptState.RUNNING and row["node_state"] != AttemptState.RUNNING.value:
            self._node_running(row, session.name)
        if hello:
            run = self._run_row(row["run_id"])
            if run is not None and run["cancel_requested"]:
                self._send_cancel(
                    session.name, row["id"], "cancelled on request", AttemptState.CANCELLED, run["cancel_grace"]
                )
            elif hung := self.watchdog.stop_reason(row["id"]):
                self._send_cancel(session.name, row["id"], hung, AttemptState.FAILED)
            elif row["id"] in self._timed_out:  # orders sent while the agent was away are sent again
                self._send_cancel(session.name, row["id"], "time limit reached", AttemptState.FAILED)
            elif row["id"] in self._stopping:
                reason = f"preempted for higher-priority run {self._stopping[row['id']]}"
                self._send_cancel(session.name, row["id"], reason, AttemptState.PREEMPTED)

    def _node_ended(
        self, conn: sqlite3.Connection, row: sqlite3.Row, state: AttemptState, status: agent_pb2.AttemptStatus
    ) -> None:
        """One node's ranks have ended. A one-node attempt ends with it; a gang ends at its first bad end
        (the others are stopped) or when every node has succeeded."""
        reason = status.message[:4096]
        self._set_node_state(conn, row["id"], row["agent_name"], state)
        if row["nodes"] > 1:
            states = {
                r["node_rank"]: AttemptState(r["state"])
                for r in conn.execute("SELECT node_rank, state FROM attempt_nodes WHERE attempt_id = ?", (row["id"],))
            }
            outcome = gang_end(states, row["node_rank"])
            if outcome is None:  # its peers still run: no progress is due from this node any more
                self.watchdog.ranks_exited(row["id"], row["agent_name"], row["nodes"], self.clock.monotonic())
                return
            if outcome is not AttemptState.SUCCEEDED:
                reason = f"node {row['node_rank']} ({row['agent_name']}): {reason or outcome.value.lower()}"
            state = outcome
        self._end_attempt(
            conn,
            row,
            state,
            status.exit_code,
            reason,
            permanent=status.permanent,
            infrastructure=status.infrastructure,
            interrupted=status.interrupted and state is AttemptState.PREEMPTED,
        )

    def _node_running(self, row: sqlite3.Row, agent_name: str) -> None:
        """A node's ranks are all started; the attempt (and its run) is RUNNING once every node's are."""
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE attempt_nodes SET state = 'RUNNING' WHERE attempt_id = ? AND node_rank = ?",
                (row["id"], row["node_rank"]),
            )
            waiting = (
                row["nodes"] > 1
                and conn.execute(  # gang nodes still starting (a finished one has started)
                    f"SELECT COUNT(*) FROM attempt_nodes n WHERE attempt_id = ? AND {_HELD_SQL} AND state != 'RUNNING'",
                    (row["id"],),
                ).fetchone()[0]
            )
            if waiting or row["state"] == AttemptState.RUNNING.value:
                return
            check_attempt_transition(row["id"], AttemptState(row["state"]), AttemptState.RUNNING)
            now = self.clock.time()
            conn.execute("UPDATE attempts SET state = 'RUNNING', started_at = ? WHERE id = ?", (now, row["id"]))
            if row["run_state"] == RunState.STARTING.value:  # (read with the row, in this batch's transaction)
                check_run_transition(row["run_id"], RunState.STARTING, RunState.RUNNING)
                conn.execute(
                    # An earlier attempt's requeue reason ("preempted: ...") no longer describes the run.
                    "UPDATE runs SET state = ?, started_at = COALESCE(started_at, ?), message = '' WHERE id = ?",
                    (RunState.RUNNING.value, now, row["run_id"]),
                )
                where = agent_name if row["nodes"] == 1 else f"{row['nodes']} nodes"
                self._event(conn, row["run_id"], row["id"], "running", RunState.RUNNING, f"running on {where}")
        self.events_changed.notify()

    def _gang_prepared(self, row: sqlite3.Row, port: int, *, waiting: bool) -> None:
        """A gang's node is ready to start; once all are, every node gets the order to start (again, to a
        node that reports ready after it was sent: orders are idempotent on the agent)."""
        attempt_id = row["id"]
        if self.gangs.get(attempt_id) is None:  # a scheduler restart forgot it: learn it again
            first = self.store.one(
                "SELECT g.inventory FROM attempt_nodes n JOIN agents g ON g.name = n.agent_name "
                "WHERE n.attempt_id = ? AND n.node_rank = 0",
                (attempt_id,),
            )
            addr = types_pb2.Inventory.FromString(first["inventory"]).address if first else ""
            self.gangs.add(attempt_id, row["nodes"], addr, self.clock.monotonic() + self.config.prepare_timeout)
        gang = self.gangs.prepared(attempt_id, row["node_rank"], port)
        if gang is None:
            return
        if not gang.ports.get(0):
            log.error("gang_without_port", attempt_id=attempt_id)
            return
        order = agent_pb2.SchedulerMessage(
            start=agent_pb2.StartAttempt(attempt_id=attempt_id, master_addr=gang.master_addr, master_port=gang.ports[0])
        )
        if gang.started:  # a node still waiting missed the order (it reconnected): it alone gets it again
            if not waiting:
                return
            names = [row["agent_name"]]
        else:
            gang.started = True
            names = [
                n["agent_name"]
                for n in self.store.all("SELECT agent_name FROM attempt_nodes WHERE attempt_id = ?", (attempt_id,))
            ]
            log.info(
                "gang_started", attempt_id=attempt_id, nodes=gang.nodes, master=f"{gang.master_addr}:{gang.ports[0]}"
            )
        for name in names:
            session = self.sessions.get(name)
            if session is not None:
                session.send(order)

    def check_gangs(self) -> list[str]:
        """Release whole every gang whose nodes were not all prepared by the deadline: an infrastructure
        failure (requeued, no retry spent), the nodes that did prepare are stopped."""
        expired = self.gangs.expired(self.clock.monotonic())
        for attempt_id, missing in expired:
            with self.store.transaction() as conn:
                attempt = conn.execute("SELECT * FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
                if attempt is None or not AttemptState(attempt["state"]).live:
                    continue
                names = dict(
                    conn.execute(
                        "SELECT node_rank, agent_name FROM attempt_nodes WHERE attempt_id = ?", (attempt_id,)
                    ).fetchall()
                )
                late = ", ".join(f"node {r} ({names.get(r, '?')})" for r in missing)
                reason = f"gang not prepared within {self.config.prepare_timeout:g}s: {late} not ready"
                self._end_attempt(conn, attempt, AttemptState.LOST, -1, reason)
            log.warning("gang_expired", attempt_id=attempt_id, missing=missing)
        if expired:
            self.events_changed.notify()
            self.kick()
        return [attempt_id for attempt_id, _ in expired]

    def _watch_progress(self, attempt: sqlite3.Row, step: int) -> None:
        now = self.clock.monotonic()
        if not self.watchdog.tracks(attempt["id"]):
            run = self._run_row(attempt["run_id"])
            spec = types_pb2.RunSpec.FromString(run["spec"]) if run is not None else types_pb2.RunSpec()
            self.watchdog.track(attempt["id"], spec.hang_timeout.ToNanoseconds() / 1e9, now)
        self.watchdog.report(attempt["id"], step, now)

    def check_hangs(self) -> list[str]:
        """Stop attempts whose step has not advanced for their run's hang_timeout. The attempt ends FAILED
        (the agent reports it), so the run is retried while it has retries left, like a crash."""
        hung = self.watchdog.newly_hung(self.clock.monotonic())
        for attempt_id, progress in hung:
            nodes = self.store.all(
                "SELECT a.run_id, n.agent_name FROM attempts a JOIN attempt_nodes n ON n.attempt_id = a.id "
                "WHERE a.id = ?",
                (attempt_id,),
            )
            if not nodes:
                continue
            run_id = nodes[0]["run_id"]
            with self.store.transaction() as conn:
                run = conn.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
                self._event(conn, run_id, attempt_id, "hung", RunState(run["state"]), progress.reason)
            log.warning("attempt_hung", run_id=run_id, attempt_id=attempt_id, reason=progress.reason)
            for node in nodes:  # a disconnected agent gets the order again in its next Hello (_apply_status)
                self._send_cancel(node["agent_name"], attempt_id, progress.reason, AttemptState.FAILED)
        if hung:
            self.events_changed.notify()
        return [attempt_id for attempt_id, _ in hung]

    # ---------------------------------------------------------------- agents

    def agent_hello(self, hello: agent_pb2.Hello) -> AgentSession:
        """Register a (re)connected agent and reconcile the attempts it reports."""
        name = hello.name
        if not name or len(name) > 128 or not name.isprintable():
            raise invalid("hello.name must be 1 to 128 printable characters")
        for status in hello.attempts:  # refuse a bad Hello before anything changes
            check_status(status)
        old = self.sessions.pop(name, None)
        if old is not None:
            old.close()
        self._views.touch(name)  # the old session leaves placement's view now, even if what follows fails
        row = self.store.one("SELECT id FROM agents WHERE name = ?", (name,))
        agent_id = row["id"] if row else new_id("agent")
        now = self.clock.time()
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO agents (name, id, pool, labels, state, inventory, connected_at, last_seen) "
                "VALUES (?, ?, ?, ?, 'READY', ?, ?, ?) ON CONFLICT(name) DO UPDATE SET pool = excluded.pool, "
                "labels = excluded.labels, state = 'READY', inventory = excluded.inventory, "
                "connected_at = excluded.connected_at, last_seen = excluded.last_seen",
                (
                    name,
                    agent_id,
                    hello.pool or "onprem",
                    dumps(dict(hello.labels)),
                    hello.inventory.SerializeToString(),
                    now,
                    now,
                ),
            )
        session = AgentSession(
            name=name,
            agent_id=agent_id,
            pool=hello.pool or "onprem",
            labels=dict(hello.labels),
            inventory=hello.inventory,
            draining=hello.draining,
            preemptible=hello.preemptible,
        )
        self.sessions[name] = session
        self.last_seen[name] = self.clock.monotonic()
        try:
            self._reconcile_hello(session, hello)
        except BaseException:
            self.agent_disconnected(session)  # no half-registered session is left behind
            raise
        return session

    def cadence(self) -> Cadence:
        """The heartbeat cadence for the cluster as it is now (`cadence.cadence_for`)."""
        c = self.config
        return cadence_for(len(self.sessions), c.heartbeat_interval, c.heartbeat_timeout, c.heartbeat_max_rate)

    def rescale_heartbeats(self) -> int:
        """Tell the agents whose cadence is off (cadence.needs_telling) the current one; returns how many were told."""
        wanted = self.cadence()
        told = 0
        for session in self.sessions.values():
            if session.cadence is None or not needs_telling(session.cadence, wanted):
                continue
            self.timeouts[session.name] = timeout_after_change(session.cadence, wanted)
            session.cadence = wanted
            session.send(
                agent_pb2.SchedulerMessage(
                    cadence=agent_pb2.Cadence(
                        heartbeat_interval=duration(wanted.interval), heartbeat_timeout=duration(wanted.timeout)
                    )
                )
            )
            told += 1
        if told:
            log.info("heartbeat_cadence", agents=told, interval=wanted.interval, timeout=wanted.timeout)
        return told

    def _reconcile_hello(self, session: AgentSession, hello: agent_pb2.Hello) -> None:
        name = session.name
        session.cadence = cadence = self.cadence()
        self.timeouts[name] = cadence.timeout
        session.send(
            agent_pb2.SchedulerMessage(
                welcome=agent_pb2.Welcome(
                    agent_id=session.agent_id,
                    heartbeat_interval=duration(cadence.interval),
                    heartbeat_timeout=duration(cadence.timeout),
                )
            )
        )
        reported = {s.attempt_id for s in hello.attempts}
        with self.store.transaction() as conn:
            self._lose_nodes(conn, name, reported, f"agent {name} reconnected without it")
        self.events_changed.notify()
        for status in hello.attempts:
            self._apply_status(session, status, hello=True)
        log.info("agent_connected", agent=name, gpus=len(hello.inventory.gpus), attempts=len(reported))
        self.kick()

    def _alive(self, session: AgentSession) -> None:
        """A message on a live stream proves the agent alive; one on a replaced or reaped
        stream (its reader still draining) proves nothing."""
        if not session.closed:
            self.last_seen[session.name] = self.clock.monotonic()

    def agent_update(self, session: AgentSession, status: agent_pb2.AttemptStatus) -> None:
        self._alive(session)
        self._apply_status(session, status, hello=False)

    def agent_heartbeat(self, session: AgentSession, beat: agent_pb2.Heartbeat) -> None:
        """Liveness, inventory, draining; and the attempts it lists are reconciled like
        updates, so an end whose update was lost is still released."""
        self._alive(session)
        if session.cadence is not None and not session.closed:  # a beat on the new cadence: its grace is over
            self.timeouts[session.name] = session.cadence.timeout
        for status in beat.attempts:
            self._apply_status(session, status, hello=False)
        if beat.HasField("inventory"):
            session.inventory = beat.inventory
            self._views.touch(session.name)
        if beat.draining != session.draining:
            if beat.draining:
                log.info("agent_draining", agent=session.name)
            session.draining = beat.draining
            self._views.touch(session.name)

    def _drop_sessions(self) -> None:
        """A group commit failed: every agent reconnects and reconciles with what the store holds, and
        liveness starts over from the store (the batch may have declared agents lost, then rolled back)."""
        self._restart_liveness()
        for session in list(self.sessions.values()):
            session.abort()
        self.sessions.clear()
        self._views.touch_all()

    def agent_disconnected(self, session: AgentSession) -> None:
        """The stream ended. Liveness is the heartbeat's call, not the socket's: the agent
        keeps its attempts and has until the heartbeat timeout to come back."""
        session.close()
        if self.sessions.get(session.name) is session:
            del self.sessions[session.name]
            self._views.forget(session.name)
        log.info("agent_disconnected", agent=session.name)

    def list_agents(self, pool: str = "") -> list[types_pb2.Agent]:
        live: dict[str, list[sqlite3.Row]] = {}
        for row in self.store.all(f"SELECT n.* FROM attempt_nodes n WHERE {_HELD_SQL}"):
            live.setdefault(row["agent_name"], []).append(row)
        out = []
        sql = "SELECT * FROM agents" + (" WHERE pool = ?" if pool else "") + " ORDER BY name"
        for row in self.store.all(sql, (pool,) if pool else ()):
            session = self.sessions.get(row["name"])
            inventory = session.inventory if session else types_pb2.Inventory.FromString(row["inventory"])
            draining = session is not None and session.draining
            state = agentadmin.state_word(row["state"], session is not None, draining, row["admin_state"])
            held = live.get(row["name"], [])
            used = {u for n in held for u in json.loads(n["gpu_uuids"])}
            agent = types_pb2.Agent(
                id=row["id"],
                name=row["name"],
                pool=row["pool"],
                labels=json.loads(row["labels"] or "{}"),
                state=f"AGENT_STATE_{state}",
                inventory=inventory,
                attempt_ids=[n["attempt_id"] for n in held],
                gpus_free=sum(1 for g in inventory.gpus if g.uuid not in used),
                cpus_free=inventory.cpus - sum(n["cpus"] for n in held),
                preemptible=(session is not None and session.preemptible) or row["pool"] in self._views.spot_pools,
            )
            agent.connected_at.CopyFrom(ts(row["connected_at"]))
            agent.last_heartbeat.CopyFrom(ts(row["last_seen"]))
            out.append(agent)
        return out

    def check_liveness(self) -> list[str]:
        """Declare agents silent past the timeout lost and requeue their attempts."""
        now = self.clock.monotonic()
        default = self.config.heartbeat_timeout  # agents not heard from since a restart
        lost = [n for n, seen in self.last_seen.items() if now - seen > self.timeouts.get(n, default)]
        for name in lost:
            del self.last_seen[name]
            silent = self.timeouts.pop(name, default)
            with self.store.transaction() as conn:
                conn.execute(
                    "UPDATE agents SET state = 'LOST', last_seen = ? WHERE name = ?",
                    (self.clock.time(), name),
                )
                self._lose_nodes(conn, name, set(), f"agent {name} sent no heartbeat for {silent:g}s")
            session = self.sessions.pop(name, None)
            if session is not None:
                session.close()
            self._views.forget(name)
            log.warning("agent_lost", agent=name)
        if lost:
            self.events_changed.notify()
            self.kick()
        return lost

    # ---------------------------------------------------------------- logs

    def _line_time(self, line: types_pb2.LogLine) -> float:
        """The agent's time for a line when it is a plausible one, else the time it arrived."""
        now = self.clock.time()
        if not line.HasField("time"):
            return now
        try:
            when = line.time.ToNanoseconds() / 1e9
        except ValueError:
            return now
        return when if 0 < when < now + 86_400 else now

    def push_logs(self, agent_name: str, lines: Iterable[types_pb2.LogLine]) -> tuple[int, int]:
        """Store log lines (each LogLine one line or a batch of a rank's consecutive lines, LogLine.count),
        ignoring lines already stored; (lines stored, lines ignored). ABORTED for another agent's attempt;
        INVALID_ARGUMENT for a line the agent must not resend as it is: a rank its node does not run (or
        -1, -2: the agent's notes, metrics), seqs out of 1 .. 2**62, a batch whose count is wrong. The
        lines go to the log files (logstore.py), one index row per batch; lines over 64 Ki characters are cut."""
        from .logstore import MAX_SEQ, SPECIAL_RANKS, Batch  # (imported here: the engine's only use of it)

        batches = []
        for line in lines:
            owner = self._attempt_owner.get(line.attempt_id)
            if owner is None:
                found = self.store.all(
                    "SELECT a.run_id, a.number, a.state, n.agent_name, r.spec FROM attempts a "
                    "JOIN attempt_nodes n ON n.attempt_id = a.id JOIN runs r ON r.id = a.run_id "
                    "WHERE a.id = ? ORDER BY n.node_rank",
                    (line.attempt_id,),
                )
                if not found:
                    raise ApiError(grpc.StatusCode.ABORTED, f"attempt {line.attempt_id!r} is unknown")
                agents = [r["agent_name"] for r in found]
                spec = types_pb2.RunSpec.FromString(found[0]["spec"])
                owner = (found[0]["run_id"], found[0]["number"], frozenset(agents), self._ranks_of(spec, agents))
                if AttemptState(found[0]["state"]).live:  # ended attempts are not cached: no unbounded growth
                    self._attempt_owner[line.attempt_id] = owner
            if agent_name not in owner[2]:
                raise ApiError(grpc.StatusCode.ABORTED, f"attempt {line.attempt_id!r} is not {agent_name}'s")
            ranks = owner[3][agent_name]
            if line.rank not in ranks and line.rank not in SPECIAL_RANKS:
                raise invalid(
                    f"log line rank {line.rank}: {agent_name}'s node of attempt {line.attempt_id} runs ranks "
                    f"{ranks.start} to {ranks.stop - 1} (and -1, -2 for the agent's notes and metrics)"
                )
            count = max(1, line.count)
            if not 1 <= line.seq <= MAX_SEQ - count + 1:
                raise invalid(f"log line seq is {line.seq} (count {count}): seqs go from 1 to 2**62")
            if line.stream not in types_pb2.LogStream.values():
                raise invalid(f"log line stream {line.stream} is not a known stream")
            if line.count > 1 and (held := line.text.count("\n") + 1) != count:
                raise invalid(f"log batch of {count} lines holds {held}: its lines must be joined by newlines")
            batches.append(
                Batch(
                    run_id=owner[0],
                    attempt_id=line.attempt_id,
                    attempt_number=owner[1],
                    rank=line.rank,
                    source=agent_name if line.rank < 0 else "",  # each node numbers its agent's own lines
                    stream=int(line.stream),
                    first_seq=line.seq,
                    count=count,
                    text=line.text if line.count > 1 else line.text.replace("\n", " "),
                    time=self._line_time(line),
                )
            )
        if not batches:
            return 0, 0
        accepted, duplicates = self.store.logs.append(batches)
        self.logs_changed.notify()
        return accepted, duplicates

    @staticmethod
    def _ranks_of(spec: types_pb2.RunSpec, agents: list[str]) -> dict[str, range]:
        """The global ranks each agent's node runs, the agents given in node rank order: node r runs
        r * procs_per_node to (r + 1) * procs_per_node - 1 (as the agent numbers them)."""
        procs = spec.resources.procs_per_node or max(1, spec.resources.gpus)
        return {agent: range(node * procs, (node + 1) * procs) for node, agent in enumerate(agents)}

    # ---------------------------------------------------------------- placement

    def _spec(self, run_id: str, blob: bytes | None = None) -> types_pb2.RunSpec:
        """A run's spec, parsed once while it is queued or live (specs never change after submit)."""
        spec = self._specs.get(run_id)
        if spec is None:
            if blob is None:
                row = self.store.one("SELECT spec FROM runs WHERE id = ?", (run_id,))
                blob = row["spec"] if row is not None else b""
            spec = self._specs[run_id] = types_pb2.RunSpec.FromString(blob or b"")
        return spec

    def request_for(self, run_id: str, user: str, team: str, interruptions: int = 0) -> placement.RunRequest:
        """A queued run's placement request, built once (a pass over 20,000 queued runs built them all anew)."""
        req = self._requests.get(run_id)
        if req is None or req.interruptions != interruptions:
            req = snapshot.request(run_id, self._spec(run_id), user, team)
            if interruptions:
                after = self.config.spot_fallback_after
                req = replace(req, interruptions=interruptions, no_spot=0 < after <= interruptions)
            self._requests[run_id] = req
        return req

    def forget_spec(self, run_id: str) -> None:
        """The run ended or its spec changed: parse it again when it is next needed."""
        self._specs.pop(run_id, None)
        self._requests.pop(run_id, None)

    def _snapshot(self, live: snapshot.Live) -> tuple[dict[str, placement.AgentView], list[placement.AgentView]]:
        """The schedulable agents (connected, not draining or cordoned) with what their live nodes leave free;
        and the parked ones (cordoned, draining), whole: they take nothing new, and count for pending reasons."""
        used: dict[str, list[placement.NodePlacement]] = {}
        for attempt in live.running:
            for node in attempt.nodes:
                used.setdefault(node.agent_name, []).append(node)
        held = {name: tuple(nodes) for name, nodes in used.items()}
        return self._views.snapshot(self.sessions, held, self.unschedulable)

    def _live(self) -> snapshot.Live:
        rows = self.store.all(LIVE_NODES_SQL)
        specs = {r["run_id"]: self._spec(r["run_id"]) for r in rows}
        return snapshot.live_attempts(rows, specs, self.clock.time())

    def _quotas(self) -> Quotas:
        c = self.config
        return Quotas(user_gpus=c.quota_user_gpus, users=c.quota_users, teams=c.quota_teams)

    def _shares(self, now: float, live: snapshot.Live) -> dict[str, float]:
        """Each user's decayed usage, including what their running attempts have used so far (a user with
        long 64-GPU runs is not a light user until they end)."""
        half_life = self.config.fair_share_half_life
        shares = {user: u.now(now, half_life) for user, u in self.usage.items()}
        for user, gpu_seconds in live.used.items():
            shares[user] = shares.get(user, 0.0) + gpu_seconds
        return shares

    def place_once(self) -> int:
        """One pass over the queue: order it, plan, commit the placements, start the preemptions, and record
        why the rest wait. Returns how many runs were placed."""
        rows = self.store.all(
            "SELECT id, user, team, priority, created_at, pending_reason, interruptions FROM runs "
            "WHERE state = 'QUEUED'"
        )
        if not rows:
            self.queue_positions = {}
            return 0
        now = self.clock.time()
        by_id = {r["id"]: r for r in rows}
        entries = [queue.Entry(r["id"], r["user"], r["priority"] or 0, r["created_at"]) for r in rows]
        live = self._live()
        ordered = queue.order(entries, self._shares(now, live))
        specs = {e.run_id: self._spec(e.run_id) for e in ordered}
        requests = [
            self.request_for(e.run_id, e.user, by_id[e.run_id]["team"] or "", by_id[e.run_id]["interruptions"])
            for e in ordered
        ]
        free, parked = self._snapshot(live)
        plan = placement.plan(
            free,
            requests,
            running=live.running,
            now=now,
            quotas=self._quotas(),
            held=live.held,
            stopping=dict(self._stopping),
            parked=parked,
            index=self._fit_index,
        )
        started = self._commit_all(plan.placements, specs)
        placed = {p.run_id for p in plan.placements}
        self.queue_positions = {
            run_id: i for i, run_id in enumerate((e.run_id for e in ordered if e.run_id not in placed), 1)
        }
        for run_id, victims in plan.preempt:
            self._preempt(run_id, victims)
        changed = [(why, rid) for rid, why in plan.pending.items() if by_id[rid]["pending_reason"] != why]
        if changed:
            with self.store.transaction() as conn:
                conn.executemany("UPDATE runs SET pending_reason = ? WHERE id = ? AND state = 'QUEUED'", changed)
        return started

    def _preempt(self, for_run: str, victims: Iterable[str]) -> None:
        """Stop `victims` (checkpoint, then requeue without spending a retry) to make room for `for_run`."""
        reason = f"preempted for higher-priority run {for_run}"
        with self.store.transaction() as conn:
            for attempt_id in victims:
                attempt = conn.execute("SELECT run_id, state FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
                if attempt is None or not AttemptState(attempt["state"]).live:
                    continue
                self._stopping[attempt_id] = for_run
                run = conn.execute("SELECT state FROM runs WHERE id = ?", (attempt["run_id"],)).fetchone()
                self._event(conn, attempt["run_id"], attempt_id, "preempting", RunState(run["state"]), reason)
                self._cancel_nodes(conn, attempt_id, reason, AttemptState.PREEMPTED)
        log.info("preempting", for_run=for_run, victims=sorted(victims))
        self.events_changed.notify()

    def _commit_all(self, placements: list[placement.Placement], specs: Mapping[str, types_pb2.RunSpec]) -> int:
        """Record a pass's placements in one transaction (one fsync for all of them), each re-checked against
        fresh state; then send the assignments. Returns how many were recorded."""
        sends: list[Callable[[], None]] = []
        with self.store.transaction() as conn:
            for p in placements:
                send = self._commit(conn, p, specs[p.run_id])
                if send is not None:
                    sends.append(send)
        for send in sends:
            send()
        if sends:
            self.events_changed.notify()
        return len(sends)

    def _commit(
        self, conn: sqlite3.Connection, p: placement.Placement, spec: types_pb2.RunSpec
    ) -> Callable[[], None] | None:
        """Record one placement (every node of it), if it still holds; returns what sends its assignments."""
        sessions = [self.sessions.get(node.agent_name) for node in p.nodes]
        if any(s is None or s.closed for s in sessions):
            return None
        attempt_id = new_id("att")
        run = conn.execute("SELECT state, user FROM runs WHERE id = ?", (p.run_id,)).fetchone()
        if run is None or run["state"] != RunState.QUEUED.value:
            return None
        for node in p.nodes:
            held = conn.execute(
                f"SELECT n.gpu_uuids FROM attempt_nodes n WHERE n.agent_name = ? AND {_HELD_SQL}",
                (node.agent_name,),
            ).fetchall()
            if {u for r in held for u in json.loads(r["gpu_uuids"])} & set(node.gpu_uuids):
                return None
        number = conn.execute(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM attempts WHERE run_id = ?", (p.run_id,)
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO attempts (id, run_id, number, state, created_at) VALUES (?, ?, ?, 'ASSIGNED', ?)",
            (attempt_id, p.run_id, number, self.clock.time()),
        )
        conn.executemany(
            "INSERT INTO attempt_nodes (attempt_id, node_rank, agent_name, gpu_uuids, cpus, memory_bytes, state) "
            "VALUES (?, ?, ?, ?, ?, ?, 'ASSIGNED')",
            [
                (attempt_id, rank, n.agent_name, json.dumps(list(n.gpu_uuids)), n.cpus, n.memory_bytes)
                for rank, n in enumerate(p.nodes)
            ],
        )
        check_run_transition(p.run_id, RunState.QUEUED, RunState.STARTING)
        conn.execute("UPDATE runs SET state = 'STARTING', pending_reason = '' WHERE id = ?", (p.run_id,))
        where = ", ".join(n.agent_name for n in p.nodes)
        self._event(conn, p.run_id, attempt_id, "placed", RunState.STARTING, f"attempt {number} on {where}")
        names = frozenset(n.agent_name for n in p.nodes)
        self._attempt_owner[attempt_id] = (
            p.run_id,
            number,
            names,
            self._ranks_of(spec, [n.agent_name for n in p.nodes]),
        )
        gang = len(p.nodes) > 1
        master_addr = sessions[0].inventory.address if sessions[0] is not None else ""
        assignments = []
        for rank, node in enumerate(p.nodes):
            assignment = agent_pb2.Assignment(
                attempt_id=attempt_id,
                run_id=p.run_id,
                attempt_number=number,
                spec=spec,
                node_rank=rank,
                nodes=len(p.nodes),
                procs_per_node=spec.resources.procs_per_node or max(1, spec.resources.gpus),
                gpu_uuids=list(node.gpu_uuids),
                master_addr=master_addr if gang else "",
                user=run["user"],
                wait_for_start=gang,
            )
            if number > 1:  # (only the run's earlier attempts make checkpoints it resumes from)
                self._add_resume(assignment)
            assignments.append(agent_pb2.SchedulerMessage(assign=assignment))

        def send() -> None:
            if gang:
                deadline = self.clock.monotonic() + self.config.prepare_timeout
                self.gangs.add(attempt_id, len(p.nodes), master_addr, deadline)
            for session, message in zip(sessions, assignments, strict=True):
                assert session is not None  # noqa: S101 - checked above
                session.send(message)
            log.debug("run_placed", run_id=p.run_id, attempt_id=attempt_id, agents=sorted(names))

        return send

    def _add_resume(self, assignment: agent_pb2.Assignment) -> None:
        """The newest complete checkpoint of the run in the artifact store, for the new attempt to resume from."""
        checkpoint = artifacts.newest_checkpoint(self.store, assignment.run_id)
        if checkpoint is None:
            return
        assignment.resume_name = checkpoint.name
        assignment.resume_files.extend(checkpoint.files)
        assignment.resume_attempt_number = checkpoint.attempt_number
        assignment.resume_step = checkpoint.step

    # ---------------------------------------------------------------- loops

    def _gap(self) -> float:
        """The least time between passes: PASS_GAP, and at least as long as the last pass took, since a pass over a
        deep queue (20,000 runs: 0.2-0.3 s) holds the event loop, and back-to-back passes would starve the
        streams and every other call."""
        return max(PASS_GAP, self._pass_took)

    def _timed_pass(self) -> None:
        self._kick.clear()
        started = time.perf_counter()
        try:
            self.place_once()
        finally:
            self._pass_ended = time.perf_counter()
            self._pass_took = self._pass_ended - started

    def _pass_if_due(self) -> None:
        """The batcher's tail: a pass at the end of a batch when a change asked for one and the gap has passed,
        so a submit (or an end that frees GPUs) is placed in the commit that records it."""
        if self._kick.is_set() and time.perf_counter() - self._pass_ended >= self._gap():
            self._timed_pass()

    async def placement_loop(self) -> None:
        """A pass on every change (a submit, an end, an agent), at most one per gap: a burst of changes is served
        by one pass, not one pass each. Busy, the passes run as batches' tails (`_pass_if_due`); this loop
        covers a change no batch follows soon, and the periodic pass every placement_interval."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.config.placement_interval)
            await asyncio.sleep(self._gap())
            if not self._kick.is_set() and time.perf_counter() - self._pass_ended < self.config.placement_interval:
                continue  # a batch's tail has served it meanwhile
            try:
                await self.batcher.call(self._timed_pass)
            except Exception:  # a bug must not stop scheduling for everyone
                log.exception("placement_failed")

    def check_all(self) -> None:
        """The periodic checks: lost agents, hung attempts, gangs that never prepared, time limits, drains."""
        self.check_liveness()
        self.check_hangs()
        self.check_gangs()
        self.check_time_limits()
        agentadmin.check_drains(self)
        self.rescale_heartbeats()

    async def liveness_loop(self) -> None:
        period = max(0.05, min(1.0, self.config.heartbeat_interval / 2))
        while True:
            await asyncio.sleep(period)
            try:
                await self.batcher.call(self.check_all)
            except Exception:
                log.exception("liveness_check_failed")
