"""A checkpoint is recorded only after the log lines printed before it are acknowledged (agent/logfence.py),
so a resume from it never skips lines that an agent killed with -9 still held. Found by the chaos suite."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from fakestore import FakeArtifacts
from test_agent_launcher import Recorder

from gridlab.agent.launcher import Attempt, LaunchSettings
from gridlab.agent.logfence import OutputFence, PipeCount
from gridlab.agent.logship import AttemptLog, LogShipper
from gridlab.v1 import agent_pb2, types_pb2

T = TypeVar("T")


def arun(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Acks(Recorder):
    """A sink whose lines are acknowledged only as far as the test says: each rank's up to `acked[rank]`."""

    def __init__(self) -> None:
        super().__init__()
        self.acked: dict[int, int] = {}
        self.asked: list[dict[int, int]] = []

    def ack_all(self) -> None:
        self.acked = {rank: 1 << 30 for rank in (-2, -1, 0)}

    async def logs_settled(self, attempt_id: str, seqs: dict[int, int], timeout: float) -> bool:
        self.asked.append(dict(seqs))
        deadline = time.monotonic() + timeout
        while any(seq > self.acked.get(rank, 0) for rank, seq in seqs.items()):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True


# A rank that prints 50 lines, checkpoints (atomically, as the trainer does), says so, and waits to be stopped.
RANK = textwrap.dedent(
    """
    import os, time
    for i in range(1, 51):
        print("line", i, flush=True)
    folder = os.environ["GRIDLAB_CHECKPOINT_DIR"]
    with open(os.path.join(folder, ".tmp"), "wb") as f:
        f.write(b"weights")
    os.rename(os.path.join(folder, ".tmp"), os.path.join(folder, "step-50.ckpt"))
    print("saved", flush=True)
    time.sleep(60)
    """
)


def test_a_checkpoint_is_recorded_only_once_the_lines_before_it_are_acknowledged(tmp_path: Path) -> None:
    async def go() -> None:
        store = FakeArtifacts()
        settings = LaunchSettings(
            state_dir=tmp_path, grace_period=2, base_env=dict(os.environ), artifacts=store, checkpoint_poll=0.05
        )
        assignment = agent_pb2.Assignment(
            attempt_id="att-1",
            run_id="run-1",
            attempt_number=1,
            procs_per_node=1,
            spec=types_pb2.RunSpec(command=[sys.executable, "-c", RANK]),
        )
        sink = Acks()
        attempt = Attempt(assignment, settings, sink)
        task = asyncio.create_task(attempt.run())
        await sink.wait_for_text("saved")
        # The checkpoint settles (2 s), is uploaded, and then waits: none of the 50 lines is acknowledged.
        deadline = time.monotonic() + 15
        while not sink.asked:
            assert time.monotonic() < deadline, "the shipper never asked whether the lines were delivered"
            await asyncio.sleep(0.02)
        assert sink.asked[0][0] >= 50  # every line rank 0 printed before the checkpoint is inside its mark
        sink.acked = {-2: 1 << 30, -1: 1 << 30, 0: 49}  # all but one
        await asyncio.sleep(0.5)
        assert store.checkpoints == []
        assert store.uploads == 0  # nothing hashed or sent while it waits
        sink.ack_all()
        deadline = time.monotonic() + 15
        while not store.checkpoints:
            assert time.monotonic() < deadline, "acknowledged, yet the checkpoint was not recorded"
            await asyncio.sleep(0.02)
        assert [c.name for c in store.checkpoints] == ["step-50.ckpt"]
        attempt.cancel(types_pb2.ATTEMPT_STATE_CANCELLED, 0, "done")
        await task

    arun(go())


def test_pipe_count_sees_bytes_still_in_the_pipe_and_in_the_readers_buffer() -> None:
    async def go() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb"))
        transport.pause_reading()
        os.write(w, b"x" * 100)
        in_pipe = PipeCount(reader, transport).unread()
        transport.resume_reading()
        while len(reader._buffer) < 100:  # noqa: SLF001 - what unread() reads too
            await asyncio.sleep(0.01)
        os.write(w, b"y" * 10)
        both = PipeCount(reader, transport).unread()
        await reader.readexactly(110)
        os.close(w)
        await asyncio.sleep(0.05)
        drained = PipeCount(reader, transport).unread()
        transport.close()
        return in_pipe, both, drained

    assert arun(go()) == (100, 110, 0)


