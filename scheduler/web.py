"""The read-only web dashboard and Prometheus `/metrics`, served by the scheduler on a port of its own.

    browser --HTTP(S), session cookie--> aiohttp (this module) --gRPC with the user's token--> the scheduler's
                                                                  own API, over a unix socket in the state dir

Off unless `web_listen` is set. People log in with their API token: the page asks the API `WhoAmI`, keeps the
token in memory under a random session id, and gives the browser only that id (an HttpOnly, SameSite=Strict
cookie). Every page is then built from the same RPCs the SDK calls, with that token, so the tokens, the roles
and "a user sees only their own runs" (`Engine.visible_run`, `list_runs`) apply by construction: this module
decides nothing about who may see what. A token revoked or expired meanwhile fails its next RPC, which ends
the session and shows the login page again.

Nothing here writes: there are no forms but log in and log out.

`/metrics` (prometheus_client's text format) reads the engine in this process (prommetrics.py). It wants
`Authorization: Bearer <token>` of a user or admin (or a logged-in browser), unless `web_metrics_public`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import ssl
import stat
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import grpc
import grpc.aio
import structlog
from aiohttp import web
from google.protobuf.json_format import MessageToDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gridlab.common import auth as common_auth
from gridlab.common.config import ConfigError, SchedulerConfig
from gridlab.common.metricrecords import metric_record
from gridlab.v1 import artifacts_pb2, artifacts_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, types_pb2

from . import webpages as P
from .webpages import h

log = structlog.get_logger("gridlab.scheduler.web")
SOCKET_FILE = "scheduler.web.sock"
COOKIE = "gridlab_session"
SESSION_IDLE = 12 * 3600.0  # seconds a session lasts unused
SESSION_RECHECK = 60.0  # seconds between asking whether a session's token still works
MAX_SESSIONS = 10_000
RPC_TIMEOUT = 15.0
LOG_PAGE = 2000  # lines per /api/runs/ID/logs answer, at most
METRIC_KEEP = 2000  # metrics records kept per run: past that, the older ones are thinned (the newest stays)
METRIC_READ = 20_000  # metrics lines per StreamLogs read
METRIC_READS_PER_REQUEST = 25  # reads one request makes at most (a long run's charts catch up over polls)
METRIC_CACHE_RUNS = 128  # runs whose records are kept between polls
METRIC_CACHE_IDLE = 300.0  # seconds a run's records are kept unused
METRIC_CONCURRENCY = 8  # metrics reads in flight at once, across every request
SWEEP_POINTS = 20_000  # points of the chosen metric on a sweep's chart, over all its trials, at most
MAX_CHARTS = 12
METRICS_RANK = -2  # the LogLine rank of forwarded metrics records
TERMINAL = frozenset({types_pb2.RUN_STATE_SUCCEEDED, types_pb2.RUN_STATE_FAILED, types_pb2.RUN_STATE_CANCELLED})
LIVE = (types_pb2.RUN_STATE_STARTING, types_pb2.RUN_STATE_RUNNING)


def internal_target(state_dir: Path) -> str:
    """The gRPC address the web app calls its own scheduler on: a unix socket in a private directory (mode
    0700, so nobody else can connect, even in the moment between the bind and the socket's chmod): `web/` in
    the state directory, or a new one under the temp directory when that path is too long for a socket name
    (never an abstract socket: any local user can connect to those). Every call on it still carries the
    user's token through the same interceptors; agents cannot use it under mTLS (their calls check the peer
    certificate, which a unix socket has none of)."""
    path = state_dir.resolve() / "web" / SOCKET_FILE
    if len(str(path)) < 100 and _private_dir(path.parent):
        path.unlink(missing_ok=True)
        return f"unix:{path}"
    folder = Path(tempfile.mkdtemp(prefix="gridlab-web-"))  # mode 0700, ours, a fresh name
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return f"unix:{folder / SOCKET_FILE}"


def _private_dir(folder: Path) -> bool:
    """Make `folder` (or find it) a directory of ours that only we may enter; whether that worked."""
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return False  # a symlink, or someone else's
        os.chmod(folder, 0o700)
    except OSError:
        return False
    return True


def secure_socket(target: str) -> None:
    if target.startswith("unix:"):
        with contextlib.suppress(OSError):
            os.chmod(target.removeprefix("unix:"), 0o600)


@dataclass
class Session:
    token: str
    user: str
    role: str
    last_used: float = field(default_factory=time.monotonic)
    checked: float = field(default_factory=time.monotonic)  # when the token was last known to work


class Api:
    """The scheduler's API with one token: thin async wrappers with a deadline."""

    def __init__(self, channel: grpc.aio.Channel, token: str) -> None:
        self.sched = scheduler_pb2_grpc.SchedulerStub(channel)
        self.arts = artifacts_pb2_grpc.ArtifactsStub(channel)
        self.md = common_auth.metadata(token)

    async def whoami(self) -> scheduler_pb2.WhoAmIResponse:
        return await self.sched.WhoAmI(scheduler_pb2.WhoAmIRequest(), metadata=self.md, timeout=RPC_TIMEOUT)

    async def get_run(self, run_id: str) -> types_pb2.Run:
        reply = await self.sched.GetRun(
            scheduler_pb2.GetRunRequest(run_id=run_id), metadata=self.md, timeout=RPC_TIMEOUT
        )
        return reply.run

    async def list_runs(self, **kw: Any) -> tuple[list[types_pb2.Run], str]:
        reply = await self.sched.ListRuns(scheduler_pb2.ListRunsRequest(**kw), metadata=self.md, timeout=RPC_TIMEOUT)
        return list(reply.runs), reply.next_page_token

    async def all_runs(self, pages: int = 5, **kw: Any) -> list[types_pb2.Run]:
        out: list[types_pb2.Run] = []
        token = ""
        for _ in range(pages):
            runs, token = await self.list_runs(limit=1000, page_token=token, **kw)
            out.extend(runs)
            if not token:
                break
        return out

    async def agents(self) -> list[types_pb2.Agent]:
        reply = await self.sched.ListAgents(scheduler_pb2.ListAgentsRequest(), metadata=self.md, timeout=RPC_TIMEOUT)
        return list(reply.agents)

    async def events(self, run_id: str) -> list[types_pb2.RunEvent]:
        reply = await self.sched.ListRunEvents(
            scheduler_pb2.ListRunEventsRequest(run_id=run_id), metadata=self.md, timeout=RPC_TIMEOUT
        )
        return list(reply.events)

    async def artifacts(self, run_id: str) -> artifacts_pb2.ListArtifactsResponse:
        return await self.arts.ListArtifacts(
            artifacts_pb2.ListArtifactsRequest(run_id=run_id), metadata=self.md, timeout=RPC_TIMEOUT
        )

    async def log_lines(
        self, run_id: str, after: int, limit: int, rank: int | None = None
    ) -> tuple[list[types_pb2.LogLine], bool]:
        """Lines after cursor `after` (not followed), at most `limit`; and whether there were more."""
        request = scheduler_pb2.StreamLogsRequest(run_id=run_id, after_cursor=after, follow=False)
        if rank is not None:
            request.rank, request.has_rank = rank, True
        call = self.sched.StreamLogs(request, metadata=self.md, timeout=RPC_TIMEOUT)
        lines: list[types_pb2.LogLine] = []
        try:
            async for reply in call:
                lines.extend(reply.lines)
                if len(lines) >= limit:
                    return lines[:limit], True
        finally:
            call.cancel()
        return lines, False

    def download(self, run_id: str, digest: str) -> Any:
        """The blob's bytes in chunks (a stream call: iterate it, then cancel it)."""
        return self.arts.DownloadBlob(
            artifacts_pb2.DownloadBlobRequest(run_id=run_id, digest=digest), metadata=self.md, timeout=600
        )


