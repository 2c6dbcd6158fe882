"""The invariant checker finds each broken invariant in a hand-broken scheduler database.

A sound state (a running run, one that succeeded on its second attempt, a queued one, a READY and a
LOST agent) passes; each case below breaks one thing the way a bug would, and the checker must say so.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import invariants
import pytest

from gridlab.scheduler.store import Store


def _run(conn: sqlite3.Connection, rid: str, state: str, finished: float | None, history: list[str]) -> None:
    conn.execute(
        "INSERT INTO runs (id, user, spec, state, created_at, finished_at) VALUES (?, 'alice', x'', ?, 1.0, ?)",
        (rid, state, finished),
    )
    for word in history:
        conn.execute(
            "INSERT INTO events (run_id, attempt_id, kind, state, message, time) "
            "VALUES (?, '', 'k', ?, '', (SELECT COALESCE(MAX(time), 10) + 1 FROM events))",
            (rid, word),
        )


def _attempt(
    conn: sqlite3.Connection, aid: str, rid: str, number: int, state: str, agent: str, gpus: list[str]
) -> None:
    conn.execute(
        "INSERT INTO attempts (id, run_id, number, state, created_at) VALUES (?, ?, ?, ?, 1.0)",
        (aid, rid, number, state),
    )
    conn.execute(
        "INSERT INTO attempt_nodes (attempt_id, node_rank, agent_name, gpu_uuids, state) VALUES (?, 0, ?, ?, ?)",
        (aid, agent, json.dumps(gpus), state),
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A sound scheduler database, built by the real schema's migrations."""
    path = tmp_path / "scheduler.db"
    store = Store(path)
    with store.transaction() as conn:
        for name, state in (("a1", "READY"), ("a2", "LOST")):
            conn.execute("INSERT INTO agents (name, id, pool, state) VALUES (?, ?, 'onprem', ?)", (name, name, state))
        _run(conn, "r1", "RUNNING", None, ["QUEUED", "STARTING", "RUNNING"])
        _attempt(conn, "r1-1", "r1", 1, "RUNNING", "a1", ["g0", "g1"])
        _run(conn, "r2", "SUCCEEDED", 50.0, ["QUEUED", "STARTING", "RUNNING", "QUEUED", "STARTING", "SUCCEEDED"])
        _attempt(conn, "r2-1", "r2", 1, "FAILED", "a1", ["g0"])
        _attempt(conn, "r2-2", "r2", 2, "SUCCEEDED", "a2", ["g0"])
        _run(conn, "r3", "QUEUED", None, ["QUEUED"])
    store.conn.close()
    return path


def test_a_sound_state_passes_and_the_file_is_left_untouched(db: Path) -> None:
    before = db.read_bytes()
    assert invariants.check(db) == []
    assert db.read_bytes() == before


BREAKS: dict[str, tuple[str, str]] = {
    "gpu held twice": (
        "INSERT INTO attempt_nodes (attempt_id, node_rank, agent_name, gpu_uuids, state) "
        "VALUES ('r1-1', 1, 'a1', '[\"g1\"]', 'RUNNING')",
        "GPU g1 on agent a1 is held by 2 live nodes",
    ),
    "node on a missing agent": ("UPDATE attempt_nodes SET agent_name = 'ghost' WHERE attempt_id = 'r1-1'", "not exist"),
    "node on an agent in an odd state": ("UPDATE agents SET state = 'GONE' WHERE name = 'a1'", "not READY or LOST"),
    "running run without a live attempt": (
        "UPDATE attempts SET state = 'LOST' WHERE id = 'r1-1'",
        "run r1 is RUNNING with 0 live attempts",
    ),
    "running run with two live attempts": (
        "INSERT INTO attempts (id, run_id, number, state, created_at) VALUES ('r1-2', 'r1', 2, 'ASSIGNED', 1.0)",
        "run r1 is RUNNING with 2 live attempts",
    ),
    "queued run with a live attempt": (
        "INSERT INTO attempts (id, run_id, number, state, created_at) VALUES ('r3-1', 'r3', 1, 'ASSIGNED', 1.0)",
        "run r3 is QUEUED yet has 1 live attempts",
    ),
    "ended run with a live attempt": (
        "UPDATE attempts SET state = 'RUNNING' WHERE id = 'r2-2'",
        "run r2 is SUCCEEDED yet has 1 live attempts",
    ),
    "state without its event": (
        "UPDATE runs SET state = 'FAILED' WHERE id = 'r2'",
        "run r2 is FAILED but its last event says SUCCEEDED",
    ),
    "run without events": ("DELETE FROM events WHERE run_id = 'r3'", "run r3 (QUEUED) has no events"),
    "ended without finished_at": ("UPDATE runs SET finished_at = NULL WHERE id = 'r2'", "ended SUCCEEDED without"),
    "attempt numbers with a gap": ("UPDATE attempts SET number = 3 WHERE id = 'r2-2'", "numbered [1, 3], not 1..2"),
    "attempts numbered from 0": ("UPDATE attempts SET number = 0 WHERE id = 'r2-1'", "numbered [0, 2]"),
    "event older than the one before": (
        "INSERT INTO events (run_id, attempt_id, kind, state, message, time) VALUES ('r3', '', 'k', 'QUEUED', '', 0)",
        "is older than the event before it",
    ),
    "event skipping the state machine": (
        "INSERT INTO events (run_id, attempt_id, kind, state, message, time) "
        "VALUES ('r2', '', 'k', 'RUNNING', '', 99)",  # (and r2 then says RUNNING, also found)
        "moves it SUCCEEDED -> RUNNING, not a transition",
    ),
    "first event not QUEUED": ("UPDATE events SET state = 'RUNNING' WHERE run_id = 'r3'", "first event"),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_each_broken_invariant_is_found(db: Path, case: str) -> None:
    sql, expected = BREAKS[case]
    with sqlite3.connect(db) as conn:
        conn.execute(sql)
    found = invariants.check(db)
    assert any(expected in v for v in found), found


def test_the_checker_reads_beside_a_live_writer(db: Path) -> None:
    """A write transaction open in the scheduler's connection does not block or break the read-only reader."""
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE runs SET state = 'FAILED' WHERE id = 'r2'")  # not committed: not seen
    assert invariants.check(db) == []
    writer.execute("ROLLBACK")
    writer.close()
