"""The scheduler's log files and their index: batches in, lines out once each and in order, across
resends, restarts, a crash between a file write and its commit, damaged files, and the upgrade from the
one-row-per-line table."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gridlab.common.config import SchedulerConfig
from gridlab.common.timeutil import FakeClock
from gridlab.scheduler import store as store_module
from gridlab.scheduler.auth import Principal
from gridlab.scheduler.convert import single_lines
from gridlab.scheduler.engine import AgentSession, Engine
from gridlab.scheduler.errors import ApiError
from gridlab.scheduler.logstore import Batch, LogStore
from gridlab.scheduler.store import Store
from gridlab.v1 import agent_pb2, types_pb2

OUT = types_pb2.LOG_STREAM_STDOUT


def batch(first: int, count: int, *, rank: int = 0, attempt: str = "att-1", source: str = "", number: int = 1) -> Batch:
    text = "\n".join(f"r{rank} l{seq}" for seq in range(first, first + count))
    return Batch("run-1", attempt, number, rank, source, OUT, first, count, text, 1000.0 + first)


def lines(logs: LogStore, after: int = 0, **filters: object) -> list[types_pb2.LogLine]:
    """Every line after `after`, read a page at a time the way StreamLogs does, as single lines."""
    out: list[types_pb2.LogLine] = []
    while True:
        batches, upto = logs.read("run-1", after, **filters)  # type: ignore[arg-type]
        for b in batches:
            out.extend(single_lines(b))
        if upto == after:
            return out
        after = upto


def texts(logs: LogStore, after: int = 0, **filters: object) -> list[str]:
    return [line.text for line in lines(logs, after, **filters)]


def check_in_order(got: list[types_pb2.LogLine]) -> None:
    """Cursors strictly increase; each (attempt, rank) has seq 1, 2, 3, ... without a gap."""
    cursors = [line.cursor for line in got]
    assert cursors == sorted(set(cursors))
    seqs: dict[tuple[str, int], int] = {}
    for line in got:
        key = (line.attempt_id, line.rank)
        assert line.seq == seqs.get(key, 0) + 1, (key, line.seq)
        seqs[key] = line.seq
        assert line.text == f"r{line.rank} l{line.seq}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "s.db")
    yield s
    s.close()


def test_batches_go_to_one_file_per_rank_and_come_back_in_order(store: Store, tmp_path: Path) -> None:
    logs = store.logs
    assert logs.append([batch(1, 3), batch(1, 2, rank=1), batch(4, 2)]) == (7, 0)
    got = lines(logs)
    assert [(x.rank, x.seq, x.cursor) for x in got] == [(0, 1, 1), (0, 2, 2), (0, 3, 3), (1, 1, 4), (1, 2, 5)] + [
        (0, 4, 6),
        (0, 5, 7),
    ]
    assert (tmp_path / "logs" / "run-1" / "att-1" / "rank-0.log").read_text() == "".join(
        f"r0 l{i}\n" for i in range(1, 6)
    )
    assert (tmp_path / "logs" / "run-1" / "att-1" / "rank-1.log").read_text() == "r1 l1\nr1 l2\n"
    assert store.one("SELECT COUNT(*) AS n FROM log_batches")["n"] == 3  # one index row per batch
    assert got[0].time.seconds == 1001


def test_a_cursor_inside_a_batch_resumes_with_the_rest_of_it(store: Store) -> None:
    logs = store.logs
    logs.append([batch(1, 10)])
    batches, upto = logs.read("run-1", 4)
    assert upto == 10
    assert [(b.seq, b.cursor, b.count) for b in batches] == [(5, 5, 6)]
    assert batches[0].text.split("\n") == [f"r0 l{i}" for i in range(5, 11)]
    batches, _ = logs.read("run-1", 9)  # one line left: a plain LogLine
    assert [(b.seq, b.cursor, b.count, b.text) for b in batches] == [(10, 10, 0, "r0 l10")]
    assert logs.read("run-1", 10) == ([], 10)


def test_resent_and_overlapping_batches_store_each_line_once(store: Store) -> None:
    logs = store.logs
    assert logs.append([batch(1, 10)]) == (10, 0)
    assert logs.append([batch(1, 10)]) == (0, 10)  # resent whole (its acknowledgement was lost)
    assert logs.append([batch(5, 11)]) == (5, 6)  # overlaps: only lines 11..15 are new
    assert logs.append([batch(16, 1), batch(16, 2)]) == (2, 1)  # within one call too
    got = lines(logs)
    check_in_order(got)
    assert [x.seq for x in got] == list(range(1, 18))


def test_a_gap_is_stored_and_lines_of_it_arriving_later_are_not(store: Store) -> None:
    """A rank's lines are kept in seq order: after a gap (a batch the agent had to give up on), the
    missing lines are not slotted in later, so no reader ever sees a rank's lines out of order."""
    logs = store.logs
    logs.append([batch(1, 3)])
    assert logs.append([batch(6, 2)]) == (2, 0)
    assert logs.append([batch(4, 2)]) == (0, 2)
    assert [x.seq for x in lines(logs)] == [1, 2, 3, 6, 7]


