"""The SDK's `Run` against a real scheduler and agent: waiting that raises, metrics as rows, logs by rank,
resource strings, identity and admin calls, and the errors a newcomer meets first."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridlab.client import (
    Client,
    ClientConfigError,
    Metric,
    NotFound,
    PermissionDenied,
    Resources,
    RunCancelled,
    RunEndedBadly,
    RunFailed,
    Unauthenticated,
    Unavailable,
    build_spec,
    parse_resources,
)
from gridlab.client.localcluster import LocalCluster
from gridlab.client.sdk import resolve_settings

PY = sys.executable
GB = 10**9


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Iterator[Client]:
    with cluster.client() as client:
        yield client


# --- resource strings (no cluster) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2x4xA100-40G", Resources(nodes=2, gpus=4, gpu_type="A100", min_gpu_memory=40 * GB)),
        ("4xA100", Resources(nodes=1, gpus=4, gpu_type="A100")),
        ("A100", Resources(nodes=1, gpus=1, gpu_type="A100")),
        ("8", Resources(nodes=1, gpus=8)),
        ("2x4", Resources(nodes=2, gpus=4)),
        ("4xA100-40G", Resources(nodes=1, gpus=4, gpu_type="A100", min_gpu_memory=40 * GB)),
        (" 2 X 8 x H100-80GB ", Resources(nodes=2, gpus=8, gpu_type="H100", min_gpu_memory=80 * GB)),
        ("A100-40GiB", Resources(nodes=1, gpus=1, gpu_type="A100", min_gpu_memory=40 * 2**30)),
        ("1xA100-SXM4", Resources(nodes=1, gpus=1, gpu_type="A100-SXM4")),
    ],
)
def test_parse_resources_reads_the_compact_forms(text: str, want: Resources) -> None:
    assert parse_resources(text) == want


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("2x4x", "ends with 'x' where the GPU model should be"),
        ("", "it is empty"),
        ("2x4x8", "three numbers"),
        ("0", "GPU count must be at least 1"),
        ("0x2xA100", "node count must be at least 1"),
        ("-40G", "GPU model is missing"),
        ("A100-0G", "memory must be more than 0"),
        ("A100,H100", "one GPU model only"),
        ("A100-40", "the GPU memory '40' has no unit: write 40G"),
        ("4xA100 - 80", "the GPU memory '80' has no unit: write 80G"),
        ("A100-40M", "'40M' is in M, not G, GB or GiB: write 40G"),
        ("A100-", "ends with '-'"),
        ("x4", "starts with 'x': a count is missing"),
        ("2x-4", "'-4' starts with '-': counts cannot be negative"),
        ("-2x4", "'-2x4' starts with '-'"),
        ("\u0664xA100", "not a plain ASCII character"),
        ("2x\u0664", "not a plain ASCII character"),
        ("A100-\u0664\u0660G", "not a plain ASCII character"),
    ],
)
def test_parse_resources_errors_show_the_forms(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as excinfo:
        parse_resources(text)
    assert "NODESxGPUSxMODEL[-MEM]" in str(excinfo.value)
    assert repr(text) in str(excinfo.value)


def test_build_spec_takes_resources_and_an_entrypoint_and_refuses_conflicts() -> None:
    spec = build_spec(entrypoint="train.py", resources="2x4xA100-40G", preemptible=None, procs_per_node=None)
    assert list(spec.command) == ["python", "train.py"]
    assert (spec.resources.nodes, spec.resources.gpus, list(spec.resources.gpu_types)) == (2, 4, ["A100"])
    assert spec.resources.min_gpu_memory_bytes == 40 * GB
    assert (spec.preemptible, spec.resources.procs_per_node) == (False, 0)
    assert list(build_spec(entrypoint=["train.py", "--epochs", "3"]).command) == ["python", "train.py", "--epochs", "3"]
    with pytest.raises(ValueError, match=r"resources='4xA100' and gpus=2 both"):
        build_spec("true", resources="4xA100", gpus=2)
    with pytest.raises(ValueError, match=r"gpu_type='H100', min_gpu_memory='80GB'"):
        build_spec("true", resources="4xA100", gpu_type="H100", min_gpu_memory="80GB")
    with pytest.raises(ValueError, match="not both"):
        build_spec("python x.py", entrypoint="x.py")
    with pytest.raises(ValueError, match="nothing to run"):
        build_spec()


# --- runs on a real cluster -------------------------------------------------------------------------


def test_wait_raises_for_a_failed_or_cancelled_run_unless_told_not_to(admin: Client) -> None:
    failing = admin.submit([PY, "-c", "import sys; sys.exit(3)"], cpus=0.1)
    with pytest.raises(RunFailed, match=rf"run {failing.id} FAILED with exit code 3") as excinfo:
        failing.wait(timeout=60)
    assert isinstance(excinfo.value, RunEndedBadly)
    assert excinfo.value.status.exit_code == 3
    assert excinfo.value.run_id == failing.id
    status = failing.wait(timeout=60, raise_on_failure=False)
    assert (status.state, status.exit_code) == ("FAILED", 3)
    assert admin.wait(failing.id, timeout=60).state == "FAILED"  # the client-level wait never raises

    sleeping = admin.submit([PY, "-c", "import time; print('up', flush=True); time.sleep(60)"], cpus=0.1)
    assert next(iter(sleeping.logs(follow=True, timeout=60))) == "up"
    sleeping.cancel(grace=5)
    with pytest.raises(RunCancelled, match=f"run {sleeping.id} was CANCELLED") as cancelled:
        sleeping.wait(timeout=60)
    assert cancelled.value.status.state == "CANCELLED"


METRICS_AND_RANKS = (
    "import json, os\n"
    "rank = int(os.environ['RANK'])\n"
    "for i in range(3):\n"
    "    print(f'rank {rank} line {i}', flush=True)\n"
    "if rank == 0:\n"
    "    with open(os.environ['GRIDLAB_METRICS_FILE'], 'a') as f:\n"
    "        f.write(json.dumps({'step': 1, 'epoch': 0, 'loss': 0.5, 'acc': 0.25, 'note': 'x', 'ok': True}) + '\\n')\n"
    "        f.write(json.dumps({'step': 2, 'time': 1.0, 'loss': 0.125}) + '\\n')\n"
)


def test_metrics_come_as_rows_and_logs_by_rank(admin: Client) -> None:
    run = admin.submit([PY, "-c", METRICS_AND_RANKS], procs_per_node=2, cpus=0.1, name="two-ranks")
    assert run.wait(timeout=60).succeeded
    assert run.name == "two-ranks"
    assert admin.run(run.id).name == "two-ranks"  # asked from the scheduler
    assert list(run.logs(rank=1)) == ["rank 1 line 0", "rank 1 line 1", "rank 1 line 2"]
    assert list(run.logs(rank=0, attempt=1)) == ["rank 0 line 0", "rank 0 line 1", "rank 0 line 2"]
    assert sorted(run.logs()) == sorted(f"rank {r} line {i}" for r in (0, 1) for i in range(3))
    assert run.metrics() == [
        Metric(step=1, name="loss", value=0.5, attempt=1),
        Metric(step=1, name="acc", value=0.25, attempt=1),
        Metric(step=2, name="loss", value=0.125, attempt=1),
    ]
    (attempt,) = run.attempts()
    assert (attempt.number, attempt.exit_code) == (1, 0)
    assert run.checkpoints() == []
    assert run.artifacts() == []
    with pytest.raises(NotFound, match="no artifact or checkpoint 'model.onnx'"):
        run.download("model.onnx", dest="unused")


def test_an_unplaceable_run_says_why_while_it_waits(admin: Client) -> None:
    run = admin.submit(["true"], resources="8xA100")
    deadline = time.monotonic() + 30
    while not run.status().pending_reason.startswith("Unsatisfiable") and time.monotonic() < deadline:
        time.sleep(0.1)  # until a placement pass has looked at it
    assert "no agent has 8 suitable GPUs (the most on one agent is 2)" in run.status().pending_reason
    with pytest.raises(TimeoutError, match=r"still QUEUED after waiting 0.2s \(Unsatisfiable: no agent has 8"):
        run.wait(timeout=0.2)
    run.cancel()
    with pytest.raises(RunCancelled):
        run.wait(timeout=30)


def test_errors_a_newcomer_meets_say_what_to_do(admin: Client, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with Client(f"127.0.0.1:{port}", "glt_x") as nowhere, pytest.raises(Unavailable) as down:
        nowhere.status("run-1")
    for words in (f"127.0.0.1:{port}", "gridlab-scheduler --state-dir", "make demo", "GRIDLAB_ADDRESS", "--address"):
        assert words in down.value.message

    with pytest.raises(ClientConfigError) as no_token:
        resolve_settings("h:7070", environ={"HOME": str(tmp_path)})
    assert "admin.token" in no_token.value.message
    assert "GRIDLAB_TOKEN" in no_token.value.message
    assert str(tmp_path / ".config" / "gridlab" / "config.toml") in no_token.value.message

    with pytest.raises(NotFound, match=r"no run 'run-nope'.*schedctl runs"):
        admin.run("run-nope").status()


# --- identity, priority, events and tokens (RPCs that schedctl needs) ------------------------------


def test_whoami_priority_events_tokens_and_run_filters(cluster: LocalCluster, admin: Client) -> None:
    me = admin.whoami()
    assert (me.user, me.role) == ("admin", "admin")
    secret = admin.create_token("alice", team="vision")
    with Client(cluster.address, secret) as alice:
        assert (alice.whoami().user, alice.whoami().team) == ("alice", "vision")
        run = alice.submit(["true"], resources="8xA100", pool="onprem", priority=5)  # stays queued
        try:
            assert alice.set_priority(run.id, 1).state == "QUEUED"
            assert alice.set_priority(run.id, 10).state == "QUEUED"  # back up, to the users' cap (100) at most
            with pytest.raises(PermissionDenied):
                alice.set_priority(run.id, 101)
            assert admin.get_run(run.id).spec.priority == 10
            assert [e.kind for e in admin.events(run.id)][0] == "submitted"
            assert [r.id for r in alice.runs(me=True)] == [run.id]
            assert run.id not in {r.id for r in admin.runs(me=True, limit=None)}
            assert run.id in {r.id for r in admin.runs(pool="onprem", limit=None)}
            assert run.id not in {r.id for r in admin.runs(pool="cloud", limit=None)}
        finally:
            run.cancel()
        (info,) = [t for t in admin.tokens() if t.user == "alice"]
        assert (info.role, info.team, info.revoked) == ("user", "vision", False)
        assert admin.revoke_token(info.id).revoked
        with pytest.raises(Unauthenticated):
            alice.whoami()
    assert all(secret not in str(t) for t in admin.tokens())  # never the secrets
