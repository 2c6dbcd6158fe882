"""Group commit: many small writes, one SQLite transaction and one fsync.

Every state change is a transaction with `synchronous=FULL`, so each COMMIT waits for an fsync
(about 170 us on these disks), and a run's life takes several of them (submit, placed, running,
ended). Under load agent reports and submits arrive faster than that. The `Batcher` queues each
as a plain synchronous function; one task runs everything queued in one transaction (each
function's own `store.transaction()` becomes a savepoint of it, so a function that fails undoes
only its own writes), commits once, and only then answers the callers that wait.

Nothing awaits inside a batch, so no other coroutine can read its rows before the commit, and a
message a function puts into an agent's outbox leaves only when the stream's writer next runs:
after the commit. If the commit itself fails (disk full, I/O error), those messages describe
changes that were rolled back: every agent stream is dropped with its outbox unsent (agents
reconnect and reconcile against what was committed) and the waiting callers get the error.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from .store import Store

log = structlog.get_logger("gridlab.scheduler.batch")
T = TypeVar("T")
MAX_QUEUED = 20_000  # functions waiting for a batch; producers past it wait (back-pressure on agent streams)
MAX_BATCH = 2_000  # functions per transaction: bounds how long one batch holds the event loop
# Seconds a batch waits for company after the first function arrives: short while the scheduler is quiet (a lone
# submit is answered soon), longer once batches come busy, where each batch's fixed costs (the fsync, ~0.2 ms, the
# event loop's turns between batches) shared by more functions carry more lifecycles per second: at 1,000
# simulated agents, 2 ms gave ~650 run lifecycles/s and 6 ms ~850 (bench/sched_throughput.py), at the same p99.
GATHER_QUIET = 0.002
GATHER_BUSY = 0.006
BUSY = 8  # functions in the last batch from which the scheduler counts as busy


class Batcher:
    def __init__(self, store: Store, on_commit_failure: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.on_commit_failure = on_commit_failure
        self._queue: deque[tuple[Callable[[], Any], asyncio.Future[Any] | None]] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.batches = 0  # for tests and benchmarks: transactions committed
        self.functions = 0  # and functions run in them
        self._last = 0  # functions in the last batch
        # Run at the end of every batch, inside it (the engine's placement pass, when one is due): what the
        # batch's functions changed is acted on in the same commit, without a batch of its own.
        self.tail: Callable[[], None] | None = None

    def post(self, fn: Callable[[], object]) -> None:
        """Run `fn` in the next batch; nobody waits for it (it handles its own errors)."""
        self._queue.append((fn, None))
        self._wake.set()
        if len(self._queue) >= MAX_QUEUED:
            self._room.clear()

    @property
    def has_room(self) -> bool:
        """Whether `post_when_room` would post at once."""
        return self._room.is_set()

    async def post_when_room(self, fn: Callable[[], object]) -> None:
        """`post`, after waiting while the queue is full: a fast producer slows down instead of growing it."""
        await self._room.wait()
        self.post(fn)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` in the next batch and return its result (or raise its error) once the batch is committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        """The one task that runs batches, for the scheduler's whole life."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(GATHER_BUSY if self._last >= BUSY else GATHER_QUIET)
            self._wake.clear()
            while self._queue:
                self.run_batch()
                await asyncio.sleep(0)  # let the streams read and write between batches

    def run_batch(self) -> None:
        """Run what is queued (up to MAX_BATCH functions) in one transaction, then answer the waiting callers.

        A function whose caller has gone (its RPC was cancelled while it waited) is skipped: a Hello must
        not register a session nobody reads. Anything that ends the transaction early (SQLite rolls the
        whole of it back on a full disk or an I/O error) or that is not an ordinary error (cancellation,
        interpreter exit) fails the whole batch like a failed commit; the latter is raised again."""
        batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
        self._last = len(batch)
        if len(self._queue) < MAX_QUEUED:
            self._room.set()
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            with self.store.group():
                for fn, future in batch:
                    if future is not None and future.done():
                        continue
                    if not self.store.conn.in_transaction:
                        raise GroupAborted("SQLite rolled the batch's transaction back")
                    try:
                        result = fn()
                    except Exception as exc:  # noqa: BLE001 - handed to the caller, or logged
                        if future is None:
                            log.exception("batched_function_failed")
                        else:
                            outcomes.append((future, None, exc))
                        continue
                    if future is not None:
                        outcomes.append((future, result, None))
                if self.tail is not None:
                    if not self.store.conn.in_transaction:
                        raise GroupAborted("SQLite rolled the batch's transaction back")
                    try:
                        self.tail()
                    except Exception:  # its own savepoints undid its writes; the batch's functions stand
                        log.exception("batch_tail_failed")
        except BaseException as exc:
            log.exception("group_commit_failed", functions=len(batch))
            self.on_commit_failure()
            for _, future in batch:
                if future is not None and not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else GroupAborted(repr(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        self.batches += 1
        self.functions += len(batch)
        for future, result, error in outcomes:
            if future.done():  # the caller went away (its RPC was cancelled)
                if error is not None:
                    log.warning("batched_call_failed_after_its_caller_left", error=str(error))
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)


class GroupAborted(RuntimeError):
    """The batch's transaction ended before its functions did: nothing of it was committed."""
