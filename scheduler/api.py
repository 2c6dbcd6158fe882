"""The `Scheduler` service: the thin gRPC shell over the engine for people and tools."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from gridlab.common.timeutil import from_duration, ts
from gridlab.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2

from . import agentadmin, auth, runadmin, usage
from .batch import Batcher
from .convert import event_pb, single_lines
from .engine import Engine
from .errors import ApiError, invalid
from .state import LIVE_STATES_SQL, RunState

T = TypeVar("T")
_POLL = 1.0  # seconds between checks when nothing woke a waiting stream
_LOG_BATCH = 500  # single lines per StreamLogs message, at most
_LOG_BYTES = 1024 * 1024  # and about this much text
MAX_WATCHED = 1000  # run ids per WatchRuns stream
MAX_GRACE = 86_400  # seconds between SIGTERM and SIGKILL, at most


async def call(
    context: grpc.aio.ServicerContext, fn: Callable[..., T], *args: Any, batcher: Batcher | None = None
) -> T:
    """Run `fn(*args)`, turning an ApiError into the call's status; with `batcher`, in its next group commit
    (the answer then waits for the commit: what was acknowledged survives a crash)."""
    try:
        return fn(*args) if batcher is None else await batcher.call(functools.partial(fn, *args))
    except ApiError as exc:
        await context.abort(exc.code, exc.message)
        raise  # unreachable: abort raises


class _Undecodable:
    """What a request that does not parse becomes, so the handler can refuse it (see DecodeGuard)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return decode


async def _refuse_undecodable(context: grpc.aio.ServicerContext, bad: _Undecodable) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"the request does not parse ({bad.error}): send the message the .proto names"
    )


async def _checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            await _refuse_undecodable(context, request)
        yield request


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Bytes that are not the method's message get INVALID_ARGUMENT, not UNKNOWN.

    grpc.aio turns a request deserializer's exception into UNKNOWN ("Unexpected DecodeError"), before any
    servicer runs. This interceptor (after AuthInterceptor, which passes the deserializer on) decodes
    tolerantly, and refuses an undecodable message in the handler: a unary request at once, a streamed one
    when the servicer reaches it, so the messages before it are handled as sent.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        kw = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    await _refuse_undecodable(context, request)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, **kw)
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                return await inner_su(_checked(requests, context), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, **kw)
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if isinstance(request, _Undecodable):
                    await _refuse_undecodable(context, request)
                async for item in inner_us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream, **kw)
        inner_ss = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in inner_ss(_checked(requests, context), context):
                yield item

        return grpc.stream_stream_rpc_method_handler(stream_stream, **kw)


def _single_line_responses(batches: list[types_pb2.LogLine]) -> Iterator[scheduler_pb2.StreamLogsResponse]:
    """Batches as messages of single lines (for a client that does not take batches): at most _LOG_BATCH
    lines or about _LOG_BYTES of UTF-8 text each, each message made only when the one before is taken."""
    lines: list[types_pb2.LogLine] = []
    nbytes = 0
    for batch in batches:
        for line in single_lines(batch):
            text = line.text
            size = len(text) if text.isascii() else len(text.encode())
            if lines and (len(lines) >= _LOG_BATCH or nbytes + size > _LOG_BYTES):
                yield scheduler_pb2.StreamLogsResponse(lines=lines)
                lines, nbytes = [], 0
            lines.append(line)
            nbytes += size
    if lines:
        yield scheduler_pb2.StreamLogsResponse(lines=lines)


def _logs_done(engine: Engine, run_id: str) -> bool:
    """Whether a run will get no more log lines: it has ended, and no node of its attempts still runs
    (a gang's other nodes may still be stopping after the run ended, and ship their last lines)."""
    row = engine.store.one(
        f"SELECT r.state, EXISTS (SELECT 1 FROM attempts a JOIN attempt_nodes n ON n.attempt_id = a.id "
        f"WHERE a.run_id = r.id AND n.state IN {LIVE_STATES_SQL}) AS live FROM runs r WHERE r.id = ?",
        (run_id,),
    )
    return row is not None and RunState(row["state"]).terminal and not row["live"]


def _state_word(value: int) -> str:
    name = types_pb2.RunState.Name(value) if value in types_pb2.RunState.values() else ""
    if not name or value == types_pb2.RUN_STATE_UNSPECIFIED:
        raise invalid(f"states: {value} is not a run state")
    return name.removeprefix("RUN_STATE_")


