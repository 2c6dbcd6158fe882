"""Record a checkpoint only after the log lines printed before it are acknowledged.

A resumed attempt continues after its checkpoint's step and never prints the lines before it
again. Were a checkpoint recorded while the lines printed ahead of it were still unacknowledged,
held only in the agent's memory, a kill -9 of the agent would lose them for good: the next attempt
resumes past them. So the checkpoint shipper takes a `mark` when it first sees a checkpoint and
records it only once `passed(mark)`:

    mark     every byte the ranks have written so far, wherever it is: consumed by the pumps, in
             the asyncio reader's buffer, or still in the kernel's pipe (FIONREAD);
    passed   the pumps have consumed those bytes (so their lines are queued for shipping), and the
             log shipper has every line queued by then acknowledged.

A pipe that reached EOF, or whose pump stopped, has nothing left to wait for.
"""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Acked = Callable[[int, float], Awaitable[bool]]  # (lines mark, timeout) -> acknowledged in time


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


Mark = tuple[tuple[PipeCount, int], ...]


@dataclass
class OutputFence:
    """An attempt's rank pipes and its log lines: what `CheckpointShipper` waits on (see the module doc)."""

    lines_out: Callable[[], int]  # lines of the attempt handed to the log shipper so far
    acked: Acked
    poll: float = 0.005
    pipes: list[PipeCount] = field(default_factory=list)

    def add(self, reader: asyncio.StreamReader, transport: asyncio.BaseTransport | None) -> PipeCount:
        count = PipeCount(reader, transport)
        self.pipes.append(count)
        return count

    def mark(self) -> Mark:
        return tuple((p, p.consumed + p.unread()) for p in self.pipes if not p.ended)

    async def passed(self, mark: Mark, timeout: float) -> bool:
        """Whether the output before `mark` is acknowledged, waiting up to `timeout` seconds for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(not p.ended and p.consumed < target for p, target in mark):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(self.poll)
        return await self.acked(self.lines_out(), max(0.0, deadline - loop.time()))
