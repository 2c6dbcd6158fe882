"""The scheduler's one SQLite file: schema, migrations, transactions.

One connection, used only from the event loop's thread, is the single writer. WAL lets
readers (an admin's `sqlite3` shell, backups) work beside it; `synchronous=FULL` makes an
acknowledged submit survive power loss, not just a `kill -9`. Every state change is one
`BEGIN IMMEDIATE` transaction that also appends to `events`. Run logs are the exception: their
bytes live in files (`logstore.py`), indexed here by transactions that are not fsynced (the cursors
they hand out come from blocks reserved durably in `meta`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils
from google.protobuf.message import DecodeError

from gridlab.v1 import types_pb2

if TYPE_CHECKING:
    from .logstore import LogStore

SCHEMA_VERSION = 13


def _migrate_1(db: sqlite_utils.Database) -> None:
    db["runs"].create(  # type: ignore[union-attr]
        {
            "id": str,
            "user": str,
            "team": str,
            "name": str,
            "spec": bytes,  # serialized gridlab.v1.RunSpec, as submitted (with defaults filled)
            "state": str,
            "priority": int,
            "pending_reason": str,
            "exit_code": int,
            "message": str,
            "retries_used": int,
            "max_retries": int,
            "cancel_requested": int,
            "idempotency_key": str,
            "created_at": float,
            "started_at": float,
            "finished_at": float,
        },
        pk="id",
        not_null={"user", "spec", "state", "created_at"},
        defaults={"team": "", "retries_used": 0, "cancel_requested": 0, "pending_reason": ""},
    )
    db["runs"].create_index(["state"])  # type: ignore[union-attr]
    db["runs"].create_index(["user", "idempotency_key"], unique=True)  # type: ignore[union-attr]
    db["attempts"].create(  # type: ignore[union-attr]
        {
            "id": str,
            "run_id": str,
            "number": int,
            "state": str,
            "exit_code": int,
            "reason": str,
            "created_at": float,
            "started_at": float,
            "finished_at": float,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
        not_null={"run_id", "number", "state", "created_at"},
    )
    db["attempts"].create_index(["run_id", "number"], unique=True)  # type: ignore[union-attr]
    db["attempts"].create_index(["state"])  # type: ignore[union-attr]
    # One row per node of an attempt: what it holds on which agent.
    db["attempt_nodes"].create(  # type: ignore[union-attr]
        {
            "attempt_id": str,
            "node_rank": int,
            "agent_name": str,
            "gpu_uuids": str,  # JSON list
            "cpus": float,
            "memory_bytes": int,
        },
        pk=("attempt_id", "node_rank"),
        foreign_keys=[("attempt_id", "attempts", "id")],
    )
    db["attempt_nodes"].create_index(["agent_name"])  # type: ignore[union-attr]
    db["agents"].create(  # type: ignore[union-attr]
        {
            "name": str,
            "id": str,
            "pool": str,
            "labels": str,  # JSON object
            "state": str,
            "inventory": bytes,  # serialized gridlab.v1.Inventory
            "connected_at": float,
            "last_seen": float,
        },
        pk="name",
    )
    db["events"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "run_id": str,
            "attempt_id": str,
            "kind": str,
            "state": str,
            "message": str,
            "time": float,
        },
        pk="id",
    )
    db["events"].create_index(["run_id", "id"])  # type: ignore[union-attr]
    db["logs"].create(  # type: ignore[union-attr]
        {
            "cursor": int,
            "run_id": str,
            "attempt_id": str,
            "attempt_number": int,
            "rank": int,
            "seq": int,
            "stream": int,
            "text": str,
            "time": float,
        },
        pk="cursor",
    )
    db["logs"].create_index(["attempt_id", "rank", "seq"], unique=True)  # type: ignore[union-attr]
    db["logs"].create_index(["run_id", "cursor"])  # type: ignore[union-attr]
    db["tokens"].create(  # type: ignore[union-attr]
        {
            "hash": str,
            "user": str,
            "role": str,
            "team": str,
            "created_at": float,
            "revoked": int,
        },
        pk="hash",
        defaults={"revoked": 0, "team": ""},
    )


def _migrate_2(db: sqlite_utils.Database) -> None:
    # The grace a user asked for when cancelling, so a cancel re-sent after an agent
    # reconnects keeps it.
    db["runs"].add_column("cancel_grace", float)  # type: ignore[union-attr]


def _migrate_3(db: sqlite_utils.Database) -> None:
    # Each node of a gang reports its own end; the attempt ends when one fails or all succeed.
    db["attempt_nodes"].add_column("state", str)  # type: ignore[union-attr]
    db.execute("UPDATE attempt_nodes SET state = (SELECT state FROM attempts WHERE attempts.id = attempt_id)")
    # The artifact store: complete blobs (their bytes live in files named by digest), and what refers to them.
    db["blobs"].create(  # type: ignore[union-attr]
        {"digest": str, "size": int, "purpose": str, "created_at": float},
        pk="digest",
        not_null={"size", "created_at"},
    )
    db["checkpoints"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "run_id": str,
            "attempt_id": str,
            "attempt_number": int,
            "node_rank": int,
            "name": str,
            "step": int,
            "time": float,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id"), ("attempt_id", "attempts", "id")],
        not_null={"run_id", "attempt_id", "name", "time"},
    )
    db["checkpoints"].create_index(["run_id", "id"])  # type: ignore[union-attr]
    db["checkpoint_files"].create(  # type: ignore[union-attr]
        {"checkpoint_id": int, "path": str, "digest": str, "size": int},
        pk=("checkpoint_id", "path"),
        foreign_keys=[("checkpoint_id", "checkpoints", "id"), ("digest", "blobs", "digest")],
    )
    db["artifacts"].create(  # type: ignore[union-attr]
        {
            "run_id": str,
            "attempt_id": str,
            "attempt_number": int,
            "node_rank": int,
            "path": str,
            "digest": str,
            "size": int,
            "time": float,
        },
        pk=("attempt_id", "node_rank", "path"),
        foreign_keys=[("run_id", "runs", "id"), ("digest", "blobs", "digest")],
    )
    db["artifacts"].create_index(["run_id"])  # type: ignore[union-attr]


def _migrate_4(db: sqlite_utils.Database) -> None:
    # Logs move from one row per line to files of lines (one per attempt and rank, under <state>/logs)
    # indexed by one row per batch: log_files holds each file's committed size and the next seq it
    # expects; log_batches the lines first_cursor..last_cursor at file_offset, file_length. Cursors
    # keep counting where the old table's did. Old rows become one-line batches that keep their cursor
    # and their text inline (text; no file), so a client's old cursor still resumes where it was.
    statements = [
        """CREATE TABLE log_files (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,
            attempt_id TEXT NOT NULL,
            rank INTEGER NOT NULL,
            source TEXT NOT NULL DEFAULT '',  -- the pushing agent, for ranks below 0 (each node numbers its own)
            path TEXT NOT NULL DEFAULT '',    -- under the logs folder, '' until the first bytes are written
            size INTEGER NOT NULL DEFAULT 0,  -- bytes committed: anything past it is cut off on open
            next_seq INTEGER NOT NULL DEFAULT 1
        )""",
        "CREATE UNIQUE INDEX log_files_key ON log_files (attempt_id, rank, source)",
        """CREATE TABLE log_batches (
            first_cursor INTEGER PRIMARY KEY,
            last_cursor INTEGER NOT NULL,
            run_id TEXT NOT NULL,
            attempt_id TEXT NOT NULL,
            attempt_number INTEGER NOT NULL,
            rank INTEGER NOT NULL,
            stream INTEGER NOT NULL,
            first_seq INTEGER NOT NULL,
            count INTEGER NOT NULL,
            file_id INTEGER REFERENCES log_files (id),
            file_offset INTEGER NOT NULL DEFAULT 0,
            file_length INTEGER NOT NULL DEFAULT 0,
            time REAL NOT NULL,
            text TEXT                         -- the lines inline (migrated rows), when file_id is NULL
        )""",
        "CREATE INDEX log_batches_run ON log_batches (run_id, last_cursor)",
        "CREATE INDEX log_batches_rank ON log_batches (run_id, rank, last_cursor)",  # rank filters (metrics)
        """INSERT INTO log_batches (first_cursor, last_cursor, run_id, attempt_id, attempt_number, rank, stream,
                                    first_seq, count, time, text)
            SELECT cursor, cursor, run_id, attempt_id, attempt_number, rank, stream, seq, 1, time, text FROM logs""",
        """INSERT INTO log_files (run_id, attempt_id, rank, next_seq)
            SELECT MIN(run_id), attempt_id, rank, MAX(seq) + 1 FROM logs GROUP BY attempt_id, rank""",
        "DROP TABLE logs",
    ]
    for sql in statements:  # one by one: executescript would commit the migration's transaction
        db.conn.execute(sql)


def _migrate_5(db: sqlite_utils.Database) -> None:
    # Small values that must survive a power loss, written durably. log_cursor_reserved: every log cursor
    # handed out is below it (logstore.py reserves cursors in blocks, as log index rows are not fsynced).
    db.conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.conn.execute(
        "INSERT INTO meta (key, value) SELECT 'log_cursor_reserved', COALESCE(MAX(last_cursor), 0) + 1 FROM log_batches"
    )


def _migrate_6(db: sqlite_utils.Database) -> None:
    # What an admin decided for an agent (agentadmin.py), kept apart from `state`, which says whether it is
    # connected and which the engine rewrites on every reconnect: admin_state NULL (normal), 'CORDONED' or
    # 'DRAINING'; the reason given; for a drain with a deadline, when its attempts are preempted (epoch s).
    db["agents"].add_column("admin_state", str)  # type: ignore[union-attr]
    db["agents"].add_column("admin_reason", str)  # type: ignore[union-attr]
    db["agents"].add_column("drain_deadline", float)  # type: ignore[union-attr]


def _migrate_7(db: sqlite_utils.Database) -> None:
    # Placement reads the live nodes on every pass: by state, not by scanning every attempt ever placed.
    db["attempt_nodes"].create_index(["state"])  # type: ignore[union-attr]


def _migrate_8(db: sqlite_utils.Database) -> None:
    # ListRuns filters by a run's sweep (RunSpec.sweep.name) and pool (RunSpec.pool): copies of them out of
    # the spec blob, so the filter is a WHERE clause (sweep by index, newest first) rather than a parse of
    # every spec. Existing runs are backfilled from their blobs; `Engine.submit` fills new ones.
    db.conn.execute("ALTER TABLE runs ADD COLUMN sweep TEXT NOT NULL DEFAULT ''")
    db.conn.execute("ALTER TABLE runs ADD COLUMN pool TEXT NOT NULL DEFAULT ''")
    db.conn.execute("CREATE INDEX runs_sweep ON runs (sweep, id)")
    updates = []
    for row in db.conn.execute("SELECT id, spec FROM runs"):
        try:
            spec = types_pb2.RunSpec.FromString(row[1] or b"")
        except DecodeError:  # a damaged blob must not keep the scheduler from starting: it just filters as ''
            continue
        if spec.sweep.name or spec.pool:
            updates.append((spec.sweep.name, spec.pool, row[0]))
    db.conn.executemany("UPDATE runs SET sweep = ?, pool = ? WHERE id = ?", updates)


def _migrate_9(db: sqlite_utils.Database) -> None:
    # Tokens may expire (CreateToken's ttl; NULL: never). SubmitRun counts a user's queued runs against
    # max_queued_runs_per_user: by index, not by scanning every run the user ever submitted.
    db.conn.execute("ALTER TABLE tokens ADD COLUMN expires_at REAL")
    db.conn.execute("CREATE INDEX runs_user_state ON runs (user, state)")


def _migrate_10(db: sqlite_utils.Database) -> None:
    # Cost accounting (scheduler/usage.py): one row per node of an ended attempt that had started, written when
    # the attempt ends. The user and the pool of the node's agent are copied in as they were then (an agent may
    # later move pools), and so is the price: changing pool_prices does not rewrite what was already spent.
    db.conn.execute(
        "CREATE TABLE usage (attempt_id TEXT NOT NULL, node_rank INTEGER NOT NULL, run_id TEXT NOT NULL, "
        "user TEXT NOT NULL, pool TEXT NOT NULL, agent_name TEXT NOT NULL, gpus INTEGER NOT NULL, "
        "started_at REAL NOT NULL, finished_at REAL NOT NULL, gpu_seconds REAL NOT NULL, cost REAL NOT NULL, "
        "PRIMARY KEY (attempt_id, node_rank))"
    )
    db.conn.execute("CREATE INDEX usage_finished ON usage (finished_at)")
    db.conn.execute("CREATE INDEX usage_user ON usage (user, finished_at)")


def _migrate_11(db: sqlite_utils.Database) -> None:
    # Spot reclaims of a run's attempts: after the scheduler's spot_fallback_after of them it avoids spot machines.
    db.conn.execute("ALTER TABLE runs ADD COLUMN interruptions INTEGER NOT NULL DEFAULT 0")


def _migrate_12(db: sqlite_utils.Database) -> None:
    # An agent's live nodes by (agent_name, state), not by agent_name alone: that index made "what does this
    # agent hold now" (every placement, every report) walk the agent's whole history of attempts.
    db.conn.execute("CREATE INDEX attempt_nodes_agent_state ON attempt_nodes (agent_name, state)")
    db.conn.execute("DROP INDEX IF EXISTS idx_attempt_nodes_agent_name")


def _migrate_13(db: sqlite_utils.Database) -> None:
    # An agent's live nodes from a partial index that holds live nodes only: the (agent_name, state) index held
    # every node ever, so each placement and each state change wrote to a page picked by the agent's name, a
    # different one for nearly every run, and it grew with history. The list must be spelled as
    # state.LIVE_STATES_SQL is (tests/test_store_schema.py checks it).
    db.conn.execute(
        "CREATE INDEX attempt_nodes_held ON attempt_nodes (agent_name) "
        "WHERE state IN ('ASSIGNED','PREPARING','RUNNING')"
    )
    db.conn.execute("DROP INDEX IF EXISTS attempt_nodes_agent_state")
    # Every query of nodes by state asks for live ones, which the partial index holds (all of them, in a scan
    # of it): the index on state alone only cost a write on every change of a node's state.
    db.conn.execute("DROP INDEX IF EXISTS idx_attempt_nodes_state")
    # Likewise attempts by state: the one query by it (time limits) asks for running ones.
    db.conn.execute("CREATE INDEX attempts_running ON attempts (started_at) WHERE state = 'RUNNING'")
    db.conn.execute("DROP INDEX IF EXISTS idx_attempts_state")


MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {
    1: _migrate_1,
    2: _migrate_2,
    3: _migrate_3,
    4: _migrate_4,
    5: _migrate_5,
    6: _migrate_6,
    7: _migrate_7,
    8: _migrate_8,
    9: _migrate_9,
    10: _migrate_10,
    11: _migrate_11,
    12: _migrate_12,
    13: _migrate_13,
}


class Store:
    """The SQLite file and its transactions. Not thread-safe by design: one loop owns it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self._grouped = False  # inside group(): transactions are savepoints of it
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        # Savepoint journals (every transaction inside a group() is a savepoint, `batch.py`) in memory, not
        # in a temporary file: each page a savepoint changes is copied there first, which in a file is a
        # pwrite system call per page on the event loop's thread.
        conn.execute("PRAGMA temp_store=MEMORY")
        self._migrate()

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {version}, newer than this gridlab "
                f"({SCHEMA_VERSION}): upgrade gridlab, or point --state-dir elsewhere"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                MIGRATIONS[target](self.db)
                self.conn.execute(f"PRAGMA user_version={target}")

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """One transaction around many: every `transaction()` inside becomes a savepoint of it, and one
        COMMIT (one fsync) ends them all (group commit: `batch.Batcher`). Not nested."""
        if self._grouped:
            raise RuntimeError("Store.group() is not reentrant")
        self.conn.execute("BEGIN IMMEDIATE")
        self._grouped = True
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        finally:
            self._grouped = False

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` ... `COMMIT`, rolled back on any exception. `durable=False` commits without
        an fsync (WAL, synchronous=NORMAL): a power loss may undo it, a crash of the process cannot, and
        the next durable commit makes it durable too. For log index rows, whose files are not fsynced.
        Inside `group()` it is a savepoint: rolled back alone, committed with the group."""
        if self._grouped:
            if not self.conn.in_transaction:  # SQLite rolled the group back (a full disk, an I/O error)
                raise sqlite3.OperationalError("the group's transaction was rolled back; nothing more runs in it")
            with self._savepoint():
                yield self.conn
            return
        if not durable:
            self.conn.execute("PRAGMA synchronous=NORMAL")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        finally:
            if not durable:
                self.conn.execute("PRAGMA synchronous=FULL")

    def _rollback(self) -> None:
        """Undo the open transaction, also after a failed COMMIT (which leaves it open)."""
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        self.conn.execute("SAVEPOINT tx")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:  # else SQLite already undid everything: keep the first error
                self.conn.execute("ROLLBACK TO tx")
                self.conn.execute("RELEASE tx")
            raise
        self.conn.execute("RELEASE tx")

    @functools.cached_property
    def logs(self) -> LogStore:
        """Run logs: files beside this database (`logs/`), indexed in it."""
        from .logstore import LogStore  # logstore builds on Store

        return LogStore(self, self.path.parent / "logs")

    def one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        return list(self.conn.execute(sql, params).fetchall())

    def close(self) -> None:
        if "logs" in self.__dict__:  # opened: its files too
            self.logs.close()
        self.conn.close()


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
