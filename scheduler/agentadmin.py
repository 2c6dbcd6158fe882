"""Cordon, drain and uncordon: an admin's say over which agents take new work.

```
            cordon                     drain [deadline]
  normal ----------> CORDONED ------------------------> DRAINING --- deadline passes ---> its live
    ^                   |   ^          cordon              |          attempts get a cancel (final
    |     uncordon      |   '------------------------------'          state PREEMPTED), once per
    '-------------------+------------- uncordon -----------'          agent connection; the runs
                                                                       requeue, no retry spent
```

Both CORDONED and DRAINING place nothing new on the agent (the engine skips the names in
`engine.unschedulable`); a drain also empties it: what runs there finishes, or is preempted when
the deadline passes. The admin's choice lives in the `agents` table's `admin_state`,
`admin_reason` and `drain_deadline` columns (schema 6), apart from `state`, which says whether
the agent is connected and which the engine rewrites on every (re)connect: each column has one
owner, so a reconnect never undoes a cordon, and an uncordon never claims an absent agent is READY.

Plain functions over the engine, as its other decisions are pure modules: `set_agent_state`
for the API, `check_drains` for the liveness loop, `load_unschedulable` and `state_word` for
the engine's start and `list_agents`. Deadlines are wall-clock times, so a drain keeps its
deadline across a scheduler restart.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from gridlab.v1 import types_pb2

from .auth import Principal
from .errors import denied, invalid, not_found
from .state import LIVE_STATES_SQL, AttemptState, RunState

if TYPE_CHECKING:
    from .engine import AgentSession, Engine
    from .store import Store

log = structlog.get_logger("gridlab.scheduler.agentadmin")

CORDON, DRAIN, UNCORDON = "cordon", "drain", "uncordon"
ACTIONS = (CORDON, DRAIN, UNCORDON)
CORDONED, DRAINING = "CORDONED", "DRAINING"  # admin_state values (NULL: normal)
MAX_DEADLINE = 365 * 86_400.0  # seconds a drain may wait before it preempts, at most
MAX_REASON = 1024


@dataclass
class _Drains:
    """What one engine remembers between liveness ticks: drain deadlines (a copy of the column, so a
    tick with none due reads nothing from SQLite), the preemption orders already sent (attempt id ->
    (agent, the session that got it): an agent that reconnects gets the order again, once), and the
    agents past their deadline found empty (nothing new is placed there, so they stay empty)."""

    deadlines: dict[str, float] = field(default_factory=dict)
    sent: dict[str, tuple[str, AgentSession]] = field(default_factory=dict)
    emptied: set[str] = field(default_factory=set)

    def forget_agent(self, name: str) -> None:
        self.deadlines.pop(name, None)
        self.emptied.discard(name)
        for attempt_id in [a for a, (agent, _) in self.sent.items() if agent == name]:
            del self.sent[attempt_id]


_drains: weakref.WeakKeyDictionary[Engine, _Drains] = weakref.WeakKeyDictionary()


def _state(engine: Engine) -> _Drains:
    drains = _drains.get(engine)
    if drains is None:
        drains = _Drains()
        for row in engine.store.all(
            "SELECT name, drain_deadline FROM agents WHERE admin_state = ? AND drain_deadline IS NOT NULL",
            (DRAINING,),
        ):
            drains.deadlines[row["name"]] = float(row["drain_deadline"])
        _drains[engine] = drains
    return drains


def load_unschedulable(store: Store) -> set[str]:
    """Names of the agents an admin cordoned or is draining, for `Engine.unschedulable` at start."""
    return {
        row["name"] for row in store.all("SELECT name FROM agents WHERE admin_state IN (?, ?)", (CORDONED, DRAINING))
    }


def state_word(row_state: str, connected: bool, self_draining: bool, admin_state: str | None) -> str:
    """The AgentState word `ListAgents` shows: LOST wins (an alarm), then the admin's CORDONED or
    DRAINING (also while the agent is away: it was likely cordoned for that), then the agent's own
    draining (it is shutting down), then READY when connected, else OFFLINE or the stored word."""
    if row_state == "LOST":
        return "LOST"
    if admin_state in (CORDONED, DRAINING):
        return admin_state
    if connected and self_draining:
        return DRAINING
    if connected:
        return row_state
    return "OFFLINE" if row_state == "READY" else row_state


def parse_action(word: str) -> str:
    """ "cordon", "DRAIN", "AGENT_ACTION_UNCORDON" as the action word, or INVALID_ARGUMENT."""
    action = word.strip().lower().removeprefix("agent_action_")
    if action not in ACTIONS:
        raise invalid(f"action {word!r} is not one of {', '.join(ACTIONS)}")
    return action


def _agent_message(engine: Engine, name: str, pool: str) -> types_pb2.Agent:
    row = engine.store.one("SELECT state, admin_state FROM agents WHERE name = ?", (name,))
    for agent in engine.list_agents(pool):
        if agent.name == name:
            session = engine.sessions.get(name)
            connected = session is not None and not session.closed
            draining = session is not None and session.draining
            word = state_word(row["state"] if row else "", connected, draining, row["admin_state"] if row else None)
            agent.state = getattr(types_pb2, f"AGENT_STATE_{word}", types_pb2.AGENT_STATE_UNSPECIFIED)
            return agent
    raise not_found(f"no agent {name!r}")  # pragma: no cover - it was read just before


def set_agent_state(
    engine: Engine,
    who: Principal,
    name: str,
    action: str,
    deadline: float | None = None,
    reason: str = "",
) -> types_pb2.Agent:
    """Cordon, drain or uncordon the agent `name`; returns its Agent message (`drain_deadline` says when
    a drain preempts what is left).

    `deadline` (seconds from now, drain only): unset waits for the attempts to finish, 0 preempts them
    at once. Draining again sets a new deadline (or none); cordoning a draining agent keeps its attempts
    running with no deadline. PERMISSION_DENIED for a non-admin, NOT_FOUND for an agent the scheduler
    never saw, INVALID_ARGUMENT for a bad action, deadline or reason.
    """
    if not who.admin:
        raise denied("only an admin may cordon, drain or uncordon an agent")
    action = parse_action(action)
    if not name or len(name) > 128:
        raise invalid("name must be 1 to 128 characters: the agent's name, as `schedctl agents` lists it")
    if deadline is not None:
        if action != DRAIN:
            raise invalid(f"deadline is for drain only, not {action}")
        if not math.isfinite(deadline) or not 0 <= deadline <= MAX_DEADLINE:
            raise invalid(
                f"deadline is {deadline:g}s: it must be between 0 (preempt at once) and {MAX_DEADLINE:g}s (365 days)"
            )
    if len(reason) > MAX_REASON:
        raise invalid(f"reason is {len(reason)} characters; the limit is {MAX_REASON}")
    if not reason.isprintable():
        raise invalid("reason contains a control character (a newline?): give one line of text")
    row = engine.store.one("SELECT name, pool FROM agents WHERE name = ?", (name,))
    if row is None:
        raise not_found(f"no agent {name!r}: `schedctl agents` lists the agents the scheduler knows")

    drains = _state(engine)
    due: float | None = None
    if action == UNCORDON:
        admin_state = None
    else:
        admin_state = CORDONED if action == CORDON else DRAINING
        if deadline is not None:
            due = engine.clock.time() + deadline
    with engine.store.transaction() as conn:
        conn.execute(
            "UPDATE agents SET admin_state = ?, admin_reason = ?, drain_deadline = ? WHERE name = ?",
            (admin_state, (reason or None) if admin_state else None, due, name),
        )
    drains.forget_agent(name)  # orders already sent stay sent: those attempts are stopping anyway
    if due is not None:
        drains.deadlines[name] = due
    if admin_state is None:
        engine.unschedulable.discard(name)
        engine.kick()  # queued runs may fit there now
    else:
        engine.unschedulable.add(name)
    event = {CORDON: "agent_cordoned", DRAIN: "agent_draining", UNCORDON: "agent_uncordoned"}[action]
    log.info(event, agent=name, by=who.user, reason=reason, deadline=deadline)
    if due is not None and due <= engine.clock.time():
        check_drains(engine)
    return _agent_message(engine, name, row["pool"])


def check_drains(engine: Engine) -> list[str]:
    """For each draining agent whose deadline has passed, order every live attempt on it stopped with
    final state PREEMPTED (its run requeues without spending a retry, and resumes from its checkpoint);
    returns the attempt ids ordered now. Each order goes once to each connection of the agent: an agent
    that is away gets it when it is back (if it never comes back, liveness requeues its attempts). For a
    gang, the node on this agent is stopped; the engine then stops the others (the first bad end wins).
    Cheap: no SQL unless a deadline has passed on an agent not yet empty. Called from the engine's
    liveness loop."""
    drains = _state(engine)
    if not drains.deadlines:
        return []
    now = engine.clock.time()
    ordered: list[str] = []
    for name, due in sorted(drains.deadlines.items()):
        if due > now or name in drains.emptied:
            continue
        rows = engine.store.all(
            f"SELECT a.id, a.run_id FROM attempts a JOIN attempt_nodes n ON n.attempt_id = a.id "
            f"WHERE n.agent_name = ? AND a.state IN {LIVE_STATES_SQL} AND n.state IN {LIVE_STATES_SQL}",
            (name,),
        )
        live = {r["id"] for r in rows}
        if not live:
            drains.emptied.add(name)
        for attempt_id in [a for a, (agent, _) in drains.sent.items() if agent == name and a not in live]:
            del drains.sent[attempt_id]  # it ended: nothing more to remember
        session = engine.sessions.get(name)
        if session is None or session.closed:
            continue  # ordered when it is back
        fresh = [r for r in rows if (sent := drains.sent.get(r["id"])) is None or sent[1] is not session]
        if not fresh:
            continue
        why = engine.store.one("SELECT admin_reason FROM agents WHERE name = ?", (name,))
        reason = f"agent {name} drained: deadline passed"
        if why is not None and why["admin_reason"]:
            reason += f" ({why['admin_reason']})"
        with engine.store.transaction() as conn:
            for r in fresh:
                run = conn.execute("SELECT state FROM runs WHERE id = ?", (r["run_id"],)).fetchone()
                engine._event(conn, r["run_id"], r["id"], "preempting", RunState(run["state"]), reason)
        for r in fresh:
            engine._send_cancel(name, r["id"], reason, AttemptState.PREEMPTED)
            drains.sent[r["id"]] = (name, session)
            ordered.append(r["id"])
        log.warning("drain_deadline_passed", agent=name, attempts=[r["id"] for r in fresh])
    if ordered:
        engine.events_changed.notify()
    return ordered


def drain_deadline(engine: Engine, name: str) -> float | None:
    """When the drain of `name` preempts what is left on it (epoch seconds), or None."""
    return _state(engine).deadlines.get(name)
