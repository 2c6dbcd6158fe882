"""Shared fixtures: real daemons on ephemeral ports, and a check that none outlives its test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psutil
import pytest

from gridlab.client.localcluster import LocalCluster

# Daemons started by this test session inherit this marker and pass it on to the ranks
# they start, so the leak check below sees this session's workers only, not those of
# another test run on the same machine.
SESSION_MARK = "GRIDLAB_TEST_SESSION"
os.environ[SESSION_MARK] = uuid.uuid4().hex


def gridlab_processes(run_id: str | None = None) -> list[psutil.Process]:
    """This session's worker processes (optionally of one run), found by environment."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        rid = env.get("GRIDLAB_RUN_ID")
        if env.get(SESSION_MARK) != os.environ[SESSION_MARK]:
            continue
        if rid and (run_id is None or rid == run_id):
            found.append(proc)
    return found


@pytest.fixture
def make_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Build LocalClusters that are torn down (every daemon stopped) after the test."""
    made: list[LocalCluster] = []

    def make(**kw: object) -> LocalCluster:
        cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), **kw)  # type: ignore[arg-type]
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One scheduler and one agent with two simulated A100s, shared by a module's tests."""
    with LocalCluster(tmp_path_factory.mktemp("shared"), heartbeat_timeout=10) as c:
        c.start_scheduler()
        c.start_agent("w1", fake_gpus="2xA100:80")
        yield c


@pytest.fixture(autouse=True)
def no_leaked_workers() -> Iterator[None]:
    """A test must not leave worker processes of its runs behind."""
    before = {p.pid for p in gridlab_processes()}
    yield
    leaked = [p for p in gridlab_processes() if p.pid not in before]
    for proc in leaked:
        proc.kill()
    assert not leaked, f"worker processes outlived the test: {[p.pid for p in leaked]}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any("gpu" in item.keywords for item in items):
        return  # importing torch costs seconds; only pay when a gpu test is collected
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
