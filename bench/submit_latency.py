"""How much do the scheduler and agent add to starting a process?

On an idle local cluster with one agent, submit N runs of a trivial command one after
another. The command (`date +%s%N`) prints the moment it started, so for each run:

  submit-to-process-start   = printed start time - time just before SubmitRun
  submit-to-SUCCEEDED-seen  = time the client's wait() returns - time before SubmitRun

Baseline, measured in the same script: the same command under bare `subprocess.run`,
time from just before the call to the printed start. Reported as medians, p99s and the
ratio of gridlab's median to the baseline's.

    python bench/submit_latency.py [--runs 50]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from gridlab.client.localcluster import LocalCluster

COMMAND = ["date", "+%s%N"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bare(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.time_ns()
        started = int(subprocess.run(COMMAND, capture_output=True, text=True, check=True).stdout)
        out.append((started - t0) / 1e6)
    return out


def through_gridlab(n: int) -> tuple[list[float], list[float]]:
    to_start, to_done = [], []
    with tempfile.TemporaryDirectory(prefix="gridlab-bench-") as tmp, LocalCluster(Path(tmp)) as cluster:
        cluster.start_scheduler()
        cluster.start_agent("bench", fake_gpus="1xA100:80")
        client = cluster.client()
        client.submit(COMMAND).wait(timeout=60)  # warm up every path once
        for _ in range(n):
            t0 = time.time_ns()
            run = client.submit(COMMAND)
            status = run.wait(timeout=60)
            t1 = time.time_ns()
            assert status.state == "SUCCEEDED", status
            (line,) = list(run.logs())
            to_start.append((int(line) - t0) / 1e6)
            to_done.append((t1 - t0) / 1e6)
    return to_start, to_done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=50)
    args = p.parse_args()
    base = bare(args.runs)
    to_start, to_done = through_gridlab(args.runs)
    base_med = statistics.median(base)
    start_med = statistics.median(to_start)
    print(f"runs: {args.runs} of {' '.join(COMMAND)!r}, one agent, idle cluster")
    print(f"{'':34} {'median ms':>10} {'p99 ms':>10}")
    print(f"{'bare subprocess.run, to start':34} {base_med:10.2f} {pct(base, 0.99):10.2f}")
    print(f"{'gridlab submit, to process start':34} {start_med:10.2f} {pct(to_start, 0.99):10.2f}")
    print(f"{'gridlab submit, to SUCCEEDED seen':34} {statistics.median(to_done):10.2f} {pct(to_done, 0.99):10.2f}")
    print(f"added to process start (median): {start_med - base_med:.2f} ms (goal: under 20 ms)")
    print(f"ratio gridlab/bare to process start (median): {start_med / base_med:.1f}x")


if __name__ == "__main__":
    main()
