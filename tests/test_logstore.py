"""The scheduler's log files and their index: batches in, lines out once each and in order, across
resends, restarts, a crash between a file write and its commit, a power loss that undoes index rows,
damaged and deleted files, lines too long, and the upgrade from the one-row-per-line table; push_logs'
checks of what an agent sends."""

from __future__ import annotations

import collections
import os
import random
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

from gridlab.common.config import SchedulerConfig
from gridlab.common.timeutil import FakeClock
from gridlab.scheduler import logstore as logstore_module
from gridlab.scheduler import store as store_module
from gridlab.scheduler.auth import Principal
from gridlab.scheduler.convert import single_lines
from gridlab.scheduler.engine import AgentSession, Engine
from gridlab.scheduler.errors import ApiError
from gridlab.scheduler.logstore import Batch, LogStore
from gridlab.scheduler.store import Store
from gridlab.v1 import agent_pb2, scheduler_pb2, types_pb2

OUT = types_pb2.LOG_STREAM_STDOUT
INVALID = grpc.StatusCode.INVALID_ARGUMENT
MAX_LINE_CHARS = 64 * 1024


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


def test_cursors_handed_out_before_a_power_loss_are_not_handed_out_again(tmp_path: Path) -> None:
    """Index rows are committed without an fsync, so a power loss may undo the last of them. New lines
    still get cursors past every one a client may hold: cursors come from blocks reserved durably."""
    path = tmp_path / "s.db"
    first = Store(path)
    first.logs.append([batch(1, 5)])
    durable = sqlite3.connect(tmp_path / "durable.db")  # what the disk holds after the power loss
    first.conn.backup(durable)
    durable.close()
    first.logs.append([batch(6, 5)])  # its index row never reached the disk
    seen = [x.cursor for x in lines(first.logs)]
    assert seen == list(range(1, 11))  # a following client holds cursor 10
    first.close()
    for old in tmp_path.glob("s.db*"):
        old.unlink()
    shutil.copy(tmp_path / "durable.db", path)

    second = Store(path)
    logs = second.logs
    assert texts(logs) == [f"r0 l{i}" for i in range(1, 6)]
    assert logs.append([batch(6, 5)]) == (5, 0)  # the agent resends what was not stored
    assert [x.text for x in lines(logs, after=max(seen))] == [f"r0 l{i}" for i in range(6, 11)]  # none missed
    second.close()


