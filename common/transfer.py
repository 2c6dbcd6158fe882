"""Chunked, resumable, verified blob transfer to and from the scheduler's artifact store.

The agent (grpc.aio) and the SDK (sync grpc) move files the same way, so the protocol is
written once: `_upload_steps` and `_download_steps` are generators that yield the next
thing to do (a StatBlob, a stream of chunks, a fetch into a file, a blocking file
operation, a pause) and receive its outcome or its exception. Two small drivers perform
those steps, one with a sync stub and one with an asyncio stub:

    upload_file(stub, path, ...)          / await upload_file_async(stub, path, ...)
    download_blob(stub, digest, dest, ...)/ await download_blob_async(stub, digest, dest, ...)

Uploads ask StatBlob first (skip a complete blob, resume a partial one) and retry from
StatBlob's new offset when the connection drops. Downloads write `dest.partial`, resume
from its length, verify the SHA-256 over the whole file and rename it into place.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import os
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from gridlab.common.bundle import digest_file
from gridlab.v1 import artifacts_pb2, types_pb2

T = TypeVar("T")
Metadata = Sequence[tuple[str, str]]

MiB = 1024 * 1024
# Bytes per message: big enough that per-message costs vanish, well under gRPC's 4 MiB
# message limit (measured with bench/artifact_throughput.py).
CHUNK_BYTES = 1 * MiB
RETRIES = 5  # failed tries in a row before an error is raised
BACKOFF_MIN = 0.2  # seconds before the first retry; doubles each time
BACKOFF_MAX = 5.0
UNARY_TIMEOUT = 30.0  # seconds for StatBlob
PARTIAL_SUFFIX = ".partial"

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# A dropped connection or a scheduler restart (UNAVAILABLE); a stale offset after another
# upload of the same blob moved the partial on (OUT_OF_RANGE): ask StatBlob again.
_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OUT_OF_RANGE})


class TransferError(Exception):
    """A transfer's bytes did not match its digest, or its size made no sense."""


def is_digest(text: str) -> bool:
    """Whether `text` is a blob name: "sha256:" and 64 lowercase hex digits."""
    return _DIGEST.fullmatch(text) is not None


@dataclasses.dataclass(frozen=True)
class Blob:
    """A blob the store holds: its digest and size (and whether it was there already)."""

    digest: str
    size: int
    existed: bool = False

    def ref(self, path: str) -> types_pb2.FileRef:
        """A FileRef naming this blob as `path` (for RecordCheckpoint / RecordArtifacts)."""
        return types_pb2.FileRef(path=path, digest=self.digest, size=self.size)


