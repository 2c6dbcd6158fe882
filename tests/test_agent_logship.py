"""Log lines: splitting, numbering, and the shipper's batching, retries and acks."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc
import pytest

from gridlab.agent.logship import AttemptLog, LineSplitter, LogShipper, expand, pump_batches, pump_lines
from gridlab.v1 import types_pb2

T = TypeVar("T")


def arun(coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def singles(lines: list[types_pb2.LogLine]) -> list[types_pb2.LogLine]:
    """A push's LogLines (batches: the shipper merges a rank's consecutive lines) as single lines."""
    return [one for line in lines for one in expand(line)]


def test_splitter_lines_partial_and_crlf() -> None:
    s = LineSplitter()
    assert s.feed(b"a\nb") == ["a"]
    assert s.feed(b"c\r\n\n") == ["bc", ""]
    assert s.feed(b"tail") == []
    assert s.finish() == ["tail"]
    assert s.finish() == []


def test_splitter_bad_utf8_is_replaced() -> None:
    assert LineSplitter().feed(b"ok \xff\xfe end\n") == ["ok \ufffd\ufffd end"]


def test_splitter_long_lines_split_on_char_boundaries() -> None:
    s = LineSplitter(max_bytes=10)
    text = "é" * 12  # 24 bytes, 2 per character
    pieces = s.feed(text.encode() + b"\n")
    assert "".join(pieces) == text
    assert all(len(p.encode()) <= 10 for p in pieces)
    # an unterminated long line is emitted before its newline arrives
    s2 = LineSplitter(max_bytes=4)
    assert s2.feed(b"abcdefghij") == ["abcd", "efgh"]
    assert s2.finish() == ["ij"]


def test_pump_lines_reads_to_eof() -> None:
    async def go() -> list[str]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"one\ntw")
        reader.feed_data(b"o\n" + b"x" * 70_000)
        reader.feed_eof()
        out: list[str] = []
        await pump_lines(reader, out.append, chunk=1000)
        return out

    out = arun(go())
    assert out[:2] == ["one", "two"]
    assert "".join(out[2:]) == "x" * 70_000
    assert max(len(x) for x in out) <= 64 * 1024


def test_seq_per_rank_shared_by_streams() -> None:
    log = AttemptLog("att-1", clock=lambda: 5.0)
    out = types_pb2.LOG_STREAM_STDOUT
    err = types_pb2.LOG_STREAM_STDERR
    lines = [log.line(0, out, "a"), log.line(0, err, "b"), log.line(1, out, "c")]
    lines.append(log.line(0, out, "d"))
    assert [(x.rank, x.seq) for x in lines] == [(0, 1), (0, 2), (1, 1), (0, 3)]
    assert lines[0].attempt_id == "att-1"
    assert lines[0].time.seconds == 5


class _Rpc(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def _line(log: AttemptLog, text: str, rank: int = 0) -> types_pb2.LogLine:
    return log.line(rank, types_pb2.LOG_STREAM_STDOUT, text)


def test_shipper_batches_retries_and_acks() -> None:
    async def go() -> list[list[tuple[str, int]]]:
        calls: list[list[tuple[str, int]]] = []
        fail = [True]

        async def push(lines: list[types_pb2.LogLine]) -> None:
            calls.append([(x.attempt_id, x.seq) for x in singles(lines)])
            if fail[0]:
                fail[0] = False
                raise _Rpc(grpc.StatusCode.UNAVAILABLE)

        shipper = LogShipper(push, max_batch_lines=3, retry_min=0.01)
        task = asyncio.create_task(shipper.run())
        log = AttemptLog("a1")
        for i in range(5):
            shipper.add(_line(log, str(i)))
        assert await shipper.wait_acked("a1", 5)
        assert shipper.pending() == 0
        task.cancel()
        return calls

    calls = arun(go())
    # first batch failed and was resent as is; all lines arrive, in order
    assert calls[0] == calls[1] == [("a1", 1), ("a1", 2), ("a1", 3)]
    assert calls[2] == [("a1", 4), ("a1", 5)]


def test_shipper_one_attempt_per_call_and_aborted_drops() -> None:
    async def go() -> tuple[list[str], bool, bool]:
        seen: list[str] = []

        async def push(lines: list[types_pb2.LogLine]) -> None:
            ids = {x.attempt_id for x in lines}
            assert len(ids) == 1
            seen.append(ids.pop())
            if lines[0].attempt_id == "gone":
                raise _Rpc(grpc.StatusCode.ABORTED)

        shipper = LogShipper(push)
        task = asyncio.create_task(shipper.run())
        a, b = AttemptLog("ok"), AttemptLog("gone")
        for i in range(3):
            shipper.add(_line(a, str(i)))
            shipper.add(_line(b, str(i)))
        ok = await shipper.wait_acked("ok", 5)
        gone = await shipper.wait_acked("gone", 5)
        task.cancel()
        return seen, ok, gone

    seen, ok, gone = arun(go())
    assert ok
    assert gone  # dropped counts as done: nobody will ever take them
    assert seen.count("gone") == 1


def test_wait_acked_times_out_while_scheduler_down() -> None:
    async def go() -> tuple[bool, int]:
        async def push(lines: list[types_pb2.LogLine]) -> None:
            raise _Rpc(grpc.StatusCode.UNAVAILABLE)

        shipper = LogShipper(push, retry_min=0.01, retry_max=0.05)
        task = asyncio.create_task(shipper.run())
        shipper.add(_line(AttemptLog("a"), "x"))
        ok = await shipper.wait_acked("a", 0.3)
        task.cancel()
        return ok, shipper.pending("a")

    assert arun(go()) == (False, 1)


def test_shipper_latency_is_immediate() -> None:
    async def go() -> float:
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()

        async def push(lines: list[types_pb2.LogLine]) -> None:
            arrived.set()

        shipper = LogShipper(push)
        task = asyncio.create_task(shipper.run())
        await asyncio.sleep(0.05)
        start = loop.time()
        shipper.add(_line(AttemptLog("a"), "x"))
        await arrived.wait()
        task.cancel()
        return loop.time() - start

    assert arun(go()) < 0.05


@pytest.mark.parametrize("cap", [2000])
def test_shipper_sheds_oldest_when_buffer_full(cap: int) -> None:
    async def go() -> int:
        async def push(lines: list[types_pb2.LogLine]) -> None:
            raise _Rpc(grpc.StatusCode.UNAVAILABLE)

        shipper = LogShipper(push, max_pending_bytes=cap)
        log = AttemptLog("a")
        for i in range(200):
            shipper.add(_line(log, f"line {i}"))
        return shipper.pending("a")

    assert 0 < arun(go()) < 200


def test_invalid_argument_drops_that_batch_only() -> None:
    async def go() -> tuple[list[list[str]], bool, int]:
        calls: list[list[str]] = []

        async def push(lines: list[types_pb2.LogLine]) -> None:
            calls.append([x.text for x in singles(lines)])
            if any(x.text == "bad" for x in lines):
                raise _Rpc(grpc.StatusCode.INVALID_ARGUMENT)

        shipper = LogShipper(push, max_batch_lines=2, retry_min=0.01)
        task = asyncio.create_task(shipper.run())
        log = AttemptLog("a1")
        for text in ("ok1", "bad", "ok2", "ok3"):
            shipper.add(_line(log, text))
        acked = await shipper.wait_acked("a1", 2)
        task.cancel()
        return calls, acked, shipper.pending()

    calls, acked, pending = arun(go())
    assert acked  # the refused batch did not hold up the attempt's later lines
    assert pending == 0
    assert calls == [["ok1", "bad"], ["ok2", "ok3"]]  # refused once, never resent


def gated_push(received: list[str], up: asyncio.Event) -> Any:
    """A PushLogs stand-in: UNAVAILABLE until `up` is set, then records the lines' texts."""

    async def push(lines: list[types_pb2.LogLine]) -> None:
        if not up.is_set():
            raise _Rpc(grpc.StatusCode.UNAVAILABLE)
        received.extend(x.text for x in singles(lines))

    return push


