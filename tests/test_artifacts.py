"""The artifact store through its real gRPC service: a grpc.aio server on an ephemeral port in a
thread of this process, a real SQLite file, and the client helpers of common/transfer.py.

Blobs are small and chunks are 64 KiB, so a blob spans several messages and tests stay fast.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gridlab.client import cli
from gridlab.common import auth as tokens
from gridlab.common import transfer
from gridlab.common.config import SchedulerConfig
from gridlab.common.grpcopts import SERVER_OPTIONS
from gridlab.common.ids import new_id
from gridlab.common.timeutil import FakeClock
from gridlab.scheduler import artifacts
from gridlab.scheduler.artifacts import BlobStore, newest_checkpoint, run_checkpoints
from gridlab.scheduler.artifacts_api import ArtifactsService
from gridlab.scheduler.auth import AuthInterceptor, Principal
from gridlab.scheduler.engine import Engine
from gridlab.scheduler.errors import ApiError
from gridlab.scheduler.store import Store
from gridlab.v1 import artifacts_pb2, artifacts_pb2_grpc, types_pb2

CHUNK = 64 * 1024
BUNDLE = artifacts_pb2.BLOB_PURPOSE_BUNDLE
CHECKPOINT = artifacts_pb2.BLOB_PURPOSE_CHECKPOINT
ARTIFACT = artifacts_pb2.BLOB_PURPOSE_ARTIFACT
Code = grpc.StatusCode


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Server:
    """The Artifacts service over a real Engine and Store, served from its own event-loop thread."""

    def __init__(self, root: Path, **config: Any) -> None:
        self.root = root
        self.clock = FakeClock(time.time())
        self.config = SchedulerConfig(state_dir=str(root), **config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.engine: Engine = self.on_loop(lambda: Engine(Store(root / "s.db"), self.config, clock=self.clock))
        self.server, port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()
        self.address = f"127.0.0.1:{port}"
        self.channel = grpc.insecure_channel(self.address)
        self.stub = artifacts_pb2_grpc.ArtifactsStub(self.channel)
        self.tokens = {
            who: self.on_loop(lambda w=who, r=role: self.engine.create_token(w, r))
            for who, role in (("alice", "user"), ("bob", "user"), ("root", "admin"), ("agent", "agent"))
        }
        self.md = {who: tokens.metadata(token) for who, token in self.tokens.items()}

    async def _start(self) -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(interceptors=[AuthInterceptor(self.engine.lookup_token)], options=SERVER_OPTIONS)
        self.service = ArtifactsService(self.engine)
        artifacts_pb2_grpc.add_ArtifactsServicer_to_server(self.service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the server's loop thread: the store has one user."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()

    def sql(self, query: str, params: Any = ()) -> list[Any]:
        return self.on_loop(lambda: [tuple(r) for r in self.engine.store.all(query, params)])

    def add_run(self, user: str = "alice", code_digest: str = "") -> str:
        run_id = new_id("run")
        spec = types_pb2.RunSpec(command=["true"], code_digest=code_digest).SerializeToString()

        def insert() -> None:
            with self.engine.store.transaction() as conn:
                conn.execute(
                    "INSERT INTO runs (id, user, spec, state, created_at) VALUES (?, ?, ?, 'RUNNING', ?)",
                    (run_id, user, spec, self.clock.time()),
                )

        self.on_loop(insert)
        return run_id

    def add_attempt(self, run_id: str, agents: tuple[str, ...] = ("a1",), state: str = "RUNNING") -> str:
        attempt_id = new_id("att")

        def insert() -> None:
            with self.engine.store.transaction() as conn:
                number = conn.execute("SELECT COUNT(*) FROM attempts WHERE run_id = ?", (run_id,)).fetchone()[0] + 1
                conn.execute(
                    "INSERT INTO attempts (id, run_id, number, state, created_at) VALUES (?, ?, ?, ?, ?)",
                    (attempt_id, run_id, number, state, self.clock.time()),
                )
                for rank, agent in enumerate(agents):
                    conn.execute(
                        "INSERT INTO attempt_nodes (attempt_id, node_rank, agent_name, gpu_uuids, cpus, state) "
                        "VALUES (?, ?, ?, ?, 1, ?)",
                        (attempt_id, rank, agent, json.dumps([]), state),
                    )

        self.on_loop(insert)
        return attempt_id

    def end_attempt(self, attempt_id: str) -> None:
        def update() -> None:
            with self.engine.store.transaction() as conn:
                conn.execute(
                    "UPDATE attempts SET state = 'FAILED', finished_at = ? WHERE id = ?",
                    (self.clock.time(), attempt_id),
                )

        self.on_loop(update)

    def put(
        self, path: Path, data: bytes, purpose: int = CHECKPOINT, attempt_id: str = "", who: str = "", agent: str = "a1"
    ) -> Any:
        """Upload `data` (written to `path`) as `who` (agent `agent` for checkpoints/artifacts, else alice)."""
        path.write_bytes(data)
        who = who or ("alice" if purpose == BUNDLE else "agent")
        return transfer.upload_file(
            self.stub, path, purpose=purpose, attempt_id=attempt_id, agent_name=agent, metadata=self.md[who]
        )

    def close(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result()
        self.on_loop(self.engine.store.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "CHUNK_BYTES", CHUNK)
    monkeypatch.setattr(transfer, "BACKOFF_MIN", 0.01)
    monkeypatch.setattr(artifacts, "READ_CHUNK", CHUNK)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "sched", bundle_max_bytes=1 << 20, blob_max_bytes=2 << 20)
    yield s
    s.close()


def expect(code: grpc.StatusCode, fn: Callable[[], Any], *words: str) -> str:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    err: Any = info.value
    assert err.code() == code, err.details()
    for word in words:
        assert word in err.details()
    return str(err.details())


def raw_upload(server: Server, header: artifacts_pb2.BlobHeader, chunks: list[bytes], who: str = "alice") -> Any:
    requests = [artifacts_pb2.UploadBlobRequest(header=header)]
    requests += [artifacts_pb2.UploadBlobRequest(data=c) for c in chunks]
    return server.stub.UploadBlob(iter(requests), metadata=server.md[who])


def stat(server: Server, digest: str) -> artifacts_pb2.StatBlobResponse:
    return server.stub.StatBlob(artifacts_pb2.StatBlobRequest(digest=digest), metadata=server.md["alice"])


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection lost (simulated)"


class FlakyStub:
    """The real stub, but the first UploadBlob / DownloadBlob loses its connection after `after` messages."""

    def __init__(self, real: Any, after: int) -> None:
        self.real = real
        self.after = after
        self.headers: list[artifacts_pb2.BlobHeader] = []
        self.offsets: list[int] = []
        self.StatBlob = real.StatBlob

    def UploadBlob(self, requests: Iterator[Any], **kw: Any) -> Any:
        requests = list(requests)
        self.headers.append(requests[0].header)
        if self.after is None:
            return self.real.UploadBlob(iter(requests), **kw)
        cut, self.after = self.after, None

        def partway() -> Iterator[Any]:
            yield from requests[: cut + 1]
            time.sleep(0.2)  # let the server write them before the stream breaks
            raise ConnectionError("cut")

        with pytest.raises(grpc.RpcError):
            self.real.UploadBlob(partway(), **kw)
        raise Unavailable()

    def DownloadBlob(self, request: Any, **kw: Any) -> Any:
        self.offsets.append(request.offset)
        call = self.real.DownloadBlob(request, **kw)
        if self.after is None:
            return call
        cut, self.after = self.after, None

        class Cut:
            def __iter__(self) -> Iterator[Any]:
                for i, msg in enumerate(call):
                    if i == cut:
                        raise Unavailable()
                    yield msg

            def cancel(self) -> None:
                call.cancel()

        return Cut()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# --- uploads ------------------------------------------------------------------------------------------


def test_upload_stores_by_digest_then_dedupes(server: Server, tmp_path: Path) -> None:
    data = os.urandom(5 * CHUNK + 7)
    blob = server.put(tmp_path / "b.tgz", data, BUNDLE)
    assert (blob.digest, blob.size, blob.existed) == (digest_of(data), len(data), False)
    hexdigest = blob.digest.removeprefix("sha256:")
    stored = server.root / "artifacts" / "sha256" / hexdigest[:2] / hexdigest
    assert stored.read_bytes() == data
    assert not (server.root / "artifacts" / "partial" / hexdigest).exists()
    assert stat(server, blob.digest) == artifacts_pb2.StatBlobResponse(complete=True, size=len(data))
    assert server.sql("SELECT size, purpose FROM blobs WHERE digest = ?", (blob.digest,)) == [(len(data), "bundle")]
    again = server.put(tmp_path / "c.tgz", data, BUNDLE, who="bob")
    assert again.existed
    # A header for a blob the store has is answered at once, whatever follows it.
    reply = raw_upload(server, artifacts_pb2.BlobHeader(digest=blob.digest, size=len(data), purpose=BUNDLE), [b"x"])
    assert reply.existed
    empty = server.put(tmp_path / "empty", b"", BUNDLE)
    assert (empty.size, stat(server, empty.digest).complete) == (0, True)


def test_an_interrupted_upload_resumes_from_what_stat_reports(server: Server, tmp_path: Path) -> None:
    data = os.urandom(6 * CHUNK)
    digest = digest_of(data)
    header = artifacts_pb2.BlobHeader(digest=digest, size=len(data), purpose=BUNDLE)

    def cut_after_three() -> Iterator[Any]:
        yield artifacts_pb2.UploadBlobRequest(header=header)
        for i in range(3):
            yield artifacts_pb2.UploadBlobRequest(data=data[i * CHUNK : (i + 1) * CHUNK])
        time.sleep(0.2)  # let the server write them before the stream breaks
        raise ConnectionError("cut")

    with pytest.raises(grpc.RpcError):
        server.stub.UploadBlob(cut_after_three(), metadata=server.md["alice"])
    wait_for(lambda: stat(server, digest).size == 3 * CHUNK)
    assert not stat(server, digest).complete
    # A header whose offset is not what the store holds is told where to resume.
    bad = artifacts_pb2.BlobHeader(digest=digest, size=len(data), offset=CHUNK, purpose=BUNDLE)
    expect(Code.OUT_OF_RANGE, lambda: raw_upload(server, bad, [data[CHUNK:]]), f"resume from {3 * CHUNK}")
    flaky = FlakyStub(server.stub, after=None)  # type: ignore[arg-type]
    (tmp_path / "f").write_bytes(data)
    blob = transfer.upload_file(flaky, tmp_path / "f", purpose=BUNDLE, metadata=server.md["alice"])
    assert [h.offset for h in flaky.headers] == [3 * CHUNK]
    assert not blob.existed
    assert stat(server, digest).complete


def test_the_client_retries_a_lost_connection_from_the_new_offset(server: Server, tmp_path: Path) -> None:
    data = os.urandom(5 * CHUNK + 1)
    (tmp_path / "f").write_bytes(data)
    flaky = FlakyStub(server.stub, after=2)
    blob = transfer.upload_file(flaky, tmp_path / "f", purpose=BUNDLE, metadata=server.md["alice"])
    assert blob.digest == digest_of(data)
    assert flaky.headers[0].offset == 0
    assert 0 < flaky.headers[1].offset <= 2 * CHUNK
    assert stat(server, blob.digest).complete


def test_async_upload_and_download(server: Server, tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 3)
    (tmp_path / "f").write_bytes(data)
    run_id = server.add_run("alice")
    attempt = server.add_attempt(run_id)

    async def go() -> tuple[transfer.Blob, transfer.Blob]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = artifacts_pb2_grpc.ArtifactsStub(channel)
            up = await transfer.upload_file_async(
                stub,
                tmp_path / "f",
                purpose=CHECKPOINT,
                attempt_id=attempt,
                agent_name="a1",
                metadata=server.md["agent"],
            )
            down = await transfer.download_blob_async(stub, up.digest, tmp_path / "out", metadata=server.md["agent"])
            return up, down

    up, down = asyncio.run(go())
    assert up.digest == down.digest == digest_of(data)
    assert (tmp_path / "out").read_bytes() == data


def test_a_digest_mismatch_is_data_loss_and_stores_nothing(server: Server, tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK)
    wrong = digest_of(b"something else")
    header = artifacts_pb2.BlobHeader(digest=wrong, size=len(data), purpose=BUNDLE)
    expect(Code.DATA_LOSS, lambda: raw_upload(server, header, [data[:CHUNK], data[CHUNK:]]), "nothing was stored")
    assert stat(server, wrong) == artifacts_pb2.StatBlobResponse(complete=False, size=0)
    assert not (server.root / "artifacts" / "partial" / wrong.removeprefix("sha256:")).exists()
    assert server.sql("SELECT * FROM blobs") == []
    # The client refuses a digest it cannot trust, and the store refuses a changed file.
    (tmp_path / "f").write_bytes(data)
    with pytest.raises(grpc.RpcError):
        transfer.upload_file(server.stub, tmp_path / "f", purpose=BUNDLE, metadata=server.md["alice"], digest=wrong)


def test_sizes_are_capped_by_purpose_before_any_byte_is_written(server: Server, tmp_path: Path) -> None:
    big = digest_of(b"big")
    header = artifacts_pb2.BlobHeader(digest=big, size=(1 << 20) + 1, purpose=BUNDLE)
    expect(Code.RESOURCE_EXHAUSTED, lambda: raw_upload(server, header, [b"x"]), "at most 1048576 bytes per bundle")
    assert not (server.root / "artifacts" / "partial" / big.removeprefix("sha256:")).exists()
    attempt = server.add_attempt(server.add_run())
    header = artifacts_pb2.BlobHeader(
        digest=big, size=(2 << 20) + 1, purpose=CHECKPOINT, attempt_id=attempt, agent_name="a1"
    )
    expect(Code.RESOURCE_EXHAUSTED, lambda: raw_upload(server, header, [], who="agent"), "per checkpoint")
    # More bytes than the header said are refused.
    header = artifacts_pb2.BlobHeader(digest=digest_of(b"abc"), size=3, purpose=BUNDLE)
    expect(Code.INVALID_ARGUMENT, lambda: raw_upload(server, header, [b"abcd"]), "more bytes than header.size")
    # Fewer: the partial stays for a resume, the client is told where from.
    expect(Code.FAILED_PRECONDITION, lambda: raw_upload(server, header, [b"ab"]), "from offset 2")
    assert stat(server, header.digest).size == 2


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (artifacts_pb2.BlobHeader(digest="sha256:" + "A" * 64, size=1, purpose=BUNDLE), Code.INVALID_ARGUMENT),
        (artifacts_pb2.BlobHeader(digest="md5:" + "a" * 32, size=1, purpose=BUNDLE), Code.INVALID_ARGUMENT),
        (artifacts_pb2.BlobHeader(digest="sha256:../../etc/passwd", size=1, purpose=BUNDLE), Code.INVALID_ARGUMENT),
        (artifacts_pb2.BlobHeader(digest="sha256:" + "a" * 64, size=-1, purpose=BUNDLE), Code.INVALID_ARGUMENT),
        (artifacts_pb2.BlobHeader(digest="sha256:" + "a" * 64, size=1, offset=2, purpose=BUNDLE), Code.OUT_OF_RANGE),
        (artifacts_pb2.BlobHeader(digest="sha256:" + "a" * 64, size=1, offset=-1, purpose=BUNDLE), Code.OUT_OF_RANGE),
        (artifacts_pb2.BlobHeader(digest="sha256:" + "a" * 64, size=1), Code.INVALID_ARGUMENT),
        (artifacts_pb2.BlobHeader(digest="sha256:" + "a" * 64, size=1, purpose=CHECKPOINT), Code.PERMISSION_DENIED),
        (artifacts_pb2.BlobHeader(digest="sha256:" + "a" * 64, size=1, purpose=ARTIFACT), Code.PERMISSION_DENIED),
    ],
)
def test_hostile_headers_are_refused(server: Server, header: artifacts_pb2.BlobHeader, code: grpc.StatusCode) -> None:
    expect(code, lambda: raw_upload(server, header, [b"x"]))
    assert server.sql("SELECT * FROM blobs") == []
    assert list((server.root / "artifacts" / "partial").iterdir()) == []


def test_hostile_digests_in_stat_and_download(server: Server) -> None:
    for digest in ("", "sha256:", "sha256:" + "g" * 64, "sha256:" + "a" * 63, "sha256:" + "a" * 64 + "\x00"):
        expect(Code.INVALID_ARGUMENT, lambda d=digest: stat(server, d), "64 lowercase hex")
    request = artifacts_pb2.DownloadBlobRequest(digest="sha256:../x")
    expect(Code.INVALID_ARGUMENT, lambda: list(server.stub.DownloadBlob(request, metadata=server.md["agent"])))
    missing = artifacts_pb2.DownloadBlobRequest(digest=digest_of(b"nope"))
    expect(Code.NOT_FOUND, lambda: list(server.stub.DownloadBlob(missing, metadata=server.md["agent"])))
    with pytest.raises(ValueError, match="64 lowercase hex"):
        transfer.download_blob(server.stub, "sha256:XYZ", "/tmp/never", metadata=server.md["agent"])  # noqa: S108


def test_a_full_disk_is_a_clear_error_and_leaves_a_resumable_partial(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Full(io.FileIO):
        def write(self, b: Any) -> int:
            if self.tell() + len(b) > 2 * CHUNK:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(b)

    real_open = artifacts._open_partial
    monkeypatch.setattr(artifacts, "_open_partial", lambda p: Full(os.open(p, os.O_RDWR | os.O_CREAT, 0o600), "r+b"))
    data = os.urandom(4 * CHUNK)
    (tmp_path / "f").write_bytes(data)
    expect(
        Code.RESOURCE_EXHAUSTED,
        lambda: transfer.upload_file(server.stub, tmp_path / "f", purpose=BUNDLE, metadata=server.md["alice"]),
        "disk is full",
    )
    assert stat(server, digest_of(data)) == artifacts_pb2.StatBlobResponse(complete=False, size=2 * CHUNK)
    monkeypatch.setattr(artifacts, "_open_partial", real_open)
    blob = transfer.upload_file(server.stub, tmp_path / "f", purpose=BUNDLE, metadata=server.md["alice"])
    assert stat(server, blob.digest).complete


# --- who may do what -----------------------------------------------------------------------------------


def test_users_read_only_blobs_of_their_own_runs(server: Server, tmp_path: Path) -> None:
    code = server.put(tmp_path / "code", b"alice's code", BUNDLE)
    other = server.put(tmp_path / "other", b"bob's code", BUNDLE, who="bob")
    run_id = server.add_run("alice", code_digest=code.digest)

    def download(who: str, digest: str, run: str) -> Any:
        dest = tmp_path / f"out-{who}"
        return transfer.download_blob(server.stub, digest, dest, run_id=run, metadata=server.md[who])

    assert download("alice", code.digest, run_id).size == len(b"alice's code")
    assert download("root", code.digest, run_id).digest == code.digest
    expect(Code.NOT_FOUND, lambda: download("bob", code.digest, run_id), "no run")
    expect(Code.NOT_FOUND, lambda: download("alice", other.digest, run_id), "has no blob")
    expect(Code.INVALID_ARGUMENT, lambda: download("alice", code.digest, ""), "run_id is empty")
    assert download("agent", other.digest, "").digest == other.digest  # agents fetch any blob
    # Checkpoint files and artifacts of the run are the run's blobs too.
    attempt = server.add_attempt(run_id)
    ckpt = server.put(tmp_path / "ck", b"weights", CHECKPOINT, attempt)
    expect(Code.NOT_FOUND, lambda: download("alice", ckpt.digest, run_id), "has no blob")
    record = artifacts_pb2.RecordCheckpointRequest(
        agent_name="a1", attempt_id=attempt, node_rank=0, name="last.ckpt", step=5, files=[ckpt.ref("last.ckpt")]
    )
    server.stub.RecordCheckpoint(record, metadata=server.md["agent"])
    assert download("alice", ckpt.digest, run_id).digest == ckpt.digest
    listing = artifacts_pb2.ListArtifactsRequest(run_id=run_id)
    assert len(server.stub.ListArtifacts(listing, metadata=server.md["alice"]).checkpoints) == 1
    expect(Code.NOT_FOUND, lambda: server.stub.ListArtifacts(listing, metadata=server.md["bob"]))
    expect(Code.PERMISSION_DENIED, lambda: server.stub.ListArtifacts(listing, metadata=server.md["agent"]))
    expect(Code.PERMISSION_DENIED, lambda: server.stub.RecordCheckpoint(record, metadata=server.md["alice"]))


def test_agents_upload_and_record_only_for_their_own_live_attempts(server: Server, tmp_path: Path) -> None:
    run_id = server.add_run()
    attempt = server.add_attempt(run_id, agents=("a1", "a2"))
    blob = server.put(tmp_path / "w", b"shard", CHECKPOINT, attempt)
    expect(Code.PERMISSION_DENIED, lambda: server.put(tmp_path / "b", b"code", BUNDLE, who="agent"), "not code")
    expect(Code.ABORTED, lambda: server.put(tmp_path / "x", b"x", CHECKPOINT, "att-unknown"), "unknown")
    expect(Code.INVALID_ARGUMENT, lambda: server.put(tmp_path / "x", b"x", CHECKPOINT, ""), "attempt_id")
    put_as_a3 = lambda: server.put(tmp_path / "y", b"y", CHECKPOINT, attempt, agent="a3")  # noqa: E731
    expect(Code.ABORTED, put_as_a3, "has no node on agent 'a3'")

    def record(agent: str, node: int, attempt_id: str = attempt, files: Any = None) -> Any:
        request = artifacts_pb2.RecordCheckpointRequest(
            agent_name=agent, attempt_id=attempt_id, node_rank=node, name="ck", step=1, files=files or [blob.ref("ck")]
        )
        return server.stub.RecordCheckpoint(request, metadata=server.md["agent"])

    expect(Code.ABORTED, lambda: record("a2", 0), "not on agent 'a2'")
    expect(Code.ABORTED, lambda: record("a1", 7), "has no node 7")
    missing = types_pb2.FileRef(path="ck", digest=digest_of(b"never uploaded"), size=14)
    expect(Code.FAILED_PRECONDITION, lambda: record("a1", 0, files=[missing]), "upload it first")
    wrong_size = types_pb2.FileRef(path="ck", digest=blob.digest, size=99)
    expect(Code.INVALID_ARGUMENT, lambda: record("a1", 0, files=[wrong_size]), "has 5 bytes")
    first = record("a1", 0).checkpoint_id
    assert record("a1", 0).checkpoint_id == first  # a retried record is the same record
    assert server.sql("SELECT COUNT(*) FROM checkpoint_files") == [(1,)]
    # An attempt that just ended still takes its last files; long after, it takes nothing.
    server.end_attempt(attempt)
    server.put(tmp_path / "late", b"late", ARTIFACT, attempt)
    arts = artifacts_pb2.RecordArtifactsRequest(
        agent_name="a2", attempt_id=attempt, node_rank=1, files=[blob.ref("out/model.bin")]
    )
    server.stub.RecordArtifacts(arts, metadata=server.md["agent"])
    server.stub.RecordArtifacts(arts, metadata=server.md["agent"])  # idempotent
    assert server.sql("SELECT path, node_rank FROM artifacts") == [("out/model.bin", 1)]
    server.clock.advance(artifacts.ENDED_GRACE + 1)
    expect(Code.ABORTED, lambda: server.put(tmp_path / "later", b"later", ARTIFACT, attempt), "ended")
    expect(Code.ABORTED, lambda: server.stub.RecordArtifacts(arts, metadata=server.md["agent"]), "ended")


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../x", "ck/../../x", "ck//x", "ck/./x", "ck/x\x00", "ck/" + "a" * 300, "C:/x", "ck\\..\\x", ""],
)
def test_hostile_paths_are_refused(server: Server, tmp_path: Path, path: str) -> None:
    attempt = server.add_attempt(server.add_run())
    blob = server.put(tmp_path / "w", b"w", CHECKPOINT, attempt)
    ref = types_pb2.FileRef(path=path, digest=blob.digest, size=1)
    for request, method in (
        (artifacts_pb2.RecordArtifactsRequest(agent_name="a1", attempt_id=attempt, files=[ref]), "RecordArtifacts"),
        (
            artifacts_pb2.RecordCheckpointRequest(agent_name="a1", attempt_id=attempt, name="ck", files=[ref]),
            "RecordCheckpoint",
        ),
    ):
        expect(
            Code.INVALID_ARGUMENT, lambda r=request, m=method: getattr(server.stub, m)(r, metadata=server.md["agent"])
        )
    assert server.sql("SELECT COUNT(*) FROM artifacts") == [(0,)]
    assert server.sql("SELECT COUNT(*) FROM checkpoints") == [(0,)]


def test_checkpoint_names_and_files_must_agree(server: Server, tmp_path: Path) -> None:
    attempt = server.add_attempt(server.add_run())
    blob = server.put(tmp_path / "w", b"w", CHECKPOINT, attempt)

    def record(name: str, *paths: str, step: int = 1) -> Any:
        request = artifacts_pb2.RecordCheckpointRequest(
            agent_name="a1", attempt_id=attempt, name=name, step=step, files=[blob.ref(p) for p in paths]
        )
        return server.stub.RecordCheckpoint(request, metadata=server.md["agent"])

    expect(Code.INVALID_ARGUMENT, lambda: record("ck", "other/file"), "neither the checkpoint")
    expect(Code.INVALID_ARGUMENT, lambda: record("a/b", "a/b"), "one name")
    expect(Code.INVALID_ARGUMENT, lambda: record("ck"), "files is empty")
    expect(Code.INVALID_ARGUMENT, lambda: record("ck", "ck/a", "ck/a"), "twice")
    expect(Code.INVALID_ARGUMENT, lambda: record("ck", "ck", step=-2), "step")
    assert record("ck", "ck/a", "ck/b").checkpoint_id > 0


# --- which checkpoint a run resumes from ------------------------------------------------------------


def test_newest_checkpoint_unions_the_nodes_shards_once_every_writer_recorded(server: Server, tmp_path: Path) -> None:
    run_id = server.add_run()
    first = server.add_attempt(run_id, agents=("a1", "a2"))
    blobs = {name: server.put(tmp_path / name, name.encode(), CHECKPOINT, first) for name in ("m", "s0", "s1", "x")}

    def record(attempt: str, agent: str, node: int, name: str, step: int, **files: str) -> None:
        refs = [blobs[b].ref(f"{name}/{p}") for p, b in files.items()]
        request = artifacts_pb2.RecordCheckpointRequest(
            agent_name=agent, attempt_id=attempt, node_rank=node, name=name, step=step, files=refs
        )
        server.stub.RecordCheckpoint(request, metadata=server.md["agent"])
        server.clock.advance(1)

    newest = lambda: server.on_loop(lambda: newest_checkpoint(server.engine.store, run_id))  # noqa: E731
    assert newest() is None
    record(first, "a1", 0, "step10", 10, meta="m", shard0="s0")
    record(first, "a2", 1, "step10", 10, shard1="s1", meta="x")
    ck = newest()
    assert (ck.name, ck.step, ck.attempt_number, ck.attempt_id) == ("step10", 10, 1, first)
    # The union, a path both nodes wrote taken from the lower node rank.
    assert [(f.path, f.digest) for f in ck.files] == [
        ("step10/meta", blobs["m"].digest),
        ("step10/shard0", blobs["s0"].digest),
        ("step10/shard1", blobs["s1"].digest),
    ]
    # Node 0 has step 20, node 1 not yet: incomplete, so step 10 it is.
    record(first, "a1", 0, "step20", 20, meta="m", shard0="s0")
    assert newest().name == "step10"
    record(first, "a2", 1, "step20", 20, shard1="s1")
    assert newest().name == "step20"
    # A later attempt (one node) with a smaller step does not win; the same step later does.
    second = server.add_attempt(run_id, agents=("a3",))
    record(second, "a3", 0, "last", 15, meta="m")
    assert newest().name == "step20"
    record(second, "a3", 0, "again", 20, meta="m")
    assert (newest().name, newest().attempt_number) == ("again", 2)
    # Unknown steps (-1) lose to any known one.
    record(second, "a3", 0, "unknown", -1, meta="m")
    assert newest().name == "again"
    listed = server.on_loop(lambda: run_checkpoints(server.engine.store, run_id))
    assert [c.name for c in listed] == ["step10", "step20", "last", "again", "unknown"]


def test_a_single_file_checkpoint_and_a_rewritten_one(server: Server, tmp_path: Path) -> None:
    run_id = server.add_run()
    attempt = server.add_attempt(run_id, agents=("a1", "a2"))
    old = server.put(tmp_path / "old", b"old", CHECKPOINT, attempt)
    new = server.put(tmp_path / "new", b"new", CHECKPOINT, attempt)
    for blob in (old, new):  # last.ckpt rewritten at the same (unknown) step: the newest record counts
        request = artifacts_pb2.RecordCheckpointRequest(
            agent_name="a1", attempt_id=attempt, node_rank=0, name="last.ckpt", step=-1, files=[blob.ref("last.ckpt")]
        )
        server.stub.RecordCheckpoint(request, metadata=server.md["agent"])
        server.clock.advance(1)
    ck = server.on_loop(lambda: newest_checkpoint(server.engine.store, run_id))
    assert [(f.path, f.digest) for f in ck.files] == [("last.ckpt", new.digest)]  # only node 0 writes: complete


# --- downloads ------------------------------------------------------------------------------------------


def test_download_resumes_a_partial_and_after_a_lost_connection(server: Server, tmp_path: Path) -> None:
    data = os.urandom(6 * CHUNK + 5)
    blob = server.put(tmp_path / "src", data, BUNDLE)
    run_id = server.add_run("alice", code_digest=blob.digest)
    dest = tmp_path / "dest"
    # A partial left by an earlier try is continued from its length.
    (tmp_path / "dest.partial").write_bytes(data[: 2 * CHUNK])
    flaky = FlakyStub(server.stub, after=2)
    got = transfer.download_blob(flaky, blob.digest, dest, run_id=run_id, metadata=server.md["alice"])
    assert got == transfer.Blob(blob.digest, len(data))
    assert dest.read_bytes() == data
    assert not (tmp_path / "dest.partial").exists()
    assert flaky.offsets == [2 * CHUNK, 4 * CHUNK]  # then the connection dropped after two messages


def test_a_bad_partial_is_fetched_again_and_bad_bytes_never_land(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * CHUNK)
    blob = server.put(tmp_path / "src", data, BUNDLE)
    dest = tmp_path / "dest"
    (tmp_path / "dest.partial").write_bytes(b"garbage" * 100)
    flaky = FlakyStub(server.stub, after=None)  # type: ignore[arg-type]
    transfer.download_blob(flaky, blob.digest, dest, metadata=server.md["agent"])
    assert dest.read_bytes() == data
    assert flaky.offsets == [700, 0]
    # A longer partial than the blob: the store says OUT_OF_RANGE, the client starts over.
    (tmp_path / "d2.partial").write_bytes(os.urandom(4 * CHUNK))
    transfer.download_blob(server.stub, blob.digest, tmp_path / "d2", metadata=server.md["agent"])
    assert (tmp_path / "d2").read_bytes() == data
    # A store that sends wrong bytes: nothing lands at dest.
    hexdigest = blob.digest.removeprefix("sha256:")
    (server.root / "artifacts" / "sha256" / hexdigest[:2] / hexdigest).write_bytes(b"x" * len(data))
    with pytest.raises(transfer.TransferError, match="do not match"):
        transfer.download_blob(server.stub, blob.digest, tmp_path / "d3", metadata=server.md["agent"])
    assert not (tmp_path / "d3").exists()


# --- the client helpers and schedctl ---------------------------------------------------------------


def test_schedctl_lists_and_downloads_checkpoints_and_artifacts(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = server.add_run("alice")
    attempt = server.add_attempt(run_id, agents=("a1", "a2"))
    shards = [server.put(tmp_path / f"s{i}", f"shard {i}".encode(), CHECKPOINT, attempt) for i in range(2)]
    model = server.put(tmp_path / "model", b"exported model", ARTIFACT, attempt)
    for node, shard in enumerate(shards):
        request = artifacts_pb2.RecordCheckpointRequest(
            agent_name=f"a{node + 1}",
            attempt_id=attempt,
            node_rank=node,
            name="step-7",
            step=7,
            files=[shard.ref(f"step-7/shard{node}")],
        )
        server.stub.RecordCheckpoint(request, metadata=server.md["agent"])
    arts = artifacts_pb2.RecordArtifactsRequest(
        agent_name="a1", attempt_id=attempt, node_rank=0, files=[model.ref("out/model.onnx")]
    )
    server.stub.RecordArtifacts(arts, metadata=server.md["agent"])
    conn = ["--address", server.address, "--token", server.tokens["alice"]]

    assert cli.main([*conn, "artifacts", run_id]) == 0
    out = capsys.readouterr().out
    assert "step-7 (latest)" in out
    assert "out/model.onnx" in out
    dest = tmp_path / "dl"
    assert cli.main([*conn, "download", run_id, "--checkpoint", "latest", "-o", str(dest)]) == 0
    assert capsys.readouterr().out.strip() == str(dest / "step-7")
    assert (dest / "step-7" / "shard1").read_bytes() == b"shard 1"
    assert cli.main([*conn, "download", run_id, "-o", str(dest)]) == 0
    assert (dest / "out" / "model.onnx").read_bytes() == b"exported model"
    assert cli.main([*conn, "download", run_id, "--checkpoint", "nope", "-o", str(dest)]) == 3
    assert "its checkpoints: step-7" in capsys.readouterr().err
    bob = ["--address", server.address, "--token", server.tokens["bob"]]
    assert cli.main([*bob, "download", run_id, "--artifact", "out/model.onnx", "-o", str(tmp_path / "bob")]) == 3
    assert "no run" in capsys.readouterr().err
    assert not (tmp_path / "bob" / "out").exists()


def test_client_refuses_to_write_outside_its_folder(tmp_path: Path) -> None:
    from gridlab.client.artifacts import _target
    from gridlab.client.errors import GridlabError

    assert _target(tmp_path, "a/b") == tmp_path / "a" / "b"
    for bad in ("/etc/passwd", "../x", "a/../../x", "", "a\\b"):
        with pytest.raises(GridlabError, match="plain relative path"):
            _target(tmp_path, bad)


def test_interrupted_uploads_nobody_resumed_are_swept_at_start(tmp_path: Path) -> None:
    config = SchedulerConfig(state_dir=str(tmp_path))
    store = Store(tmp_path / "s.db")
    blobs = BlobStore(store, config)
    old, fresh = blobs.partial_path(digest_of(b"old")), blobs.partial_path(digest_of(b"fresh"))
    old.write_bytes(b"ol")
    fresh.write_bytes(b"fr")
    os.utime(old, (time.time() - 8 * 86400,) * 2)
    BlobStore(store, config)  # a restarted scheduler
    assert not old.exists()
    assert fresh.exists()


def test_a_run_may_name_only_a_code_bundle_as_its_code(server: Server, tmp_path: Path) -> None:
    """Else Bob could read Alice's checkpoint through his own run, by naming its digest as his code."""
    run_id = server.add_run("alice")
    ckpt = server.put(tmp_path / "ck", b"alice's weights", CHECKPOINT, server.add_attempt(run_id))
    spec = types_pb2.RunSpec(command=["true"], code_digest=ckpt.digest)
    bob = Principal("bob", "user")
    with pytest.raises(ApiError, match="upload it first") as refused:
        server.on_loop(lambda: server.engine.submit(bob, spec, ""))
    assert refused.value.code == Code.FAILED_PRECONDITION
    code = server.put(tmp_path / "code", b"bob's code", BUNDLE)
    spec.code_digest = code.digest
    assert server.on_loop(lambda: server.engine.submit(bob, spec, ""))[0].startswith("run-")


