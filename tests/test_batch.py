"""Group commit: many functions, one transaction; each function's failure is its own; a failed commit
undoes the batch, tells every waiting caller, and drops the agent streams (their outboxes unsent)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gridlab.scheduler import batch
from gridlab.scheduler.batch import Batcher
from gridlab.scheduler.store import Store


def insert(store: Store, key: str, value: int) -> int:
    with store.transaction() as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
    return value


def fail_after_insert(store: Store) -> None:
    with store.transaction() as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('b', 2)")
        raise ZeroDivisionError


def keys(path: Path) -> set[str]:
    other = Store(path)  # a second connection sees only what was committed
    try:
        return {r["key"] for r in other.all("SELECT key FROM meta")}
    finally:
        other.close()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "scheduler.db")
    s.conn.execute("DELETE FROM meta")
    yield s  # type: ignore[misc]
    s.close()


def test_a_failing_transaction_in_a_group_undoes_only_its_own_writes(store: Store) -> None:
    with store.group():
        insert(store, "a", 1)
        with pytest.raises(ZeroDivisionError):
            fail_after_insert(store)
        insert(store, "c", 3)
        assert keys(store.path) == set()  # nothing is visible to others before the group commits
    assert keys(store.path) == {"a", "c"}
    with pytest.raises(RuntimeError, match="not reentrant"), store.group(), store.group():
        pass


def test_callers_get_their_results_after_one_commit_and_errors_stay_their_own(store: Store) -> None:
    async def go() -> tuple[list[object], int]:
        batcher = Batcher(store)
        runner = asyncio.create_task(batcher.run())

        def duplicate() -> int:
            return insert(store, "k1", 9)  # the primary key is taken by the first call

        calls = [batcher.call(lambda i=i: insert(store, f"k{i}", i)) for i in range(1, 6)]
        results = await asyncio.gather(*calls, batcher.call(duplicate), return_exceptions=True)
        runner.cancel()
        return results, batcher.batches

    results, batches = asyncio.run(go())
    assert results[:5] == [1, 2, 3, 4, 5]
    assert "UNIQUE" in str(results[5])
    assert batches == 1  # all six in one transaction
    assert keys(store.path) == {f"k{i}" for i in range(1, 6)}


def test_a_failed_commit_undoes_the_batch_tells_the_callers_and_drops_the_streams(store: Store) -> None:
    dropped = []

    def violates_at_commit() -> None:  # a deferred foreign key fails the COMMIT itself, not the statement
        with store.transaction() as conn:
            conn.execute("PRAGMA defer_foreign_keys=ON")
            conn.execute("INSERT INTO attempts (id, run_id, number, state, created_at) VALUES ('a', 'nope', 1, 'X', 0)")

    async def go() -> list[object]:
        batcher = Batcher(store, on_commit_failure=lambda: dropped.append(True))
        runner = asyncio.create_task(batcher.run())
        out = await asyncio.gather(
            batcher.call(lambda: insert(store, "lost", 1)), batcher.call(violates_at_commit), return_exceptions=True
        )
        ok = await batcher.call(lambda: insert(store, "after", 2))  # the next batch works again
        runner.cancel()
        return [*out, ok]

    first, second, after = asyncio.run(go())
    assert isinstance(first, Exception)
    assert "FOREIGN KEY" in str(first)
    assert isinstance(second, Exception)
    assert after == 2
    assert dropped == [True]
    assert keys(store.path) == {"after"}  # the failed batch left nothing behind


def test_a_full_queue_makes_producers_wait(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "MAX_QUEUED", 3)
    monkeypatch.setattr(batch, "MAX_BATCH", 2)

    async def go() -> tuple[bool, int]:
        batcher = Batcher(store)
        for i in range(3):
            batcher.post(lambda i=i: insert(store, f"p{i}", i))
        blocked = asyncio.create_task(batcher.post_when_room(lambda: insert(store, "late", 9)))
        await asyncio.sleep(0.01)
        waited = not blocked.done()  # the batcher is not running: no room yet
        runner = asyncio.create_task(batcher.run())
        await blocked
        while batcher.functions < 4:
            await asyncio.sleep(0.01)
        runner.cancel()
        return waited, batcher.batches

    waited, batches = asyncio.run(go())
    assert waited
    assert batches >= 2  # MAX_BATCH bounds each transaction
    assert keys(store.path) == {"p0", "p1", "p2", "late"}


def test_when_sqlite_rolls_the_whole_batch_back_nothing_after_it_commits_on_its_own(store: Store) -> None:
    """A full disk or an I/O error makes SQLite undo the whole transaction; a later function must not then
    run in (and commit) a transaction of its own while its caller is told it failed."""
    store.conn.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON meta WHEN NEW.key = 'boom' "
        "BEGIN SELECT RAISE(ROLLBACK, 'disk full, as SQLite reports it'); END"
    )
    dropped = []

    async def go() -> list[object]:
        batcher = Batcher(store, on_commit_failure=lambda: dropped.append(True))
        runner = asyncio.create_task(batcher.run())
        out = await asyncio.gather(
            batcher.call(lambda: insert(store, "before", 1)),
            batcher.call(lambda: insert(store, "boom", 2)),
            batcher.call(lambda: insert(store, "after", 3)),
            return_exceptions=True,
        )
        runner.cancel()
        return out

    results = asyncio.run(go())
    assert all(isinstance(r, Exception) for r in results), results
    assert dropped == [True]
    assert keys(store.path) == set()


def test_a_caller_that_went_away_is_skipped_and_a_cancellation_fails_the_batch_loudly(store: Store) -> None:
    ran: list[str] = []
    dropped = []

    async def go() -> tuple[bool, object, object]:
        batcher = Batcher(store, on_commit_failure=lambda: dropped.append(True))
        gone = asyncio.ensure_future(batcher.call(lambda: ran.append("gone")))
        await asyncio.sleep(0)
        gone.cancel()  # e.g. an agent hung up while its Hello waited for the batch
        kept = asyncio.ensure_future(batcher.call(lambda: insert(store, "kept", 1)))
        runner = asyncio.create_task(batcher.run())
        assert await kept == 1

        def cancelled() -> None:
            raise asyncio.CancelledError  # not an Exception: must not leave the batch half done

        waiting = asyncio.ensure_future(batcher.call(lambda: insert(store, "undone", 2)))
        batcher.post(cancelled)
        await asyncio.wait([runner, waiting], timeout=5)
        return runner.done(), waiting.exception(), runner.cancelled() or runner.exception()

    runner_done, waiting_error, runner_end = asyncio.run(go())
    assert ran == []
    assert runner_done  # the batcher re-raised it: main sees the task end and stops the scheduler
    assert isinstance(waiting_error, batch.GroupAborted)
    assert dropped == [True]
    assert keys(store.path) == {"kept"}
    assert runner_end


def test_the_tail_runs_inside_every_batch_and_its_failure_is_its_own(store: Store) -> None:
    """The engine's placement pass rides at the end of a batch: in its transaction (committed with it, seeing its
    functions' writes), once per batch; a tail that fails undoes its own writes only."""

    async def go() -> tuple[list[set[str]], int]:
        batcher = Batcher(store)
        seen: list[set[str]] = []
        fail = [False]

        def tail() -> None:
            seen.append({r["key"] for r in store.all("SELECT key FROM meta")})
            with store.transaction() as conn:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('tail', ?)", (len(seen),))
                if fail[0]:
                    raise ZeroDivisionError

        batcher.tail = tail
        runner = asyncio.create_task(batcher.run())
        await asyncio.gather(batcher.call(lambda: insert(store, "a", 1)), batcher.call(lambda: insert(store, "b", 2)))
        fail[0] = True
        await batcher.call(lambda: insert(store, "c", 3))
        runner.cancel()
        return seen, store.one("SELECT value FROM meta WHERE key = 'tail'")["value"]

    seen, tail_value = asyncio.run(go())
    assert seen == [{"a", "b"}, {"a", "b", "c", "tail"}]  # one tail per batch, after that batch's functions
    assert keys(store.path) == {"a", "b", "c", "tail"}  # the failed tail's write undone, "c" committed
    assert tail_value == 1


def test_savepoint_journals_stay_in_memory_and_still_roll_back(store: Store) -> None:
    """Every function of a batch is a savepoint; the pages it changes are journaled for its rollback. Those
    journals are kept in memory (temp_store=MEMORY), not spilled to a temporary file one pwrite per page."""

    def temp_files() -> set[str]:
        fds = Path("/proc/self/fd")
        return {t for t in (str(p.readlink()) for p in fds.iterdir() if p.exists()) if "etilqs" in t}

    before = temp_files()
    big = "x" * 3000
    with store.group():
        with store.transaction() as conn:
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [(f"k{i}{big}", i) for i in range(400)])
        seen: list[set[str]] = []

        def bump_then_fail() -> None:
            with store.transaction() as conn:  # ~1.2 MB of pages journaled, then rolled back
                conn.execute("UPDATE meta SET value = value + 1000")
                seen.append(temp_files())
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            bump_then_fail()
    assert seen == [before]
    assert store.one("SELECT SUM(value) FROM meta")[0] == sum(range(400))  # type: ignore[index]
