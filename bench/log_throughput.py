"""How fast do a run's printed lines reach a following client, and do they all arrive?

On an idle local cluster with one agent, submit one run, `python -c`, that prints N
numbered lines (`line 1` ... `line N`) to stdout as fast as it can, and follow its logs
from the moment of submit until the run has ended (`Client.log_lines(follow=True)`).
Every line received is checked: its number must be the one after the previous line's
(so each line arrives once and in order), and its per-rank sequence number must be
consecutive too. Reported:

  lines/s (first-to-last)  = lines received / (time the last line was received
                                              - time the first line was received)
  lines/s (submit-to-last) = lines received / (time the last line was received
                                              - time just before SubmitRun)

with the count received against the count printed, and the lines lost, duplicated and
out of order; and the CPU seconds each process spent on the run (the rank's, through the
agent that reaps it; the agent; the scheduler; this client), to say where the time goes.

Baselines, measured in the same script with the same printing program (the same kind of
`python -c` process, started with `subprocess`):

  local file: stdout redirected to a file in a temporary folder; timed from spawn to
              exit (the process has then written every line), read back and checked.
  pipe:       stdout is a pipe that this process reads and checks line by line, with
              the same checker as the gridlab client (then thrown away, like /dev/null);
              timed first-line-to-last-line and spawn-to-last-line, like gridlab.

The ratio reported is gridlab's lines/s (first-to-last) over the local file's.
Goal (issue 5): at least 200,000 lines/s through gridlab, with none lost.

    python bench/log_throughput.py [--lines 1000000] [--timeout 600]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from gridlab.client.localcluster import LocalCluster
from gridlab.v1 import types_pb2

GOAL_LINES_PER_S = 200_000
PREFIX = "line "
# Prints `line 1` ... `line N`, one per line, through a buffered stdout (what `print`
# in a loop costs without the per-call overhead).
PRINTER = (
    "import sys\n"
    "n = int(sys.argv[1])\n"
    "w = sys.stdout.write\n"
    "for i in range(1, n + 1):\n"
    "    w(f'line {i}\\n')\n"
    "sys.stdout.flush()\n"
)


def printer_command(n: int) -> list[str]:
    return [sys.executable, "-c", PRINTER, str(n)]


@dataclass
class Checker:
    """Counts lines and checks each arrives once and in order (numbers 1, 2, ..., N)."""

    expected_total: int
    received: int = 0
    last: int = 0  # the highest number seen so far
    duplicates: int = 0
    out_of_order: int = 0  # a number below the highest seen, not seen before
    malformed: int = 0
    gaps: int = 0  # times a number jumped past the next one
    seen: bytearray = field(init=False)
    first_at: float | None = None
    last_at: float | None = None

    def __post_init__(self) -> None:
        self.seen = bytearray(self.expected_total + 1)

    def line(self, text: str, now: float) -> None:
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.received += 1
        if not text.startswith(PREFIX):
            self.malformed += 1
            return
        try:
            number = int(text[len(PREFIX) :])
        except ValueError:
            self.malformed += 1
            return
        if not 1 <= number <= self.expected_total:
            self.malformed += 1
            return
        if self.seen[number]:
            self.duplicates += 1
            return
        self.seen[number] = 1
        if number == self.last + 1:
            self.last = number
        elif number > self.last:
            self.gaps += 1
            self.last = number
        else:
            self.out_of_order += 1

    @property
    def unique(self) -> int:
        return self.received - self.duplicates - self.malformed

    @property
    def lost(self) -> int:
        return self.expected_total - self.unique

    @property
    def first_to_last(self) -> float:
        if self.first_at is None or self.last_at is None:
            return 0.0
        return self.last_at - self.first_at


@dataclass
class Result:
    name: str
    checker: Checker
    seconds: float  # the time lines/s is computed over
    submit_to_last: float | None = None

    @property
    def rate(self) -> float:
        return self.checker.unique / self.seconds if self.seconds > 0 else 0.0


def local_file(n: int, folder: Path) -> Result:
    """The printer's stdout redirected to a file; spawn to exit, then read back and checked."""
    path = folder / "lines.txt"
    with path.open("wb") as out:
        t0 = time.perf_counter()
        subprocess.run(printer_command(n), stdout=out, check=True)
        t1 = time.perf_counter()
    checker = Checker(n)
    with path.open(encoding="utf-8") as f:
        for text in f:
            checker.line(text.rstrip("\n"), 0.0)
    path.unlink()
    return Result("local file (spawn to exit)", checker, t1 - t0)