def test_shipper_spills_to_disk_instead_of_dropping_and_keeps_the_order(tmp_path) -> None:
    """A backlog past the memory cap (a fast printer, a slow or absent scheduler) goes to a spill file
    and comes back in order: nothing is lost, and memory stays near the cap."""

    async def go() -> tuple[list[str], int, list[str]]:
        received: list[str] = []
        up = asyncio.Event()
        push = gated_push(received, up)

        shipper = LogShipper(push, max_pending_bytes=2000, spill_dir=tmp_path, retry_min=0.01, retry_max=0.02)
        task = asyncio.create_task(shipper.run())
        log = AttemptLog("a")
        peak = 0
        for i in range(3000):
            shipper.add(_line(log, f"line {i}"))
            peak = max(peak, shipper._pending_bytes)
            if i % 500 == 0:
                await asyncio.sleep(0)
        spilled = [p.name for p in tmp_path.iterdir()]
        assert shipper.pending("a") == 3000  # none dropped
        up.set()
        shipper.kick()
        assert await shipper.wait_acked("a", 20)
        task.cancel()
        return received, peak, spilled

    received, peak, spilled = arun(go(), timeout=30)
    assert received == [f"line {i}" for i in range(3000)]
    assert peak <= 2000 + 200
    assert len(spilled) == 1
    assert list(tmp_path.iterdir()) == []  # read back and removed