def test_the_fence_waits_for_the_pump_then_for_the_line_numbers_of_that_moment() -> None:
    async def go() -> list[dict[int, int]]:
        asked: list[dict[int, int]] = []
        seqs = {0: 0}

        async def settled(wanted: dict[int, int], timeout: float) -> bool:
            asked.append(dict(wanted))
            return True

        fence = OutputFence(lambda: dict(seqs), settled, poll=0.001)
        reader = asyncio.StreamReader()
        reader.feed_data(b"a\nb\n")  # written, not yet taken by the pump
        count = fence.add(reader, None)
        mark = fence.mark()
        assert not await fence.passed(mark, 0.05)  # the pump has not read them
        assert asked == []
        await reader.read(4)  # the pump takes them and numbers their lines
        count.consumed += 4
        seqs[0] = 2
        assert await fence.passed(mark, 1)
        seqs[0] = 9  # the rank printed on: the goal of this mark stays where it was
        assert await fence.passed(mark, 1)
        ended = fence.add(asyncio.StreamReader(), None)
        ended.ended = True  # a pipe at EOF holds nothing to wait for
        assert await fence.passed(fence.mark(), 1)
        return asked

    assert arun(go()) == [{0: 2}, {0: 2}, {0: 9}]


def test_settled_is_by_rank_and_line_number_so_lines_dropped_out_of_order_do_not_count_for_older_ones() -> None:
    async def go() -> tuple[bool, bool, bool, bool]:
        release = asyncio.Event()

        async def push(lines: list[types_pb2.LogLine]) -> None:
            await release.wait()  # the scheduler is slow: the first batch stays in flight

        shipper = LogShipper(push, max_batch_lines=10, max_pending_bytes=4000)
        task = asyncio.create_task(shipper.run())
        log = AttemptLog("a1")
        for i in range(10):
            shipper.add(log.line(0, types_pb2.LOG_STREAM_STDOUT, f"early {i}"))
        await asyncio.sleep(0.05)  # lines 1..10 are in flight
        mark = log.last_seqs()
        for i in range(200):  # the buffer overflows: newer queued lines are shed, 1..10 are still out
            shipper.add(log.line(0, types_pb2.LOG_STREAM_STDOUT, f"later {i:040d}"))
        shed = shipper.pending("a1") < 210
        early = shipper.settled("a1", mark)
        other_rank = shipper.settled("a1", {1: 5})  # no line of rank 1 is pending
        release.set()
        after = await shipper.wait_settled("a1", mark, 2)
        task.cancel()
        return shed, early, other_rank, after

    assert arun(go()) == (True, False, True, True)


def test_an_agent_with_a_store_resumes_only_from_what_the_scheduler_chose(tmp_path: Path) -> None:
    """A checkpoint an earlier attempt left here but never recorded may follow lines that were never delivered:
    with a store, no resume from it (without a store, the newest local checkpoint is still used)."""
    earlier = tmp_path / "attempts" / "old" / "checkpoints"
    earlier.mkdir(parents=True)
    (tmp_path / "attempts" / "old" / "run_id").write_text("run-1")
    ckpt = earlier / "step-10.ckpt"
    ckpt.write_bytes(b"w")
    os.utime(ckpt, (time.time() - 60, time.time() - 60))
    show = "import os; print('resume', os.environ.get('GRIDLAB_RESUME_FROM', ''))"

    async def resume(store: FakeArtifacts | None, attempt_id: str) -> str:
        settings = LaunchSettings(state_dir=tmp_path, base_env=dict(os.environ), artifacts=store)
        assignment = agent_pb2.Assignment(
            attempt_id=attempt_id,
            run_id="run-1",
            procs_per_node=1,
            spec=types_pb2.RunSpec(command=[sys.executable, "-c", show]),
        )
        sink = Acks()
        sink.ack_all()
        await Attempt(assignment, settings, sink).run()
        (line,) = [t for t in sink.texts() if t.startswith("resume")]
        return line

    assert arun(resume(FakeArtifacts(), "with-store")) == "resume "
    assert arun(resume(None, "no-store")).endswith("step-10.ckpt")