def test_a_clean_restart_goes_on_from_the_next_cursor_a_crash_from_the_reserved_mark(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = Store(path)
    first.logs.append([batch(1, 3)])
    first.close()  # gives back the cursors it reserved
    second = Store(path)
    second.logs.append([batch(4, 2)])
    assert [x.cursor for x in lines(second.logs)] == [1, 2, 3, 4, 5]
    second.conn.close()  # a crash: nothing given back
    for fd in second.logs._fds.values():
        os.close(fd)
    third = Store(path)
    third.logs.append([batch(6, 1)])
    (line,) = lines(third.logs, after=5)
    assert line.cursor > 5 + 1000  # from the reserved mark: the crash may have lost index rows
    third.close()


def test_a_line_too_long_is_cut_when_stored(store: Store) -> None:
    logs = store.logs
    text = "\n".join(["before", "x" * (3 << 20), "after"])  # a hostile agent's 3 MiB line
    assert logs.append([Batch("run-1", "att-1", 1, 0, "", OUT, 1, 3, text, 1000.0)]) == (3, 0)
    before, long, after = texts(logs)
    assert (before, after) == ("before", "after")
    assert long.startswith("x" * MAX_LINE_CHARS)
    assert MAX_LINE_CHARS < len(long) < MAX_LINE_CHARS + 100  # marked as cut
    assert logs.append([Batch("run-1", "att-1", 1, 0, "", OUT, 2, 3, text, 1000.0)]) == (1, 2)  # seqs as sent


def test_a_row_bigger_than_a_message_is_read_in_parts_between_its_lines(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = store.logs
    logs.append([batch(1, 1000)])
    got: list[types_pb2.LogLine] = []
    after = 0
    while True:
        batches, upto = logs.read("run-1", after, max_bytes=1000)
        if upto == after:
            break
        assert sum(len(b.text.encode()) for b in batches) <= 1000
        got.extend(line for b in batches for line in single_lines(b))
        after = upto
    check_in_order(got)
    assert len(got) == 1000
    # A line stored before lines were cut, bigger than a message: it comes cut, and the lines after it.
    monkeypatch.setattr(logstore_module, "_cut_long_lines", lambda text: text)
    huge = "y" * (5 << 20)
    logs.append([Batch("run-1", "att-1", 1, 1, "", OUT, 1, 2, f"{huge}\nr1 l2", 1000.0)])
    batches, upto = logs.read("run-1", 1000)
    assert scheduler_pb2.StreamLogsResponse(lines=batches).ByteSize() < 1100 * 1024
    assert [(b.rank, b.seq, b.count) for b in batches] == [(1, 1, 0)]
    assert batches[0].text.startswith("y" * 1000)
    assert [x.text for x in lines(logs, after=upto)] == ["r1 l2"]


def test_a_deleted_log_folder_costs_one_warning_per_file_and_no_call_per_row(tmp_path: Path) -> None:
    first = Store(tmp_path / "s.db")
    for rank in range(4):
        first.logs.append([batch(seq, 1, rank=rank) for seq in range(1, 301)])
    first.close()
    shutil.rmtree(tmp_path / "logs")
    opened: list[object] = []
    real_open = os.open

    def counting_open(path: object, *args: object, **kw: object) -> int:
        opened.append(path)
        return real_open(path, *args, **kw)  # type: ignore[arg-type]

    second = Store(tmp_path / "s.db")
    with capture_logs() as captured, pytest.MonkeyPatch.context() as mp:
        mp.setattr(logstore_module.os, "open", counting_open)
        assert texts(second.logs) == []
        assert texts(second.logs) == []  # read again: the files are known gone
    warnings = [e for e in captured if e["log_level"] == "warning"]
    assert len(warnings) == 4  # one per file
    assert len(opened) == 4
    assert second.logs.append([batch(301, 2)]) == (2, 0)  # the rank goes on, in a new file
    assert texts(second.logs) == ["r0 l301", "r0 l302"]
    second.close()


def test_a_truncated_file_loses_the_rows_past_its_end_only(store: Store, tmp_path: Path) -> None:
    logs = store.logs
    for seq in range(1, 101):
        logs.append([batch(seq, 1)])
    logs.append([batch(1, 1, rank=1)])
    path = tmp_path / "logs" / "run-1" / "att-1" / "rank-0.log"
    keep = len("".join(f"r0 l{i}\n" for i in range(1, 41)))
    with path.open("r+b") as f:
        f.truncate(keep + 3)
    logs.close()
    with capture_logs() as captured:
        assert texts(logs) == [f"r0 l{i}" for i in range(1, 41)] + ["r1 l1"]
    assert len([e for e in captured if e["log_level"] == "warning"]) == 1
    assert logs.append([batch(101, 1)]) == (1, 0)  # appended after the committed size: readable
    assert texts(logs, rank=0)[-1] == "r0 l101"


def test_after_the_upgrade_each_node_of_a_gang_numbers_its_agent_lines_from_1(tmp_path: Path) -> None:
    """Schema 3 kept one line per (attempt, rank, seq): a gang's two agents' notes shared one numbering. After
    the upgrade each node's notes are kept apart, and another node's highest seq says nothing of this one's."""
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path, isolation_level=None)
    db = store_module.sqlite_utils.Database(conn)
    for version in (1, 2, 3):
        store_module.MIGRATIONS[version](db)
    conn.execute("PRAGMA user_version=3")
    conn.executemany(
        "INSERT INTO attempt_nodes (attempt_id, node_rank, agent_name, gpu_uuids, cpus, state) "
        "VALUES (?, ?, ?, '[]', 1, 'RUNNING')",
        [("att-1", 0, "node-a"), ("att-1", 1, "node-b"), ("att-2", 0, "solo")],
    )
    conn.executemany(
        "INSERT INTO logs (run_id, attempt_id, attempt_number, rank, seq, stream, text, time) "
        "VALUES (?, ?, 1, -1, ?, ?, ?, 1000.0)",
        [
            ("run-1", a, seq, types_pb2.LOG_STREAM_SYSTEM, f"r-1 l{seq}")
            for a in ("att-1", "att-2")
            for seq in (1, 2, 3)
        ],
    )
    conn.close()
    store = Store(path)
    logs = store.logs
    assert logs.append([batch(1, 2, rank=-1, source="node-b")]) == (2, 0)
    assert logs.append([batch(1, 4, rank=-1, source="solo", attempt="att-2")]) == (1, 3)  # its own, stored
    store.close()


def placed_gang(tmp_path: Path, procs: int) -> tuple[Engine, str, str]:
    config = SchedulerConfig(state_dir=str(tmp_path), heartbeat_interval=1, heartbeat_timeout=10)
    engine = Engine(Store(tmp_path / "s.db"), config, clock=FakeClock())
    sessions = []
    for name in ("n0", "n1"):
        inventory = types_pb2.Inventory(hostname=name, address=name, cpus=8, memory_bytes=64 << 30)
        sessions.append(engine.agent_hello(agent_pb2.Hello(name=name, inventory=inventory)))
    spec = types_pb2.RunSpec(command=["true"], resources=types_pb2.Resources(nodes=2, procs_per_node=procs))
    run_id, _ = engine.submit(Principal("alice", "user"), spec, "")
    engine.place_once()
    attempt = drain_assign(sessions[0])
    return engine, run_id, attempt


def refused(engine: Engine, agent: str, line: types_pb2.LogLine) -> grpc.StatusCode:
    with pytest.raises(ApiError) as info:
        engine.push_logs(agent, [line])
    return info.value.code


def test_push_logs_takes_only_the_ranks_the_pushing_agents_node_runs(tmp_path: Path) -> None:
    engine, run_id, attempt = placed_gang(tmp_path, procs=2)  # n0 runs ranks 0 and 1, n1 ranks 2 and 3
    for rank in (0, 1, -1, -2):
        assert engine.push_logs("n0", [pushed(attempt, 1, 1, rank=rank)]) == (1, 0)
    for rank in (2, 3, -1):
        assert engine.push_logs("n1", [pushed(attempt, 1, 1, rank=rank)]) == (1, 0)
    for rank in (2, 4, -3, 2**31 - 1, -(2**31)):
        assert refused(engine, "n0", pushed(attempt, 1, 1, rank=rank)) == INVALID
    for rank in (0, 1, 4):
        assert refused(engine, "n1", pushed(attempt, 1, 1, rank=rank)) == INVALID
    # A push is refused whole: its good lines are not stored either.
    with pytest.raises(ApiError):
        engine.push_logs("n0", [pushed(attempt, 2, 1, rank=0), pushed(attempt, 2, 1, rank=2)])
    assert engine.push_logs("n0", [pushed(attempt, 2, 1, rank=0)]) == (1, 0)
    engine.store.close()

    config = SchedulerConfig(state_dir=str(tmp_path), heartbeat_interval=1, heartbeat_timeout=10)
    again = Engine(Store(tmp_path / "s.db"), config, clock=FakeClock())  # ranks learnt from the store
    assert again.push_logs("n1", [pushed(attempt, 2, 1, rank=3)]) == (1, 0)
    assert refused(again, "n1", pushed(attempt, 1, 1, rank=1)) == INVALID
    names = sorted(p.name for p in (tmp_path / "logs" / run_id / attempt).iterdir())
    assert [n for n in names if n.startswith("rank-")] == ["rank-0.log", "rank-1.log", "rank-2.log", "rank-3.log"]
    again.store.close()


def test_push_logs_refuses_seqs_past_2_62_and_answers_bad_input_with_an_api_error_only(tmp_path: Path) -> None:
    engine, _, attempt = placed(tmp_path)
    assert refused(engine, "a1", pushed(attempt, 2**63 - 1, 2)) == INVALID  # was an OverflowError: UNKNOWN
    assert refused(engine, "a1", pushed(attempt, 2**62, 2)) == INVALID
    assert engine.push_logs("a1", [pushed(attempt, 2**62 - 1, 2)]) == (2, 0)
    with pytest.raises(ApiError) as info:
        engine.store.logs.append([batch(2**63 - 1, 2)])
    assert info.value.code == INVALID
    rng = random.Random(5)
    edges = [0, 1, 2, -1, -2, -3, 2**31 - 1, -(2**31), 2**62, 2**63 - 1, -(2**63)]

    def pick(bits: int) -> int:
        value = rng.choice(edges) if rng.random() < 0.7 else rng.getrandbits(bits) - (1 << (bits - 1))
        return max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, value))

    codes: collections.Counter[str] = collections.Counter()
    for _ in range(2000):
        count = pick(32) if rng.random() < 0.5 else rng.randint(0, 4)
        line = types_pb2.LogLine(
            attempt_id=attempt,
            rank=pick(32),
            seq=pick(64),
            count=count,
            stream=pick(32) if rng.random() < 0.3 else OUT,
            text="\n".join(["z" * rng.randint(0, 3)] * rng.randint(1, 4)),
        )
        if rng.random() < 0.3:
            line.time.seconds, line.time.nanos = pick(64), pick(32)
        try:
            engine.push_logs("a1", [line])
        except ApiError as exc:  # anything else reaches the agent as UNKNOWN, which it retries forever
            codes[exc.code.name] += 1
        else:
            codes["stored"] += 1
    assert set(codes) == {"stored", "INVALID_ARGUMENT"}, codes
    engine.store.close()
