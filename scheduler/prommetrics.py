"""Prometheus metrics of the scheduler, served at the web port's `/metrics` (scheduler/web.py).

Most numbers describe state the scheduler already keeps, so they are read when Prometheus scrapes, by
`ClusterCollector`, rather than counted as things happen: the queue by pool and pending reason, runs by
state, agents by state, GPUs free and busy by model, each agent's heartbeat age, the bytes of logs and of
the artifact store. Nothing is written for them and they cannot drift from the truth.

Two are measured as they happen:
- RPCs: `RpcMetricsInterceptor`, the outermost gRPC interceptor, counts every call and times it, by method
  and final status code (also the calls the auth interceptor refuses).
- Placement latency (queued to placed): read from the append-only `events` table at scrape time; each
  `placed` event since the last scrape is observed once, timed from the run's latest `QUEUED` event before
  it (its submit, or its requeue after a lost agent or a retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gridlab.v1 import types_pb2

from .engine import Engine
from .state import LIVE_STATES_SQL, RunState

CONNECTED_AGENT_STATES = frozenset({"AGENT_STATE_READY", "AGENT_STATE_DRAINING", "AGENT_STATE_CORDONED"})
PLACEMENT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 600)


def reason_word(pending_reason: str) -> str:
    """The Slurm-style word of a pending reason (`Resources`, `Unsatisfiable`, `Priority`, ...): the text
    before its colon, so a label has few values while the full reason (naming runs and agents) does not."""
    text = pending_reason.strip()
    if not text:
        return "None"  # not looked at by a placement pass yet
    if text.startswith("no agent"):
        return "NoAgents"
    head, sep, _ = text.partition(":")
    if sep and head.replace("_", "").isalnum() and len(head) <= 32:
        return head
    return "Other"


class RpcMetrics:
    """The RPC counter and latency histogram, in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "gridlab_rpc_requests",
            "gRPC calls the scheduler answered, by method and status code",
            ["method", "code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "gridlab_rpc_duration_seconds",
            "Time from a gRPC call's arrival to its last response (streams: their whole life)",
            ["method", "code"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        name = method.rsplit("/", 1)[-1] if method.startswith("/gridlab.") else "unknown"
        self.calls.labels(name, code.name).inc()
        self.seconds.labels(name, code.name).observe(seconds)


def _code_of(context: Any, error: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with: what the handler set (abort sets it too), else OK or UNKNOWN."""
    try:
        code = context.code()
    except Exception:  # a context that cannot say: judge by the error
        code = None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # grpc.aio keeps the raw cygrpc value
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status
    if error is None:
        return grpc.StatusCode.OK
    return grpc.StatusCode.CANCELLED if isinstance(error, asyncio.CancelledError) else grpc.StatusCode.UNKNOWN


@contextlib.contextmanager
def _observed(observe: Callable[[str, grpc.StatusCode, float], None], method: str, context: Any) -> Iterator[None]:
    """Time what runs inside and record it with the call's status (its error's, if one escapes)."""
    start, error = time.perf_counter(), None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        observe(method, _code_of(context, error), time.perf_counter() - start)


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call (first in the interceptor list, so refusals by the others count too)."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        observe = self._metrics.observe
        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary or handler.stream_unary:
            inner_u: Callable[..., Awaitable[Any]] = handler.unary_unary or handler.stream_unary

            async def unary(request: Any, context: Any) -> Any:
                with _observed(observe, method, context):
                    return await inner_u(request, context)

            make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            return make(unary, **kw)
        inner_s: Callable[..., AsyncIterator[Any]] = handler.unary_stream or handler.stream_stream

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            with _observed(observe, method, context):
                async for item in inner_s(request, context):
                    yield item

        make_s = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        return make_s(streaming, **kw)


SCRAPE_CACHE_SECONDS = 2.0


class ClusterCollector(Collector):
    """Reads the engine's state at a scrape (on the event loop that owns the store: nothing awaits inside
    a group commit, so no half-written batch is seen).

    Those reads scan tables (runs, log_files, blobs, live attempts) on the scheduler's event loop, so their
    result is kept for `cache_seconds`: scrapes in that window (many Prometheus servers, or anyone when
    `web_metrics_public`) get the same numbers, and cost one scrape's work per window at most."""

    def __init__(self, engine: Engine, cache_seconds: float = SCRAPE_CACHE_SECONDS) -> None:
        self._engine = engine
        self.cache_seconds = cache_seconds
        self._cached: list[Metric] | None = None
        self._cached_at = 0.0
        self._latency = Histogram(
            "gridlab_placement_latency_seconds",
            "Time from a run being queued (submitted or requeued) to its attempt being placed",
            buckets=PLACEMENT_BUCKETS,
            registry=None,
        )
        # Placements before this process started are not observed: a histogram starts empty with its process.
        row = engine.store.one("SELECT COALESCE(MAX(id), 0) AS id FROM events")
        self._after_event = int(row["id"]) if row is not None else 0

    def _observe_placements(self) -> None:
        rows = self._engine.store.all(
            "SELECT p.id, p.time - (SELECT MAX(q.time) FROM events q WHERE q.run_id = p.run_id AND q.id < p.id "
            "AND q.state = 'QUEUED') AS waited FROM events p WHERE p.id > ? AND p.kind = 'placed' ORDER BY p.id",
            (self._after_event,),
        )
        for row in rows:
            self._after_event = max(self._after_event, int(row["id"]))
            if row["waited"] is not None:
                self._latency.observe(max(0.0, float(row["waited"])))

    def collect(self) -> Iterable[Metric]:
        now = time.monotonic()
        if self._cached is None or not 0 <= now - self._cached_at < self.cache_seconds:
            self._cached = list(self._read())
            self._cached_at = now
        return iter(self._cached)

    def _read(self) -> Iterable[Metric]:
        store = self._engine.store
        queue = GaugeMetricFamily(
            "gridlab_queue_runs",
            "Queued runs, by the pool they asked for and their pending reason",
            labels=["pool", "reason"],
        )
        counts: dict[tuple[str, str], int] = {}
        for row in store.all("SELECT pool, pending_reason FROM runs WHERE state = 'QUEUED'"):
            key = (row["pool"] or "any", reason_word(row["pending_reason"] or ""))
            counts[key] = counts.get(key, 0) + 1
        for (pool, reason), n in sorted(counts.items()):
            queue.add_metric([pool, reason], n)
        yield queue

        runs = GaugeMetricFamily("gridlab_runs", "Runs by state", labels=["state"])
        by_state = {r["state"]: int(r["n"]) for r in store.all("SELECT state, COUNT(*) AS n FROM runs GROUP BY state")}
        for state in RunState:
            runs.add_metric([state.value], by_state.get(state.value, 0))
        yield runs

        self._observe_placements()
        yield from self._latency.collect()

        agents = self._engine.list_agents()
        by_agent_state: dict[tuple[str, str], int] = {}
        gpus: dict[tuple[str, str], int] = {}
        util = GaugeMetricFamily(
            "gridlab_gpu_utilization_percent",
            "Each GPU's utilization (0-100), as the agent last reported",
            labels=["agent", "gpu", "model"],
        )
        memory = GaugeMetricFamily(
            "gridlab_gpu_memory_used_bytes",
            "Each GPU's memory in use, as the agent last reported",
            labels=["agent", "gpu", "model"],
        )
        held_uuids = self._held_gpus()
        for agent in agents:
            state_name = types_pb2.AgentState.Name(agent.state)
            key = (state_name.removeprefix("AGENT_STATE_"), agent.pool)
            by_agent_state[key] = by_agent_state.get(key, 0) + 1
            if state_name not in CONNECTED_AGENT_STATES:
                continue
            for gpu in agent.inventory.gpus:
                status = "busy" if gpu.uuid in held_uuids else "free"
                gpus[(gpu.model, status)] = gpus.get((gpu.model, status), 0) + 1
                gpus.setdefault((gpu.model, "busy" if status == "free" else "free"), 0)
                util.add_metric([agent.name, str(gpu.index), gpu.model], float(gpu.utilization))
                memory.add_metric([agent.name, str(gpu.index), gpu.model], float(gpu.memory_used_bytes))
        agent_family = GaugeMetricFamily("gridlab_agents", "Agents by state and pool", labels=["state", "pool"])
        for (state_word, pool), n in sorted(by_agent_state.items()):
            agent_family.add_metric([state_word, pool], n)
        yield agent_family
        gpu_family = GaugeMetricFamily(
            "gridlab_gpus",
            "GPUs of connected agents, free or busy (held by a live attempt), by model",
            labels=["model", "status"],
        )
        for (model, status), n in sorted(gpus.items()):
            gpu_family.add_metric([model, status], n)
        yield gpu_family
        yield util
        yield memory

        lag = GaugeMetricFamily(
            "gridlab_agent_heartbeat_age_seconds", "Seconds since each live agent was last heard from", labels=["agent"]
        )
        now = self._engine.clock.monotonic()
        ages = {name: max(0.0, now - seen) for name, seen in self._engine.last_seen.items()}
        for name, age in sorted(ages.items()):
            lag.add_metric([name], age)
        yield lag
        yield GaugeMetricFamily(
            "gridlab_heartbeat_lag_max_seconds",
            "The largest heartbeat age of any live agent",
            value=max(ages.values(), default=0.0),
        )
        yield GaugeMetricFamily(
            "gridlab_heartbeat_timeout_seconds",
            "Silence after which an agent is lost (at the current cadence)",
            value=self._engine.cadence().timeout,
        )

        logs = store.one("SELECT COALESCE(SUM(size), 0) AS bytes FROM log_files")
        yield GaugeMetricFamily(
            "gridlab_log_bytes", "Bytes of run logs stored", value=int(logs["bytes"]) if logs else 0
        )
        blobs = GaugeMetricFamily(
            "gridlab_artifact_store_bytes", "Bytes in the artifact store, by purpose", labels=["purpose"]
        )
        blob_files = GaugeMetricFamily(
            "gridlab_artifact_store_blobs", "Blobs in the artifact store, by purpose", labels=["purpose"]
        )
        for r in store.all(
            "SELECT COALESCE(purpose, '') AS purpose, SUM(size) AS bytes, COUNT(*) AS n FROM blobs GROUP BY 1"
        ):
            blobs.add_metric([r["purpose"] or "unknown"], int(r["bytes"] or 0))
            blob_files.add_metric([r["purpose"] or "unknown"], int(r["n"]))
        yield blobs
        yield blob_files

    def _held_gpus(self) -> set[str]:
        """UUIDs of GPUs held by live attempts."""
        held: set[str] = set()
        for row in self._engine.store.all(f"SELECT gpu_uuids FROM attempt_nodes WHERE state IN {LIVE_STATES_SQL}"):
            held.update(json.loads(row["gpu_uuids"] or "[]"))
        return held


def make_registry(engine: Engine) -> tuple[CollectorRegistry, RpcMetrics]:
    """A registry with the cluster collector and the RPC metrics (the interceptor observes into them)."""
    registry = CollectorRegistry()
    registry.register(ClusterCollector(engine))
    return registry, RpcMetrics(registry)