@dataclass
class _RunMetrics:
    cursor: int = 0  # the last metrics line read
    records: list[dict[str, Any]] = field(default_factory=list)
    used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class MetricsCache:
    """Each run's metrics records, read incrementally: a poll reads only the lines after the last one read,
    never the whole run again. At most METRIC_KEEP records per run: past that the older ones are thinned
    (every other one), the newest always kept, so a long run's chart spans its whole history and shows its
    latest values. At most METRIC_CONCURRENCY reads are in flight, whatever the number of pages and trials.

    Shared by users: callers read the run with their own token first (GetRun, or it came from their
    ListRuns), and every read here is made with the caller's token too."""

    def __init__(self) -> None:
        self.runs: OrderedDict[str, _RunMetrics] = OrderedDict()
        self.reads = asyncio.Semaphore(METRIC_CONCURRENCY)

    def _entry(self, run_id: str) -> _RunMetrics:
        now = time.monotonic()
        while self.runs:
            oldest_id, oldest = next(iter(self.runs.items()))
            if len(self.runs) < METRIC_CACHE_RUNS and now - oldest.used < METRIC_CACHE_IDLE:
                break
            del self.runs[oldest_id]
        entry = self.runs.get(run_id)
        if entry is None:
            entry = self.runs[run_id] = _RunMetrics()
        entry.used = now
        self.runs.move_to_end(run_id)
        return entry

    async def records(self, api: Api, run_id: str) -> tuple[list[dict[str, Any]], bool]:
        """The run's records (thinned when long), and whether every line logged so far was read."""
        entry = self._entry(run_id)
        async with entry.lock, self.reads:
            for _ in range(METRIC_READS_PER_REQUEST):
                lines, more = await api.log_lines(run_id, entry.cursor, METRIC_READ, rank=METRICS_RANK)
                for line in lines:
                    entry.cursor = max(entry.cursor, line.cursor)
                    record = metric_record(line)
                    if record is not None:
                        entry.records.append(record)
                    if len(entry.records) > METRIC_KEEP:
                        entry.records = _thin(entry.records)
                if not more:
                    return list(entry.records), True
            return list(entry.records), False


def _thin(records: list[Any]) -> list[Any]:
    """Every other one, and the last."""
    kept = records[::2]
    if kept[-1] is not records[-1]:
        kept.append(records[-1])
    return kept


