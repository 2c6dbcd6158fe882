"""The indexes the scheduler's hot queries depend on: an agent's live nodes come from a partial index that
holds live nodes only, which SQLite uses only when a query spells the live states as the index does."""

from __future__ import annotations

from pathlib import Path

from gridlab.scheduler import engine
from gridlab.scheduler.state import LIVE_ATTEMPT_STATES, LIVE_STATES_SQL
from gridlab.scheduler.store import Store


def plan(store: Store, sql: str) -> str:
    return " ".join(str(r[3]) for r in store.all("EXPLAIN QUERY PLAN " + sql, ("x",) * sql.count("?")))


def test_the_partial_index_of_live_nodes_matches_the_live_states(tmp_path: Path) -> None:
    store = Store(tmp_path / "scheduler.db")
    sql = store.one("SELECT sql FROM sqlite_master WHERE name = 'attempt_nodes_held'")
    assert sql is not None
    assert sql[0].endswith(f"WHERE state IN {LIVE_STATES_SQL}")  # a new live state needs a new migration
    assert {s.value for s in LIVE_ATTEMPT_STATES} == set(LIVE_STATES_SQL.strip("()").replace("'", "").split(","))
    assert store.one("SELECT 1 FROM sqlite_master WHERE name = 'attempt_nodes_agent_state'") is None
    held = engine._HELD_SQL  # noqa: SLF001 - the engine's own condition, as its queries use it
    for query in (
        f"SELECT n.gpu_uuids FROM attempt_nodes n WHERE n.agent_name = ? AND {held}",
        f"SELECT a.* FROM attempts a JOIN attempt_nodes n ON n.attempt_id = a.id WHERE n.agent_name = ? AND {held}",
    ):
        assert "attempt_nodes_held (agent_name=?)" in plan(store, query)
    every = plan(store, engine.LIVE_NODES_SQL)  # each pass: the live nodes, not a walk over all there ever were
    assert "SCAN n USING INDEX attempt_nodes_held" in every
    assert "sqlite_autoindex_attempt_nodes" not in every
    assert store.one("SELECT 1 FROM sqlite_master WHERE name = 'idx_attempt_nodes_state'") is None
    limits = "SELECT a.id FROM attempts a WHERE a.state = 'RUNNING' AND a.started_at IS NOT NULL"
    assert "attempts_running" in plan(store, limits)  # (Engine.check_time_limits)
    store.close()


def test_an_agents_live_nodes_are_found_and_ended_ones_are_not(tmp_path: Path) -> None:
    store = Store(tmp_path / "scheduler.db")
    with store.transaction() as conn:
        conn.execute("INSERT INTO runs (id, user, spec, state, created_at) VALUES ('r', 'u', x'', 'RUNNING', 0)")
        for i, state in enumerate(["RUNNING", "SUCCEEDED", "ASSIGNED", "LOST"]):
            conn.execute(
                "INSERT INTO attempts (id, run_id, number, state, created_at) VALUES (?, 'r', ?, ?, 0)",
                (f"a{i}", i + 1, state),
            )
            conn.execute(
                "INSERT INTO attempt_nodes (attempt_id, node_rank, agent_name, gpu_uuids, state) "
                "VALUES (?, 0, 'gpu-1', '[]', ?)",
                (f"a{i}", state),
            )
    rows = store.all(
        f"SELECT n.attempt_id FROM attempt_nodes n WHERE n.agent_name = ? AND {engine._HELD_SQL}",  # noqa: SLF001
        ("gpu-1",),
    )
    assert sorted(r[0] for r in rows) == ["a0", "a2"]
    store.close()