def test_a_restart_keeps_cursors_and_dedup_and_cuts_bytes_that_were_never_committed(tmp_path: Path) -> None:
    first = Store(tmp_path / "s.db")
    first.logs.append([batch(1, 5)])
    first.close()
    # A crash after a batch's bytes were written but before its row was committed: junk past the end.
    path = tmp_path / "logs" / "run-1" / "att-1" / "rank-0.log"
    with path.open("ab") as f:
        f.write(b"r0 l6\nr0 l7\nhalf a li")
    second = Store(tmp_path / "s.db")
    logs = second.logs
    assert texts(logs) == [f"r0 l{i}" for i in range(1, 6)]
    assert logs.append([batch(3, 5)]) == (2, 3)  # the agent resends what it had not seen acknowledged
    got = lines(logs)
    check_in_order(got)
    assert [x.cursor for x in got] == [1, 2, 3, 4, 5, 6, 7]
    assert path.read_text() == "".join(f"r0 l{i}\n" for i in range(1, 8))
    second.close()


def test_a_damaged_file_costs_its_lines_not_the_stream(store: Store, tmp_path: Path) -> None:
    logs = store.logs
    logs.append([batch(1, 3)])
    logs.append([batch(4, 3)])
    logs.append([batch(1, 2, rank=1)])
    path = tmp_path / "logs" / "run-1" / "att-1" / "rank-0.log"
    with path.open("r+b") as f:
        f.truncate(len(b"r0 l1\nr0 l2\nr0 l3\nr0 l"))  # e.g. a power loss: the index outlived the bytes
    logs.close()  # (descriptors are reopened on demand)
    assert texts(logs) == ["r0 l1", "r0 l2", "r0 l3", "r1 l1", "r1 l2"]
    path.unlink()
    logs.close()
    assert texts(logs) == ["r1 l1", "r1 l2"]


def test_filters_by_rank_and_attempt_number(store: Store) -> None:
    logs = store.logs
    logs.append([batch(1, 2), batch(1, 2, rank=1), batch(1, 2, rank=-1, source="agent-a")])
    logs.append([batch(1, 3, attempt="att-2", number=2)])
    assert texts(logs, rank=1) == ["r1 l1", "r1 l2"]
    assert texts(logs, rank=-1) == ["r-1 l1", "r-1 l2"]
    assert texts(logs, attempt_number=2) == ["r0 l1", "r0 l2", "r0 l3"]
    assert texts(logs, attempt_number=1, rank=0) == ["r0 l1", "r0 l2"]


def test_each_node_numbers_its_own_agent_lines(store: Store, tmp_path: Path) -> None:
    """Two agents of a gang each number their notes (rank -1) and metrics (rank -2) from 1: both kept."""
    logs = store.logs
    assert logs.append([batch(1, 2, rank=-1, source="node-a")]) == (2, 0)
    assert logs.append([batch(1, 2, rank=-1, source="node/b")]) == (2, 0)
    assert logs.append([batch(1, 2, rank=-1, source="node-a")]) == (0, 2)
    assert len(texts(logs, rank=-1)) == 4
    names = sorted(p.name for p in (tmp_path / "logs" / "run-1" / "att-1").iterdir())
    assert names[0] == "agent-h-" + names[0].removeprefix("agent-h-")  # an unsafe name becomes a digest
    assert "agent-node-a.log" in names


def test_a_big_batch_is_indexed_in_pieces_that_each_fit_a_message(store: Store) -> None:
    logs = store.logs
    count = 60_000  # about 600 KiB
    assert logs.append([batch(1, count)]) == (count, 0)
    rows = store.all("SELECT count, file_length FROM log_batches ORDER BY first_cursor")
    assert len(rows) > 1
    assert sum(r["count"] for r in rows) == count
    assert all(r["file_length"] <= 300 * 1024 for r in rows)
    got = lines(logs)
    check_in_order(got)
    assert len(got) == count