def test_spill_rotates_segments_and_a_failing_disk_loses_lines_not_the_shipper(tmp_path) -> None:
    async def go() -> tuple[list[str], int, int, list[str]]:
        received: list[str] = []
        up = asyncio.Event()
        push = gated_push(received, up)

        shipper = LogShipper(
            push, max_pending_bytes=1000, spill_dir=tmp_path / "spill", spill_segment_bytes=2000, retry_min=0.01
        )
        task = asyncio.create_task(shipper.run())
        log = AttemptLog("a")
        for i in range(600):
            shipper.add(_line(log, f"line {i}"))
        segments = len(list((tmp_path / "spill").iterdir()))
        up.set()
        shipper.kick()
        assert await shipper.wait_acked("a", 20)
        left = len(list((tmp_path / "spill").iterdir()))

        # A disk that fails: the spill is abandoned with its lines counted as dropped; shipping goes on.
        (tmp_path / "blocked").write_text("a file where the spill folder should be")
        broken = LogShipper(push, max_pending_bytes=200, spill_dir=tmp_path / "blocked" / "spill")
        task2 = asyncio.create_task(broken.run())
        log2 = AttemptLog("b")
        before = len(received)
        for i in range(50):
            broken.add(_line(log2, f"b {i}"))
        assert await broken.wait_acked("b", 20)
        task.cancel()
        task2.cancel()
        return received, segments, left, received[before:]

    received, segments, left, second = arun(go(), timeout=30)
    assert received[:600] == [f"line {i}" for i in range(600)]
    assert segments > 3  # rotated
    assert left == 0  # each segment removed once read back
    assert second  # the lines that fit in memory still went out
    assert second == sorted(second, key=lambda t: int(t.split()[1]))  # in order, with a gap


def test_bulk_splitting_finds_the_same_lines_as_line_by_line() -> None:
    """feed_joined (bytes methods over whole reads) against feed (a step per line), over random reads
    with CR LF, lone CRs, empty lines, bad UTF-8, multi-byte characters cut by a read, and lines longer
    than the limit."""
    rng = random.Random(5)
    pieces = [b"a", b"line", b"\n", b"\r\n", b"\r", b"", b"\xff", "é€".encode(), b"x" * 9, b"\n\n"]
    for _ in range(300):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 60)))
        one, bulk = LineSplitter(max_bytes=8), LineSplitter(max_bytes=8)
        expected: list[str] = []
        got: list[str] = []
        pos = 0
        while pos < len(data):
            step = rng.randrange(1, 12)
            chunk = data[pos : pos + step]
            pos += step
            expected += one.feed(chunk)
            text, count = bulk.feed_joined(chunk)
            if count:
                assert text.count("\n") == count - 1
                got += text.split("\n")
        assert got + bulk.finish() == expected + one.finish(), data


def test_pump_batches_reads_to_eof_in_batches() -> None:
    async def go() -> list[tuple[str, int]]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"one\ntw")
        reader.feed_data(b"o\nthree\n\nlast")
        reader.feed_eof()
        out: list[tuple[str, int]] = []
        await pump_batches(reader, lambda text, count: out.append((text, count)))
        return out

    out = arun(go())
    assert out == [("one\ntwo\nthree\n", 4), ("last", 1)]


def test_lines_queued_behind_a_push_merge_into_one_batch() -> None:
    """A rank's reads that queue while a push is in flight go out as one LogLine (count lines), not one
    each; another rank's, or another stream's, start a batch of their own."""

    async def go() -> list[list[tuple[int, int, int, int]]]:
        calls: list[list[tuple[int, int, int, int]]] = []
        release = asyncio.Event()

        async def push(lines: list[types_pb2.LogLine]) -> None:
            calls.append([(x.rank, x.stream, x.seq, x.count) for x in lines])
            await release.wait()

        shipper = LogShipper(push)
        task = asyncio.create_task(shipper.run())
        log = AttemptLog("a1")
        shipper.add(_line(log, "first"))
        await asyncio.sleep(0.01)  # in flight now
        for i in range(100):
            shipper.add(log.batch(0, types_pb2.LOG_STREAM_STDOUT, f"{i}a\n{i}b", 2))
        shipper.add(_line(log, "rank 1", rank=1))
        shipper.add(log.line(0, types_pb2.LOG_STREAM_STDERR, "err"))
        assert shipper.pending("a1") == 1 + 200 + 2
        release.set()
        assert await shipper.wait_acked("a1", 5)
        task.cancel()
        return calls

    calls = arun(go())
    assert calls[0] == [(0, types_pb2.LOG_STREAM_STDOUT, 1, 0)]
    assert calls[1] == [
        (0, types_pb2.LOG_STREAM_STDOUT, 2, 200),
        (1, types_pb2.LOG_STREAM_STDOUT, 1, 0),
        (0, types_pb2.LOG_STREAM_STDERR, 202, 0),
    ]
