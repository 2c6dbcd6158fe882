"""The `Artifacts` service: the gRPC shell over the artifact store (`artifacts.py`).

Bytes move on these calls only, never on the agents' control stream. File work runs in
worker threads; the SQLite store is read and written on the event loop's thread alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc

from gridlab.common import tls
from gridlab.common.transfer import Pipeline, read_ahead
from gridlab.v1 import artifacts_pb2, artifacts_pb2_grpc

from . import auth
from .api import call
from .artifacts import (
    BlobStore,
    PartialBlob,
    UploadPlan,
    attempt_for_upload,
    blob_size,
    may_download,
    may_upload,
    read_chunks,
    record_artifacts,
    record_checkpoint,
    run_artifacts,
    run_checkpoints,
)
from .auth import AGENT
from .engine import Engine
from .errors import ApiError, aborted, invalid

T = TypeVar("T")


async def _status(context: grpc.aio.ServicerContext, work: Awaitable[T]) -> T:
    """Await `work`, turning an ApiError into the call's status (`call` for async work)."""
    try:
        return await work
    except ApiError as exc:
        await context.abort(exc.code, exc.message)
        raise  # unreachable: abort raises


class ArtifactsService(artifacts_pb2_grpc.ArtifactsServicer):
    def __init__(self, engine: Engine, blobs: BlobStore | None = None) -> None:
        self.engine = engine
        self.store = engine.store
        self.blobs = blobs or BlobStore(engine.store, engine.config)

    def _check_peer(self, context: Any, who: auth.Principal, agent_name: str | None) -> None:
        """With mTLS (tls_client_ca), an agent token counts only with a certificate naming `agent_name`
        (None: any certificate from that CA, for calls that name no agent)."""
        if who.role != AGENT or not self.engine.config.tls_client_ca:
            return
        if refusal := tls.agent_peer_refusal(context.auth_context(), agent_name):
            raise ApiError(*refusal)

    async def StatBlob(self, request: Any, context: Any) -> artifacts_pb2.StatBlobResponse:
        await call(context, self._check_peer, context, auth.current(), None)
        complete, size = await call(context, self.blobs.stat, request.digest)
        return artifacts_pb2.StatBlobResponse(complete=complete, size=size)

    async def UploadBlob(self, request_iterator: Any, context: Any) -> artifacts_pb2.UploadBlobResponse:
        return await _status(context, self._upload(auth.current(), request_iterator, context))

    def _existing(self, plan: UploadPlan) -> artifacts_pb2.UploadBlobResponse | None:
        size = blob_size(self.store, plan.digest)
        if size is None:
            return None
        return artifacts_pb2.UploadBlobResponse(digest=plan.digest, size=size, existed=True)

    async def _upload(
        self, who: auth.Principal, requests: AsyncIterator[artifacts_pb2.UploadBlobRequest], context: Any
    ) -> artifacts_pb2.UploadBlobResponse:
        first = await anext(requests, None)
        if first is None or first.WhichOneof("msg") != "header":
            raise invalid("the first UploadBlob message must be a BlobHeader")
        header = first.header
        self._check_peer(context, who, header.agent_name)
        may_upload(who, header.purpose)
        plan = self.blobs.plan_upload(header)
        if who.role == AGENT:
            attempt_for_upload(self.store, header.attempt_id, header.agent_name, self.engine.clock.time())
        if (existing := self._existing(plan)) is not None:
            return existing
        claim = await self.blobs.claim(plan.digest)
        try:
            if (existing := self._existing(plan)) is not None:
                return existing  # another upload of it finished while this one waited
            # The file and hash work runs on one thread beside the loop, a few chunks behind.
            pipe = Pipeline(depth=8)
            partial: PartialBlob | None = None
            try:
                partial = await pipe.run_async(PartialBlob, plan.partial, plan.digest, plan.size, plan.offset)
                received = plan.offset
                async for msg in requests:
                    if msg.WhichOneof("msg") != "data":
                        raise invalid("after the header, UploadBlob messages carry data only")
                    if claim.superseded:
                        raise aborted("a newer upload of this blob took over: ask StatBlob where to resume")
                    data = msg.data  # each read of the field is a copy
                    received += len(data)
                    if received > plan.size:
                        raise invalid(f"more bytes than header.size ({plan.size}): send exactly the blob's bytes")
                    claim.touch()
                    await pipe.put_async(partial.write, data)
                await pipe.run_async(partial.finish, plan.dest)
            finally:
                await pipe.close_async()  # no queued write is left when the file closes
                if partial is not None:
                    partial.close()
            self.blobs.commit(plan, self.engine.clock.time())
        finally:
            self.blobs.release(plan.digest, claim)
        return artifacts_pb2.UploadBlobResponse(digest=plan.digest, size=plan.size)

    async def DownloadBlob(self, request: Any, context: Any) -> AsyncIterator[artifacts_pb2.DownloadBlobResponse]:
        who = auth.current()

        def check() -> tuple[Any, int]:
            self._check_peer(context, who, None)
            run = None if who.role == AGENT else self.engine.visible_run(who, request.run_id)
            may_download(self.store, who, run, request.digest)
            return self.blobs.open_download(request.digest, request.offset)

        path, size = await call(context, check)
        first = True
        # Disk reads run a few chunks ahead on a worker thread, beside the network.
        async for data in read_ahead(read_chunks(path, request.offset)):
            yield artifacts_pb2.DownloadBlobResponse(data=data, size=size if first else 0)
            first = False
        if first:
            yield artifacts_pb2.DownloadBlobResponse(size=size)  # an empty blob, or from its end

    async def RecordCheckpoint(self, request: Any, context: Any) -> artifacts_pb2.RecordCheckpointResponse:
        await call(context, self._check_peer, context, auth.current(), request.agent_name)
        checkpoint_id = await call(context, record_checkpoint, self.store, request, self.engine.clock.time())
        return artifacts_pb2.RecordCheckpointResponse(checkpoint_id=checkpoint_id)

    async def RecordArtifacts(self, request: Any, context: Any) -> artifacts_pb2.RecordArtifactsResponse:
        await call(context, self._check_peer, context, auth.current(), request.agent_name)
        await call(context, record_artifacts, self.store, request, self.engine.clock.time())
        return artifacts_pb2.RecordArtifactsResponse()

    async def ListArtifacts(self, request: Any, context: Any) -> artifacts_pb2.ListArtifactsResponse:
        who = auth.current()

        def list_them() -> artifacts_pb2.ListArtifactsResponse:
            run = self.engine.visible_run(who, request.run_id)
            return artifacts_pb2.ListArtifactsResponse(
                checkpoints=run_checkpoints(self.store, run["id"]), artifacts=run_artifacts(self.store, run["id"])
            )

        return await call(context, list_them)