def _status(error: grpc.RpcError) -> grpc.StatusCode:
    code = error.code() if isinstance(error, grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _details(error: grpc.RpcError) -> str:
    return (error.details() if isinstance(error, grpc.aio.AioRpcError) else "") or str(error)


HTTP_OF = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class WebApp:
    def __init__(
        self, config: SchedulerConfig, target: str, registry: CollectorRegistry | None = None, *, secure: bool = False
    ) -> None:
        self.config = config
        self.target = target
        self.registry = registry
        self.secure = secure
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.channel: grpc.aio.Channel | None = None
        self.metric_cache = MetricsCache()
        self.app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        self.app.on_response_prepare.append(self._headers)
        r = self.app.router
        r.add_get("/", self.index)
        r.add_get("/login", self.login_form)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/metrics", self.metrics)
        r.add_get("/healthz", self.healthz)
        r.add_get("/cluster", self.cluster)
        r.add_get("/runs", self.runs)
        r.add_get("/runs/{run_id}", self.run_page)
        r.add_get("/runs/{run_id}/files/{digest}", self.download)
        r.add_get("/sweeps", self.sweeps)
        r.add_get("/sweeps/{name}", self.sweep_page)
        r.add_get("/api/whoami", self.api_whoami)
        r.add_get("/api/cluster", self.api_cluster)
        r.add_get("/api/runs", self.api_runs)
        r.add_get("/api/runs/{run_id}", self.api_run)
        r.add_get("/api/runs/{run_id}/logs", self.api_logs)
        r.add_get("/api/runs/{run_id}/metrics", self.api_metrics)
        r.add_get("/api/runs/{run_id}/charts", self.api_charts)
        self.runner: web.AppRunner | None = None

    # ------------------------------------------------------------ life

    async def start(self, listen: str, ssl_context: ssl.SSLContext | None = None) -> str:
        """Serve on `listen` (HOST:PORT, port 0: any free one); the bound HOST:PORT."""
        host, sep, port_text = listen.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ConfigError(f"web_listen {listen!r} is not HOST:PORT")
        host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - an empty host means every interface, as asked
        self.channel = grpc.aio.insecure_channel(self.target)
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, int(port_text), ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise ConfigError(f"cannot serve the web dashboard on {listen}: {exc.strerror or exc}") from None
        bound = self.runner.addresses[0]
        return f"{listen.rpartition(':')[0]}:{bound[1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    # ------------------------------------------------------------ sessions

    def _api(self, token: str) -> Api:
        assert self.channel is not None  # noqa: S101 - handlers run only between start and stop
        return Api(self.channel, token)

    async def _session(self, request: web.Request) -> Session | None:
        """The request's session, if it has a live one. Its token is asked about again (WhoAmI) when it was
        last checked more than SESSION_RECHECK ago, so a token revoked or expired ends its sessions within
        that time even where no RPC is made with it (`/metrics` is served from the session alone)."""
        sid = request.cookies.get(COOKIE, "")
        session = self.sessions.get(sid) if sid else None
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_used > SESSION_IDLE:
            self.sessions.pop(sid, None)
            return None
        session.last_used = now
        self.sessions.move_to_end(sid)
        if now - session.checked > SESSION_RECHECK:
            session.checked = now  # before the await: concurrent requests do not ask too
            try:
                await self._api(session.token).whoami()
            except grpc.RpcError as exc:
                if _status(exc) in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    self.sessions.pop(sid, None)
                    request["login_note"] = f"Your token no longer works: {_details(exc)}. Log in again."
                    return None
                session.checked = 0.0  # could not ask (the API busy, say): ask again next time
        return session

    def _same_origin(self, request: web.Request) -> bool:
        """Whether a form post came from a page of this site, by its Origin (else Referer) header: a foreign
        one is refused (no login CSRF, no logging people out from elsewhere); a request with neither (not
        from a browser that sends them) passes, as SameSite=Strict cookies already protect the rest."""
        source = request.headers.get("Origin") or request.headers.get("Referer")
        if not source:
            return True
        try:
            netloc = urlsplit(source).netloc
        except ValueError:
            return False
        hosts = {request.host, request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()}
        return bool(netloc) and netloc.lower() in {x.lower() for x in hosts if x}

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        """Pages need a session (else the login page); JSON answers 401; an RPC's error becomes its HTTP status."""
        if request.method == "POST" and not self._same_origin(request):
            return web.Response(status=403, text="refused: a form posted from another site\n")
        public = request.path in ("/login", "/logout", "/metrics", "/healthz")
        if not public:
            session = await self._session(request)
            if session is None:
                return self._need_login(request, request.get("login_note", ""))
            request["session"] = session
        try:
            response: web.StreamResponse = await handler(request)
        except grpc.RpcError as exc:
            if request.writer.output_size > 0:
                raise  # a response is on its way already: aiohttp closes the connection, nothing is appended
            code = _status(exc)
            if code == grpc.StatusCode.UNAUTHENTICATED:
                self.sessions.pop(request.cookies.get(COOKIE, ""), None)
                response = self._need_login(request, f"Your token no longer works: {_details(exc)}. Log in again.")
            else:
                status = HTTP_OF.get(code, 502)
                response = self._error(request, status, f"{code.name}: {_details(exc)}")
        return response

    @staticmethod
    async def _headers(request: web.Request, response: web.StreamResponse) -> None:
        """Every answer, set just before its headers go out (streamed downloads too): no caching, no framing."""
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
        )

    def _need_login(self, request: web.Request, message: str) -> web.Response:
        if request.path.startswith("/api/"):
            return web.json_response({"error": message or "log in first"}, status=401)
        nxt = request.path_qs if request.method == "GET" and request.path not in ("/login", "/logout") else "/cluster"
        return web.Response(
            text=P.login_page(message, next_path=nxt), status=401, content_type="text/html", charset="utf-8"
        )

    def _error(self, request: web.Request, status: int, message: str) -> web.Response:
        if request.path.startswith("/api/"):
            return web.json_response({"error": message}, status=status)
        s: Session | None = request.get("session")
        return self._html(P.error_page(status, message, user=s.user if s else "", role=s.role if s else ""), status)

    @staticmethod
    def _html(text: str, status: int = 200) -> web.Response:
        return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")

    async def login_form(self, request: web.Request) -> web.Response:
        return self._html(P.login_page(next_path=_safe_next(request.query.get("next", ""))))

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", "")).strip()
        nxt = _safe_next(str(form.get("next", "")))
        if not token:
            return self._html(P.login_page("Paste a token.", next_path=nxt), 401)
        try:
            who = await self._api(token).whoami()
        except grpc.RpcError as exc:
            if _status(exc) in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                message = f"That token was refused: {_details(exc)}."
                if _status(exc) == grpc.StatusCode.PERMISSION_DENIED:
                    message = "That is an agent's token: log in with a user's or an admin's."
                return self._html(P.login_page(message, next_path=nxt), 401)
            raise
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = Session(token, who.user, who.role)
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        log.info("web_login", user=who.user, role=who.role)
        response = web.HTTPSeeOther(nxt)
        # Secure also behind a proxy that ended HTTPS for us (trusting the header can only restrict the cookie).
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        secure = self.secure or request.secure or forwarded == "https"
        response.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", secure=secure, path="/")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        self.sessions.pop(request.cookies.get(COOKIE, ""), None)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def index(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/cluster")

    # ------------------------------------------------------------ /metrics

    async def metrics(self, request: web.Request) -> web.Response:
        if self.registry is None:
            raise web.HTTPNotFound()
        if not self.config.web_metrics_public and await self._session(request) is None:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return web.Response(
                    status=401,
                    text="send 'Authorization: Bearer <token>' (a user or admin token), or set web_metrics_public\n",
                    headers={"WWW-Authenticate": 'Bearer realm="gridlab"'},
                )
            try:
                await self._api(token.strip()).whoami()
            except grpc.RpcError as exc:
                if _status(exc) in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    return web.Response(
                        status=403 if _status(exc) == grpc.StatusCode.PERMISSION_DENIED else 401,
                        text=f"token refused: {_details(exc)}\n",
                    )
                raise
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ------------------------------------------------------------ pages

    def _page(self, request: web.Request, title: str, body: str) -> web.Response:
        s: Session = request["session"]
        return self._html(P.page(title, body, user=s.user, role=s.role))

    def _api_of(self, request: web.Request) -> Api:
        return self._api(request["session"].token)

    async def _cluster_data(self, api: Api) -> dict[str, Any]:
        agents, live, queued = await asyncio.gather(
            api.agents(),
            api.all_runs(pages=2, states=list(LIVE)),
            api.all_runs(pages=2, states=[types_pb2.RUN_STATE_QUEUED]),
        )
        holder: dict[str, types_pb2.Run] = {}
        for run in live:
            if run.attempts:
                for node in run.attempts[-1].nodes:
                    for gpu in node.gpu_uuids:
                        holder[gpu] = run
        return {"agents": agents, "holder": holder, "queued": queued}

    async def cluster(self, request: web.Request) -> web.Response:
        data = await self._cluster_data(self._api_of(request))
        agents: list[types_pb2.Agent] = data["agents"]
        holder: dict[str, types_pb2.Run] = data["holder"]
        parts = ["<h1>Cluster</h1>"]
        pools: dict[str, list[types_pb2.Agent]] = {}
        for agent in agents:
            pools.setdefault(agent.pool, []).append(agent)
        pool_rows = []
        for pool, members in sorted(pools.items()):
            gpus = sum(len(a.inventory.gpus) for a in members)
            free = sum(a.gpus_free for a in members if a.state == types_pb2.AGENT_STATE_READY)
            ready = sum(1 for a in members if a.state == types_pb2.AGENT_STATE_READY)
            pool_rows.append([h(pool), str(len(members)), str(ready), str(gpus), str(free)])
        parts.append(
            "<h2>Pools</h2>" + P.table(["pool", "agents", "ready", "GPUs", "GPUs free"], pool_rows, table_id="pools")
        )
        parts.append(f'<h2>Machines ({len(agents)})</h2><div id="machines">')
        for agent in agents:
            state = P.enum_word(types_pb2.AgentState, agent.state, "AGENT_STATE_")
            inv = agent.inventory
            labels = ", ".join(f"{h(k)}={h(v)}" for k, v in sorted(agent.labels.items()))
            hidden = len(inv.gpus) - agent.gpus_free - sum(1 for g in inv.gpus if g.uuid in holder)
            rows = []
            for gpu in inv.gpus:
                run = holder.get(gpu.uuid)
                held = (
                    P.run_link(run.id, run.spec.name or run.id) + f" <span class='muted'>{h(run.user)}</span>"
                    if run
                    else ""
                )
                mem = f"{P.human_bytes(gpu.memory_used_bytes)} / {P.human_bytes(gpu.memory_total_bytes)}"
                rows.append([str(gpu.index), h(gpu.model), h(mem), P.bar(gpu.utilization), held])
            note = f'<p class="muted">{hidden} more GPU(s) held by runs you cannot see.</p>' if hidden > 0 else ""
            parts.append(
                f'<div class="card machine" data-agent="{h(agent.name)}"><b>{h(agent.name)}</b> '
                f"{P.state_span(state)} <span class='muted'>pool {h(agent.pool)}"
                f"{' · ' + labels if labels else ''} · {inv.cpus:g} CPUs · {P.human_bytes(inv.memory_bytes)} RAM"
                f" · {agent.gpus_free}/{len(inv.gpus)} GPUs free"
                f"{' · simulated GPUs' if inv.fake_gpus else ''}"
                f" · last heartbeat {h(P.when(agent.last_heartbeat))}</span>"
                + (
                    P.table(["GPU", "model", "memory used", "utilization", "held by"], rows)
                    if rows
                    else "<p>no GPUs</p>"
                )
                + note
                + "</div>"
            )
        parts.append("</div>")
        queued: list[types_pb2.Run] = sorted(data["queued"], key=lambda r: (r.queue_position or 1 << 30, r.id))
        qrows = [
            [
                str(r.queue_position or ""),
                P.run_link(r.id),
                h(r.spec.name),
                h(r.user),
                h(r.spec.pool or "any"),
                h(P.gpus_of(r)),
                str(r.spec.priority),
                h(r.pending_reason),
            ]
            for r in queued
        ]
        parts.append(f"<h2>Queue ({len(queued)})</h2>")
        parts.append(
            P.table(["#", "run", "name", "user", "pool", "GPUs", "priority", "pending reason"], qrows, table_id="queue")
        )
        return self._page(request, "Cluster", "".join(parts))

    async def runs(self, request: web.Request) -> web.Response:
        q = request.query
        state = q.get("state", "").upper()
        kw: dict[str, Any] = {
            "limit": 200,
            "page_token": q.get("after", ""),
            "user": q.get("user", ""),
            "sweep": q.get("sweep", ""),
            "pool": q.get("pool", ""),
        }
        if state:
            value = _state_value(state)
            if value is None:
                return self._error(request, 400, f"no run state {state!r}")
            kw["states"] = [value]
        runs, next_token = await self._api_of(request).list_runs(**kw)
        now = time.time()
        options = "".join(
            f'<option value="{s}"{" selected" if s == state else ""}>{s or "any state"}</option>'
            for s in ["", "QUEUED", "STARTING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]
        )
        form = (
            '<form class="filters" method="get" action="/runs">'
            f'<select name="state">{options}</select>'
            f'<input name="user" placeholder="user" value="{h(kw["user"])}">'
            f'<input name="sweep" placeholder="sweep" value="{h(kw["sweep"])}">'
            f'<input name="pool" placeholder="pool" value="{h(kw["pool"])}">'
            '<button type="submit">Filter</button> <a href="/runs">clear</a></form><br>'
        )
        rows = []
        for run in runs:
            sweep = run.spec.sweep.name
            rows.append(
                [
                    P.run_link(run.id),
                    h(run.spec.name),
                    P.state_span(P.run_state(run)),
                    h(run.user),
                    f'<a href="/sweeps/{h(P.seg(sweep))}">{h(sweep)}</a> #{run.spec.sweep.index}' if sweep else "",
                    h(P.gpus_of(run)),
                    h(P.duration(run, now)),
                    h(P.when(run.created_at)),
                ]
            )
        more = ""
        if next_token:
            link = P.url("/runs", state=state, user=kw["user"], sweep=kw["sweep"], pool=kw["pool"], after=next_token)
            more = f'<a href="{h(link)}">older runs</a>'
        table = P.table(
            ["run", "name", "state", "user", "sweep", "GPUs", "duration", "submitted"], rows, table_id="runs"
        )
        return self._page(request, "Runs", f"<h1>Runs</h1>{form}{table}{more}")

    async def run_page(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        api = self._api_of(request)
        run = await api.get_run(run_id)  # NOT_FOUND (404) for another user's run, as the API says
        events, arts = await asyncio.gather(api.events(run_id), api.artifacts(run_id))
        state = P.run_state(run)
        spec = json.dumps(MessageToDict(run.spec, preserving_proto_field_name=True), indent=2, sort_keys=True)
        facts = [
            [
                "state",
                f'<span id="run-state">{P.state_span(state)}</span>'  # the log poll keeps it current
                + (f" <span class='muted'>{h(run.pending_reason)}</span>" if run.pending_reason else ""),
            ],
            ["user", h(run.user) + (f" (team {h(run.team)})" if run.team else "")],
            ["GPUs", h(P.gpus_of(run))],
            ["submitted", h(P.when(run.created_at))],
            ["duration", h(P.duration(run))],
            ["retries used", str(run.retries_used)],
        ]
        if run.interruptions:
            facts.append(["interrupted", f"{run.interruptions} (spot reclaims; no retry spent)"])
        if run.message:
            facts.append(["message", h(run.message)])
        if state in ("SUCCEEDED", "FAILED"):
            facts.append(["exit code", str(run.exit_code)])
        if run.spec.sweep.name:
            facts.append(
                [
                    "sweep",
                    f'<a href="/sweeps/{h(P.seg(run.spec.sweep.name))}">{h(run.spec.sweep.name)}</a>'
                    f" trial {run.spec.sweep.index}",
                ]
            )
        attempts = [
            [
                str(a.number),
                P.state_span(P.enum_word(types_pb2.AttemptState, a.state, "ATTEMPT_STATE_")),
                ", ".join(f"{h(n.agent_name)} ({len(n.gpu_uuids)} GPU)" for n in a.nodes),
                h(P.when(a.started_at)),
                h(P.when(a.finished_at)),
                h(a.reason),
            ]
            for a in run.attempts
        ]
        event_rows = [
            [h(P.when(e.time)), h(e.kind), h(P.enum_word(types_pb2.RunState, e.state, "RUN_STATE_")), h(e.message)]
            for e in events
        ]
        base = f"/runs/{P.seg(run.id)}/files/"
        ckpt_rows = []
        for c in arts.checkpoints:
            files = "<br>".join(
                f'<a href="{h(P.url(base + P.seg(f.digest), name=f.path))}">{h(f.path)}</a>'
                f" ({h(P.human_bytes(f.size))})"
                for f in c.files
            )
            ckpt_rows.append([h(c.name), str(c.step), str(c.attempt_number), h(P.when(c.time)), files])
        art_rows = [
            [
                f'<a href="{h(P.url(base + P.seg(a.file.digest), name=a.file.path))}">{h(a.file.path)}</a>',
                h(P.human_bytes(a.file.size)),
                str(a.attempt_number),
                str(a.node_rank),
                h(P.when(a.time)),
            ]
            for a in arts.artifacts
        ]
        body = (
            f"<h1>Run <code>{h(run.id)}</code> {h(run.spec.name)}</h1>"
            + P.table(["", ""], facts, table_id="facts")
            + '<h2>Metrics</h2><div id="charts" class="charts"><span class="muted">loading…</span></div>'
            + '<h2>Logs</h2><div id="logs"><span class="muted" id="logs-empty">no lines yet</span></div>'
            + "<h2>Attempts</h2>"
            + P.table(["#", "state", "nodes", "started", "finished", "reason"], attempts, table_id="attempts")
            + "<h2>Events</h2>"
            + P.table(["time", "kind", "state", "message"], event_rows, table_id="events")
            + "<h2>Checkpoints</h2>"
            + (
                P.table(["name", "step", "attempt", "time", "files"], ckpt_rows, table_id="checkpoints")
                if ckpt_rows
                else "<p class='muted'>none</p>"
            )
            + "<h2>Artifacts</h2>"
            + (
                P.table(["file", "size", "attempt", "node", "time"], art_rows, table_id="artifacts")
                if art_rows
                else "<p class='muted'>none (uploaded when an attempt ends)</p>"
            )
            + f"<h2>Spec</h2><pre>{h(spec)}</pre>"
            + _RUN_SCRIPT.replace("__RUN__", json.dumps(f"/api/runs/{P.seg(run.id)}"))
        )
        return self._page(request, f"Run {run.id}", body)

    async def download(self, request: web.Request) -> web.StreamResponse:
        run_id, digest = request.match_info["run_id"], request.match_info["digest"]
        name = Path(request.query.get("name", "") or digest.replace(":", "-")).name or "download"
        call = self._api_of(request).download(run_id, digest)
        response: web.StreamResponse | None = None
        try:
            async for chunk in call:
                if response is None:
                    response = web.StreamResponse(
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Disposition": f"attachment; filename*=UTF-8''{P.seg(name)}",
                        }
                    )
                    if chunk.size:
                        response.content_length = chunk.size
                    await response.prepare(request)
                await response.write(chunk.data)
        except Exception as exc:
            if response is None:
                raise  # nothing sent yet: the guard answers with the error
            # The status and part of the body are out: no error can be sent now, and nothing may be appended
            # to the file. Drop the connection, so the client sees a short transfer (never a complete-looking
            # one with an error page inside).
            log.warning("web_download_broken", run_id=run_id, digest=digest, error=str(exc))
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError(f"the download of {digest} broke off: {exc}") from None
        finally:
            call.cancel()
        if response is None:
            return web.Response(body=b"", headers={"Content-Type": "application/octet-stream"})
        await response.write_eof()
        return response

    async def sweeps(self, request: web.Request) -> web.Response:
        runs = await self._api_of(request).all_runs(pages=3)
        groups: dict[str, list[types_pb2.Run]] = {}
        for run in runs:
            if run.spec.sweep.name:
                groups.setdefault(run.spec.sweep.name, []).append(run)
        rows = []
        for name, trials in sorted(groups.items(), key=lambda kv: max(r.id for r in kv[1]), reverse=True):
            counts: dict[str, int] = {}
            for t in trials:
                counts[P.run_state(t)] = counts.get(P.run_state(t), 0) + 1
            first = trials[0].spec.sweep
            rows.append(
                [
                    f'<a href="/sweeps/{h(P.seg(name))}">{h(name)}</a>',
                    h(trials[0].user),
                    f"{len(trials)} / {first.size or len(trials)}",
                    ", ".join(f"{P.state_span(s)} {n}" for s, n in sorted(counts.items())),
                    h(first.metric),
                ]
            )
        table = P.table(["sweep", "user", "trials", "states", "metric"], rows, table_id="sweeps")
        return self._page(request, "Sweeps", f"<h1>Sweeps</h1>{table}")

    async def sweep_page(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        api = self._api_of(request)
        trials = sorted(await api.all_runs(pages=2, sweep=name), key=lambda r: r.spec.sweep.index)
        if not trials:
            return self._error(request, 404, f"no sweep {name!r} among the runs you may see")
        per_trial = max(50, SWEEP_POINTS // len(trials))

        async def series_of(run: types_pb2.Run) -> dict[str, list[tuple[float, float]]]:
            records, _ = await self.metric_cache.records(api, run.id)  # at most METRIC_CONCURRENCY at once
            return {k: P.thin(v, per_trial) for k, v in P.metric_series(records).items()}

        series = await asyncio.gather(*(series_of(t) for t in trials))
        names = sorted({k for s in series for k in s})
        info = trials[0].spec.sweep
        metric = request.query.get("metric") or (info.metric if info.metric in names else (names[0] if names else ""))
        params = sorted({k for t in trials for k in t.spec.sweep.params})
        rows = []
        for t, s in zip(trials, series, strict=True):
            pts = s.get(metric, [])
            best = ""
            if pts:
                values = [y for _, y in pts]
                best = f"{(max(values) if info.maximize else min(values)):.4g} (last {values[-1]:.4g})"
            rows.append(
                [
                    str(t.spec.sweep.index),
                    P.run_link(t.id),
                    P.state_span(P.run_state(t)),
                    *[h(t.spec.sweep.params.get(p, "")) for p in params],
                    h(best),
                    h(P.duration(t)),
                ]
            )
        options = "".join(f'<option value="{h(n)}"{" selected" if n == metric else ""}>{h(n)}</option>' for n in names)
        form = (
            f'<form class="filters" method="get"><label>metric <select name="metric" onchange="this.form.submit()">'
            f"{options}</select></label><noscript><button>Show</button></noscript></form>"
        )
        chart = P.line_chart(
            f"{metric} per trial" if metric else "no metrics yet",
            {f"#{t.spec.sweep.index} {t.id}": s.get(metric, []) for t, s in zip(trials, series, strict=True)},
            width=900,
            height=360,
            chart_id="sweep-chart",
        )
        goal = f" ({'higher' if info.maximize else 'lower'} is better)" if info.metric else ""
        table = P.table(
            ["trial", "run", "state", *params, f"{metric or 'metric'}: best{goal}", "duration"], rows, table_id="trials"
        )
        body = f"<h1>Sweep {h(name)}</h1>{form}<div class='charts'>{chart}</div><h2>Trials</h2>{table}"
        return self._page(request, f"Sweep {name}", body)

    # ------------------------------------------------------------ JSON

    async def api_whoami(self, request: web.Request) -> web.Response:
        who = await self._api_of(request).whoami()
        return web.json_response({"user": who.user, "role": who.role, "team": who.team})

    async def api_cluster(self, request: web.Request) -> web.Response:
        data = await self._cluster_data(self._api_of(request))
        agents = [
            {
                "name": a.name,
                "pool": a.pool,
                "state": P.enum_word(types_pb2.AgentState, a.state, "AGENT_STATE_"),
                "gpus_free": a.gpus_free,
                "gpus": [
                    {
                        "index": g.index,
                        "model": g.model,
                        "memory_used_bytes": g.memory_used_bytes,
                        "memory_total_bytes": g.memory_total_bytes,
                        "utilization": g.utilization,
                        "run_id": data["holder"][g.uuid].id if g.uuid in data["holder"] else None,
                    }
                    for g in a.inventory.gpus
                ],
            }
            for a in data["agents"]
        ]
        queue = [
            {"run_id": r.id, "user": r.user, "pending_reason": r.pending_reason, "position": r.queue_position}
            for r in data["queued"]
        ]
        return web.json_response({"agents": agents, "queue": queue})

    async def api_runs(self, request: web.Request) -> web.Response:
        q = request.query
        kw: dict[str, Any] = {
            "limit": 200,
            "user": q.get("user", ""),
            "sweep": q.get("sweep", ""),
            "pool": q.get("pool", ""),
        }
        if q.get("state"):
            value = _state_value(q["state"])
            kw["states"] = [value] if value is not None else []
            if value is None:
                return web.json_response({"error": f"no run state {q['state']!r}"}, status=400)
        runs, _ = await self._api_of(request).list_runs(**kw)
        return web.json_response({"runs": [_run_json(r) for r in runs]})

    async def api_run(self, request: web.Request) -> web.Response:
        run = await self._api_of(request).get_run(request.match_info["run_id"])
        return web.json_response(_run_json(run))

    async def api_logs(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        try:
            after = max(0, int(request.query.get("after", "0")))
        except ValueError:
            return web.json_response({"error": "after must be a number (a cursor)"}, status=400)
        api = self._api_of(request)
        # The run first, then its lines (as StreamLogs does): lines that land just before the run's end is
        # reported are then in this answer, never after an answer that said done.
        run = await api.get_run(run_id)
        lines, more = await api.log_lines(run_id, after, LOG_PAGE)
        out, cursor = [], after
        for line in lines:
            cursor = max(cursor, line.cursor)
            if line.stream == types_pb2.LOG_STREAM_METRICS or line.rank == METRICS_RANK:
                continue
            out.append(
                {
                    "rank": line.rank,
                    "attempt": line.attempt_number,
                    "text": line.text,
                    "cursor": line.cursor,
                    "stream": P.enum_word(types_pb2.LogStream, line.stream, "LOG_STREAM_"),
                }
            )
        done = run.state in TERMINAL and not more
        return web.json_response(
            {"lines": out, "cursor": cursor, "more": more, "done": done, "state": P.run_state(run)}
        )

    async def api_metrics(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        api = self._api_of(request)
        await api.get_run(run_id)  # this user may see it (the cache is shared)
        records, _ = await self.metric_cache.records(api, run_id)
        return web.json_response({"records": records})

    async def api_charts(self, request: web.Request) -> web.Response:
        """The run's metrics drawn as SVG charts (one per metric), for the run page to swap in as they grow."""
        run_id = request.match_info["run_id"]
        api = self._api_of(request)
        run = await api.get_run(run_id)  # before the records, as in api_logs: "done" never hides the last ones
        records, complete = await self.metric_cache.records(api, run_id)
        series = P.metric_series(records)
        charts = [
            P.line_chart(name, {name: pts}, chart_id=f"chart-{i}")
            for i, (name, pts) in enumerate(sorted(series.items())[:MAX_CHARTS])
        ]
        return web.json_response(
            {
                "html": "".join(charts) or '<span class="muted">no metrics yet</span>',
                "points": {name: len(pts) for name, pts in series.items()},
                "done": run.state in TERMINAL and complete,
            }
        )


def _state_value(word: str) -> int | None:
    """The RunState number of a word (queued, RUNNING, ...), or None."""
    value = types_pb2.RunState.DESCRIPTOR.values_by_name.get("RUN_STATE_" + word.upper())
    return None if value is None or value.number == 0 else value.number


_NEXT_PATH = re.compile(r"/[A-Za-z0-9/_\-.~%]*")


def _safe_next(path: str) -> str:
    """Where to go after logging in: a path of this site only, rebuilt from its path and query.

    Refused (so "/cluster"): a scheme or host, `//host`, backslashes, and any control character (browsers and
    yarl drop tab, CR and LF from a URL, so `/\t/evil.example` would become `//evil.example`)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "/cluster"
    try:
        parts = urlsplit(path)
    except ValueError:
        return "/cluster"
    if parts.scheme or parts.netloc or not _NEXT_PATH.fullmatch(parts.path) or parts.path.startswith("//"):
        return "/cluster"
    decoded = unquote(parts.path)  # and no `/%09/host` or `/%2F/host` either, should anything decode it later
    if decoded.startswith("//") or "\\" in decoded or any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        return "/cluster"
    return parts.path + (f"?{quote(parts.query, safe='=&+%/:,.-_~')}" if parts.query else "")


def _run_json(run: types_pb2.Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "name": run.spec.name,
        "state": P.run_state(run),
        "user": run.user,
        "sweep": run.spec.sweep.name,
        "gpus": P.gpus_of(run),
        "duration": P.duration(run),
        "pending_reason": run.pending_reason,
        "exit_code": run.exit_code,
        "message": run.message,
    }


# Follows the logs (appending lines as text nodes, never as HTML) and swaps in the server's charts; both poll
# JSON endpoints and stop once the run has ended and everything is shown.
_RUN_SCRIPT = """<script>
(function(){
const base = __RUN__;
let cursor = 0;
function pre(rank){
  let el = document.getElementById('log-rank-' + rank);
  if (el) return el;
  const box = document.getElementById('logs');
  const empty = document.getElementById('logs-empty'); if (empty) empty.remove();
  const title = document.createElement('h3');
  title.textContent = rank < 0 ? 'agent' : 'rank ' + rank;
  el = document.createElement('pre'); el.className = 'log'; el.id = 'log-rank-' + rank;
  box.appendChild(title); box.appendChild(el);
  return el;
}
async function logs(){
  let wait = 1000;
  try {
    const r = await fetch(base + '/logs?after=' + cursor, {credentials: 'same-origin'});
    if (r.status === 401) { location.reload(); return; }
    const j = await r.json();
    for (const l of j.lines || []) {
      const el = pre(l.rank);
      const follow = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
      el.appendChild(document.createTextNode((l.attempt > 1 ? '[attempt ' + l.attempt + '] ' : '') + l.text + '\\n'));
      if (follow) el.scrollTop = el.scrollHeight;
    }
    cursor = j.cursor || cursor;
    const s = document.querySelector('#run-state .state');
    if (s && j.state) { s.textContent = j.state; s.className = 'state ' + j.state; }
    if (j.done) return;
    if (j.more) wait = 50;
  } catch (e) { wait = 3000; }
  setTimeout(logs, wait);
}
async function charts(){
  let wait = 1500;
  try {
    const r = await fetch(base + '/charts', {credentials: 'same-origin'});
    if (r.status === 401) { location.reload(); return; }
    const j = await r.json();
    document.getElementById('charts').innerHTML = j.html;
    if (j.done) return;
  } catch (e) { wait = 4000; }
  setTimeout(charts, wait);
}
logs(); charts();
})();
</script>"""


def ssl_context(config: SchedulerConfig) -> ssl.SSLContext | None:
    """HTTPS with the scheduler's own certificate when it serves TLS."""
    if not (config.tls_cert and config.tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def serve_web(config: SchedulerConfig, target: str, registry: CollectorRegistry | None) -> tuple[WebApp, str]:
    """Start the dashboard on `config.web_listen`; return it and its bound address (the scheduler publishes it)."""
    context = ssl_context(config)
    app = WebApp(config, target, registry, secure=context is not None)
    address = await app.start(config.web_listen, context)
    scheme = "https" if context is not None else "http"
    log.info("web_listening", url=f"{scheme}://{address}/", metrics_public=config.web_metrics_public)
    return app, address