def pipe(n: int) -> Result:
    """The printer's stdout as a pipe that this process reads and checks, line by line."""
    checker = Checker(n)
    t0 = time.perf_counter()
    with subprocess.Popen(printer_command(n), stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None  # noqa: S101 - PIPE was asked for
        tail = b""
        while chunk := os.read(proc.stdout.fileno(), 64 * 1024):
            now = time.perf_counter()
            *lines, tail = (tail + chunk).split(b"\n")
            for raw in lines:
                checker.line(raw.decode("utf-8", errors="replace"), now)
        if tail:
            checker.line(tail.decode("utf-8", errors="replace"), time.perf_counter())
        if proc.wait() != 0:
            raise RuntimeError(f"the printer exited with {proc.returncode}")
    t_last = checker.last_at or time.perf_counter()
    return Result("pipe read by this process", checker, checker.first_to_last, submit_to_last=t_last - t0)


def _cpu(proc: psutil.Process) -> tuple[float, float]:
    """(own CPU seconds, CPU seconds of its reaped children)."""
    t = proc.cpu_times()
    return t.user + t.system, t.children_user + t.children_system


def through_gridlab(n: int, timeout: float, keep: Path | None) -> tuple[Result, str, dict[str, float]]:
    """One run printing n lines, followed from submit to its end; also the CPU seconds each process
    spent on it (the rank's through the agent, which reaps it)."""
    checker = Checker(n)
    seqs: dict[tuple[str, int], int] = {}
    seq_errors = 0
    system_lines: list[str] = []
    timed_out = ""
    with tempfile.TemporaryDirectory(prefix="gridlab-bench-") as tmp:
        root = keep or Path(tmp)
        with LocalCluster(root) as cluster:
            cluster.start_scheduler()
            cluster.start_agent("bench", fake_gpus="1xA100:80")
            client = cluster.client()
            warm = client.submit(printer_command(10))  # warm up every path once
            if sum(1 for _ in warm.logs(follow=True, timeout=60)) != 10:
                raise RuntimeError("the warm-up run did not deliver its 10 lines")
            warm.wait(timeout=60)
            assert cluster.scheduler is not None  # noqa: S101 - started above
            scheduler = psutil.Process(cluster.scheduler.pid)
            agent = psutil.Process(cluster.agents["bench"].pid)
            sched0, agent0 = _cpu(scheduler), _cpu(agent)
            client0 = time.process_time()
            t0 = time.perf_counter()
            run = client.submit(printer_command(n), name="log-throughput")
            try:
                for line in client.log_lines(run.id, follow=True, timeout=timeout):
                    now = time.perf_counter()
                    if line.stream == types_pb2.LOG_STREAM_SYSTEM:
                        system_lines.append(line.text)
                        continue
                    key = (line.attempt_id, line.rank)
                    if line.seq != seqs.get(key, 0) + 1:
                        seq_errors += 1
                    seqs[key] = line.seq
                    checker.line(line.text, now)
            except TimeoutError as exc:
                timed_out = str(exc)
            client_cpu = time.process_time() - client0
            try:
                status = run.status() if timed_out else run.wait(timeout=60)
            except TimeoutError:
                status = run.status()
            sched1, agent1 = _cpu(scheduler), _cpu(agent)
    cpu = {
        "rank (printer)": agent1[1] - agent0[1],
        "agent": agent1[0] - agent0[0],
        "scheduler": sched1[0] - sched0[0],
        "client (this process)": client_cpu,
    }
    t_last = checker.last_at
    notes = [f"run {status.state}, exit code {status.exit_code}, attempts seen {len({a for a, _ in seqs})}"]
    if seq_errors:
        notes.append(f"per-rank seq not consecutive {seq_errors} times")
    if system_lines:
        notes.append(f"agent lines: {system_lines[:3]}")
    if timed_out:
        notes.append(f"TIMED OUT: {timed_out}")
    result = Result(
        "gridlab, following client",
        checker,
        checker.first_to_last,
        submit_to_last=(t_last - t0) if t_last is not None else None,
    )
    return result, "; ".join(notes), cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=1_000_000, help="lines the run prints (default 1,000,000)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds the client follows the run, at most")
    p.add_argument("--keep", type=Path, help="keep the cluster's state and daemon logs in this folder")
    args = p.parse_args()
    n = args.lines
    if n < 1:
        p.error("--lines must be at least 1")

    wall0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gridlab-bench-") as tmp:
        file_result = local_file(n, Path(tmp))
    pipe_result = pipe(n)
    grid, grid_note, cpu = through_gridlab(n, args.timeout, args.keep)

    print(f"lines: {n:,} printed by one `python -c` rank (`line 1` ... `line {n}`), one agent, idle cluster")
    print(f"{'':34} {'received':>10} {'lost':>8} {'dup':>6} {'order':>6} {'seconds':>9} {'lines/s':>10}")
    for r in (file_result, pipe_result, grid):
        c = r.checker
        print(
            f"{r.name:34} {c.received:10,} {c.lost:8,} {c.duplicates:6,} {c.out_of_order + c.gaps:6,} "
            f"{r.seconds:9.3f} {r.rate:10,.0f}"
        )
    for r in (pipe_result, grid):
        if r.submit_to_last is not None:
            rate = r.checker.unique / r.submit_to_last if r.submit_to_last > 0 else 0.0
            print(f"{r.name + ', start to last':49} {r.submit_to_last:27.3f} {rate:10,.0f}")
    print(f"gridlab: {grid_note}")
    print(
        "CPU seconds per process during the gridlab run ("
        + ", ".join(f"{name} {sec:.2f}" for name, sec in cpu.items())
        + f"); per line: {', '.join(f'{name.split()[0]} {sec / n * 1e6:.2f} us' for name, sec in cpu.items())}"
    )
    c = grid.checker
    print(
        f"received {c.received:,} of {n:,} printed: lost {c.lost:,}, duplicated {c.duplicates:,}, "
        f"out of order {c.out_of_order:,}, gaps {c.gaps:,}, malformed {c.malformed:,}"
    )
    if c.lost and args.keep is None:
        print("  (rerun with --keep DIR to keep the daemons' logs, e.g. the agent's drain and buffer warnings)")
    ratio = grid.rate / file_result.rate if file_result.rate else 0.0
    pipe_ratio = grid.rate / pipe_result.rate if pipe_result.rate else 0.0
    print(f"ratio gridlab/local file (lines/s): {ratio:.3f}x; gridlab/pipe: {pipe_ratio:.3f}x")
    ok = grid.rate >= GOAL_LINES_PER_S and c.lost == 0 and c.duplicates == 0 and c.out_of_order + c.gaps == 0
    print(
        f"goal: at least {GOAL_LINES_PER_S:,} lines/s with none lost: "
        f"{grid.rate:,.0f} lines/s, {c.lost:,} lost -> {'PASS' if ok else 'MISS'}"
    )
    print(f"bench took {time.perf_counter() - wall0:.1f}s (pid {os.getpid()})")


if __name__ == "__main__":
    main()