class Pipeline:
    """Calls run in order on one worker thread while the caller moves on: file and hash work
    overlapping the network. At most `depth` calls wait; a failed call raises at the next
    `put` or `drain`. A hop to a thread per chunk (`asyncio.to_thread`) costs more than it
    saves, so the caller waits only when the queue is full.
    """

    def __init__(self, depth: int = 4) -> None:
        self.depth = depth
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gridlab-transfer")
        self._queued: collections.deque[concurrent.futures.Future[Any]] = collections.deque()

    def _settled(self) -> concurrent.futures.Future[Any] | None:
        """The oldest call to wait for before queueing another, after dropping finished ones."""
        while self._queued and self._queued[0].done():
            self._queued.popleft().result()
        return self._queued.popleft() if len(self._queued) >= self.depth else None

    def put(self, fn: Callable[..., Any], *args: Any) -> None:
        while (oldest := self._settled()) is not None:
            oldest.result()
        self._queued.append(self._pool.submit(fn, *args))

    async def put_async(self, fn: Callable[..., Any], *args: Any) -> None:
        while (oldest := self._settled()) is not None:
            await asyncio.wrap_future(oldest)
        self._queued.append(self._pool.submit(fn, *args))

    def drain(self) -> None:
        while self._queued:
            self._queued.popleft().result()

    async def drain_async(self) -> None:
        while self._queued:
            await asyncio.wrap_future(self._queued.popleft())

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` after every queued call; its result."""
        self.drain()
        return self._pool.submit(fn, *args).result()

    async def run_async(self, fn: Callable[..., T], *args: Any) -> T:
        await self.drain_async()
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    def close(self) -> None:
        """Wait for queued calls (their errors are dropped: the caller is already failing or done)."""
        for future in self._queued:
            with contextlib.suppress(Exception):
                future.result()
        self._queued.clear()
        self._pool.shutdown(wait=True)

    async def close_async(self) -> None:
        for future in self._queued:
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(future)
        self._queued.clear()
        self._pool.shutdown(wait=False)


# --- steps the protocol asks a driver to perform -------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Stat:
    digest: str  # -> StatBlobResponse


@dataclasses.dataclass(frozen=True)
class _Send:
    path: str
    header: artifacts_pb2.BlobHeader  # -> UploadBlobResponse


@dataclasses.dataclass(frozen=True)
class _Fetch:
    request: artifacts_pb2.DownloadBlobRequest
    sink: _Sink  # every response goes to sink.write -> None


@dataclasses.dataclass(frozen=True)
class _Blocking:
    fn: Callable[[], Any]  # file work: run in a thread under asyncio -> its result


@dataclasses.dataclass(frozen=True)
class _Sleep:
    seconds: float  # -> None


_Step = _Stat | _Send | _Fetch | _Blocking | _Sleep


def _code(exc: BaseException) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    return code() if callable(code) else None


def _backoff(failures: int) -> float:
    pause = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (failures - 1))
    return pause * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto


def _check_digest(digest: str) -> None:
    if not is_digest(digest):
        raise ValueError(f"digest {digest!r} is not 'sha256:' followed by 64 lowercase hex digits")


def _upload_requests(path: str, header: artifacts_pb2.BlobHeader) -> Iterator[artifacts_pb2.UploadBlobRequest]:
    """The header, then the file's bytes from header.offset, CHUNK_BYTES at a time."""
    yield artifacts_pb2.UploadBlobRequest(header=header)
    with open(path, "rb") as f:
        f.seek(header.offset)
        remaining = header.size - header.offset
        while remaining > 0:
            data = f.read(min(CHUNK_BYTES, remaining))
            if not data:
                return  # the file shrank: the store refuses the short blob
            remaining -= len(data)
            yield artifacts_pb2.UploadBlobRequest(data=data)


def _upload_steps(
    path: str, digest: str | None, purpose: artifacts_pb2.BlobPurpose, attempt_id: str, agent_name: str
) -> Generator[_Step, Any, Blob]:
    size = yield _Blocking(functools.partial(os.path.getsize, path))
    if digest is None:
        digest = yield _Blocking(functools.partial(digest_file, path))
    else:
        _check_digest(digest)
    failures = 0
    restarted = False
    while True:
        offset = 0
        try:
            stat = yield _Stat(digest)
            if stat.complete:
                return Blob(digest, stat.size, existed=True)
            offset = stat.size if 0 <= stat.size <= size else 0
            header = artifacts_pb2.BlobHeader(
                digest=digest, size=size, offset=offset, purpose=purpose, attempt_id=attempt_id, agent_name=agent_name
            )
            reply = yield _Send(path, header)
            return Blob(reply.digest, reply.size, existed=reply.existed)
        except grpc.RpcError as exc:
            code = _code(exc)
            if code == grpc.StatusCode.DATA_LOSS and offset > 0 and not restarted:
                restarted = True  # someone else's partial was bad; the store dropped it: once more from 0
                continue
            if code not in _RETRY_CODES or failures >= RETRIES:
                raise
            failures += 1
            yield _Sleep(_backoff(failures))


class _Sink:
    """`dest.partial`, appended to and hashed as chunks arrive; renamed when it verifies."""

    def __init__(self, dest: str, digest: str) -> None:
        self.dest = dest
        self.partial = dest + PARTIAL_SUFFIX
        self.digest = digest
        self.hash = hashlib.sha256()
        self.expected: int | None = None
        self.file = open(self.partial, "ab+")  # noqa: SIM115 - closed by close()
        self.file.seek(0)
        while chunk := self.file.read(CHUNK_BYTES):  # what an earlier try fetched
            self.hash.update(chunk)
        self.length = self.file.tell()
        self.resumed = self.length > 0

    def write(self, msg: artifacts_pb2.DownloadBlobResponse) -> None:
        if msg.size:
            self.expected = msg.size
        data = msg.data  # each read of the field is a copy
        if self.expected is not None and self.length + len(data) > self.expected:
            raise TransferError(f"{self.digest}: the store sent more than the blob's {self.expected} bytes")
        self.file.write(data)
        self.hash.update(data)
        self.length += len(data)

    def reset(self) -> None:
        """Start again from byte 0."""
        self.file.seek(0)
        self.file.truncate()
        self.hash = hashlib.sha256()
        self.length = 0
        self.resumed = False

    def finish(self) -> bool:
        """Move the verified file into place; False (and an empty partial) on a mismatch."""
        self.file.flush()
        if f"sha256:{self.hash.hexdigest()}" != self.digest:
            self.reset()
            return False
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.partial, self.dest)
        return True

    def close(self) -> None:
        self.file.close()


def _download_steps(digest: str, dest: str, run_id: str) -> Generator[_Step, Any, Blob]:
    _check_digest(digest)
    sink: _Sink = yield _Blocking(functools.partial(_Sink, dest, digest))
    failures = 0
    restarted = False
    try:
        while True:
            try:
                request = artifacts_pb2.DownloadBlobRequest(digest=digest, offset=sink.length, run_id=run_id)
                yield _Fetch(request, sink)
                resumed = sink.resumed
                if (yield _Blocking(sink.finish)):
                    return Blob(digest, sink.length)
                if restarted or not resumed:
                    raise TransferError(f"{digest}: the downloaded bytes do not match the digest")
                restarted = True  # the partial from an earlier try was bad: once more from 0
            except grpc.RpcError as exc:
                code = _code(exc)
                if code == grpc.StatusCode.OUT_OF_RANGE and sink.length > 0 and not restarted:
                    restarted = True  # the partial is longer than the blob
                    yield _Blocking(sink.reset)
                    continue
                if code not in _RETRY_CODES or failures >= RETRIES:
                    raise
                failures += 1
                yield _Sleep(_backoff(failures))
    finally:
        sink.close()


# --- drivers ----------------------------------------------------------------------------------


def _drive(steps: Generator[_Step, Any, T], perform: Callable[[_Step], Any]) -> T:
    """Run the protocol with a sync `perform`; its exceptions go back into the protocol."""
    outcome: Any = None
    error: Exception | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(outcome)
        except StopIteration as stop:
            return stop.value
        outcome, error = None, None
        try:
            outcome = perform(step)
        except Exception as exc:
            error = exc


async def _drive_async(steps: Generator[_Step, Any, T], perform: Callable[[_Step], Any]) -> T:
    """`_drive` for an async `perform`."""
    outcome: Any = None
    error: Exception | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(outcome)
        except StopIteration as stop:
            return stop.value
        outcome, error = None, None
        try:
            outcome = await perform(step)
        except Exception as exc:
            error = exc


def _perform(stub: Any, metadata: Metadata, step: _Step) -> Any:
    if isinstance(step, _Stat):
        request = artifacts_pb2.StatBlobRequest(digest=step.digest)
        return stub.StatBlob(request, metadata=metadata, timeout=UNARY_TIMEOUT)
    if isinstance(step, _Send):
        return stub.UploadBlob(_upload_requests(step.path, step.header), metadata=metadata)
    if isinstance(step, _Fetch):
        call = stub.DownloadBlob(step.request, metadata=metadata)
        pipe = Pipeline()
        try:
            for msg in call:
                pipe.put(step.sink.write, msg)
            pipe.drain()
        finally:
            call.cancel()
            pipe.close()  # the sink is the protocol's again only when no write is left
        return None
    if isinstance(step, _Blocking):
        return step.fn()
    time.sleep(step.seconds)
    return None


async def read_ahead(items: Iterator[T], depth: int = 4) -> AsyncIterator[T]:
    """A blocking iterator (file reads) advanced on a worker thread, `depth` items ahead."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gridlab-read")
    done = object()
    ahead = collections.deque(pool.submit(next, items, done) for _ in range(depth))
    try:
        while True:
            future = ahead.popleft()
            item: Any = future.result() if future.done() else await asyncio.wrap_future(future)
            if item is done:
                return
            ahead.append(pool.submit(next, items, done))
            yield item
    finally:
        for future in ahead:
            future.cancel()
        close = getattr(items, "close", None)
        if close is not None:
            pool.submit(close)  # after a read still running: one thread, in order
        pool.shutdown(wait=False)


async def _perform_async(stub: Any, metadata: Metadata, step: _Step) -> Any:
    if isinstance(step, _Stat):
        request = artifacts_pb2.StatBlobRequest(digest=step.digest)
        return await stub.StatBlob(request, metadata=metadata, timeout=UNARY_TIMEOUT)
    if isinstance(step, _Send):
        return await stub.UploadBlob(read_ahead(_upload_requests(step.path, step.header)), metadata=metadata)
    if isinstance(step, _Fetch):
        call = stub.DownloadBlob(step.request, metadata=metadata)
        pipe = Pipeline()
        try:
            async for msg in call:
                await pipe.put_async(step.sink.write, msg)
            await pipe.drain_async()
        finally:
            call.cancel()
            await pipe.close_async()
        return None
    if isinstance(step, _Blocking):
        return await asyncio.to_thread(step.fn)
    await asyncio.sleep(step.seconds)
    return None


# --- public API -------------------------------------------------------------------------------


def upload_file(
    stub: Any,
    path: str | os.PathLike[str],
    *,
    purpose: artifacts_pb2.BlobPurpose,
    attempt_id: str = "",
    agent_name: str = "",
    metadata: Metadata,
    digest: str | None = None,
) -> Blob:
    """Put a file into the scheduler's store, resuming an interrupted upload of it.

    Example:
        >>> blob = upload_file(ArtifactsStub(channel), "model.pt", purpose=BLOB_PURPOSE_BUNDLE,
        ...                    metadata=auth.metadata(token))

    Args:
        stub: An `ArtifactsStub` on a sync channel.
        path: The file. It must not change while it is sent (the store checks its digest).
        purpose: A `BlobPurpose` (BUNDLE for users; CHECKPOINT or ARTIFACT for agents).
        attempt_id: Agents: the live attempt the blob belongs to.
        agent_name: Agents: the sender, which must hold a node of that attempt.
        metadata: Call metadata carrying the token (`gridlab.common.auth.metadata`).
        digest: The file's "sha256:<hex>" when the caller knows it; else computed.

    Returns:
        The stored blob (`existed` when the store had it: no bytes were sent).

    Raises:
        grpc.RpcError: The store refused it, or the scheduler stayed unreachable.
        ValueError: `digest` is not a sha256 digest.
        OSError: The file cannot be read.
    """
    steps = _upload_steps(os.fspath(path), digest, purpose, attempt_id, agent_name)
    return _drive(steps, functools.partial(_perform, stub, metadata))


async def upload_file_async(
    stub: Any,
    path: str | os.PathLike[str],
    *,
    purpose: artifacts_pb2.BlobPurpose,
    attempt_id: str = "",
    agent_name: str = "",
    metadata: Metadata,
    digest: str | None = None,
) -> Blob:
    """`upload_file` with an `ArtifactsStub` on a grpc.aio channel; file reads run in threads."""
    steps = _upload_steps(os.fspath(path), digest, purpose, attempt_id, agent_name)
    return await _drive_async(steps, functools.partial(_perform_async, stub, metadata))


def download_blob(
    stub: Any,
    digest: str,
    dest: str | os.PathLike[str],
    *,
    run_id: str = "",
    metadata: Metadata,
) -> Blob:
    """Fetch a blob into `dest`, atomically, resuming `dest.partial` from an earlier try.

    Example:
        >>> download_blob(ArtifactsStub(channel), ckpt.files[0].digest, "out/model.pt",
        ...               run_id=run_id, metadata=auth.metadata(token))

    Args:
        stub: An `ArtifactsStub` on a sync channel.
        digest: "sha256:<64 hex>".
        dest: Where the file goes; its folder must exist. Replaced if present.
        run_id: Users: the run the blob belongs to (agents may leave it empty).
        metadata: Call metadata carrying the token.

    Returns:
        The blob's digest and size.

    Raises:
        grpc.RpcError: The store refused (NOT_FOUND, ...) or stayed unreachable.
        TransferError: The bytes did not match the digest (dest is left untouched).
        ValueError: `digest` is not a sha256 digest.
    """
    steps = _download_steps(digest, os.fspath(dest), run_id)
    return _drive(steps, functools.partial(_perform, stub, metadata))


async def download_blob_async(
    stub: Any,
    digest: str,
    dest: str | os.PathLike[str],
    *,
    run_id: str = "",
    metadata: Metadata,
) -> Blob:
    """`download_blob` with an `ArtifactsStub` on a grpc.aio channel; file writes run in threads."""
    steps = _download_steps(digest, os.fspath(dest), run_id)
    return await _drive_async(steps, functools.partial(_perform_async, stub, metadata))
