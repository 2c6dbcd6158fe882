"""The `AgentGateway` service: each agent's control stream and its log uploads.

One reader task and one writer per Connect stream: the reader hands agent messages to the
engine; the writer drains the session's outbox. Log bytes come on PushLogs, never here.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog

from gridlab.common import tls
from gridlab.v1 import agent_pb2, agent_pb2_grpc

from .api import call
from .engine import AgentSession, Engine
from .errors import ApiError

log = structlog.get_logger("gridlab.scheduler.gateway")
MESSAGE_OVERHEAD = 256  # bytes each queued message costs the window beyond its own: empty ones count too
STREAM_WINDOW_BYTES = 8 * 1024 * 1024  # one Connect stream's messages read but not yet handled, at most


class _Window:
    """Bounds the memory one agent stream holds in the group-commit queue: the reader waits once its
    messages waiting there pass `limit` bytes (one message always goes, however big: gRPC caps its size).
    Without it only the batcher's global count bounds them, so one agent could hold thousands of them."""

    def __init__(self, limit: int = STREAM_WINDOW_BYTES) -> None:
        self.limit = limit
        self.held = 0
        self._room = asyncio.Event()

    def try_take(self, size: int) -> bool:
        """`take` without waiting, when there is room (the common case: no coroutine to run per message)."""
        if self.held and self.held + size > self.limit:
            return False
        self.held += size
        return True

    async def take(self, size: int) -> None:
        while self.held and self.held + size > self.limit:
            self._room.clear()
            await self._room.wait()
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size
        self._room.set()


class AgentGatewayService(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def _read(self, session: AgentSession, requests: AsyncIterator[agent_pb2.AgentMessage]) -> None:
        window = _Window()
        batcher = self.engine.batcher
        try:
            async for msg in requests:  # handled in the next group commit, in the order they came
                size = msg.ByteSize() + MESSAGE_OVERHEAD
                if not window.try_take(size):
                    await window.take(size)
                handle = functools.partial(self._handle, session, msg, window, size)
                if batcher.has_room:
                    batcher.post(handle)
                else:
                    await batcher.post_when_room(handle)
        except (asyncio.CancelledError, grpc.aio.AioRpcError, grpc.aio.AbortError):  # AbortError: a message
            pass  # that did not parse (api.DecodeGuard aborted the call)
        finally:
            session.close()

    def _handle(self, session: AgentSession, msg: agent_pb2.AgentMessage, window: _Window, size: int) -> None:
        """One message from an agent. A bad message is logged and skipped: it must not
        cost the agent its stream (and every run on the machine its liveness)."""
        window.give(size)
        kind = msg.WhichOneof("msg")
        try:
            if kind == "heartbeat":
                self.engine.agent_heartbeat(session, msg.heartbeat)
            elif kind == "update":
                self.engine.agent_update(session, msg.update)
            else:
                log.warning("unexpected_agent_message", agent=session.name, kind=kind)
        except ApiError as exc:
            log.warning("bad_agent_message", agent=session.name, kind=kind, error=exc.message)
        except Exception:
            log.exception("agent_message_failed", agent=session.name, kind=kind)

    async def Connect(self, request_iterator: Any, context: Any) -> AsyncIterator[agent_pb2.SchedulerMessage]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("msg") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message on Connect must be a Hello")
            return
        if refusal := self._peer_refusal(context)(first.hello.name):
            await context.abort(*refusal)
            return
        # Batched too: after whatever the agent's previous stream sent, which may still be queued. Shielded:
        # if the agent hangs up once its Hello has run, the session it registered is closed, not left open.
        hello = asyncio.ensure_future(call(context, self.engine.agent_hello, first.hello, batcher=self.engine.batcher))
        try:
            session = await asyncio.shield(hello)
        except asyncio.CancelledError:
            hello.add_done_callback(self._disconnect_if_registered)
            raise
        structlog.contextvars.bind_contextvars(agent=session.name)
        reader = asyncio.create_task(self._read(session, request_iterator))
        try:
            while True:
                out = await session.outbox.get()
                if out is None:
                    break
                yield out
        finally:
            reader.cancel()
            self.engine.agent_disconnected(session)

    def _disconnect_if_registered(self, hello: asyncio.Future[AgentSession]) -> None:
        if not hello.cancelled() and hello.exception() is None:
            self.engine.agent_disconnected(hello.result())

    def _peer_refusal(self, context: Any) -> Callable[[str], tuple[grpc.StatusCode, str] | None]:
        """With mTLS (tls_client_ca), why this call's certificate may not speak for an agent name."""
        if not self.engine.config.tls_client_ca:
            return lambda _name: None
        return functools.partial(tls.agent_peer_refusal, context.auth_context())

    async def PushLogs(self, request_iterator: Any, context: Any) -> agent_pb2.PushLogsResponse:
        """Each message is stored before the next is read, so a call holds one message (at most
        grpcopts.MAX_MESSAGE_BYTES) and its parsed lines at a time; HTTP/2 flow control holds the agent back."""
        accepted = duplicates = 0
        refusal_for = self._peer_refusal(context)
        async for request in request_iterator:
            if refusal := refusal_for(request.agent_name):
                await context.abort(*refusal)
            a, d = await call(context, self.engine.push_logs, request.agent_name, request.lines)
            accepted += a
            duplicates += d
        return agent_pb2.PushLogsResponse(accepted=accepted, duplicates=duplicates)
