"""Who is calling: bearer tokens checked by one server interceptor, and the role table.

The interceptor resolves the token to a `Principal`, refuses the call if the role may not
make it, and runs the handler with the principal in a context variable, so servicers read
`current()` instead of parsing metadata themselves.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from gridlab.common import auth

ADMIN, USER, AGENT = "admin", "user", "agent"
ROLES = (ADMIN, USER, AGENT)

# Which roles may call each service; the per-method exceptions follow.
SERVICE_ROLES = {
    "gridlab.v1.Scheduler": frozenset({ADMIN, USER}),
    "gridlab.v1.AgentGateway": frozenset({AGENT}),
    # Per call, artifacts.py narrows who may move which blob (users: bundles and their runs' blobs).
    "gridlab.v1.Artifacts": frozenset({ADMIN, USER, AGENT}),
}
METHOD_ROLES = {
    "/gridlab.v1.Scheduler/CreateToken": frozenset({ADMIN}),
    "/gridlab.v1.Scheduler/ListTokens": frozenset({ADMIN}),
    "/gridlab.v1.Scheduler/RevokeToken": frozenset({ADMIN}),
    "/gridlab.v1.Scheduler/SetAgentState": frozenset({ADMIN}),
    "/gridlab.v1.Artifacts/RecordCheckpoint": frozenset({AGENT}),
    "/gridlab.v1.Artifacts/RecordArtifacts": frozenset({AGENT}),
    "/gridlab.v1.Artifacts/ListArtifacts": frozenset({ADMIN, USER}),
}


def allowed_roles(method: str) -> frozenset[str]:
    if method in METHOD_ROLES:
        return METHOD_ROLES[method]
    service = method.strip("/").split("/")[0]
    return SERVICE_ROLES.get(service, frozenset())


@dataclass(frozen=True)
class Principal:
    user: str
    role: str
    team: str = ""

    @property
    def admin(self) -> bool:
        return self.role == ADMIN


_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("gridlab_principal")


def current() -> Principal:
    return _current.get()


def _abort_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> Any:
    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def abort_stream(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort_stream, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, **kw)
    return grpc.stream_stream_rpc_method_handler(abort_stream, **kw)


def _with_principal(handler: grpc.RpcMethodHandler, who: Principal) -> Any:
    """The same handler, run with `who` bound as the current principal and in logs."""

    def bind() -> None:
        _current.set(who)
        structlog.contextvars.bind_contextvars(user=who.user, role=who.role)

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            bind()
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kw)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator: Any, context: Any) -> Any:
            bind()
            return await inner_su(request_iterator, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kw)
    inner: Callable[..., Any] = handler.unary_stream or handler.stream_stream
    stream_in = handler.stream_stream is not None

    async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        bind()
        async for item in inner(request, context):
            yield item

    if stream_in:
        return grpc.stream_stream_rpc_method_handler(streaming, **kw)
    return grpc.unary_stream_rpc_method_handler(streaming, **kw)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call's bearer token against `lookup` and the role table."""

    def __init__(self, lookup: Callable[[str], Principal | None]) -> None:
        self._lookup = lookup

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        token = auth.token_from_metadata(handler_call_details.invocation_metadata)
        if token is None:
            return _abort_handler(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "no token: send 'authorization: Bearer <token>' (set GRIDLAB_TOKEN)",
            )
        who = self._lookup(token)
        if who is None:
            return _abort_handler(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "the token is not valid (unknown or revoked)",
            )
        if who.role not in allowed_roles(method):
            return _abort_handler(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"role {who.role!r} may not call {method.rsplit('/', 1)[-1]}",
            )
        return _with_principal(handler, who)
