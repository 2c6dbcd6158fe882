"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright; `make browser`
installs it), against a real scheduler: simulated agents (tests/simagents.py) fill the cluster page, and a
real agent with simulated GPUs runs a script whose log lines and metrics the run page must show as they
arrive. Each page is saved as a PNG under the test's tmp_path (and copied to /tmp/gridlab-screens/)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from simagents import Machine, SimAgents

from gridlab.client.localcluster import LocalCluster
from gridlab.common import auth

pytestmark = pytest.mark.slow
SCREENS = Path("/tmp/gridlab-screens")
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
if CHROMIUM is None:
    pytest.skip("no chromium binary on PATH: run `make browser` (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

# Prints a line and logs a metric every 0.25 s for about 6 s: long enough to watch both grow.
JOB = textwrap.dedent(
    """
    import json, os, sys, time
    lr = float(sys.argv[1]) if len(sys.argv) > 1 else 0.1
    out = open(os.environ["GRIDLAB_METRICS_FILE"], "a")
    for step in range(int(sys.argv[2]) if len(sys.argv) > 2 else 24):
        print(f"step {step} <b>loss</b> {1 / (1 + lr * step):.4f}", flush=True)
        out.write(json.dumps({"step": step, "loss": 1 / (1 + lr * step), "lr": lr}) + "\\n")
        out.flush()
        time.sleep(0.25)
    """
)


class SimThread:
    """Simulated agents on an event loop of their own thread (Playwright's sync API wants this one's)."""

    def __init__(self, address: str, token: str, machines: list[Machine]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start() -> SimAgents:
            sim = SimAgents(address, token, len(machines), machines=machines, name_prefix="lab", run_time=600.0)
            await sim.start()
            return sim

        self.sim = asyncio.run_coroutine_threadsafe(start(), self.loop).result(60)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS / path.name)
    return path


def login(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/login")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url(f"{base}/cluster")


def poll(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_dashboard_in_chromium(make_cluster, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster: LocalCluster = make_cluster(web=True)
    cluster.start_scheduler()
    base = cluster.web_url
    cluster.start_agent("ws-real", fake_gpus="2xA100-80GB:80", pool="real")  # runs go here, not to the simulated
    admin = cluster.client()
    alice_token = admin.create_token("alice", "user")
    bob_token = admin.create_token("bob", "user")
    alice = cluster.client(alice_token)
    job = tmp_path / "job.py"
    job.write_text(JOB)
    sim = SimThread(
        cluster.address,
        auth.read_secret(cluster.agent_token_file),
        [
            Machine("a100x4", (("A100", 80.0),) * 4, cpus=64, memory_gb=512),
            Machine("rtx", (("RTX3090", 24.0),) * 2, cpus=16, memory_gb=64),
        ],
    )
    try:
        # Something to show: a run the simulated agents hold, one that cannot be placed, a sweep.
        admin.submit([sys.executable, "-c", "pass"], gpus=2, gpu_type="RTX3090", name="held-by-sim")
        admin.submit([sys.executable, "-c", "pass"], gpus=8, gpu_type="H100", name="<i>never</i>")
        sweep = alice.submit(
            [sys.executable, str(job), "{lr}", "8"], sweep={"lr": "[0.5,0.1,0.02]"}, metric="loss", pool="real"
        )
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()

        # The login page, and a token it refuses.
        page.goto(f"{base}/runs")
        assert page.locator("#token").count() == 1
        page.fill("#token", "wrong")
        page.click("#login")
        assert "That token was refused" in page.locator("#login-error").inner_text()
        shot(page, tmp_path, "login")

        # Cluster: every machine, the real one and the simulated ones, with their GPUs; the queue's reasons.
        login(page, base, cluster.admin_token)
        poll(lambda: cluster.list_agents() and len(cluster.list_agents()) == 3, 30, "three agents")
        page.reload()
        machines = page.locator("#machines .machine")
        assert sorted(machines.evaluate_all("els => els.map(e => e.dataset.agent)")) == [
            "lab-0000",
            "lab-0001",
            "ws-real",
        ]
        assert page.locator('.machine[data-agent="lab-0000"] tbody tr').count() == 4
        assert "A100-80GB" in page.locator('.machine[data-agent="ws-real"]').inner_text()

        def held() -> bool:
            page.reload()
            return "held-by-sim" in page.locator("#machines").inner_text()

        poll(held, 20, "a GPU shown as held by its run")
        assert "Unsatisfiable" in page.locator("#queue").inner_text()
        assert "<i>never</i>" in page.locator("#queue").inner_text()  # shown as text, not markup
        shot(page, tmp_path, "cluster")

        # A run page, opened while the run prints: lines appear, and the loss chart gains points.
        run = alice.submit([sys.executable, str(job), "0.3", "24"], name="live-run", pool="real")
        alice_page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
        login(alice_page, base, alice_token)
        poll(lambda: run.status().state == "RUNNING", 30, "the run to start")
        alice_page.goto(f"{base}/runs/{run.id}")
        log = alice_page.locator("#log-rank-0")

        def lines() -> int:
            return len(log.inner_text().splitlines()) if log.count() else 0

        def points() -> int:
            charts = alice_page.locator('svg[aria-label="loss"]')
            return int(charts.get_attribute("data-points") or 0) if charts.count() else 0

        first_lines = poll(lines, 20, "the first log lines")
        first_points = poll(points, 20, "the first chart points")
        assert run.status().state == "RUNNING"
        poll(lambda: lines() > first_lines, 20, "more log lines while the run prints")
        poll(lambda: points() > first_points, 20, "more chart points while metrics arrive")
        assert run.status().state == "RUNNING"  # both grew while it was still running
        assert "step 0 <b>loss</b>" in log.inner_text()  # a line's markup is text
        assert alice_page.locator("#log-rank-0 b").count() == 0
        shot(alice_page, tmp_path, "run-live")
        run.wait(timeout=60)
        poll(lambda: lines() >= 24, 20, "every line")
        poll(lambda: points() == 24, 20, "every point")
        state = alice_page.locator("#run-state")
        poll(lambda: state.inner_text().strip() == "SUCCEEDED", 20, "the state cell following the run to its end")
        shot(alice_page, tmp_path, "run-finished")

        # Runs: the table, filtered.
        alice_page.goto(f"{base}/runs?state=succeeded")
        assert run.id in alice_page.locator("#runs").inner_text()
        shot(alice_page, tmp_path, "runs")

        # Sweeps: trials side by side, one line per trial.
        sweep.wait(timeout=90)
        alice_page.goto(f"{base}/sweeps")
        assert sweep.id in alice_page.locator("#sweeps").inner_text()
        shot(alice_page, tmp_path, "sweeps")
        alice_page.goto(f"{base}/sweeps/{sweep.id}?metric=loss")
        assert alice_page.locator("#sweep-chart polyline").count() == 3
        assert alice_page.locator("#trials tbody tr").count() == 3
        shot(alice_page, tmp_path, "sweep")

        # Another user's token cannot open alice's run page.
        bob_page = browser.new_context().new_page()
        login(bob_page, base, bob_token)
        response = bob_page.goto(f"{base}/runs/{run.id}")
        assert response is not None
        assert response.status == 404
        assert "live-run" not in bob_page.content()
        assert "step 0" not in bob_page.content()
        shot(bob_page, tmp_path, "other-users-run")
    finally:
        sim.close()
