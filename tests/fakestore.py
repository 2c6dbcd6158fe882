"""An in-memory Artifacts stub for the agent's unit tests: the calls common/transfer makes, no server.

Tests that need the real store and its checks run against a scheduler (test_artifacts_agent_e2e.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from gridlab.v1 import artifacts_pb2


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details or code.name)


class _Download:
    """What `stub.DownloadBlob(...)` returns: an async iterable call that can be cancelled."""

    def __init__(self, store: FakeArtifacts, request: artifacts_pb2.DownloadBlobRequest) -> None:
        self.store = store
        self.request = request

    async def _messages(self) -> AsyncIterator[artifacts_pb2.DownloadBlobResponse]:
        self.store.check("DownloadBlob")
        data = self.store.blobs.get(self.request.digest)
        if data is None:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, f"no blob {self.request.digest}")
        self.store.downloads += 1
        await asyncio.sleep(self.store.download_delay)
        first = True
        for start in range(self.request.offset, len(data), 1000):
            yield artifacts_pb2.DownloadBlobResponse(data=data[start : start + 1000], size=len(data) if first else 0)
            first = False

    def __aiter__(self) -> AsyncIterator[artifacts_pb2.DownloadBlobResponse]:
        return self._messages()

    def cancel(self) -> bool:
        return True


class FakeArtifacts:
    """Blobs by digest; `fail` makes every call raise that code until cleared."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.purposes: dict[str, int] = {}
        self.uploads = 0
        self.downloads = 0
        self.checkpoints: list[artifacts_pb2.RecordCheckpointRequest] = []
        self.artifacts: list[artifacts_pb2.RecordArtifactsRequest] = []
        self.fail: grpc.StatusCode | None = None
        self.fail_calls: set[str] = set()  # only these calls fail (all when empty)
        self.max_blob = 1 << 40
        self.download_delay = 0.0

    def check(self, call: str) -> None:
        if self.fail is not None and (not self.fail_calls or call in self.fail_calls):
            raise rpc_error(self.fail)

    def put(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    async def StatBlob(self, request: artifacts_pb2.StatBlobRequest, **_: Any) -> artifacts_pb2.StatBlobResponse:  # noqa: N802
        self.check("StatBlob")
        data = self.blobs.get(request.digest)
        return artifacts_pb2.StatBlobResponse(complete=data is not None, size=len(data) if data is not None else 0)

    async def UploadBlob(  # noqa: N802
        self, requests: AsyncIterator[artifacts_pb2.UploadBlobRequest], **_: Any
    ) -> artifacts_pb2.UploadBlobResponse:
        self.check("UploadBlob")
        header: artifacts_pb2.BlobHeader | None = None
        data = bytearray()
        async for msg in requests:
            if msg.HasField("header"):
                header = msg.header
            else:
                data += msg.data
        assert header is not None
        if header.size > self.max_blob:
            raise rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big")
        if "sha256:" + hashlib.sha256(data).hexdigest() != header.digest:
            raise rpc_error(grpc.StatusCode.DATA_LOSS, "digest mismatch")
        self.uploads += 1
        self.blobs[header.digest] = bytes(data)
        self.purposes[header.digest] = header.purpose
        return artifacts_pb2.UploadBlobResponse(digest=header.digest, size=len(data))

    def DownloadBlob(self, request: artifacts_pb2.DownloadBlobRequest, **_: Any) -> _Download:  # noqa: N802
        return _Download(self, request)

    async def RecordCheckpoint(  # noqa: N802
        self, request: artifacts_pb2.RecordCheckpointRequest, **_: Any
    ) -> artifacts_pb2.RecordCheckpointResponse:
        self.check("RecordCheckpoint")
        for ref in request.files:
            assert self.blobs[ref.digest], ref
        self.checkpoints.append(request)
        return artifacts_pb2.RecordCheckpointResponse(checkpoint_id=len(self.checkpoints))

    async def RecordArtifacts(  # noqa: N802
        self, request: artifacts_pb2.RecordArtifactsRequest, **_: Any
    ) -> artifacts_pb2.RecordArtifactsResponse:
        self.check("RecordArtifacts")
        self.artifacts.append(request)
        return artifacts_pb2.RecordArtifactsResponse()