def test_a_store_with_old_one_row_per_line_logs_is_upgraded_in_place(tmp_path: Path) -> None:
    """Schema 3's rows become one-line batches that keep their cursors (a client's cursor still
    resumes where it was), and the next lines of a live attempt continue after them."""
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path, isolation_level=None)
    db = store_module.sqlite_utils.Database(conn)
    for version in (1, 2, 3):
        store_module.MIGRATIONS[version](db)
    conn.execute("PRAGMA user_version=3")
    old = [("run-1", "att-1", 1, 0, seq, OUT, f"r0 l{seq}", 1000.0 + seq) for seq in (1, 2, 3)]
    old.append(("run-1", "att-1", 1, -1, 1, types_pb2.LOG_STREAM_SYSTEM, "r-1 l1", 1000.0))
    conn.executemany(
        "INSERT INTO logs (run_id, attempt_id, attempt_number, rank, seq, stream, text, time) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        old,
    )
    conn.execute("DELETE FROM logs WHERE seq = 2 AND rank = 0")  # cursors need not be dense
    conn.close()

    store = Store(path)
    assert store.one("PRAGMA user_version")[0] == store_module.SCHEMA_VERSION
    logs = store.logs
    got = lines(logs)
    assert [(x.rank, x.seq, x.cursor, x.text) for x in got] == [
        (0, 1, 1, "r0 l1"),
        (0, 3, 3, "r0 l3"),
        (-1, 1, 4, "r-1 l1"),
    ]
    assert [x.text for x in lines(logs, after=3)] == ["r-1 l1"]  # an old cursor resumes as before
    assert logs.append([batch(3, 3)]) == (2, 1)  # continues after the stored seq 3
    assert logs.append([batch(1, 2, rank=-1, source="agent-a")]) == (1, 1)  # notes: after seq 1 too
    assert [x.cursor for x in lines(logs, after=4)] == [5, 6, 7]
    assert texts(logs, rank=0) == ["r0 l1", "r0 l3", "r0 l4", "r0 l5"]
    store.close()


# -- through the engine: push_logs as the gateway calls it ------------------------------


def placed(tmp_path: Path) -> tuple[Engine, str, str]:
    config = SchedulerConfig(state_dir=str(tmp_path), heartbeat_interval=1, heartbeat_timeout=10)
    engine = Engine(Store(tmp_path / "s.db"), config, clock=FakeClock())
    inventory = types_pb2.Inventory(hostname="h", cpus=8, memory_bytes=64 << 30)
    session = engine.agent_hello(agent_pb2.Hello(name="a1", inventory=inventory))
    run_id, _ = engine.submit(Principal("alice", "user"), types_pb2.RunSpec(command=["true"]), "")
    engine.place_once()
    attempt = drain_assign(session)
    return engine, run_id, attempt


def drain_assign(session: AgentSession) -> str:
    attempt = ""
    while not session.outbox.empty():
        msg = session.outbox.get_nowait()
        if msg is not None and msg.WhichOneof("msg") == "assign":
            attempt = msg.assign.attempt_id
    return attempt


def pushed(attempt: str, first: int, count: int, rank: int = 0) -> types_pb2.LogLine:
    text = "\n".join(f"r{rank} l{seq}" for seq in range(first, first + count))
    return types_pb2.LogLine(attempt_id=attempt, rank=rank, stream=OUT, seq=first, text=text, count=count)


def test_push_logs_takes_batches_checks_them_and_survives_a_restart(tmp_path: Path) -> None:
    engine, run_id, attempt = placed(tmp_path)
    assert engine.push_logs("a1", [pushed(attempt, 1, 4), pushed(attempt, 5, 1)]) == (5, 0)
    with pytest.raises(ApiError) as info:  # count says 3, text holds 2
        engine.push_logs("a1", [types_pb2.LogLine(attempt_id=attempt, seq=6, stream=OUT, text="a\nb", count=3)])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ApiError) as info:
        engine.push_logs("a2", [pushed(attempt, 6, 2)])
    assert info.value.code == grpc.StatusCode.ABORTED
    # A single line with a newline in it (an old agent's note) stays one line.
    note = types_pb2.LogLine(attempt_id=attempt, rank=-1, seq=1, stream=types_pb2.LOG_STREAM_SYSTEM, text="x\ny")
    assert engine.push_logs("a1", [note]) == (1, 0)
    engine.store.close()

    config = SchedulerConfig(state_dir=str(tmp_path), heartbeat_interval=1, heartbeat_timeout=10)
    again = Engine(Store(tmp_path / "s.db"), config, clock=FakeClock())
    assert again.push_logs("a1", [pushed(attempt, 3, 6)]) == (3, 3)  # resent after the restart, and more
    got = [line for b in again.store.logs.read(run_id, 0)[0] for line in single_lines(b)]
    assert [x.text for x in got if x.rank == 0] == [f"r0 l{i}" for i in range(1, 9)]
    assert [x.text for x in got if x.rank == -1] == ["x y"]
    assert [x.cursor for x in got] == list(range(1, 10))
    again.store.close()
