"""The web dashboard and /metrics over real HTTP, against a real scheduler with simulated agents: /metrics
parsed by prometheus_client's own parser matches the state; pages need a login; a session is a cookie the
page cannot read; a user's token cannot open another user's run; hostile names are escaped."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import stat
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import grpc
import grpc.aio
from aiohttp.test_utils import make_mocked_request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from simagents import Machine, SimAgents
from webclient import Browser

from gridlab.client.localcluster import LocalCluster
from gridlab.common import auth
from gridlab.common.config import SchedulerConfig
from gridlab.scheduler import web as webmod
from gridlab.scheduler.prommetrics import ClusterCollector, reason_word
from gridlab.scheduler.webpages import line_chart, metric_series
from gridlab.v1 import artifacts_pb2, scheduler_pb2, types_pb2

A100_X2 = Machine("a100x2", (("A100", 80.0),) * 2, cpus=32, memory_gb=256)
RTX_X4 = Machine("rtx3090x4", (("RTX3090", 24.0),) * 4, cpus=32, memory_gb=128)
SLEEP = [sys.executable, "-c", "pass"]  # never started: the simulated agents only pretend to


class FakeApi(webmod.Api):
    """The API of one run, in memory: `log_lines` and `get_run` as the scheduler answers them; `on_get_run`
    runs when the run is read (to land lines and end the run between two calls)."""

    def __init__(self, lines: list[types_pb2.LogLine] | None = None) -> None:
        self.lines = list(lines or [])
        self.state = types_pb2.RUN_STATE_RUNNING
        self.on_get_run: list = []
        self.reads = 0  # log_lines calls
        self.afters, self.trials = [], []

    def add(self, text: str, *, metrics: bool = False) -> None:
        rank, stream = (
            (webmod.METRICS_RANK, types_pb2.LOG_STREAM_METRICS) if metrics else (0, types_pb2.LOG_STREAM_STDOUT)
        )
        self.lines.append(
            types_pb2.LogLine(cursor=len(self.lines) + 1, rank=rank, stream=stream, text=text, attempt_number=1)
        )

    async def get_run(self, run_id: str) -> types_pb2.Run:
        for hook in self.on_get_run:
            hook()
        return types_pb2.Run(id=run_id, state=self.state)

    afters: list[int] = []  # noqa: RUF012 - each instance sets its own
    in_flight = busiest = 0  # log_lines calls under way now, and the most at once
    trials: list[types_pb2.Run] = []  # noqa: RUF012

    async def all_runs(self, pages: int = 5, **kw: object) -> list[types_pb2.Run]:
        return self.trials

    async def log_lines(self, run_id: str, after: int, limit: int, rank: int | None = None) -> tuple[list, bool]:
        self.reads += 1
        self.afters.append(after)
        self.in_flight += 1
        self.busiest = max(self.busiest, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        found = [x for x in self.lines if x.cursor > after and (rank is None or x.rank == rank)]
        return found[:limit], len(found) > limit

    revoked = False

    async def whoami(self) -> scheduler_pb2.WhoAmIResponse:
        if self.revoked:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAUTHENTICATED, details="token revoked")
        return scheduler_pb2.WhoAmIResponse(user="alice", role="user")

    def download(self, run_id: str, digest: str) -> FakeDownload:
        return FakeDownload(self.blob, self.break_after)

    blob = b""
    break_after: int | None = None  # chunks sent before the stream fails (DEADLINE_EXCEEDED), or never


class FakeDownload:
    """DownloadBlob's stream: the blob in 1 KiB chunks (its size in the first), failing midway if asked."""

    def __init__(self, blob: bytes, break_after: int | None) -> None:
        self.blob, self.break_after = blob, break_after

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        chunks = [self.blob[i : i + 1024] for i in range(0, len(self.blob), 1024)]
        for i, data in enumerate(chunks):
            if i == self.break_after:
                raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, details="Deadline Exceeded")
            yield artifacts_pb2.DownloadBlobResponse(data=data, size=len(self.blob) if i == 0 else 0)

    def cancel(self) -> None:
        pass


def fake_app(api: FakeApi) -> webmod.WebApp:
    app = webmod.WebApp(SchedulerConfig(), "unix:/nonexistent", CollectorRegistry())
    app._api_of = lambda request: api  # type: ignore[method-assign]
    app._api = lambda token: api  # type: ignore[method-assign]
    return app


