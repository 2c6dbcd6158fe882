"""Rank output to the scheduler: split into lines, number them, ship them in batches.

Each (attempt, rank) numbers its lines from 1 without gaps, stdout and stderr sharing one
counter, so the scheduler can drop duplicates and a client sees every line once, in
order. Lines travel in bulk: each read of a rank's pipe becomes one LogLine that is a batch
(LogLine.count lines, seq .. seq+count-1, texts joined by "\n"), split and numbered without a
Python step per line. Shipping is at-least-once: a batch leaves the queue only when PushLogs
returned OK, and a failed batch is resent as is; except that ABORTED (the attempt is not ours)
drops the attempt's lines and INVALID_ARGUMENT (a malformed batch) drops that batch.

    rank pipes --LineSplitter.feed_joined--> AttemptLog.batch() --LogShipper.add()--> PushLogs
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import grpc
import structlog
from google.protobuf.message import DecodeError

from gridlab.common.timeutil import ts
from gridlab.v1 import types_pb2

log = structlog.get_logger("gridlab.agent.logship")

MAX_LINE_BYTES = 64 * 1024  # longer lines are split, so one line never nears the 4 MiB cap
SYSTEM_RANK = -1  # LogLine.rank of the agent's own lines that concern no rank
METRICS_RANK = -2  # LogLine.rank of forwarded GRIDLAB_METRICS_FILE records (stream METRICS), numbered apart

PushFn = Callable[[list[types_pb2.LogLine]], Awaitable[None]]


def _utf8_cut(data: bytes | bytearray, limit: int) -> int:
    """Largest cut <= limit that does not split a UTF-8 sequence (when there is one)."""
    cut = limit
    while cut > limit - 4 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > limit - 4 and cut > 0 else limit


class LineSplitter:
    """Bytes in, text lines out (sans-IO, so the edge cases are unit-testable).

    Lines lose their newline (and a CR before it); bytes that are not UTF-8 become
    U+FFFD; a line longer than `max_bytes` is emitted in pieces of at most that size.
    """

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        out: list[str] = []
        start = 0
        buf = self._buf
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            end = nl - 1 if nl > start and buf[nl - 1] == 0x0D else nl
            out.extend(self._pieces(buf[start:end]))
            start = nl + 1
        del buf[:start]
        while len(buf) > self.max_bytes:  # an unterminated line already too long
            cut = _utf8_cut(buf, self.max_bytes)
            out.append(bytes(buf[:cut]).decode("utf-8", errors="replace"))
            del buf[:cut]
        return out

    def feed_joined(self, data: bytes) -> tuple[str, int]:
        """`feed` in bulk: the complete lines as one text joined by "\n", and how many there are
        (("", 0) for none). The same lines as `feed`, found by C-speed bytes methods instead of a
        Python step per line, unless a line is too long (then `feed` does the work)."""
        whole = bytes(self._buf) + data if self._buf else data
        last = whole.rfind(b"\n")
        if len(whole) - last - 1 > self.max_bytes:  # an unterminated line already too long
            return self._slow(whole)
        if last < 0:
            self._buf = bytearray(whole)
            return "", 0
        body = whole[:last]
        if b"\r" in body:  # CR LF ends a line too (one CR only, as `feed` does)
            body = body.replace(b"\r\n", b"\n")
            if body.endswith(b"\r"):
                body = body[:-1]
        if len(body) > self.max_bytes and _has_long_line(body, self.max_bytes):
            return self._slow(whole)
        self._buf = bytearray(whole[last + 1 :])
        text = body.decode("ascii") if body.isascii() else body.decode("utf-8", errors="replace")
        return text, body.count(b"\n") + 1

    def _slow(self, whole: bytes) -> tuple[str, int]:
        self._buf = bytearray(whole)
        lines = self.feed(b"")
        return "\n".join(lines), len(lines)

    def finish(self) -> list[str]:
        """The last line, when the stream ended without a newline."""
        if not self._buf:
            return []
        rest, self._buf = self._buf, bytearray()
        return self._pieces(rest)

    def _pieces(self, line: bytes | bytearray) -> list[str]:
        out = []
        while len(line) > self.max_bytes:
            cut = _utf8_cut(line, self.max_bytes)
            out.append(bytes(line[:cut]).decode("utf-8", errors="replace"))
            line = line[cut:]
        out.append(bytes(line).decode("utf-8", errors="replace"))
        return out


def _has_long_line(body: bytes, limit: int) -> bool:
    """Whether a line of `body` (lines joined by "\n") is longer than `limit` bytes: one find per
    `limit` bytes, not one per line."""
    pos, end = 0, len(body)
    while end - pos > limit:
        nl = body.find(b"\n", pos, pos + limit + 1)
        if nl < 0:
            return True
        pos = nl + 1
    return False


async def pump_batches(
    reader: asyncio.StreamReader,
    on_batch: Callable[[str, int], None],
    chunk: int = 256 * 1024,
    gather: float = 0.0,
    pipe: asyncio.ReadTransport | None = None,
    consumed: Callable[[int], None] | None = None,
) -> None:
    """Read `reader` to EOF, calling `on_batch(text, count)` for the complete lines of each read:
    `count` lines joined by "\n" in `text`. With `gather` and the reader's `pipe` transport, a read
    that found output stops reading the pipe for `gather` seconds, so a rank that writes line by line
    (PYTHONUNBUFFERED) is read in chunks rather than once per write; an idle pipe still wakes the
    reader at once, so a lone line waits no longer than before. `consumed(n)` hears of each read's n bytes once its
    complete lines went to `on_batch` (what `logfence` counts)."""
    splitter = LineSplitter()
    while True:
        data = await reader.read(chunk)
        if not data:
            break
        text, count = splitter.feed_joined(data)
        if count:
            on_batch(text, count)
        if consumed is not None:
            consumed(len(data))
        if gather and len(data) < chunk and pipe is not None and pipe.is_reading():
            pipe.pause_reading()  # the output gathers in the pipe meanwhile, with no wakeup per write
            try:
                await asyncio.sleep(gather)
            finally:
                pipe.resume_reading()
    last = splitter.finish()
    if last:
        on_batch("\n".join(last), len(last))


async def pump_lines(reader: asyncio.StreamReader, on_line: Callable[[str], None], chunk: int = 64 * 1024) -> None:
    """Read `reader` to EOF, calling `on_line` for every line (readline() would choke on
    a line longer than the stream's limit)."""
    splitter = LineSplitter()
    while True:
        data = await reader.read(chunk)
        if not data:
            break
        for text in splitter.feed(data):
            on_line(text)
    for text in splitter.finish():
        on_line(text)


class AttemptLog:
    """Makes an attempt's LogLines, numbering them per rank from 1 without gaps."""

    def __init__(self, attempt_id: str, clock: Callable[[], float] = time.time) -> None:
        self.attempt_id = attempt_id
        self._clock = clock
        self._seq: dict[int, int] = collections.defaultdict(int)

    def last_seqs(self) -> dict[int, int]:
        """Each rank's last line number so far (what `LogShipper.settled` takes)."""
        return dict(self._seq)

    def line(self, rank: int, stream: types_pb2.LogStream, text: str) -> types_pb2.LogLine:
        """One line; a text with newlines in it (an agent note quoting an error) is that many lines."""
        return self.batch(rank, stream, text, text.count("\n") + 1)

    def batch(self, rank: int, stream: types_pb2.LogStream, text: str, count: int) -> types_pb2.LogLine:
        """`count` lines joined by "\n" in `text`, as one LogLine (a batch when count > 1)."""
        first = self._seq[rank] + 1
        self._seq[rank] += count
        return types_pb2.LogLine(
            attempt_id=self.attempt_id,
            rank=rank,
            stream=stream,
            seq=first,
            text=text,
            time=ts(self._clock()),
            count=count if count > 1 else 0,
        )


def line_count(line: types_pb2.LogLine) -> int:
    """How many lines a LogLine holds (a batch, or one line)."""
    return line.count if line.count > 1 else 1


def expand(line: types_pb2.LogLine) -> list[types_pb2.LogLine]:
    """A batch as single lines (a single line as itself)."""
    if line.count <= 1:
        return [line]
    out = []
    for i, text in enumerate(line.text.split("\n")):
        one = types_pb2.LogLine()
        one.CopyFrom(line)
        one.count = 0
        one.seq = line.seq + i
        if line.cursor:
            one.cursor = line.cursor + i
        one.text = text
        out.append(one)
    return out


def status_code(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status of a failed call, or None for other errors."""
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            value = code()
        except Exception:  # not an RpcError after all
            return None
        return value if isinstance(value, grpc.StatusCode) else None
    return None


MERGE_BYTES = 256 * 1024  # a queued batch grows by the rank's next reads up to this size ...
MERGE_SPAN = 0.1  # ... and for this long (seconds), as the lines share its one time


@dataclass
class _Tail:
    """The newest queued batch while it still grows: later reads of the same rank and stream join it
    (their texts kept apart until it is sealed), so a rank that writes line by line still ships, stores
    and streams in big batches."""

    first: types_pb2.LogLine  # its attempt, rank, stream, first seq and time
    texts: list[str]
    count: int
    size: int
    started: float  # time.monotonic()

    def takes(self, entry: types_pb2.LogLine, size: int, now: float, max_lines: int, max_bytes: int) -> bool:
        first = self.first
        return (
            entry.seq == first.seq + self.count
            and entry.rank == first.rank
            and entry.stream == first.stream
            and self.size + size <= max_bytes
            and self.count + line_count(entry) <= max_lines
            and now - self.started <= MERGE_SPAN
        )

    def seal(self) -> types_pb2.LogLine:
        if len(self.texts) == 1:
            return self.first
        entry = types_pb2.LogLine()
        entry.CopyFrom(self.first)
        entry.text = "\n".join(self.texts)
        entry.count = self.count
        return entry


@dataclass
class _Queue:
    """An attempt's unacknowledged LogLines (each a batch or one line), oldest first, with its line
    counts kept up to date, so `pending` costs nothing per line."""

    lines: collections.deque[tuple[types_pb2.LogLine, int]] = field(default_factory=collections.deque)  # (entry, bytes)
    tail: _Tail | None = None  # newer than `lines`, still growing
    in_flight: list[tuple[types_pb2.LogLine, int]] = field(default_factory=list)
    queued_lines: int = 0  # lines in `lines` and `tail`
    queued_bytes: int = 0
    flight_lines: int = 0  # lines in `in_flight`
    dropped: int = 0  # lines shed because the buffer (and the spill, when there is one) was full
    spill: _Spill | None = None  # newer lines than `lines` and `tail`, on disk, while memory is over its cap
    merge_lines: int = 1_000_000  # the tail grows to this many lines at most
    merge_bytes: int = MERGE_BYTES

    def push(self, entry: types_pb2.LogLine, size: int, *, merge: bool = True) -> None:
        n = line_count(entry)
        self.queued_lines += n
        self.queued_bytes += size
        if merge:
            now = time.monotonic()
            tail = self.tail
            if tail is not None and tail.takes(entry, size, now, self.merge_lines, self.merge_bytes):
                tail.texts.append(entry.text)
                tail.count += n
                tail.size += size
                return
            self.seal()
            self.tail = _Tail(entry, [entry.text], n, size, now)
        else:
            self.seal()
            self.lines.append((entry, size))

    def seal(self) -> None:
        """The growing batch stops growing: an ordinary queued entry."""
        if self.tail is not None:
            self.lines.append((self.tail.seal(), self.tail.size))
            self.tail = None

    def pop(self) -> tuple[types_pb2.LogLine, int]:
        if not self.lines:
            self.seal()
        entry, size = self.lines.popleft()
        self.queued_lines -= line_count(entry)
        self.queued_bytes -= size
        return entry, size

    def pending(self) -> int:
        return self.queued_lines + self.flight_lines + (self.spill.count if self.spill is not None else 0)


class _Spill:
    """An attempt's overflow, in order: length-prefixed LogLine messages appended to segment files and
    read back from the front. Lines go here once memory is full, and every later line follows them
    until all are read back, so the order of the attempt's lines never changes. A segment is deleted
    as soon as it is read out, so the disk holds the backlog (plus one segment), not all it ever held."""

    def __init__(self, folder: Path, name: str, segment_bytes: int) -> None:
        self.folder, self.name, self.segment_bytes = folder, name, segment_bytes
        self.segments: collections.deque[Path] = collections.deque()  # oldest first
        self._out: BinaryIO | None = None
        self._out_size = 0
        self._in: BinaryIO | None = None
        self._next = 0
        self.entries = 0  # LogLines written, not yet read back
        self.count = 0  # lines in them
        self.disk_bytes = 0  # the segment files' size

    def write(self, line: types_pb2.LogLine) -> None:
        if self._out is None or self._out_size >= self.segment_bytes:
            if self._out is not None:
                self._out.close()
            path = self.folder / f"{self.name}.{self._next:06d}.spill"
            self._next += 1
            self._out, self._out_size = path.open("ab"), 0
            self.segments.append(path)
        data = line.SerializeToString()
        self._out.write(struct.pack("<I", len(data)) + data)
        self._out_size += len(data) + 4
        self.disk_bytes += len(data) + 4
        self.entries += 1
        self.count += line_count(line)

    def read(self, max_bytes: int) -> list[types_pb2.LogLine]:
        """The oldest entries, about `max_bytes` of them (at least one, when there is one)."""
        if self._out is not None:
            self._out.flush()
        out: list[types_pb2.LogLine] = []
        nbytes = 0
        while self.entries and nbytes < max_bytes:
            if self._in is None:
                self._in = self.segments[0].open("rb")
            header = self._in.read(4)
            if len(header) < 4:  # this segment is read out (a later one holds the rest)
                self._drop_front()
                continue
            (size,) = struct.unpack("<I", header)
            line = types_pb2.LogLine.FromString(self._in.read(size))
            out.append(line)
            nbytes += size
            self.entries -= 1
            self.count -= line_count(line)
        return out

    def _drop_front(self) -> None:
        if self._in is not None:
            self._in.close()
            self._in = None
        path = self.segments.popleft()
        with contextlib.suppress(OSError):
            self.disk_bytes -= path.stat().st_size
            path.unlink()

    def close(self) -> None:
        for f in (self._in, self._out):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        self._in = self._out = None
        while self.segments:
            self._drop_front()
        self.disk_bytes = 0


class LogShipper:
    """One task that pushes pending lines as soon as there are any, one attempt per call.

    One attempt per PushLogs call, so an ABORTED answer names the attempt to give up
    on; attempts take turns, so a chatty attempt cannot starve a quiet one. While a push
    is in flight new lines accumulate, which batches them without any fixed delay. What
    is queued are LogLines that are batches (or single lines); caps count lines and bytes.
    """

    def __init__(
        self,
        push: PushFn,
        *,
        max_batch_lines: int = 1_000_000,
        max_batch_bytes: int = 1024 * 1024,
        max_pending_bytes: int = 256 * 1024 * 1024,
        spill_dir: Path | None = None,
        max_spill_bytes: int = 16 * 1024**3,
        spill_segment_bytes: int = 64 * 1024 * 1024,
        timeout: float = 30.0,
        retry_min: float = 0.2,
        retry_max: float = 5.0,
    ) -> None:
        self._push = push
        self.max_batch_lines = max_batch_lines  # per PushLogs call (a bigger LogLine still goes, alone)
        self.max_batch_bytes = max_batch_bytes
        self.max_pending_bytes = max_pending_bytes
        self.spill_dir = spill_dir  # None: over the memory cap, shed the oldest lines instead
        self.max_spill_bytes = max_spill_bytes  # all attempts' spill files together
        self.spill_segment_bytes = spill_segment_bytes
        self.timeout = timeout
        self.retry_min = retry_min
        self.retry_max = retry_max
        self._queues: dict[str, _Queue] = {}
        self._pending_bytes = 0  # of queued and in-flight lines
        self._wakeup = asyncio.Event()
        self._kick = asyncio.Event()
        self._changed = asyncio.Event()  # replaced by a fresh one after each change

    # -- producers and waiters ---------------------------------------------------------

    def add(self, line: types_pb2.LogLine) -> None:
        """Queue one LogLine: a single line, or a batch of a rank's consecutive lines."""
        size = line.ByteSize() + 8
        q = self._queues.get(line.attempt_id)
        if q is None:
            q = self._queues[line.attempt_id] = _Queue(
                merge_lines=self.max_batch_lines,
                # (a small memory cap sheds in small steps: a batch is shed whole)
                merge_bytes=min(MERGE_BYTES, self.max_batch_bytes, self.max_pending_bytes // 16),
            )
        if q.spill is not None or (self._pending_bytes + size > self.max_pending_bytes and self._can_spill()):
            self._to_spill(line.attempt_id, q, line)
        else:
            q.push(line, size)
            self._pending_bytes += size
            if self._pending_bytes > self.max_pending_bytes:
                self._shed()
        self._wakeup.set()

    def _spilled_bytes(self) -> int:
        return sum(q.spill.disk_bytes for q in self._queues.values() if q.spill is not None)

    def _can_spill(self) -> bool:
        return self.spill_dir is not None and self._spilled_bytes() < self.max_spill_bytes

    def _to_spill(self, attempt_id: str, q: _Queue, line: types_pb2.LogLine) -> None:
        if self._spilled_bytes() >= self.max_spill_bytes:  # the disk cap too: the newest lines are lost
            self._count_dropped(q, attempt_id, line_count(line), "log spill full, dropping lines")
            return
        try:
            if q.spill is None:
                assert self.spill_dir is not None  # noqa: S101 - _can_spill checked
                q.seal()
                self.spill_dir.mkdir(parents=True, exist_ok=True)
                q.spill = _Spill(self.spill_dir, f"{attempt_id}.{id(q):x}", self.spill_segment_bytes)
                log.info("log buffer full, spilling to disk", attempt=attempt_id, folder=str(self.spill_dir))
            q.spill.write(line)
        except OSError as exc:  # a full or failing disk must not stop a rank's output or the shipper
            self._abandon_spill(q, attempt_id, exc, line_count(line))

    def _abandon_spill(self, q: _Queue, attempt_id: str, exc: BaseException, also: int = 0) -> None:
        lost = (q.spill.count if q.spill is not None else 0) + also
        if q.spill is not None:
            q.spill.close()
            q.spill = None
        self._count_dropped(q, attempt_id, max(1, lost), f"log spill failed ({exc}); its lines are lost")

    def _count_dropped(self, q: _Queue, attempt_id: str, n: int, why: str) -> None:
        before, q.dropped = q.dropped, q.dropped + n
        if before == 0 or before // 1000 != q.dropped // 1000:
            log.warning(why, dropped=q.dropped, attempt=attempt_id)
        self._notify()  # dropped lines are done with: waiters may go on

    def _refill(self, q: _Queue) -> None:
        """Bring spilled lines back into memory, oldest first, while there is room."""
        spill = q.spill
        if spill is None or q.queued_bytes >= self.max_batch_bytes:
            return
        try:
            lines = spill.read(self.max_batch_bytes - q.queued_bytes)
        except (OSError, struct.error, DecodeError) as exc:
            self._abandon_spill(q, "?", exc)
            return
        for line in lines:
            size = line.ByteSize() + 8
            q.push(line, size, merge=False)
            self._pending_bytes += size
        if spill.entries == 0:
            spill.close()
            q.spill = None

    def drop(self, attempt_id: str) -> None:
        """Forget an attempt's unacknowledged lines (the scheduler refuses them)."""
        q = self._queues.pop(attempt_id, None)
        if q is not None:
            self._pending_bytes -= q.queued_bytes + sum(size for _, size in q.in_flight)
            if q.spill is not None:
                q.spill.close()
                q.spill = None
            self._notify()

    def kick(self) -> None:
        """Retry now instead of after the backoff (the scheduler is back)."""
        self._kick.set()

    def pending(self, attempt_id: str | None = None) -> int:
        """Lines not yet acknowledged, of one attempt or of all."""
        if attempt_id is None:
            return sum(q.pending() for q in self._queues.values())
        q = self._queues.get(attempt_id)
        return q.pending() if q is not None else 0

    def settled(self, attempt_id: str, seqs: Mapping[int, int]) -> bool:
        """Whether every line of `attempt_id` numbered up to `seqs[rank]` for its rank is acknowledged (or
        dropped). Checked against what is still pending, by (rank, seq), so lines dropped out of order (a
        full buffer sheds the oldest queued ones while older ones are in flight; a full spill the newest)
        never make older, unacknowledged lines look done. A spill holds newer lines than memory, but which
        ones is on disk: while it has any, the answer is no."""
        q = self._queues.get(attempt_id)
        if q is None:
            return True
        if q.spill is not None and q.spill.count:
            return False
        entries = [e for e, _ in q.in_flight] + [e for e, _ in q.lines]
        if q.tail is not None:
            entries.append(q.tail.first)
        return not any(e.rank in seqs and e.seq <= seqs[e.rank] for e in entries)

    async def wait_acked(self, attempt_id: str, timeout: float) -> bool:
        """Wait until every line of `attempt_id` added so far is acknowledged (or
        dropped). False when `timeout` passed first."""
        return await self._wait(lambda: self.pending(attempt_id) == 0, timeout)

    async def wait_settled(self, attempt_id: str, seqs: Mapping[int, int], timeout: float) -> bool:
        """Wait until `settled(attempt_id, seqs)`. False when `timeout` passed first."""
        return await self._wait(lambda: self.settled(attempt_id, seqs), timeout)

    async def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return False
        return True

    # -- the shipping task -------------------------------------------------------------

    async def run(self) -> None:
        """Ship until cancelled."""
        delay = self.retry_min
        while True:
            picked = self._take_batch()
            if picked is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            attempt_id, q = picked
            batch = [line for line, _ in q.in_flight]
            try:
                await asyncio.wait_for(self._push(batch), self.timeout)
            except asyncio.CancelledError:
                self._requeue(q)
                raise
            except Exception as exc:  # any other failure means: resend later
                code = status_code(exc)
                if code == grpc.StatusCode.ABORTED:
                    log.warning("scheduler refused logs: attempt not ours", attempt=attempt_id)
                    self.drop(attempt_id)
                    continue
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    # Resending the same batch would be refused forever, holding up the
                    # attempt's later lines and its drain: give up on this batch only.
                    log.warning(
                        "scheduler refused a log batch as malformed; dropping it",
                        attempt=attempt_id,
                        lines=q.flight_lines,
                        error=_describe(exc),
                    )
                    self._settle(attempt_id, q)
                    continue
                self._requeue(q)
                log.info("log push failed, will retry", error=_describe(exc), retry_in=delay)
                self._kick.clear()
                jittered = delay * random.uniform(0.5, 1.0)  # noqa: S311 - not crypto
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), jittered)
                delay = min(delay * 2, self.retry_max)
                continue
            delay = self.retry_min
            self._settle(attempt_id, q)

    def _settle(self, attempt_id: str, q: _Queue) -> None:
        """The batch in flight is done with (acknowledged, or refused for good)."""
        if self._queues.get(attempt_id) is q:  # not dropped while in flight
            self._pending_bytes -= sum(size for _, size in q.in_flight)
            if not q.lines and q.tail is None and q.spill is None:
                del self._queues[attempt_id]
        q.in_flight.clear()
        q.flight_lines = 0
        self._notify()

    def _take_batch(self) -> tuple[str, _Queue] | None:
        for attempt_id in list(self._queues):
            q = self._queues.pop(attempt_id)
            q.seal()
            self._refill(q)
            if not q.lines:
                if q.in_flight:
                    self._queues[attempt_id] = q
                continue  # (an empty, idle queue is simply forgotten)
            self._queues[attempt_id] = q  # to the back: attempts take turns
            nbytes = 0
            while q.lines:
                entry, size = q.lines[0]
                if q.in_flight and (
                    nbytes + size > self.max_batch_bytes or q.flight_lines + line_count(entry) > self.max_batch_lines
                ):
                    break
                q.in_flight.append(q.pop())
                q.flight_lines += line_count(entry)
                nbytes += size
            return attempt_id, q
        return None

    def _requeue(self, q: _Queue) -> None:
        for entry, size in reversed(q.in_flight):
            q.lines.appendleft((entry, size))
            q.queued_lines += line_count(entry)
            q.queued_bytes += size
        q.in_flight.clear()
        q.flight_lines = 0

    def _shed(self) -> None:
        """Over the memory cap (the scheduler has been away long): drop the oldest
        queued lines of the biggest queue, rather than stall the ranks or the agent."""
        while self._pending_bytes > self.max_pending_bytes * 0.9:
            q = max(self._queues.values(), key=lambda q: q.queued_bytes)
            if not q.lines and q.tail is None:
                return
            line, size = q.pop()
            self._pending_bytes -= size
            self._count_dropped(q, line.attempt_id, line_count(line), "log buffer full, dropping oldest lines")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def _describe(exc: BaseException) -> str:
    code = status_code(exc)
    if code is not None:
        details = getattr(exc, "details", lambda: "")()
        return f"{code.name}: {details}"
    return f"{type(exc).__name__}: {exc}"
