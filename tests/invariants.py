"""What must hold in the scheduler's SQLite state whatever was sent to it, checked from outside.

`check(db_path)` opens the file read-only (a second connection beside the scheduler's writer, which
WAL allows while it runs) and returns each broken invariant in words; [] means the state is sound:

- no GPU uuid is held by two live attempt nodes on one agent (live as `engine._HELD_SQL`);
- every node of a live attempt, and every node still holding its share, is on an agent that exists
  and is READY or LOST;
- a STARTING or RUNNING run has exactly one live attempt; a QUEUED or ended run has none;
- each run has events, and its last event's state is the run's state;
- event ids increase with time (an append-only log), and a run's events walk its state machine: the
  first says QUEUED, each next one the same state or an allowed transition (`state.RUN_TRANSITIONS`);
- an ended run has finished_at;
- a run's attempts are numbered 1..n without gaps.

Used by the fuzzer (`test_fuzz.py`, `bench/fuzz.py`) after hostile traffic, and usable on any
scheduler's state directory.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import defaultdict
from pathlib import Path

from gridlab.scheduler.state import LIVE_ATTEMPT_STATES, RUN_TRANSITIONS, TERMINAL_RUN_STATES

LIVE = tuple(sorted(s.value for s in LIVE_ATTEMPT_STATES))
TERMINAL = frozenset(s.value for s in TERMINAL_RUN_STATES)
STEPS = frozenset((a.value, b.value) for a, b in RUN_TRANSITIONS)
ACTIVE = frozenset({"STARTING", "RUNNING"})
AGENT_STATES_OK = frozenset({"READY", "LOST"})
_MARKS = ",".join("?" * len(LIVE))


def _gpus(raw: str | None) -> list[str]:
    try:
        value = json.loads(raw or "[]")
    except ValueError:
        return [f"<unreadable gpu_uuids {raw!r}>"]
    return [str(u) for u in value] if isinstance(value, list) else [f"<gpu_uuids not a list: {raw!r}>"]


def _gpu_sharing(conn: sqlite3.Connection) -> list[str]:
    held: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in conn.execute(
        f"SELECT attempt_id, node_rank, agent_name, gpu_uuids FROM attempt_nodes WHERE state IN ({_MARKS})", LIVE
    ):
        for uuid in _gpus(row["gpu_uuids"]):
            held[(row["agent_name"], uuid)].append(f"{row['attempt_id']}/{row['node_rank']}")
    return [
        f"GPU {uuid} on agent {agent} is held by {len(nodes)} live nodes: {', '.join(sorted(nodes))}"
        for (agent, uuid), nodes in sorted(held.items())
        if len(nodes) > 1
    ]


def _node_agents(conn: sqlite3.Connection) -> list[str]:
    out = []
    for row in conn.execute(
        f"SELECT n.attempt_id, n.node_rank, n.agent_name, n.state AS node_state, a.state AS attempt_state, "
        f"g.state AS agent_state FROM attempt_nodes n JOIN attempts a ON a.id = n.attempt_id "
        f"LEFT JOIN agents g ON g.name = n.agent_name "
        f"WHERE a.state IN ({_MARKS}) OR n.state IN ({_MARKS})",
        (*LIVE, *LIVE),
    ):
        where = f"node {row['node_rank']} of attempt {row['attempt_id']} ({row['attempt_state']}/{row['node_state']})"
        if row["agent_state"] is None:
            out.append(f"{where} is on agent {row['agent_name']!r}, which does not exist")
        elif row["agent_state"] not in AGENT_STATES_OK:
            out.append(f"{where} is on agent {row['agent_name']!r} in state {row['agent_state']!r}, not READY or LOST")
    return out


def _runs(conn: sqlite3.Connection) -> list[str]:
    out = []
    live: dict[str, int] = defaultdict(int)
    for row in conn.execute(f"SELECT run_id, COUNT(*) FROM attempts WHERE state IN ({_MARKS}) GROUP BY run_id", LIVE):
        live[row[0]] = row[1]
    numbers: dict[str, list[int]] = defaultdict(list)
    for row in conn.execute("SELECT run_id, number FROM attempts ORDER BY run_id, number"):
        numbers[row[0]].append(row[1])
    last_event = {
        row["run_id"]: row["state"]
        for row in conn.execute(
            "SELECT e.run_id, e.state FROM events e JOIN "
            "(SELECT run_id, MAX(id) AS id FROM events GROUP BY run_id) m ON m.id = e.id"
        )
    }
    run_ids = set()
    for run in conn.execute("SELECT id, state, finished_at FROM runs"):
        rid, state = run["id"], run["state"]
        run_ids.add(rid)
        count = live.get(rid, 0)
        if state in ACTIVE and count != 1:
            out.append(f"run {rid} is {state} with {count} live attempts (exactly one expected)")
        elif state not in ACTIVE and count:
            out.append(f"run {rid} is {state} yet has {count} live attempts (none expected)")
        if state in TERMINAL and run["finished_at"] is None:
            out.append(f"run {rid} ended {state} without finished_at")
        if state not in ACTIVE and state != "QUEUED" and state not in TERMINAL:
            out.append(f"run {rid} has the unknown state {state!r}")
        if rid not in last_event:
            out.append(f"run {rid} ({state}) has no events")
        elif last_event[rid] != state:
            out.append(f"run {rid} is {state} but its last event says {last_event[rid]}")
        got = numbers.get(rid, [])
        if got != list(range(1, len(got) + 1)):
            out.append(f"run {rid}'s attempts are numbered {got}, not 1..{len(got)}")
    out.extend(f"attempts of run {rid}, which does not exist" for rid in sorted(set(numbers) - run_ids))
    return out


def _events(conn: sqlite3.Connection) -> list[str]:
    """Ids are the append order: each later event has a larger id, is not earlier in time, and moves its
    run only along the state machine."""
    out = []
    prev_id, prev_time = 0, float("-inf")
    run_state: dict[str, str] = {}
    for row in conn.execute("SELECT id, run_id, state, time FROM events ORDER BY rowid"):
        before = run_state.get(row["run_id"])
        if before is None and row["state"] != "QUEUED":
            out.append(f"run {row['run_id']}'s first event (id {row['id']}) says {row['state']}, not QUEUED")
        elif before is not None and before != row["state"] and (before, row["state"]) not in STEPS:
            out.append(f"run {row['run_id']}'s event {row['id']} moves it {before} -> {row['state']}, not a transition")
        run_state[row["run_id"]] = row["state"]
        if row["id"] <= prev_id:
            out.append(f"event id {row['id']} follows event id {prev_id}: ids must increase")
        if row["time"] is not None and row["time"] < prev_time - 1.0:  # a second of slack for clock steps
            out.append(f"event {row['id']} at {row['time']} is older than the event before it ({prev_time})")
        prev_id = max(prev_id, row["id"])
        if row["time"] is not None:
            prev_time = max(prev_time, row["time"])
    return out


def check(db_path: str | Path) -> list[str]:
    """Every broken invariant of the scheduler state in `db_path`, in words ([] when all hold)."""
    uri = f"{Path(db_path).resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("BEGIN")  # one snapshot for every query, while the scheduler keeps writing
        try:
            return _gpu_sharing(conn) + _node_agents(conn) + _runs(conn) + _events(conn)
        finally:
            conn.execute("ROLLBACK")