def call(app: webmod.WebApp, handler: str, path: str, **match: str) -> dict:
    async def go() -> dict:
        reply = await getattr(app, handler)(make_mocked_request("GET", path, match_info=match))
        return json.loads(reply.body)

    return asyncio.run(go())


def served(api: FakeApi, client):  # type: ignore[no-untyped-def]
    """Serve a fake-API dashboard on loopback with one session; run `client(base_url, cookie)` in a thread."""

    async def go():  # type: ignore[no-untyped-def]
        app = fake_app(api)
        address = await app.start("127.0.0.1:0")
        app.sessions["sid"] = webmod.Session("token", "alice", "user")
        try:
            return await asyncio.to_thread(client, f"http://{address}", f"{webmod.COOKIE}=sid")
        finally:
            await app.stop()

    return asyncio.run(go())


def raw_get(base: str, path: str, cookie: str) -> tuple[int, dict[str, str], bytes, bool]:
    """Status, headers, the body bytes received, and whether the body was complete (Content-Length)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Cookie": cookie})
        response = conn.getresponse()
        try:
            body, complete = response.read(), True
        except http.client.IncompleteRead as exc:
            body, complete = exc.partial, False
        return response.status, dict(response.headers), body, complete
    finally:
        conn.close()


def test_a_download_that_breaks_off_is_short_never_corrupt() -> None:
    blob = bytes(range(256)) * 16  # 4 KiB: four chunks
    api = FakeApi()
    api.blob = blob
    status, headers, body, complete = served(api, lambda base, c: raw_get(base, "/runs/r1/files/sha256:x", c))
    assert (status, body, complete) == (200, blob, True)
    assert headers["X-Content-Type-Options"] == "nosniff"  # set before the streamed headers went out
    assert headers["Cache-Control"] == "no-store"

    api.break_after = 2  # DownloadBlob's deadline passes after 2 KiB
    status, headers, body, complete = served(api, lambda base, c: raw_get(base, "/runs/r1/files/sha256:x", c))
    assert status == 200
    assert headers["Content-Length"] == str(len(blob))
    assert not complete
    assert blob.startswith(body)  # a prefix of the file, with nothing else inside
    assert b"HTTP/1.1" not in body

    api.break_after = 0  # broken before anything was sent: an error answer, as for any RPC
    status, _, body, complete = served(api, lambda base, c: raw_get(base, "/runs/r1/files/sha256:x", c))
    assert status == 504
    assert complete
    assert b"DEADLINE_EXCEEDED" in body


def test_a_revoked_tokens_session_loses_metrics_within_a_minute() -> None:
    api = FakeApi()
    app = fake_app(api)
    session = app.sessions["sid"] = webmod.Session("token", "alice", "user")

    async def scrape() -> int:
        request = make_mocked_request("GET", "/metrics", headers={"Cookie": f"{webmod.COOKIE}=sid"})
        return (await app.metrics(request)).status

    assert asyncio.run(scrape()) == 200
    api.revoked = True
    assert asyncio.run(scrape()) == 200  # checked a moment ago: not asked again yet
    session.checked -= webmod.SESSION_RECHECK + 1
    assert asyncio.run(scrape()) == 401
    assert "sid" not in app.sessions


def test_forms_posted_from_another_site_are_refused() -> None:
    def client(base: str, cookie: str) -> list[tuple[int, str]]:
        own = base  # http://127.0.0.1:PORT
        web = Browser(base)
        out = []
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Referer": "http://evil.example/page"},
            {"Origin": own},
            {"Referer": own + "/login"},
            {},  # no browser: nothing to check
            {"X-Forwarded-Proto": "https"},
        ):
            web.cookies.clear()
            reply = web.post("/login", {"token": "t", "next": "/runs"}, headers=headers)
            out.append((reply.status, reply.headers.get("Set-Cookie", "")))
        logged_in = Browser(base, cookies={webmod.COOKIE: "sid"})
        out.append((logged_in.post("/logout", {}, headers={"Origin": "http://evil.example"}).status, ""))
        return out

    api = FakeApi()
    replies = served(api, client)
    assert [status for status, _ in replies] == [403, 403, 403, 303, 303, 303, 303, 403]
    assert not any(cookie for status, cookie in replies if status == 403)
    assert "Secure" not in replies[3][1]
    assert "Secure" in replies[6][1]  # HTTPS ended at a proxy in front


def test_a_long_runs_chart_is_bounded_shows_its_latest_values_and_polls_read_only_new_lines() -> None:
    api = FakeApi()
    for step in range(60_000):  # more than any one read, and than a chart keeps
        api.add(json.dumps({"step": step, "loss": 1.0 / (step + 1)}), metrics=True)
    app = fake_app(api)
    first = call(app, "api_charts", "/api/runs/r1/charts", run_id="r1")
    assert 1000 <= first["points"]["loss"] <= webmod.METRIC_KEEP + 1
    assert 'data-points="{}"'.format(first["points"]["loss"]) in first["html"]
    records = call(app, "api_metrics", "/api/runs/r1/metrics", run_id="r1")["records"]
    assert records[0]["step"] == 0
    assert records[-1]["step"] == 59_999  # the latest, not the first 50k frozen
    api.add(json.dumps({"step": 60_000, "loss": 0.0}), metrics=True)
    api.afters.clear()
    records = call(app, "api_metrics", "/api/runs/r1/metrics", run_id="r1")["records"]
    assert records[-1] == {"step": 60_000, "loss": 0.0, "attempt": 1}
    assert api.afters == [60_000]  # only the lines after the last one read


def test_a_big_sweep_reads_a_few_trials_at_a_time() -> None:
    api = FakeApi()
    for i in range(40):
        api.trials.append(
            types_pb2.Run(id=f"r{i}", spec=types_pb2.RunSpec(sweep=types_pb2.SweepTrial(name="s", index=i)))
        )
    for step in range(100):
        api.add(json.dumps({"step": step, "loss": 1.0}), metrics=True)
    app = fake_app(api)

    async def page() -> str:
        request = make_mocked_request("GET", "/sweeps/s", match_info={"name": "s"})
        request["session"] = webmod.Session("token", "alice", "user")
        return (await app.sweep_page(request)).text

    html = asyncio.run(page())
    assert api.reads >= 40
    assert api.busiest <= webmod.METRIC_CONCURRENCY
    assert 'data-points="4000"' in html  # 40 trials of 100 points


def ending_run() -> FakeApi:
    """A running run whose last lines land, and whose end is reported, just before its state is read: read
    the lines first and they are missing from an answer that says done."""
    api = FakeApi()
    api.add("first")
    api.add('{"step": 1, "loss": 2.0}', metrics=True)

    def the_end() -> None:
        if api.state != types_pb2.RUN_STATE_SUCCEEDED:
            api.add("last")
            api.add('{"step": 2, "loss": 1.0}', metrics=True)
            api.state = types_pb2.RUN_STATE_SUCCEEDED

    api.on_get_run.append(the_end)
    return api


def test_the_internal_socket_is_in_a_directory_only_the_scheduler_may_enter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    def folder_of(target: str) -> Path:
        assert target.startswith("unix:/")  # never unix-abstract: any local user may connect to those
        folder = Path(target.removeprefix("unix:")).parent
        info = folder.lstat()
        assert stat.S_ISDIR(info.st_mode)
        assert info.st_uid == os.getuid()
        assert stat.S_IMODE(info.st_mode) == 0o700
        return folder

    short = tmp_path / "s"
    short.mkdir()
    (short / "web").mkdir(mode=0o755)  # left from before: made private again
    assert folder_of(webmod.internal_target(short)) == (short / "web").resolve()
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert not str(folder_of(webmod.internal_target(deep))).startswith(str(tmp_path))
    linked = tmp_path / "l"
    linked.mkdir()
    (linked / "web").symlink_to(tmp_path)  # not a directory of its own: not used
    assert not str(folder_of(webmod.internal_target(linked))).startswith(str(tmp_path))


def test_polling_ends_only_after_the_last_lines_are_shown() -> None:
    logs = call(fake_app(ending_run()), "api_logs", "/api/runs/r1/logs?after=0", run_id="r1")
    assert logs["done"]
    assert [x["text"] for x in logs["lines"]] == ["first", "last"]
    charts = call(fake_app(ending_run()), "api_charts", "/api/runs/r1/charts", run_id="r1")
    assert charts["done"]
    assert charts["points"] == {"loss": 2}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_reason_words_keep_label_values_few() -> None:
    assert reason_word("") == "None"
    assert reason_word("Resources: needs 1x A100; waiting for GPUs or CPUs to free up") == "Resources"
    assert reason_word("Unsatisfiable: no agent has 9 suitable GPUs (the most on one agent is 8)") == "Unsatisfiable"
    assert reason_word("no agent is connected") == "NoAgents"
    assert reason_word("something else, with a: colon later on") == "Other"


def test_the_chart_counts_its_points_and_escapes_names() -> None:
    series = metric_series([{"step": 1, "loss": 2.0, "acc": 0.1}, {"step": 2, "loss": 1.0}, {"note": "x"}])
    assert series == {"loss": [(1.0, 2.0), (2.0, 1.0)], "acc": [(1.0, 0.1)]}
    svg = line_chart("<loss>", {"<b>": series["loss"]}, chart_id="c")
    assert 'data-points="2"' in svg
    assert "<b>" not in svg
    assert "&lt;loss&gt;" in svg
    assert 'data-points="0"' in line_chart("empty", {})


def test_a_burst_of_scrapes_reads_the_state_once() -> None:
    class Store:
        queries = 0

        def one(self, sql: str, args: tuple = ()) -> dict:
            self.queries += 1
            return {"id": 0, "bytes": 0}

        def all(self, sql: str, args: tuple = ()) -> list:
            self.queries += 1
            return [{"state": "RUNNING", "n": 3}] if "GROUP BY state" in sql else []

    store = Store()
    engine = SimpleNamespace(
        store=store,
        list_agents=list,
        clock=SimpleNamespace(monotonic=time.monotonic),
        last_seen={},
        cadence=lambda: SimpleNamespace(timeout=30.0),
    )
    collector = ClusterCollector(engine)  # type: ignore[arg-type]
    registry = CollectorRegistry()
    registry.register(collector)
    first = generate_latest(registry)
    reads = store.queries
    for _ in range(50):
        assert generate_latest(registry) == first
    assert store.queries == reads
    assert value(samples(first.decode()), "gridlab_runs", state="RUNNING") == 3
    collector.cache_seconds = 0.0  # the window has passed: the next scrape reads again
    generate_latest(registry)
    assert store.queries > reads


def test_metrics_match_the_cluster_state(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: LocalCluster = make_cluster(web=True)
    cluster.start_scheduler()
    agent_token = auth.read_secret(cluster.agent_token_file)
    admin = cluster.client()
    web = Browser(cluster.web_url)

    async def scenario() -> dict:
        async with SimAgents(cluster.address, agent_token, 2, machines=[A100_X2, RTX_X4], run_time=60.0) as sim:
            runs = [
                await asyncio.to_thread(admin.submit, SLEEP, gpus=1, gpu_type="A100", name=f"a{i}") for i in range(3)
            ]
            await asyncio.to_thread(admin.submit, SLEEP, gpus=1, gpu_type="H100", name="never")
            cancelled = await asyncio.to_thread(admin.submit, SLEEP, gpus=8, gpu_type="A100", name="gone")
            await asyncio.to_thread(cancelled.cancel)
            await sim.wait_assigned(2, timeout=30)
            # Until the simulated agents' RUNNING reports land and the queued runs have their reasons.
            for _ in range(100):
                found = samples((await asyncio.to_thread(scrape)).text)
                if (
                    value(found, "gridlab_runs", state="RUNNING") == 2
                    and value(found, "gridlab_queue_runs", pool="any", reason="Resources") == 1
                ):
                    break
                await asyncio.sleep(0.1)
            assert {r.id for r in runs}
            return found

    def scrape():  # type: ignore[no-untyped-def]
        reply = web.get("/metrics", headers={"Authorization": f"Bearer {cluster.admin_token}"})
        assert reply.status == 200, reply.text
        assert reply.headers["Content-Type"].startswith("text/plain")
        return reply

    found = asyncio.run(scenario())
    assert value(found, "gridlab_runs", state="RUNNING") == 2
    assert value(found, "gridlab_runs", state="QUEUED") == 2
    assert value(found, "gridlab_runs", state="CANCELLED") == 1
    assert value(found, "gridlab_runs", state="SUCCEEDED") == 0
    assert value(found, "gridlab_queue_runs", pool="any", reason="Resources") == 1
    assert value(found, "gridlab_queue_runs", pool="any", reason="Unsatisfiable") == 1
    assert value(found, "gridlab_placement_latency_seconds_count") == 2
    assert value(found, "gridlab_placement_latency_seconds_bucket", le="+Inf") == 2
    assert value(found, "gridlab_gpus", model="A100", status="busy") == 2
    assert value(found, "gridlab_gpus", model="A100", status="free") == 0
    assert value(found, "gridlab_gpus", model="RTX3090", status="free") == 4
    assert value(found, "gridlab_gpus", model="RTX3090", status="busy") == 0
    assert value(found, "gridlab_agents", state="READY", pool="onprem") == 2
    assert value(found, "gridlab_heartbeat_lag_max_seconds") < 5
    assert {dict(k[1]).get("agent") for k in found if k[0] == "gridlab_agent_heartbeat_age_seconds"} == {
        "sim-0000",
        "sim-0001",
    }
    assert value(found, "gridlab_rpc_requests_total", method="SubmitRun", code="OK") == 5
    assert value(found, "gridlab_rpc_requests_total", method="CancelRun", code="OK") == 1
    assert value(found, "gridlab_rpc_duration_seconds_count", method="SubmitRun", code="OK") == 5
    # After the simulated agents are gone: lost or offline, none ready, no GPU counted (once the scrape cache's
    # window has passed).
    for _ in range(100):
        after = samples(web.get("/metrics", headers={"Authorization": f"Bearer {cluster.admin_token}"}).text)
        if value(after, "gridlab_agents", state="READY", pool="onprem") == 0:
            break
        time.sleep(0.1)
    assert value(after, "gridlab_agents", state="READY", pool="onprem") == 0
    assert value(after, "gridlab_gpus", model="A100", status="free") == 0


def test_metrics_need_a_person_token(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: LocalCluster = make_cluster(web=True)
    cluster.start_scheduler()
    web = Browser(cluster.web_url)
    missing = web.get("/metrics")
    assert missing.status == 401
    assert "Bearer" in missing.headers["WWW-Authenticate"]
    assert web.get("/metrics", headers={"Authorization": "Bearer nope"}).status == 401
    agent = auth.read_secret(cluster.agent_token_file)
    assert web.get("/metrics", headers={"Authorization": f"Bearer {agent}"}).status == 403
    user = cluster.client().create_token("prometheus", "user")
    ok = web.get("/metrics", headers={"Authorization": f"Bearer {user}"})
    assert ok.status == 200
    assert "gridlab_runs" in ok.text
    # The RPC counter also saw the refusal of the agent's token (WhoAmI is for people).
    assert 'gridlab_rpc_requests_total{code="PERMISSION_DENIED",method="WhoAmI"} 1.0' in ok.text


def test_login_cookie_and_each_user_sees_only_their_runs(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: LocalCluster = make_cluster(web=True)
    cluster.start_scheduler()
    admin = cluster.client()
    alice_token = admin.create_token("alice", "user")
    bob_token = admin.create_token("bob", "user")
    hostile = "<img src=x onerror=alert(1)>&\"'"
    run = cluster.client(alice_token).submit(SLEEP, name=hostile, env={"NOTE": "<script>alert(2)</script>"})

    anonymous = Browser(cluster.web_url)
    for path in ("/cluster", "/runs", f"/runs/{run.id}", "/sweeps"):
        reply = anonymous.get(path)
        assert reply.status == 401, path
        assert 'name="token"' in reply.text  # the login form
    assert anonymous.get(f"/api/runs/{run.id}/logs").status == 401
    refused = anonymous.login("not-a-token")
    assert refused.status == 401
    assert "That token was refused" in refused.text
    agent_login = anonymous.login(auth.read_secret(cluster.agent_token_file))
    assert agent_login.status == 401
    assert "agent" in agent_login.text
    assert not anonymous.cookies

    alice = Browser(cluster.web_url)
    ok = alice.login(alice_token)
    assert ok.status == 303
    assert ok.headers["Location"] == "/cluster"
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert alice_token not in cookie  # the browser holds a session id, never the token
    runs_page = alice.get("/runs")
    assert runs_page.status == 200
    assert run.id in runs_page.text
    page = alice.get(f"/runs/{run.id}")
    assert page.status == 200
    assert hostile not in page.text
    assert "<img src=x" not in page.text
    assert "<script>alert(2)" not in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;&quot;&#x27;" in page.text
    assert "alice (user)" in page.text
    assert page.headers["X-Frame-Options"] == "DENY"
    assert alice.get(f"/api/runs/{run.id}").json()["name"] == hostile  # JSON carries it as data

    bob = Browser(cluster.web_url)
    assert bob.login(bob_token).status == 303
    assert run.id not in bob.get("/runs").text
    assert bob.get(f"/runs/{run.id}").status == 404
    assert bob.get(f"/api/runs/{run.id}/logs").status == 404
    assert bob.get(f"/api/runs/{run.id}/charts").status == 404
    assert bob.get(f"/runs/{run.id}/files/sha256:{'0' * 64}").status in (403, 404)
    assert bob.get("/runs?user=alice").status == 403  # only an admin lists another user's runs

    root = Browser(cluster.web_url)
    assert root.login(cluster.admin_token).status == 303
    assert root.get(f"/runs/{run.id}").status == 200
    assert run.id in root.get("/runs?state=queued").text
    assert run.id not in root.get("/runs?state=running").text
    assert root.get("/runs?state=bogus").status == 400

    # Log out ends the session server-side: the old cookie no longer opens anything.
    old = dict(alice.cookies)
    out = alice.post("/logout", {})
    assert out.status == 303
    assert not alice.cookies
    assert Browser(cluster.web_url, cookies=old).get("/runs").status == 401

    # A revoked token ends its sessions at the next page, with a message that says why.
    [info] = [t for t in admin.tokens() if t.user == "bob"]
    admin.revoke_token(info.id)
    again = bob.get("/runs")
    assert again.status == 401
    assert "no longer works" in again.text
    assert bob.get("/runs").status == 401


def test_open_redirects_are_refused_after_login(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: LocalCluster = make_cluster(web=True)
    cluster.start_scheduler()
    web = Browser(cluster.web_url)
    for target, expected in (
        ("//evil.example/", "/cluster"),
        ("https://evil.example/", "/cluster"),
        ("/\\evil.example/", "/cluster"),
        ("/\t/evil.example/", "/cluster"),  # what the form's `next=/%09/evil.example` decodes to
        ("/\r/evil.example/", "/cluster"),
        ("\t//evil.example/", "/cluster"),
        ("/\n/evil.example/", "/cluster"),
        ("/%09/evil.example/", "/cluster"),
        ("/%2F/evil.example/", "/cluster"),
        ("/x\x7f", "/cluster"),
        ("javascript:alert(1)", "/cluster"),
        ("/runs", "/runs"),
        ("/runs?state=queued&user=a", "/runs?state=queued&user=a"),
    ):
        web.cookies.clear()
        reply = web.post("/login", {"token": cluster.admin_token, "next": target})
        assert reply.headers["Location"] == expected
    assert re.search(r"gridlab_session=[^;]{20,}", reply.headers["Set-Cookie"])


def test_a_run_page_lists_its_artifacts_and_downloads_them(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: LocalCluster = make_cluster(web=True)
    cluster.start_scheduler()
    cluster.start_agent("w1", fake_gpus="1xA100:80")
    job = (
        "import os, pathlib; pathlib.Path(os.environ['GRIDLAB_ARTIFACT_DIR'], 'r<e>port.txt').write_text('hello <web>')"
    )
    run = cluster.client().submit([sys.executable, "-c", job], name="artifact")
    assert run.wait(timeout=60).state == "SUCCEEDED"
    web = Browser(cluster.web_url)
    web.login(cluster.admin_token)
    page = web.get(f"/runs/{run.id}")
    assert "r&lt;e&gt;port.txt" in page.text
    [link] = re.findall(r'href="(/runs/[^"]+/files/[^"]+)"', page.text)
    reply = web.get(link.replace("&amp;", "&"))
    assert reply.status == 200
    assert reply.body == b"hello <web>"
    assert reply.headers["Content-Type"] == "application/octet-stream"
    assert "attachment" in reply.headers["Content-Disposition"]
