"""StreamLogs in the scheduler's event loop: a damaged log or a huge row stalls no other task, every message
stays far below gRPC's 4 MiB, and a following client's stream ends only when no node of the run still runs
(a gang's other nodes may still be stopping, and shipping their last lines, after the run has ended)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from test_engine import ALICE, drain, spec, status
from test_gang import node_hello

from gridlab.common.config import SchedulerConfig
from gridlab.common.timeutil import FakeClock
from gridlab.scheduler import auth
from gridlab.scheduler.api import SchedulerService
from gridlab.scheduler.engine import Engine
from gridlab.scheduler.errors import ApiError
from gridlab.scheduler.logstore import Batch
from gridlab.scheduler.store import Store
from gridlab.v1 import scheduler_pb2, types_pb2

OUT = types_pb2.LOG_STREAM_STDOUT
ADMIN = auth.Principal("root", "admin")
MESSAGE_LIMIT = 4 * 1024 * 1024


class Context:
    async def abort(self, code: Any, message: str) -> None:
        raise ApiError(code, message)


def make_engine(tmp_path: Path) -> Engine:
    config = SchedulerConfig(state_dir=str(tmp_path), heartbeat_interval=1, heartbeat_timeout=10, prepare_timeout=60)
    return Engine(Store(tmp_path / "s.db"), config, clock=FakeClock())


def submitted(engine: Engine) -> str:
    run_id, _ = engine.submit(ALICE, spec("true"), "")
    return run_id


def store_lines(engine: Engine, run_id: str, rank: int, first: int, count: int, width: int = 0) -> None:
    text = "\n".join(f"r{rank} l{seq}".ljust(width, ".") for seq in range(first, first + count))
    engine.store.logs.append([Batch(run_id, "att-1", 1, rank, "", OUT, first, count, text, 1000.0)])


async def collect(engine: Engine, **request: Any) -> list[scheduler_pb2.StreamLogsResponse]:
    """StreamLogs as the grpc.aio server runs it: each message written (a pause) before the next is made."""
    auth._current.set(ADMIN)
    stream: AsyncIterator[scheduler_pb2.StreamLogsResponse] = SchedulerService(engine).StreamLogs(
        scheduler_pb2.StreamLogsRequest(**request), Context()
    )
    out = []
    async for response in stream:
        assert response.ByteSize() < MESSAGE_LIMIT // 3
        out.append(response)
        await asyncio.sleep(0)
    return out


async def with_ticker(work: Any) -> tuple[Any, float]:
    """Run `work` beside a task that ticks every millisecond; the longest the loop kept it waiting."""
    gaps = [0.0]
    done = asyncio.Event()

    async def tick() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    try:
        result = await work
    finally:
        done.set()
        await ticker
    return result, max(gaps)


def lines_of(responses: list[scheduler_pb2.StreamLogsResponse]) -> list[str]:
    return [text for r in responses for b in r.lines for text in b.text.split("\n")]


def test_a_deleted_log_folder_stalls_no_one_and_warns_once_per_file(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    run_id = submitted(engine)
    files = 8
    for rank in range(files):
        for start in range(1, 3001, 1000):  # many small batches: one index row each
            batches = [
                Batch(run_id, "att-1", 1, rank, "", OUT, seq, 1, f"r{rank} l{seq}", 1000.0)
                for seq in range(start, start + 1000)
            ]
            engine.store.logs.append(batches)
    engine.store.close()
    shutil.rmtree(tmp_path / "logs")
    engine = make_engine(tmp_path)  # reopened: no descriptor of the old files is left
    with capture_logs() as captured:
        for batched in (True, False):
            got, stall = asyncio.run(with_ticker(collect(engine, run_id=run_id, batched=batched)))
            assert got == []
            assert stall < 0.1, f"the event loop was blocked for {stall:.3f}s"
    warnings = [e for e in captured if e["log_level"] == "warning"]
    assert 1 <= len(warnings) <= files, len(warnings)
    engine.store.close()


def test_an_old_client_gets_a_huge_batch_a_message_at_a_time(tmp_path: Path) -> None:
    """Up to ~128K lines in one row: each message of single lines is made as the one before is sent."""
    engine = make_engine(tmp_path)
    run_id = submitted(engine)
    count = 120_000
    text = "\n".join("x" for _ in range(count))  # 2 bytes a line: one index row (256 KiB at most)
    engine.store.logs.append([Batch(run_id, "att-1", 1, 0, "", OUT, 1, count, text, 1000.0)])
    assert engine.store.one("SELECT COUNT(*) FROM log_batches")[0] == 1
    got, stall = asyncio.run(with_ticker(collect(engine, run_id=run_id)))
    assert stall < 0.1, f"the event loop was blocked for {stall:.3f}s"
    assert sum(len(r.lines) for r in got) == count
    assert all(len(r.lines) <= 500 for r in got)
    engine.store.close()


def test_every_message_stays_far_below_the_limit_with_long_lines_and_wide_characters(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    run_id = submitted(engine)
    wide = "\U0001f600" * 60_000  # 240 KB of UTF-8 in 60,000 characters: a line the agent may send
    store_lines(engine, run_id, 0, 1, 1)
    engine.store.logs.append([Batch(run_id, "att-1", 1, 0, "", OUT, 2, 40, "\n".join([wide] * 40), 1000.0)])
    engine.store.logs.append([Batch(run_id, "att-1", 1, 0, "", OUT, 42, 1, "y" * (5 << 20), 1000.0)])
    for batched in (True, False):
        got = asyncio.run(collect(engine, run_id=run_id, batched=batched))  # (collect checks each message)
        texts = lines_of(got)
        assert len(texts) == 42
        assert texts[1:41] == [wide] * 40
        assert texts[41].startswith("y" * 60_000)
    engine.store.close()


def test_following_a_gang_ends_only_when_its_last_node_has_stopped(tmp_path: Path) -> None:
    """Node 1 fails: the run ends, and node 0 is told to stop. Its ranks print their last lines on the way
    out; the follower gets them, and its stream ends once node 0 reports its ranks gone."""
    engine = make_engine(tmp_path)
    s0, s1 = node_hello(engine, "n0"), node_hello(engine, "n1")
    drain(s0)
    drain(s1)
    run = spec("python", "train.py")
    run.resources.nodes = 2
    run_id, _ = engine.submit(ALICE, run, "")
    assert engine.place_once() == 1
    attempt = drain(s0)[0].assign.attempt_id
    drain(s1)
    for s in (s0, s1):
        engine.agent_update(s, status(attempt, "RUNNING"))

    def line(rank: int, seq: int, text: str) -> types_pb2.LogLine:
        return types_pb2.LogLine(attempt_id=attempt, rank=rank, seq=seq, stream=OUT, text=text)

    engine.push_logs("n0", [line(0, 1, "rank 0 step 1")])
    engine.push_logs("n1", [line(1, 1, "rank 1 boom")])
    engine.agent_update(s1, status(attempt, "FAILED", exit_code=1))
    assert engine.store.one("SELECT state FROM runs WHERE id = ?", (run_id,))["state"] == "FAILED"

    async def scenario() -> list[str]:
        follower = asyncio.create_task(collect(engine, run_id=run_id, follow=True, batched=True))
        await asyncio.sleep(0.3)
        assert not follower.done(), "the stream ended while node 0 was still stopping"
        engine.push_logs("n0", [line(0, 2, "rank 0 got SIGTERM, saving")])
        await asyncio.sleep(0.1)
        assert not follower.done()
        engine.agent_update(s0, status(attempt, "CANCELLED"))  # its ranks are gone (lines flushed first)
        return lines_of(await asyncio.wait_for(follower, 5))

    got = asyncio.run(scenario())
    assert got == ["rank 0 step 1", "rank 1 boom", "rank 0 got SIGTERM, saving"]
    engine.store.close()


@pytest.mark.parametrize("state", ["SUCCEEDED", "FAILED"])
def test_following_a_one_node_run_ends_when_it_ends(tmp_path: Path, state: str) -> None:
    engine = make_engine(tmp_path)
    s = node_hello(engine, "n0")
    run_id, _ = engine.submit(ALICE, spec("true"), "")
    engine.place_once()
    attempt = [m for m in drain(s) if m.WhichOneof("msg") == "assign"][0].assign.attempt_id
    engine.agent_update(s, status(attempt, "RUNNING"))
    engine.push_logs("n0", [types_pb2.LogLine(attempt_id=attempt, seq=1, stream=OUT, text="hi")])

    async def scenario() -> list[str]:
        follower = asyncio.create_task(collect(engine, run_id=run_id, follow=True))
        await asyncio.sleep(0.1)
        assert not follower.done()
        engine.agent_update(s, status(attempt, state))
        return lines_of(await asyncio.wait_for(follower, 5))

    assert asyncio.run(scenario()) == ["hi"]
    engine.store.close()
