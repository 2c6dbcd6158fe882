"""Logs end to end in the batched format: real scheduler and agent processes, a real printing rank, a
following client. Every line arrives once and in order, across a kill -9 of the scheduler (the agent
reconnects and resends what was not acknowledged; the client resumes from its cursor), and from a gang's
node that is still stopping after the run has ended."""

from __future__ import annotations

import signal
import sys
import threading
import time

import grpc
import pytest

from gridlab.client.localcluster import LocalCluster
from gridlab.common import auth
from gridlab.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2

PY = sys.executable
LOCAL = {"GRIDLAB_AGENT_ADDRESS": "127.0.0.1"}  # both "machines" of a gang are this one
# Rank 1 fails; rank 0, stopped by the scheduler, takes a moment and prints a last line on SIGTERM.
LAST_WORDS = (
    "import os, signal, sys, time\n"
    "rank = int(os.environ['RANK'])\n"
    "def bye(*_):\n"
    "    time.sleep(1.0)\n"
    "    print('rank 0 got SIGTERM', flush=True)\n"
    "    sys.exit(143)\n"
    "signal.signal(signal.SIGTERM, bye)\n"
    "print(f'rank {rank} up', flush=True)\n"
    "time.sleep(1.0)\n"
    "if rank == 1:\n"
    "    sys.exit(3)\n"
    "time.sleep(60)\n"
)
# Prints `line 1` ... `line N` to stdout, in bursts of 2000 lines every 40 ms (about 50,000 lines/s), and a
# last line to stderr.
PACED_PRINTER = (
    "import sys, time\n"
    "n = int(sys.argv[1])\n"
    "for i in range(1, n + 1):\n"
    "    sys.stdout.write(f'line {i}\\n')\n"
    "    if i % 2000 == 0:\n"
    "        sys.stdout.flush()\n"
    "        time.sleep(0.04)\n"
    "sys.stdout.flush()\n"
    "print('done', file=sys.stderr)\n"
)


def raw_stream(cluster: LocalCluster, **request: object) -> list[scheduler_pb2.StreamLogsResponse]:
    with grpc.insecure_channel(cluster.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        call = stub.StreamLogs(
            scheduler_pb2.StreamLogsRequest(**request), metadata=auth.metadata(cluster.admin_token), timeout=30
        )
        return list(call)


def test_clients_old_and_new_get_the_same_lines_and_resume_inside_a_batch(cluster: LocalCluster) -> None:
    client = cluster.client()
    n = 20_000
    run = client.submit([PY, "-c", PACED_PRINTER, str(n)])
    assert run.wait(timeout=60).state == "SUCCEEDED"
    expected = [f"line {i}" for i in range(1, n + 1)] + ["done"]
    assert list(run.logs()) == expected

    # A client that does not ask for batches (one built before them) gets one line per LogLine.
    old = [line for r in raw_stream(cluster, run_id=run.id) for line in r.lines]
    assert [x.text for x in old if x.stream != types_pb2.LOG_STREAM_SYSTEM] == expected
    assert all(x.count == 0 for x in old)
    cursors = [x.cursor for x in old]
    assert cursors == sorted(set(cursors))

    # Batches: fewer messages, the same lines; a cursor in the middle of a batch resumes after it.
    responses = raw_stream(cluster, run_id=run.id, batched=True)
    batches = [b for r in responses for b in r.lines]
    assert len(batches) < n // 10
    assert sum(max(1, b.count) for b in batches) == len(old)
    middle = next(x for x in old if x.text == "line 1234")
    rest = [b for r in raw_stream(cluster, run_id=run.id, batched=True, after_cursor=middle.cursor) for b in r.lines]
    assert rest[0].text.split("\n")[0] == "line 1235"
    assert rest[0].seq == middle.seq + 1
    assert rest[0].cursor == middle.cursor + 1
    assert [line.text for line in client.log_lines(run.id, rank=0)][-1] == "done"


@pytest.mark.slow
def test_a_following_client_gets_every_line_once_in_order_across_a_scheduler_kill(make_cluster) -> None:
    cluster: LocalCluster = make_cluster(heartbeat_timeout=5.0)
    cluster.start_scheduler()
    cluster.start_agent("w", fake_gpus="1xA100:80")
    client = cluster.client()
    n = 200_000
    run = client.submit([PY, "-c", PACED_PRINTER, str(n)], name="paced")
    received: list[types_pb2.LogLine] = []
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            received.extend(client.log_lines(run.id, follow=True, timeout=150))
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    deadline = time.monotonic() + 60
    while len(received) < n // 10:  # lines are flowing
        assert time.monotonic() < deadline, f"only {len(received)} lines arrived"
        assert not errors, errors
        time.sleep(0.01)
    port = cluster.port
    cluster.kill_scheduler(signal.SIGKILL)  # mid-push, likely: a stored batch whose ack is lost gets resent
    killed_at = len(received)
    time.sleep(1.0)  # the rank keeps printing; the agent keeps its lines
    cluster.start_scheduler(port=port)
    follower.join(timeout=150)
    assert not follower.is_alive()
    assert not errors, errors
    assert killed_at < n  # the kill came while lines were still arriving

    out = [x for x in received if x.stream == types_pb2.LOG_STREAM_STDOUT]
    assert [x.text for x in out] == [f"line {i}" for i in range(1, n + 1)]  # once each, in order
    assert [x.seq for x in out] == list(range(1, n + 1))
    assert [x.text for x in received if x.stream == types_pb2.LOG_STREAM_STDERR] == ["done"]
    cursors = [x.cursor for x in received]
    assert cursors == sorted(set(cursors))
    assert len({x.attempt_id for x in received}) == 1
    assert client.run(run.id).wait(timeout=60).state == "SUCCEEDED"
    assert list(client.logs(run.id)) == [f"line {i}" for i in range(1, n + 1)] + ["done"]  # read afresh


@pytest.mark.slow
def test_following_a_gang_gets_the_last_lines_of_a_node_stopping_after_the_run_ended(make_cluster) -> None:
    cluster: LocalCluster = make_cluster()
    cluster.start_scheduler()
    for name in ("node-a", "node-b"):
        cluster.start_agent(name, env=LOCAL)
    client = cluster.client()
    run = client.submit([PY, "-c", LAST_WORDS], nodes=2, name="last-words")
    lines = [line.text for line in client.log_lines(run.id, follow=True, timeout=60)]
    assert client.run(run.id).status().state == "FAILED"
    assert "rank 0 got SIGTERM" in lines, lines
    assert {"rank 0 up", "rank 1 up"} <= set(lines)
