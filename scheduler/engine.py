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
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog

from gridlab.common import auth as tokens
from gridlab.common.config import SchedulerConfig
from gridlab.common.ids import new_id
from gridlab.common.timeutil import Clock, duration, ts
from gridlab.v1 import agent_pb2, types_pb2

from . import placement
from .auth import ADMIN, AGENT, ROLES, Principal
from .convert import run_pb
from .errors import ApiError, denied, invalid, not_found, precondition
from .state import (
    LIVE_ATTEMPT_STATES,
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

_LIVE_SQL = "(" + ",".join(f"'{s.value}'" for s in LIVE_ATTEMPT_STATES) + ")"
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
    """One connected Connect stream. Messages for the agent go through `outbox`."""

    name: str
    agent_id: str
    pool: str
    labels: dict[str, str]
    inventory: types_pb2.Inventory
    outbox: asyncio.Queue[agent_pb2.SchedulerMessage | None] = field(default_factory=asyncio.Queue)
    closed: bool = False
    draining: bool = False  # the agent is stopping: place nothing new on it

    def send(self, msg: agent_pb2.SchedulerMessage) -> None:
        if not self.closed:
            self.outbox.put_nowait(msg)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)


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
        self.events_changed = Notifier()
        self.logs_changed = Notifier()
        self._kick = asyncio.Event()
        self._token_cache: dict[str, Principal] = {}
        self._attempt_owner: dict[str, tuple[str, int, frozenset[str]]] = {}  # id -> run, number, its agents
        self.watchdog = Watchdog()
        # After a restart every agent the store thinks is ready gets a full timeout to
        # reconnect before it is declared lost.
        now = self.clock.monotonic()
        for row in store.all("SELECT name FROM agents WHERE state = 'READY'"):
            self.last_seen[row["name"]] = now

    # ---------------------------------------------------------------- tokens

    def bootstrap_tokens(self, state_dir: Path) -> None:
        """On first start, create an admin token and an agent join token in 0600 files."""
        for role, filename, user in (
            (ADMIN, ADMIN_TOKEN_FILE, "admin"),
            (AGENT, AGENT_TOKEN_FILE, "agent"),
        ):
            if self.store.one("SELECT 1 FROM tokens WHERE role = ? AND revoked = 0", (role,)):
                continue
            token = self.create_token(user, role)
            path = state_dir / filename
            tokens.write_secret(path, token)
            log.info("token_created", role=role, path=str(path))

    def create_token(self, user: str, role: str, team: str = "") -> str:
        if role not in ROLES:
            raise invalid(f"role {role!r} is not one of {', '.join(ROLES)}")
        if not user or len(user) > 128 or not user.isprintable():
            raise invalid("user must be 1 to 128 printable characters")
        token = tokens.new_token()
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO tokens (hash, user, role, team, created_at) VALUES (?, ?, ?, ?, ?)",
                (tokens.hash_token(token), user, role, team, self.clock.time()),
            )
        return token

    def lookup_token(self, token: str) -> Principal | None:
        digest = tokens.hash_token(token)
        if digest in self._token_cache:
            return self._token_cache[digest]
        row = self.store.one("SELECT user, role, team FROM tokens WHERE hash = ? AND revoked = 0", (digest,))
        if row is None:
            return None
        who = Principal(row["user"], row["role"], row["team"] or "")
        self._token_cache[digest] = who
        return who

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

    def visible_run(self, who: Principal, run_id: str) -> sqlite3.Row:
        """The run, if `who` may see it. Another user's run is NOT_FOUND, not hidden-but-there."""
        if not run_id:
            raise invalid("run_id is empty")
        row = self._run_row(run_id)
        if row is None or (not who.admin and row["user"] != who.user):
            raise not_found(f"no run {run_id!r}")
        return row

    def run_message(self, run_id: str) -> types_pb2.Run:
        row = self._run_row(run_id)
        assert row is not None  # noqa: S101 - callers pass ids they just read
        return run_pb(self.store, row)

    def kick(self) -> None:
        self._kick.set()

    # ---------------------------------------------------------------- runs

    def submit(self, who: Principal, spec: types_pb2.RunSpec, idempotency_key: str) -> tuple[str, bool]:
        """Validate and queue a run; returns (run id, whether the key matched an earlier one)."""
        try:
            normalize(spec)
        except SpecError as exc:
            raise invalid(str(exc)) from None
        if len(idempotency_key) > 200:
            raise invalid("idempotency_key is longer than 200 characters")
        if idempotency_key:
            row = self.store.one(
                "SELECT id FROM runs WHERE user = ? AND idempotency_key = ?",
                (who.user, idempotency_key),
            )
            if row is not None:
                return str(row["id"]), True
        run_id = new_id("run")
        now = self.clock.time()
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO runs (id, user, team, name, spec, state, priority, max_retries, "
                "idempotency_key, created_at, pending_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                ),
            )
            self._event(conn, run_id, "", "submitted", RunState.QUEUED, f"submitted by {who.user}")
        log.info("run_submitted", run_id=run_id, gpus=spec.resources.gpus, command=spec.command[0])
        self.events_changed.notify()
        self.kick()
        return run_id, False

    def list_runs(
        self, who: Principal, states: Iterable[str], user: str, limit: int, page_token: str
    ) -> tuple[list[types_pb2.Run], str]:
        if limit < 0:
            raise invalid(f"limit is {limit}: it must be 0 (default 100) or more")
        limit = min(limit or 100, 1000)
        where, params = [], []
        if user and user != who.user and not who.admin:
            raise denied("only an admin may list another user's runs")
        if user or not who.admin:
            where.append("user = ?")
            params.append(user or who.user)
        state_list = list(states)
        if state_list:
            where.append("state IN (" + ",".join("?" * len(state_list)) + ")")
            params.extend(state_list)
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
        runs = [run_pb(self.store, r) for r in rows]
        return runs, (rows[-1]["id"] if more else "")

    def cancel(self, who: Principal, run_id: str, grace: float | None, reason: str) -> None:
        row = self.visible_run(who, run_id)
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
            self.events_changed.notify()
            return
        if not row["cancel_requested"]:
            with self.store.transaction() as conn:
                conn.execute("UPDATE runs SET cancel_requested = 1, cancel_grace = ? WHERE id = ?", (grace, run_id))
                self._event(conn, run_id, "", "cancel_requested", state, message)
            self.events_changed.notify()
        for attempt in self.store.all(
            f"SELECT a.id, n.agent_name FROM attempts a JOIN attempt_nodes n ON n.attempt_id = a.id "
            f"WHERE a.run_id = ? AND a.state IN {_LIVE_SQL}",
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
    ) -> RunState:
        """Record the end of a live attempt and move its run on. Inside a transaction."""
        check_attempt_transition(attempt["id"], AttemptState(attempt["state"]), state)
        self._attempt_owner.pop(attempt["id"], None)
        self.watchdog.forget(attempt["id"])
        now = self.clock.time()
        conn.execute(
            "UPDATE attempts SET state = ?, exit_code = ?, reason = ?, finished_at = ? WHERE id = ?",
            (state.value, exit_code, reason, now, attempt["id"]),
        )
        run = conn.execute("SELECT * FROM runs WHERE id = ?", (attempt["run_id"],)).fetchone()
        view = RunView(
            id=run["id"],
            state=RunState(run["state"]),
            retries_used=run["retries_used"],
            max_retries=run["max_retries"],
            cancel_requested=bool(run["cancel_requested"]),
        )
        outcome = attempt_ended(view, state, exit_code, reason, permanent=permanent)
        check_run_transition(run["id"], view.state, outcome.state)
        ended_by_exit = state in (AttemptState.SUCCEEDED, AttemptState.FAILED)
        conn.execute(
            "UPDATE runs SET state = ?, message = ?, exit_code = ?, retries_used = retries_used + ?, "
            "finished_at = ?, pending_reason = ? WHERE id = ?",
            (
                outcome.state.value,
                outcome.message,
                exit_code if ended_by_exit else run["exit_code"],
                1 if outcome.spend_retry else 0,
                now if outcome.state.terminal else None,
                "Requeued: waiting for the scheduler's next pass" if outcome.requeue else "",
                run["id"],
            ),
        )
        self._event(conn, run["id"], attempt["id"], outcome.kind, outcome.state, outcome.message)
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

    def _attempt_rows(self, agent_name: str) -> list[sqlite3.Row]:
        return self.store.all(
            f"SELECT a.* FROM attempts a JOIN attempt_nodes n ON n.attempt_id = a.id "
            f"WHERE n.agent_name = ? AND a.state IN {_LIVE_SQL}",
            (agent_name,),
        )

    def _apply_status(self, session: AgentSession, status: agent_pb2.AttemptStatus, *, hello: bool) -> None:
        """Reconcile what an agent says about one attempt with what the store holds.

        Replies go to the agent's current session: `session` may be an older stream whose
        reader is still draining after the agent reconnected."""
        reported = check_status(status)
        session = self.sessions.get(session.name, session)
        release = agent_pb2.SchedulerMessage(release=agent_pb2.ReleaseAttempt(attempt_id=status.attempt_id))
        reported_end = not reported.live
        row = self.store.one(
            "SELECT a.*, n.agent_name FROM attempts a JOIN attempt_nodes n ON n.attempt_id = a.id "
            "WHERE a.id = ? AND n.agent_name = ?",
            (status.attempt_id, session.name),
        )
        if row is None or not AttemptState(row["state"]).live:
            # Unknown to us, another agent's, or already ended here (e.g. declared lost
            # and requeued while the agent was away): it must not keep running.
            if reported_end:
                session.send(release)
            else:
                why = "unknown to the scheduler" if row is None else f"already {row['state']} on the scheduler"
                log.warning("stale_attempt", attempt_id=status.attempt_id, agent=session.name, why=why)
                self._send_cancel(session.name, status.attempt_id, f"attempt {why}", AttemptState.FAILED)
            return
        if reported_end:
            with self.store.transaction() as conn:
                self._end_attempt(
                    conn, row, reported, status.exit_code, status.message[:4096], permanent=status.permanent
                )
            session.send(release)
            self.events_changed.notify()
            self.logs_changed.notify()
            self.kick()
            return
        if reported is AttemptState.RUNNING and status.ranks_exited:  # only its last logs are on the way
            nodes = self.store.one("SELECT COUNT(*) AS n FROM attempt_nodes WHERE attempt_id = ?", (row["id"],))
            self.watchdog.ranks_exited(row["id"], session.name, nodes["n"] if nodes else 1, self.clock.monotonic())
        elif reported is AttemptState.RUNNING:
            self._watch_progress(row, status.last_step)
        new, old = reported, AttemptState(row["state"])
        if new is AttemptState.RUNNING and old is not AttemptState.RUNNING:  # noqa: SIM102
            with self.store.transaction() as conn:
                check_attempt_transition(row["id"], old, new)
                now = self.clock.time()
                conn.execute(
                    "UPDATE attempts SET state = ?, started_at = ? WHERE id = ?",
                    (new.value, now, row["id"]),
                )
                run = conn.execute("SELECT state FROM runs WHERE id = ?", (row["run_id"],)).fetchone()
                if run["state"] == RunState.STARTING.value:
                    check_run_transition(row["run_id"], RunState.STARTING, RunState.RUNNING)
                    conn.execute(
                        "UPDATE runs SET state = ?, started_at = COALESCE(started_at, ?) WHERE id = ?",
                        (RunState.RUNNING.value, now, row["run_id"]),
                    )
                    self._event(
                        conn,
                        row["run_id"],
                        row["id"],
                        "running",
                        RunState.RUNNING,
                        f"running on {session.name}",
                    )
            self.events_changed.notify()
        if hello:
            run = self._run_row(row["run_id"])
            if run is not None and run["cancel_requested"]:
                self._send_cancel(
                    session.name, row["id"], "cancelled on request", AttemptState.CANCELLED, run["cancel_grace"]
                )
            elif hung := self.watchdog.stop_reason(row["id"]):
                self._send_cancel(session.name, row["id"], hung, AttemptState.FAILED)

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
        )
        self.sessions[name] = session
        self.last_seen[name] = self.clock.monotonic()
        try:
            self._reconcile_hello(session, hello)
        except BaseException:
            self.agent_disconnected(session)  # no half-registered session is left behind
            raise
        return session

    def _reconcile_hello(self, session: AgentSession, hello: agent_pb2.Hello) -> None:
        name = session.name
        session.send(
            agent_pb2.SchedulerMessage(
                welcome=agent_pb2.Welcome(
                    agent_id=session.agent_id,
                    heartbeat_interval=duration(self.config.heartbeat_interval),
                    heartbeat_timeout=duration(self.config.heartbeat_timeout),
                )
            )
        )
        reported = {s.attempt_id for s in hello.attempts}
        missing = [a for a in self._attempt_rows(name) if a["id"] not in reported]
        if missing:
            with self.store.transaction() as conn:
                for attempt in missing:
                    self._end_attempt(conn, attempt, AttemptState.LOST, -1, f"agent {name} reconnected without it")
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
        for status in beat.attempts:
            self._apply_status(session, status, hello=False)
        if beat.HasField("inventory"):
            session.inventory = beat.inventory
        if beat.draining and not session.draining:
            log.info("agent_draining", agent=session.name)
        session.draining = beat.draining

    def agent_disconnected(self, session: AgentSession) -> None:
        """The stream ended. Liveness is the heartbeat's call, not the socket's: the agent
        keeps its attempts and has until the heartbeat timeout to come back."""
        session.close()
        if self.sessions.get(session.name) is session:
            del self.sessions[session.name]
        log.info("agent_disconnected", agent=session.name)

    def list_agents(self, pool: str = "") -> list[types_pb2.Agent]:
        live: dict[str, list[sqlite3.Row]] = {}
        for row in self.store.all(
            f"SELECT n.*, a.state FROM attempt_nodes n JOIN attempts a ON a.id = n.attempt_id "
            f"WHERE a.state IN {_LIVE_SQL}"
        ):
            live.setdefault(row["agent_name"], []).append(row)
        out = []
        sql = "SELECT * FROM agents" + (" WHERE pool = ?" if pool else "") + " ORDER BY name"
        for row in self.store.all(sql, (pool,) if pool else ()):
            session = self.sessions.get(row["name"])
            inventory = session.inventory if session else types_pb2.Inventory.FromString(row["inventory"])
            state = row["state"] if session or row["state"] != "READY" else "OFFLINE"
            if session is not None and session.draining:
                state = "DRAINING"
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
            )
            agent.connected_at.CopyFrom(ts(row["connected_at"]))
            agent.last_heartbeat.CopyFrom(ts(row["last_seen"]))
            out.append(agent)
        return out

    def check_liveness(self) -> list[str]:
        """Declare agents silent past the timeout lost and requeue their attempts."""
        now = self.clock.monotonic()
        lost = [n for n, seen in self.last_seen.items() if now - seen > self.config.heartbeat_timeout]
        for name in lost:
            del self.last_seen[name]
            silent = self.config.heartbeat_timeout
            with self.store.transaction() as conn:
                conn.execute(
                    "UPDATE agents SET state = 'LOST', last_seen = ? WHERE name = ?",
                    (self.clock.time(), name),
                )
                for attempt in self._attempt_rows(name):
                    self._end_attempt(
                        conn,
                        attempt,
                        AttemptState.LOST,
                        -1,
                        f"agent {name} sent no heartbeat for {silent:g}s",
                    )
            session = self.sessions.pop(name, None)
            if session is not None:
                session.close()
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
        """Store log lines, ignoring ones already stored. ABORTED for another agent's attempt."""
        rows = []
        for line in lines:
            owner = self._attempt_owner.get(line.attempt_id)
            if owner is None:
                found = self.store.all(
                    "SELECT a.run_id, a.number, a.state, n.agent_name FROM attempts a "
                    "JOIN attempt_nodes n ON n.attempt_id = a.id WHERE a.id = ?",
                    (line.attempt_id,),
                )
                if not found:
                    raise ApiError(grpc.StatusCode.ABORTED, f"attempt {line.attempt_id!r} is unknown")
                owner = (found[0]["run_id"], found[0]["number"], frozenset(r["agent_name"] for r in found))
                if AttemptState(found[0]["state"]).live:  # ended attempts are not cached: no unbounded growth
                    self._attempt_owner[line.attempt_id] = owner
            if agent_name not in owner[2]:
                raise ApiError(grpc.StatusCode.ABORTED, f"attempt {line.attempt_id!r} is not {agent_name}'s")
            if line.seq < 1:
                raise invalid(f"log line seq is {line.seq}: sequence numbers start at 1")
            if line.stream not in types_pb2.LogStream.values():
                raise invalid(f"log line stream {line.stream} is not a known stream")
            when = self._line_time(line)
            rows.append(
                (
                    owner[0],
                    line.attempt_id,
                    owner[1],
                    line.rank,
                    line.seq,
                    int(line.stream),
                    line.text,
                    when,
                )
            )
        if not rows:
            return 0, 0
        with self.store.transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO logs (run_id, attempt_id, attempt_number, rank, seq, stream, text, time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            accepted = conn.total_changes - before
        self.logs_changed.notify()
        return accepted, len(rows) - accepted

    # ---------------------------------------------------------------- placement

    def _snapshot(self) -> list[placement.AgentView]:
        used_gpus: dict[str, set[str]] = {}
        used_cpus: dict[str, float] = {}
        used_mem: dict[str, int] = {}
        for row in self.store.all(
            f"SELECT n.agent_name, n.gpu_uuids, n.cpus, n.memory_bytes FROM attempt_nodes n "
            f"JOIN attempts a ON a.id = n.attempt_id WHERE a.state IN {_LIVE_SQL}"
        ):
            name = row["agent_name"]
            used_gpus.setdefault(name, set()).update(json.loads(row["gpu_uuids"]))
            used_cpus[name] = used_cpus.get(name, 0.0) + row["cpus"]
            used_mem[name] = used_mem.get(name, 0) + (row["memory_bytes"] or 0)
        views = []
        for s in self.sessions.values():
            if s.draining:
                continue
            inv = s.inventory
            gpus = tuple(placement.GpuView(g.uuid, g.model, g.memory_total_bytes) for g in inv.gpus)
            views.append(
                placement.AgentView(
                    name=s.name,
                    pool=s.pool,
                    labels=tuple(sorted(s.labels.items())),
                    gpus=gpus,
                    free_gpus=frozenset(g.uuid for g in gpus) - used_gpus.get(s.name, set()),
                    cpus_total=inv.cpus,
                    cpus_free=inv.cpus - used_cpus.get(s.name, 0.0),
                    memory_total=inv.memory_bytes,
                    memory_free=inv.memory_bytes - used_mem.get(s.name, 0),
                )
            )
        return views

    def place_once(self) -> int:
        """One pass over the queue: plan, then commit each placement. Returns how many started."""
        rows = self.store.all(
            "SELECT id, spec, pending_reason FROM runs WHERE state = 'QUEUED' ORDER BY priority DESC, created_at, id"
        )
        if not rows:
            return 0
        specs = {r["id"]: types_pb2.RunSpec.FromString(r["spec"]) for r in rows}
        queue = [
            placement.RunRequest(
                run_id=run_id,
                gpus=spec.resources.gpus,
                cpus=spec.resources.cpus,
                memory_bytes=spec.resources.memory_bytes,
                nodes=spec.resources.nodes,
                pool=spec.pool,
                labels=tuple(sorted(spec.labels.items())),
                gpu_types=tuple(spec.resources.gpu_types),
                min_gpu_memory_bytes=spec.resources.min_gpu_memory_bytes,
            )
            for run_id, spec in specs.items()
        ]
        plan = placement.plan(self._snapshot(), queue)
        started = sum(1 for p in plan.placements if self._commit(p, specs[p.run_id]))
        old_reasons = {r["id"]: r["pending_reason"] for r in rows}
        changed = [(why, rid) for rid, why in plan.pending.items() if old_reasons.get(rid) != why]
        if changed:
            with self.store.transaction() as conn:
                conn.executemany("UPDATE runs SET pending_reason = ? WHERE id = ? AND state = 'QUEUED'", changed)
        return started

    def _commit(self, p: placement.Placement, spec: types_pb2.RunSpec) -> bool:
        """Record a placement in one transaction, re-checking it against fresh state."""
        session = self.sessions.get(p.agent_name)
        if session is None:
            return False
        attempt_id = new_id("att")
        with self.store.transaction() as conn:
            run = conn.execute("SELECT state, user FROM runs WHERE id = ?", (p.run_id,)).fetchone()
            if run is None or run["state"] != RunState.QUEUED.value:
                return False
            held = conn.execute(
                f"SELECT n.gpu_uuids FROM attempt_nodes n JOIN attempts a ON a.id = n.attempt_id "
                f"WHERE n.agent_name = ? AND a.state IN {_LIVE_SQL}",
                (p.agent_name,),
            ).fetchall()
            taken = {u for r in held for u in json.loads(r["gpu_uuids"])}
            if taken & set(p.gpu_uuids):
                return False
            number = conn.execute(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM attempts WHERE run_id = ?", (p.run_id,)
            ).fetchone()[0]
            now = self.clock.time()
            conn.execute(
                "INSERT INTO attempts (id, run_id, number, state, created_at) VALUES (?, ?, ?, 'ASSIGNED', ?)",
                (attempt_id, p.run_id, number, now),
            )
            conn.execute(
                "INSERT INTO attempt_nodes (attempt_id, node_rank, agent_name, gpu_uuids, cpus, memory_bytes) "
                "VALUES (?, 0, ?, ?, ?, ?)",
                (attempt_id, p.agent_name, json.dumps(list(p.gpu_uuids)), p.cpus, p.memory_bytes),
            )
            check_run_transition(p.run_id, RunState.QUEUED, RunState.STARTING)
            conn.execute("UPDATE runs SET state = 'STARTING', pending_reason = '' WHERE id = ?", (p.run_id,))
            self._event(
                conn,
                p.run_id,
                attempt_id,
                "placed",
                RunState.STARTING,
                f"attempt {number} on {p.agent_name}",
            )
        self._attempt_owner[attempt_id] = (p.run_id, number, frozenset({p.agent_name}))
        session.send(
            agent_pb2.SchedulerMessage(
                assign=agent_pb2.Assignment(
                    attempt_id=attempt_id,
                    run_id=p.run_id,
                    attempt_number=number,
                    spec=spec,
                    node_rank=0,
                    nodes=1,
                    procs_per_node=spec.resources.procs_per_node or 1,
                    gpu_uuids=list(p.gpu_uuids),
                    user=run["user"],
                )
            )
        )
        log.info("run_placed", run_id=p.run_id, attempt_id=attempt_id, agent=p.agent_name)
        self.events_changed.notify()
        return True

    # ---------------------------------------------------------------- loops

    async def placement_loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.config.placement_interval)
            self._kick.clear()
            try:
                self.place_once()
            except Exception:  # a bug must not stop scheduling for everyone
                log.exception("placement_failed")

    async def liveness_loop(self) -> None:
        period = max(0.05, min(1.0, self.config.heartbeat_interval / 2))
        while True:
            await asyncio.sleep(period)
            try:
                self.check_liveness()
                self.check_hangs()
            except Exception:
                log.exception("liveness_check_failed")