class SchedulerService(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def SubmitRun(self, request: Any, context: Any) -> scheduler_pb2.SubmitRunResponse:
        who = auth.current()

        def submit() -> scheduler_pb2.SubmitRunResponse:
            run_id, existed = self.engine.submit(who, request.spec, request.idempotency_key)
            # (a run queued just now has no attempts to read)
            run = self.engine.run_message(run_id, with_attempts=existed)
            return scheduler_pb2.SubmitRunResponse(run=run, existed=existed)

        return await call(context, submit, batcher=self.engine.batcher)

    async def GetRun(self, request: Any, context: Any) -> scheduler_pb2.GetRunResponse:
        who = auth.current()

        def get() -> scheduler_pb2.GetRunResponse:
            row = self.engine.visible_run(who, request.run_id)
            return scheduler_pb2.GetRunResponse(run=self.engine.run_message(row["id"]))

        return await call(context, get)

    async def ListRuns(self, request: Any, context: Any) -> scheduler_pb2.ListRunsResponse:
        who = auth.current()

        def list_runs() -> scheduler_pb2.ListRunsResponse:
            states = [_state_word(s) for s in request.states]
            runs, token = self.engine.list_runs(
                who, states, request.user, request.limit, request.page_token, sweep=request.sweep, pool=request.pool
            )
            return scheduler_pb2.ListRunsResponse(runs=runs, next_page_token=token)

        return await call(context, list_runs)

    async def CancelRun(self, request: Any, context: Any) -> scheduler_pb2.CancelRunResponse:
        who = auth.current()

        def cancel() -> scheduler_pb2.CancelRunResponse:
            grace = from_duration(request.grace) if request.HasField("grace") else None
            if grace is not None and not 0 <= grace <= MAX_GRACE:
                raise invalid(f"grace is {grace:g}s: it must be between 0 (kill at once) and {MAX_GRACE}s")
            self.engine.cancel(who, request.run_id, grace, request.reason)
            return scheduler_pb2.CancelRunResponse(run=self.engine.run_message(request.run_id))

        return await call(context, cancel, batcher=self.engine.batcher)

    async def WatchRuns(self, request: Any, context: Any) -> AsyncIterator[types_pb2.RunEvent]:
        who = auth.current()
        engine = self.engine
        run_ids = list(dict.fromkeys(request.run_ids))

        def check_visible() -> None:
            if len(run_ids) > MAX_WATCHED:
                raise invalid(f"{len(run_ids)} run_ids: watch at most {MAX_WATCHED} runs per stream")
            for run_id in run_ids:
                engine.visible_run(who, run_id)

        await call(context, check_visible)
        after = request.after_event_id
        while True:
            waiter = engine.events_changed
            if run_ids:
                marks = ",".join("?" * len(run_ids))
                rows = engine.store.all(
                    f"SELECT * FROM events WHERE id > ? AND run_id IN ({marks}) ORDER BY id LIMIT 1000",
                    (after, *run_ids),
                )
            elif who.admin:
                rows = engine.store.all("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT 1000", (after,))
            else:  # unnamed: the caller's own runs, as ListRuns (teammates' runs are watched by id)
                rows = engine.store.all(
                    "SELECT e.* FROM events e JOIN runs r ON r.id = e.run_id "
                    "WHERE e.id > ? AND r.user = ? ORDER BY e.id LIMIT 1000",
                    (after, who.user),
                )
            for row in rows:
                after = row["id"]
                yield event_pb(row)
            if rows:
                continue
            if run_ids:
                marks = ",".join("?" * len(run_ids))
                states = engine.store.all(f"SELECT state FROM runs WHERE id IN ({marks})", run_ids)
                if all(RunState(r["state"]).terminal for r in states):
                    return
            await waiter.wait(_POLL)

    async def StreamLogs(self, request: Any, context: Any) -> AsyncIterator[scheduler_pb2.StreamLogsResponse]:
        """A run's lines after `after_cursor`, read from the log files a message's worth at a time: as
        batches (LogLine.count) to a client that asks for them, else one LogLine per line. Following, it
        ends once the run has ended and no node of it still runs, and the lines stored by then are sent.
        It yields to the event loop between messages and reads, so a long or damaged log stalls no one."""
        who = auth.current()
        engine = self.engine
        await call(context, lambda: engine.visible_run(who, request.run_id))
        logs = engine.store.logs
        rank = request.rank if request.has_rank else None
        after = request.after_cursor
        while True:
            waiter = engine.logs_changed
            # Read the run's state before the lines: once no node runs, every line is stored
            # already (agents flush a node's logs before reporting its end).
            ended = _logs_done(engine, request.run_id)
            batches, upto = logs.read(request.run_id, after, attempt_number=request.attempt_number, rank=rank)
            if batches:
                if request.batched:
                    yield scheduler_pb2.StreamLogsResponse(lines=batches)
                else:
                    for response in _single_line_responses(batches):
                        yield response
                        await asyncio.sleep(0)
            if upto > after:  # (also past rows that could not be read back)
                after = upto
                await asyncio.sleep(0)
                continue
            if not request.follow or ended:
                return
            await waiter.wait(_POLL)

    async def ListAgents(self, request: Any, context: Any) -> scheduler_pb2.ListAgentsResponse:
        return scheduler_pb2.ListAgentsResponse(agents=self.engine.list_agents(request.pool))

    async def SetAgentState(self, request: Any, context: Any) -> scheduler_pb2.SetAgentStateResponse:
        who = auth.current()

        def set_state() -> scheduler_pb2.SetAgentStateResponse:
            if request.action not in scheduler_pb2.AgentAction.values() or not request.action:
                raise invalid(f"action {request.action} is not one of cordon, drain, uncordon")
            action = scheduler_pb2.AgentAction.Name(request.action)
            deadline = from_duration(request.deadline) if request.HasField("deadline") else None
            agent = agentadmin.set_agent_state(self.engine, who, request.name, action, deadline, request.reason)
            response = scheduler_pb2.SetAgentStateResponse(agent=agent)
            due = agentadmin.drain_deadline(self.engine, request.name)
            if due is not None:
                response.deadline.CopyFrom(ts(due))
            return response

        return await call(context, set_state)

    async def CreateToken(self, request: Any, context: Any) -> scheduler_pb2.CreateTokenResponse:
        ttl = from_duration(request.ttl) if request.HasField("ttl") else None
        token = await call(
            context,
            lambda: self.engine.create_token(request.user, request.role or "user", request.team, ttl),
        )
        return scheduler_pb2.CreateTokenResponse(token=token, token_id=runadmin.token_id(token))

    async def ListTokens(self, request: Any, context: Any) -> scheduler_pb2.ListTokensResponse:
        who = auth.current()
        infos = await call(context, runadmin.list_tokens, self.engine, who)
        return scheduler_pb2.ListTokensResponse(tokens=infos)

    async def RevokeToken(self, request: Any, context: Any) -> scheduler_pb2.RevokeTokenResponse:
        who = auth.current()
        info = await call(
            context, runadmin.revoke_token, self.engine, who, request.token_id, batcher=self.engine.batcher
        )
        return scheduler_pb2.RevokeTokenResponse(token=info)

    async def WhoAmI(self, request: Any, context: Any) -> scheduler_pb2.WhoAmIResponse:
        who = auth.current()
        return scheduler_pb2.WhoAmIResponse(
            user=who.user, role=who.role, team=who.team, server_version=runadmin.server_version()
        )

    async def SetRunPriority(self, request: Any, context: Any) -> scheduler_pb2.SetRunPriorityResponse:
        who = auth.current()
        run = await call(
            context,
            runadmin.set_run_priority,
            self.engine,
            who,
            request.run_id,
            request.priority,
            batcher=self.engine.batcher,
        )
        return scheduler_pb2.SetRunPriorityResponse(run=run)

    async def ListRunEvents(self, request: Any, context: Any) -> scheduler_pb2.ListRunEventsResponse:
        who = auth.current()
        events = await call(context, runadmin.list_run_events, self.engine, who, request.run_id)
        return scheduler_pb2.ListRunEventsResponse(events=events)

    async def GetUsage(self, request: Any, context: Any) -> scheduler_pb2.GetUsageResponse:
        who = auth.current()

        def get() -> scheduler_pb2.GetUsageResponse:
            window = [_when(request, field) for field in ("since", "until")]
            rows = usage.get_usage(
                self.engine, who, group_by=request.group_by, since=window[0], until=window[1], user=request.user
            )
            return scheduler_pb2.GetUsageResponse(
                rows=[
                    scheduler_pb2.UsageRow(
                        key=r.key, gpu_hours=r.gpu_hours, cost=r.cost, runs=r.runs, wall_hours=r.wall_hours
                    )
                    for r in rows
                ]
            )

        return await call(context, get)


def _when(request: Any, field: str) -> float | None:
    """An optional Timestamp field as epoch seconds; INVALID_ARGUMENT when it is not a valid Timestamp."""
    if not request.HasField(field):
        return None
    value = getattr(request, field)
    if not 0 <= value.nanos < 1_000_000_000 or not -62_135_596_800 <= value.seconds <= 253_402_300_799:
        raise invalid(f"{field} is not a valid Timestamp (years 1 to 9999, nanos 0 to 999999999)")
    return float(value.seconds + value.nanos / 1e9)
