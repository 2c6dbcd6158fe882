"""What `schedctl` needs beyond submit and cancel: a run's priority and events, tokens, and who am I.

Plain functions over the engine, as `agentadmin` is, so the engine keeps only what placement and the
agents need. Roles are checked twice: the interceptor's table refuses the call (`auth.METHOD_ROLES`),
and the functions that act for an admin check again, so a caller that skips the interceptor (a test,
a future servicer) cannot act beyond its role.

Tokens are named by `token_id`: the first 16 hex digits of the stored SHA-256 of the secret. That is
enough to tell tokens apart and to revoke one, and useless for calling with: the secret itself is
only ever in CreateToken's one reply.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import sqlite3
from typing import TYPE_CHECKING

import structlog

from gridlab import __version__
from gridlab.common import auth as tokens
from gridlab.common.timeutil import ts
from gridlab.v1 import types_pb2
from gridlab.v1.scheduler_pb2 import TokenInfo

from .auth import Principal
from .convert import PAGE_BYTES, event_pb
from .errors import denied, invalid, not_found, precondition
from .state import RunState
from .validate import MAX_PRIORITY

if TYPE_CHECKING:
    from .engine import Engine

log = structlog.get_logger("gridlab.scheduler.runadmin")

TOKEN_ID_CHARS = 16  # hex digits of the hash that name a token
MIN_TOKEN_PREFIX = 8  # the shortest prefix RevokeToken takes: short ones match too much by accident
_HEX = re.compile(r"^[0-9a-f]+$")


@functools.cache
def server_version() -> str:
    """The installed gridlab's version (the distribution's metadata), else the package's own."""
    try:
        return importlib.metadata.version("gridlab")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return __version__


def token_id(token: str) -> str:
    """The id ListTokens shows for a secret token: a prefix of its stored hash."""
    return tokens.hash_token(token)[:TOKEN_ID_CHARS]


def _token_info(row: sqlite3.Row, *, revoked: bool | None = None) -> TokenInfo:
    info = TokenInfo(
        id=row["hash"][:TOKEN_ID_CHARS],
        user=row["user"],
        role=row["role"],
        team=row["team"] or "",
        revoked=bool(row["revoked"]) if revoked is None else revoked,
    )
    if row["created_at"] is not None:
        info.created_at.CopyFrom(ts(row["created_at"]))
    if row["expires_at"] is not None:
        info.expires_at.CopyFrom(ts(row["expires_at"]))
    return info


def _require_admin(who: Principal, what: str) -> None:
    if not who.admin:
        raise denied(f"only an admin may {what}")


def list_tokens(engine: Engine, who: Principal) -> list[TokenInfo]:
    """Every token, revoked ones too, oldest first (never a secret: it is not stored)."""
    _require_admin(who, "list tokens")
    rows = engine.store.all(
        "SELECT hash, user, role, team, created_at, revoked, expires_at FROM tokens ORDER BY created_at, hash"
    )
    return [_token_info(r) for r in rows]


def revoke_token(engine: Engine, who: Principal, prefix: str) -> TokenInfo:
    """Revoke the one token whose id starts with `prefix` (8 to 64 hex digits). Idempotent. It leaves the
    engine's token cache at once, so the very next call carrying it is UNAUTHENTICATED."""
    _require_admin(who, "revoke tokens")
    if prefix.strip().startswith(tokens.PREFIX):  # a secret pasted for an id: never echo it into a log or CI
        raise invalid("that is a token's secret, not its id: `schedctl tokens list` shows the ids")
    wanted = prefix.strip().lower()
    if len(wanted) < MIN_TOKEN_PREFIX:
        raise invalid(
            f"token_id {prefix[:80]!r} is too short: give at least {MIN_TOKEN_PREFIX} of its "
            f"{TOKEN_ID_CHARS} characters (`schedctl tokens` lists them)"
        )
    if len(wanted) > 64 or not _HEX.match(wanted):
        raise invalid(f"token_id {prefix[:80]!r} is not a token id: {TOKEN_ID_CHARS} hex digits, as ListTokens shows")
    rows = engine.store.all(
        "SELECT hash, user, role, team, created_at, revoked, expires_at FROM tokens "
        "WHERE substr(hash, 1, ?) = ? LIMIT 2",
        (len(wanted), wanted),
    )
    if not rows:
        raise not_found(f"no token with id {wanted!r}")
    if len(rows) > 1:
        raise invalid(f"token_id {wanted!r} matches more than one token: give more of its characters")
    row = rows[0]
    if not row["revoked"]:
        with engine.store.transaction() as conn:
            conn.execute("UPDATE tokens SET revoked = 1 WHERE hash = ?", (row["hash"],))
        log.info("token_revoked", token_id=row["hash"][:TOKEN_ID_CHARS], owner=row["user"], role=row["role"])
    engine.forget_token(row["hash"])
    return _token_info(row, revoked=True)


def set_run_priority(engine: Engine, who: Principal, run_id: str, priority: int) -> types_pb2.Run:
    """Change a queued or live run's priority. Its owner may set any priority up to `max_user_priority` (or
    lower one an admin gave); only an admin goes above it (else users would outbid each other). The column
    orders the queue and ranks live runs for preemption; the spec blob (what GetRun shows, what placement's
    requests read) is rewritten to match and its cached parse dropped. Then placement runs: a queued run may
    now go first, or preempt, or be preempted."""
    if abs(priority) > MAX_PRIORITY:
        raise invalid(f"priority is {priority}: it must be between -{MAX_PRIORITY} and {MAX_PRIORITY}")
    row = engine.owned_run(who, run_id, "change the priority of")
    state = RunState(row["state"])
    if state.terminal:
        raise precondition(f"run {run_id} has already ended ({state.value}); its priority no longer matters")
    old = row["priority"] or 0
    if priority > old and priority > engine.config.max_user_priority and not who.admin:
        raise denied(f"run {run_id} has priority {old}: " + engine.priority_cap_message(priority))
    if priority == old:
        return engine.run_message(run_id)
    spec = types_pb2.RunSpec.FromString(row["spec"])
    spec.priority = priority
    message = f"priority {old} -> {priority} by {who.user}"
    with engine.store.transaction() as conn:
        conn.execute(
            "UPDATE runs SET priority = ?, spec = ? WHERE id = ?",
            (priority, spec.SerializeToString(deterministic=True), run_id),
        )
        engine._event(conn, run_id, "", "priority", state, message)
    engine.forget_spec(run_id)  # parsed again from the new blob when placement next needs it
    log.info("run_priority_changed", run_id=run_id, old=old, new=priority, by=who.user)
    engine.events_changed.notify()
    engine.kick()
    return engine.run_message(run_id)


def list_run_events(engine: Engine, who: Principal, run_id: str) -> list[types_pb2.RunEvent]:
    """A run's events, oldest first; a run the caller may not read is NOT_FOUND, as for GetRun. Replies are
    capped at 4 MiB: past PAGE_BYTES of events, the oldest are left out (WatchRuns replays them all)."""
    engine.visible_run(who, run_id)
    rows = engine.store.all("SELECT * FROM events WHERE run_id = ? ORDER BY id DESC", (run_id,))
    events: list[types_pb2.RunEvent] = []
    size = 0
    for row in rows:
        event = event_pb(row)
        size += event.ByteSize() + 8
        if events and size > PAGE_BYTES:
            break
        events.append(event)
    return events[::-1]