def test_a_sharded_checkpoint_needs_every_node_of_its_attempt_and_one_save(server: Server, tmp_path: Path) -> None:
    """Node 1 reports no step (only rank 0 writes metrics) and may record before node 0 has recorded anything;
    a folder is whole only with every node's shards of the same save."""
    run_id = server.add_run()
    attempt = server.add_attempt(run_id, agents=("a1", "a2"))
    blob = {
        n: server.put(tmp_path / n, n.encode(), CHECKPOINT, attempt) for n in ("m1", "s01", "s11", "m2", "s02", "s12")
    }

    def record(agent: str, node: int, step: int, *names: str) -> None:
        refs = [blob[n].ref(f"last/{n[:2]}") for n in names]
        request = artifacts_pb2.RecordCheckpointRequest(
            agent_name=agent, attempt_id=attempt, node_rank=node, name="last", step=step, files=refs
        )
        server.stub.RecordCheckpoint(request, metadata=server.md["agent"])
        server.clock.advance(1)

    newest = lambda: server.on_loop(lambda: newest_checkpoint(server.engine.store, run_id))  # noqa: E731
    record("a1", 0, 10, "m1", "s01")
    assert newest() is None  # node 1's shards are not in yet
    record("a2", 1, -1, "s11")
    ck = newest()
    assert ck.step == 10  # node 0's step
    assert sorted(f.digest for f in ck.files) == sorted(blob[n].digest for n in ("m1", "s01", "s11"))
    record("a2", 1, -1, "s12")  # node 1 saved again first: its shards and node 0's are of different saves
    assert newest() is None
    record("a1", 0, 20, "m2", "s02")
    ck = newest()
    assert ck.step == 20
    assert sorted(f.digest for f in ck.files) == sorted(blob[n].digest for n in ("m2", "s02", "s12"))
