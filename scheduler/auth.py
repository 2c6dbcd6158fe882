"""Who is calling: bearer tokens checked by one server interceptor, and the role table.

The interceptor resolves the token to a `Principal`, refuses the call if the role may not
make it, and runs the handler with the principal in a context variable, so servicers read
`current()` instead of parsing metadata themselves.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from gridlab.common import auth
from gridlab.v1 import agent_pb2, artifacts_pb2, scheduler_pb2

ADMIN, USER, AGENT = "admin", "user", "agent"
REVALIDATE_EVERY = 5.0  # seconds between checks that a long call's token is still valid
ROLES = (ADMIN, USER, AGENT)
_PEOPLE = frozenset({ADMIN, USER})

# Every RPC of every service, with the roles that may call it: the one table the interceptor enforces
# (a method missing here is refused to everyone, and `check_table` fails at import). The servicers then
# narrow per call what a role may touch: users only runs they may see (`Engine.visible_run`, their own
# and, with share_runs_with_team, their team's read-only), agents only their own attempts.
METHOD_ROLES: dict[str, frozenset[str]] = {
    # People: the SDK and schedctl.
    "/gridlab.v1.Scheduler/SubmitRun": _PEOPLE,
    "/gridlab.v1.Scheduler/GetRun": _PEOPLE,
    "/gridlab.v1.Scheduler/ListRuns": _PEOPLE,
    "/gridlab.v1.Scheduler/CancelRun": _PEOPLE,
    "/gridlab.v1.Scheduler/WatchRuns": _PEOPLE,
    "/gridlab.v1.Scheduler/StreamLogs": _PEOPLE,
    "/gridlab.v1.Scheduler/ListAgents": _PEOPLE,
    "/gridlab.v1.Scheduler/SetAgentState": frozenset({ADMIN}),
    "/gridlab.v1.Scheduler/CreateToken": frozenset({ADMIN}),
    "/gridlab.v1.Scheduler/ListTokens": frozenset({ADMIN}),
    "/gridlab.v1.Scheduler/RevokeToken": frozenset({ADMIN}),
    "/gridlab.v1.Scheduler/WhoAmI": _PEOPLE,
    "/gridlab.v1.Scheduler/SetRunPriority": _PEOPLE,
    "/gridlab.v1.Scheduler/ListRunEvents": _PEOPLE,
    "/gridlab.v1.Scheduler/GetUsage": _PEOPLE,  # a user's own; an admin's anyone's (usage.get_usage)
    # Agents: the control stream and log uploads, about their own attempts (ABORTED otherwise).
    "/gridlab.v1.AgentGateway/Connect": frozenset({AGENT}),
    "/gridlab.v1.AgentGateway/PushLogs": frozenset({AGENT}),
    # Blobs: users upload bundles and read their runs' blobs; agents upload and record checkpoints and
    # artifacts of their attempts and fetch what an assignment names (artifacts.may_upload, may_download).
    "/gridlab.v1.Artifacts/StatBlob": frozenset({ADMIN, USER, AGENT}),
    "/gridlab.v1.Artifacts/UploadBlob": frozenset({ADMIN, USER, AGENT}),
    "/gridlab.v1.Artifacts/DownloadBlob": frozenset({ADMIN, USER, AGENT}),
    "/gridlab.v1.Artifacts/RecordCheckpoint": frozenset({AGENT}),
    "/gridlab.v1.Artifacts/RecordArtifacts": frozenset({AGENT}),
    "/gridlab.v1.Artifacts/ListArtifacts": _PEOPLE,
}


def rpc_methods() -> list[str]:
    """Every RPC the scheduler serves, as `/package.Service/Method`, from the generated descriptors."""
    names: list[str] = []
    for module in (scheduler_pb2, agent_pb2, artifacts_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            names.extend(f"/{service.full_name}/{m.name}" for m in service.methods)
    return names


def check_table() -> None:
    """Fail loudly when the table and the protos disagree: a new RPC must say who may call it."""
    served = set(rpc_methods())
    missing, stale = sorted(served - set(METHOD_ROLES)), sorted(set(METHOD_ROLES) - served)
    if missing or stale:
        raise RuntimeError(f"scheduler/auth.py METHOD_ROLES: no entry for {missing}; entries for no RPC: {stale}")


check_table()


def allowed_roles(method: str) -> frozenset[str]:
    """The roles that may call `method`; none for a method the table does not name."""
    return METHOD_ROLES.get(method, frozenset())


class TokenRefused(Exception):
    """A known token that may no longer be used (expired): the message says why and what to do."""


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


class _Revalidate:
    """Ends a long call (a followed log, a watch, an upload, an agent's stream) once its token is revoked or
    expires: the token is checked again every REVALIDATE_EVERY seconds (a cached lookup), and the call's
    task is cancelled and answered UNAUTHENTICATED. Without it a revoked token kept streaming for days."""

    def __init__(self, refusal: Callable[[], str | None]) -> None:
        self._refusal = refusal
        self._task = asyncio.current_task()
        self._timer = asyncio.get_running_loop().call_later(REVALIDATE_EVERY, self._check)
        self.refused: str | None = None

    def _check(self) -> None:
        self.refused = self._refusal()
        if self.refused is not None and self._task is not None:
            self._task.cancel()
        else:
            self._timer = asyncio.get_running_loop().call_later(REVALIDATE_EVERY, self._check)

    def stop(self) -> None:
        self._timer.cancel()

    async def ended(self, context: Any) -> None:
        """After a cancellation: answer UNAUTHENTICATED if it was this watch's doing, else let it through."""
        if self.refused is not None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{self.refused}; ask an admin for a new token")


def _with_principal(handler: grpc.RpcMethodHandler, who: Principal, refusal: Callable[[], str | None]) -> Any:
    """The same handler, run with `who` bound as the current principal and in logs; calls that stream are
    watched for the token being revoked or expiring meanwhile (`_Revalidate`)."""

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
            watch = _Revalidate(refusal)
            try:
                return await inner_su(request_iterator, context)
            except asyncio.CancelledError:
                await watch.ended(context)
                raise
            finally:
                watch.stop()

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kw)
    inner: Callable[..., Any] = handler.unary_stream or handler.stream_stream
    stream_in = handler.stream_stream is not None

    async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        bind()
        watch = _Revalidate(refusal)
        try:
            async for item in inner(request, context):
                yield item
        except asyncio.CancelledError:
            await watch.ended(context)
            raise
        finally:
            watch.stop()

    if stream_in:
        return grpc.stream_stream_rpc_method_handler(streaming, **kw)
    return grpc.unary_stream_rpc_method_handler(streaming, **kw)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call's bearer token against `lookup` (None: unknown or revoked; it raises TokenRefused
    for an expired one) and the role table."""

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
        try:
            who = self._lookup(token)
        except TokenRefused as exc:
            return _abort_handler(handler, grpc.StatusCode.UNAUTHENTICATED, str(exc))
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
        return _with_principal(handler, who, functools.partial(self._refusal, token))

    def _refusal(self, token: str) -> str | None:
        """Why `token` may no longer be used (revoked, expired), or None while it may."""
        try:
            return None if self._lookup(token) is not None else "the token was revoked during the call"
        except TokenRefused as exc:
            return str(exc)
