"""Record a checkpoint only after the log lines printed before it are acknowledged.

A resumed attempt continues after its checkpoint's step and never prints the lines before it
again. Were a checkpoint recorded while the lines printed ahead of it were still unacknowledged,
held only in the agent's memory, a kill -9 of the agent would lose them for good: the next attempt
resumes past them. So the checkpoint shipper takes a `mark` when it first sees a checkpoint and
records it only once `passed(mark)`:

    mark     every byte the ranks have written so far, wherever it is: consumed by the pumps, in
             the asyncio reader's buffer, or still in the kernel's pipe (FIONREAD);
    passed   the pumps have consumed those bytes (so their lines are numbered and queued for
             shipping), and the log shipper has every line numbered up to then (per rank) acknowledged.

A pipe that reached EOF, or whose pump stopped, has nothing left to wait for.
"""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Settled = Callable[[dict[int, int], float], Awaitable[bool]]  # (line numbers by rank, timeout) -> delivered in time


@dataclass(eq=False)
class PipeCount:
    """How far a pump has read one rank pipe."""

    reader: asyncio.StreamReader
    transport: asyncio.BaseTransport | None = None
    consumed: int = 0  # bytes the pump has taken and turned into queued lines
    ended: bool = False  # EOF, or the pump stopped

    def unread(self) -> int:
        """Bytes written to the pipe that the pump has not taken yet."""
        # StreamReader has no public count of what it holds; its buffer is a bytearray.
        pending = len(getattr(self.reader, "_buffer", b""))
        pipe = self.transport.get_extra_info("pipe") if self.transport is not None else None
        if pipe is not None:
            try:
                raw = fcntl.ioctl(pipe.fileno(), termios.FIONREAD, b"\0\0\0\0")
                pending += struct.unpack("i", raw)[0]
            except (OSError, ValueError):  # closed: whatever it held is gone or read
                pass
        return pending


@dataclass
class Mark:
    """Where an attempt's output stood when a checkpoint was first seen."""

    pipes: tuple[tuple[PipeCount, int], ...]  # each pipe and the bytes it must have been read to
    seqs: dict[int, int] | None = None  # each rank's last line number once they were: set once, then fixed


@dataclass
class OutputFence:
    """An attempt's rank pipes and its log lines: what `CheckpointShipper` waits on (see the module doc)."""

    last_seqs: Callable[[], dict[int, int]]  # each rank's last line number handed to the log shipper
    settled: Settled
    poll: float = 0.005
    pipes: list[PipeCount] = field(default_factory=list)

    def add(self, reader: asyncio.StreamReader, transport: asyncio.BaseTransport | None) -> PipeCount:
        count = PipeCount(reader, transport)
        self.pipes.append(count)
        return count

    def mark(self) -> Mark:
        return Mark(tuple((p, p.consumed + p.unread()) for p in self.pipes if not p.ended))

    async def passed(self, mark: Mark, timeout: float) -> bool:
        """Whether the output before `mark` is acknowledged, waiting up to `timeout` seconds for it. The line
        numbers to wait for are fixed the first time the pipes are read far enough, so a rank that keeps
        printing does not move the goal while its lines are acknowledged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while mark.seqs is None:
            if all(p.ended or p.consumed >= target for p, target in mark.pipes):
                mark.seqs = self.last_seqs()
                break
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(self.poll)
        return await self.settled(mark.seqs, max(0.0, deadline - loop.time()))
