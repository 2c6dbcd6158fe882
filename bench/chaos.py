"""Chaos: real runs that print numbered lines and checkpoint, while the scheduler and agents are killed with
SIGKILL at random moments and restarted. Nothing may be lost.

A local cluster (one scheduler, `--agents` agents with fake GPUs, each a real daemon process) runs `--runs`
copies of tests/chaos_job.py, shipped as the runs' code bundle (max_retries 0: only infrastructure failures,
which spend no retry, may give a run a second attempt). Each prints `line <run id> <n>` for n = 1..`--lines`,
writes `step-<n>.ckpt` (bytes derived from the run id and n) every `--every` lines, and resumes after the
checkpoint it is given. A seeded RNG picks, every few seconds, a victim (rounds of every daemon, and the
scheduler with an agent, in a random order), kills
it with SIGKILL, waits a random while (for an agent, sometimes past the heartbeat timeout, so it is declared
lost; sometimes not, so it comes back with the same name and state dir and reconciles) and restarts it (the
scheduler on the same port). Kills stop after `--duration` seconds or when every run has ended. A client
follows every run's logs throughout (reconnecting across scheduler kills).

What is checked at the end (each failure is a loss; there must be none):
  runs         every run is SUCCEEDED, with exactly one "succeeded" event and no "failed" or "cancelled" one;
               every attempt but the last is LOST (an infrastructure failure), the last SUCCEEDED
  no overlap   the scheduler's attempts of a run never overlap (each is created after the previous one
               finished); the ground truth: each attempt holds an flock on a file of its run while its process
               lives and records in a ledger if it ever found it taken (none may have), never starts twice
               (one `start` per attempt number), and the succeeded attempt finished its loop (`end`)
  lines        per attempt, the stdout lines are `line <run> first..last`, consecutive, once each and in order
               (seq 1, 2, ... without gaps), where first is the step that attempt resumed from plus one (from
               the ledger); the succeeded attempt's lines end at `--lines` (it has none when it resumed from the
               last checkpoint); and the attempts together cover every number 1..`--lines`. An attempt killed
               with its agent may stop short (what it printed last died with the machine's daemon), but never
               past a checkpoint a later attempt resumed from.
               The lines the follower received are the same, line for line, as a fresh read at the end.
  checkpoints  every checkpoint in the scheduler's store is one file `step-<n>.ckpt` whose bytes, downloaded
               again, have the SHA-256 of the expected content; every step's checkpoint is there (an agent
               resumes only from what the store holds); and every attempt that resumed was given
               intact bytes (the job checks them, and records `bad_resume` otherwise)
  processes    no process of any run is left on the machine (by the ledger folder in its command line)

    python bench/chaos.py [--runs 30] [--agents 3] [--duration 300] [--seed 1]

Prints the counts: runs, attempts, kills of each daemon, lines, checkpoints, and the losses (zero, or exit 1).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from gridlab.client import errors
from gridlab.client.artifacts import _fetch, list_artifacts
from gridlab.client.localcluster import LocalCluster
from gridlab.client.sdk import Client
from gridlab.v1 import types_pb2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import chaos_job  # noqa: E402 - tests/ holds the workload the runs execute

TERMINAL = {types_pb2.RUN_STATE_SUCCEEDED, types_pb2.RUN_STATE_FAILED, types_pb2.RUN_STATE_CANCELLED}
FAST_AGENT = {"GRIDLAB_AGENT_CHECKPOINT_POLL": "0.3"}


@dataclass
class ChaosConfig:
    runs: int = 5
    agents: int = 2
    slots: int = 2  # runs at once per agent (fake GPUs, one per run)
    lines: int = 150
    every: int = 10
    sleep: float = 0.05  # between lines
    duration: float = 60.0  # no kill after this many seconds
    max_kills: int = 1_000_000
    gap: tuple[float, float] = (2.0, 5.0)  # seconds between a restart and the next kill
    heartbeat_timeout: float = 3.0
    seed: int = 0
    end_timeout: float = 300.0  # for the runs to end once the kills stopped


@dataclass
class Report:
    runs: int = 0
    attempts: int = 0
    kills: Counter[str] = field(default_factory=Counter)  # "scheduler", "agent"
    agent_lost: int = 0  # agent kills with a downtime past the heartbeat timeout
    lines: int = 0  # stdout lines received, every attempt
    lines_reprinted: int = 0  # of them, printed again by a later attempt (after the checkpoint it resumed)
    checkpoints: int = 0
    resumes: int = 0
    losses: list[str] = field(default_factory=list)
    seconds: float = 0.0
    kill_log: list[str] = field(default_factory=list)

    def summary(self) -> str:
        kills = ", ".join(f"{k} {v}" for k, v in sorted(self.kills.items())) or "none"
        return (
            f"runs {self.runs}, attempts {self.attempts}, kills: {kills} (agents past the timeout {self.agent_lost}), "
            f"lines {self.lines} ({self.lines_reprinted} printed again after a resume), checkpoints "
            f"{self.checkpoints}, resumes {self.resumes}, losses {len(self.losses)}, {self.seconds:.0f} s"
        )


class Follower(threading.Thread):
    """Follows one run's log lines from submit to end, reconnecting across scheduler kills."""

    def __init__(self, client: Client, run_id: str, timeout: float) -> None:
        super().__init__(daemon=True, name=f"follow-{run_id}")
        self.client, self.run_id, self.timeout = client, run_id, timeout
        self.lines: list[types_pb2.LogLine] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        after = 0
        while time.monotonic() < deadline:  # a scheduler down past the client's reconnect window: open again
            try:
                for line in self.client.log_lines(self.run_id, follow=True, timeout=deadline - time.monotonic()):
                    if line.cursor > after:
                        self.lines.append(line)
                        after = line.cursor
                return
            except errors.Unavailable:
                # A fresh stream starts from the first line: `after` skips what arrived already.
                time.sleep(1.0)
            except BaseException as exc:
                self.error = exc
                return
        self.error = TimeoutError(f"following {self.run_id} did not end")


def _retrying(call: Callable[[], object], timeout: float = 120.0) -> object:
    """`call()` again while the scheduler is unreachable (it is being restarted)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except errors.Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _workload(folder: Path) -> Path:
    code = folder / "code"
    code.mkdir()
    shutil.copy(ROOT / "tests" / "chaos_job.py", code / "chaos_job.py")
    return code


def _terminal(client: Client, run_ids: list[str]) -> bool:
    return all(client.get_run(r).state in TERMINAL for r in run_ids)


class Chaos:
    """The cluster, the runs and the kills; `check` compares what happened with the ledger."""

    def __init__(self, config: ChaosConfig, folder: Path, log: Callable[[str], None] = print) -> None:
        self.config = config
        self.folder = folder
        self.ledger = folder / "ledger"
        self.ledger.mkdir()
        self.log = log
        self.rng = random.Random(config.seed)
        self.cluster = LocalCluster(folder / "cluster", heartbeat_timeout=config.heartbeat_timeout)
        self.agent_names = [f"chaos-{i}" for i in range(config.agents)]
        self.report = Report(runs=config.runs)
        self.run_ids: list[str] = []
        self.followers: list[Follower] = []
        self.port = 0
        self.victims: list[str] = []

    def start_agent(self, name: str) -> None:
        self.cluster.start_agent(name, fake_gpus=f"{self.config.slots}xA100:80", env=FAST_AGENT, timeout=90)

    def submit(self) -> None:
        client = self.cluster.client()
        code = _workload(self.folder)
        c = self.config
        command = [sys.executable, "chaos_job.py", "--lines", str(c.lines), "--every", str(c.every)]
        command += ["--sleep", str(c.sleep), "--ledger", str(self.ledger)]
        for i in range(c.runs):
            run = client.submit(command, code=code, gpus=1, cpus=0.1, name=f"chaos-{i}", max_retries=0)
            self.run_ids.append(run.id)
            follower = Follower(self.cluster.client(), run.id, c.duration + c.end_timeout + 120)
            follower.start()
            self.followers.append(follower)

    def kill_one(self) -> None:
        """Kill a random daemon (or the scheduler and an agent together) with SIGKILL, and start it again."""
        if not self.victims:  # a round: every daemon once, and a double kill, in a random order
            self.victims = ["scheduler", *self.agent_names, "both"]
            self.rng.shuffle(self.victims)
        victim = self.victims.pop()
        if victim == "scheduler":
            self.kill_scheduler(restart=True)
        elif victim != "both":
            self.kill_agent(victim)
        elif self.rng.random() < 0.5:  # the agent dies while the scheduler is away (its backlog with it)
            self.kill_scheduler(restart=False)
            self.kill_agent(self.rng.choice(self.agent_names), before_restart=self.restart_scheduler)
        else:  # the agent dies just after the scheduler is back, while it catches up
            self.kill_scheduler(restart=True)
            time.sleep(self.rng.uniform(0.0, 1.0))
            self.kill_agent(self.rng.choice(self.agent_names))

    def _note(self, what: str) -> None:
        self.report.kill_log.append(f"{time.monotonic() - self.t0:6.1f}s {what}")

    def kill_scheduler(self, *, restart: bool) -> None:
        self.cluster.kill_scheduler(signal.SIGKILL)
        self.report.kills["scheduler"] += 1
        self._note("scheduler killed")
        if restart:
            self.restart_scheduler()

    def restart_scheduler(self) -> None:
        down = self.rng.uniform(0.0, 3.0)
        time.sleep(down)
        self.cluster.start_scheduler(port=self.port, timeout=60)
        self._note(f"scheduler restarted after {down:.1f}s")

    def kill_agent(self, name: str, before_restart: Callable[[], None] | None = None) -> None:
        """Kill agent `name`; bring it back before the heartbeat timeout (the restarted agent reconciles) or
        after it (the scheduler declared it lost first)."""
        c = self.config
        self.cluster.kill_agent(name, signal.SIGKILL)
        down = self.rng.choice([self.rng.uniform(0.0, 1.0), c.heartbeat_timeout + self.rng.uniform(1.0, 3.0)])
        self.report.kills["agent"] += 1
        self.report.kills[name] += 1
        self.report.agent_lost += down > c.heartbeat_timeout
        self._note(f"agent {name} killed, down {down:.1f}s")
        if before_restart is not None:
            before_restart()
        time.sleep(down)
        self.start_agent(name)

    def execute(self) -> Report:
        c = self.config
        self.t0 = time.monotonic()
        with self.cluster:
            self.cluster.start_scheduler()
            self.port = self.cluster.port
            for name in self.agent_names:
                self.start_agent(name)
            self.submit()
            client = self.cluster.client()
            kills = 0
            while time.monotonic() - self.t0 < c.duration and kills < c.max_kills:
                time.sleep(self.rng.uniform(*c.gap))
                if _retrying(lambda: _terminal(client, self.run_ids)):
                    break
                self.kill_one()
                kills += 1
            deadline = time.monotonic() + c.end_timeout
            while not _retrying(lambda: _terminal(client, self.run_ids)):
                if time.monotonic() > deadline:
                    self.report.losses.append(f"runs had not ended {c.end_timeout:.0f}s after the last kill")
                    break
                time.sleep(0.5)
            for follower in self.followers:
                follower.join(timeout=60)
            self.check(client)
        self.report.seconds = time.monotonic() - self.t0
        return self.report

    # ------------------------------------------------------------------ checks

    def check(self, client: Client) -> None:
        for run_id, follower in zip(self.run_ids, self.followers, strict=True):
            ledger = _read_ledger(self.ledger / f"{run_id}.jsonl")
            detail = client.get_run(run_id)
            self.report.attempts += len(detail.attempts)
            for problem in self._check_run(client, detail, ledger, follower):
                self.report.losses.append(f"{run_id}: {problem}")
        self.report.losses.extend(self._leftovers())

    def _check_run(
        self, client: Client, detail: types_pb2.Run, ledger: list[dict[str, Any]], follower: Follower
    ) -> Iterator[str]:
        c = self.config
        run_id = detail.id
        state = types_pb2.RunState.Name(detail.state)
        if detail.state != types_pb2.RUN_STATE_SUCCEEDED:
            yield f"ended {state}: {detail.message}"
        kinds = Counter(e.kind for e in client.events(run_id))
        if kinds["succeeded"] != 1 or kinds["failed"] or kinds["cancelled"]:
            yield f"events: {dict(kinds)}"
        attempts = sorted(detail.attempts, key=lambda a: a.number)
        states = [types_pb2.AttemptState.Name(a.state).removeprefix("ATTEMPT_STATE_") for a in attempts]
        if not states or states[-1] != "SUCCEEDED" or any(s != "LOST" for s in states[:-1]):
            yield f"attempt states {states}"
        for before, after in zip(attempts, attempts[1:], strict=False):
            ended = before.finished_at.ToNanoseconds() if before.HasField("finished_at") else None
            if ended is None or after.created_at.ToNanoseconds() < ended:
                yield f"the scheduler's attempts {before.number} and {after.number} overlap"

        # The ledger: the ground truth of what ran.
        starts: dict[int, dict[str, Any]] = {}
        for rec in ledger:
            if rec["event"] in ("overlap", "bad_resume"):
                yield f"attempt {rec['attempt']}: {rec['event']} {rec}"
            if rec["event"] == "start":
                if rec["attempt"] in starts:
                    yield f"attempt {rec['attempt']} started twice"
                starts[rec["attempt"]] = rec
        self.report.resumes += sum(1 for s in starts.values() if s["resumed"])
        final = attempts[-1].number if attempts else 0
        if not any(r["event"] == "end" and r["attempt"] == final for r in ledger):
            yield f"the succeeded attempt {final} did not finish its loop in the ledger"
        if set(starts) - {a.number for a in attempts}:
            yield f"the ledger has attempts {sorted(starts)}, the scheduler {[a.number for a in attempts]}"

        # Lines: per attempt consecutive from its resume point, the final one complete, all together 1..N.
        lines = list(client.log_lines(run_id, rank=0))
        stdout = [x for x in lines if x.stream == types_pb2.LOG_STREAM_STDOUT]
        self.report.lines += len(stdout)
        by_attempt: dict[int, list[types_pb2.LogLine]] = defaultdict(list)
        for x in stdout:
            by_attempt[x.attempt_number].append(x)
        covered: set[int] = set()
        for number, got in sorted(by_attempt.items()):
            if number not in starts:
                yield f"attempt {number} printed {len(got)} lines but never started in the ledger"
                continue
            first = starts[number]["resumed"] + 1
            expected = [f"line {run_id} {n}" for n in range(first, first + len(got))]
            if [x.text for x in got] != expected:
                bad = next(i for i, (x, e) in enumerate(zip(got, expected, strict=True)) if x.text != e)
                yield f"attempt {number} line {bad + 1} is {got[bad].text!r}, not {expected[bad]!r}"
            if [x.seq for x in got] != list(range(1, len(got) + 1)):
                yield f"attempt {number}: seqs are not 1..{len(got)}"
            numbers = set(range(first, first + len(got)))
            self.report.lines_reprinted += len(numbers & covered)
            covered |= numbers
        # (it prints nothing when it resumed from the last checkpoint: its predecessor ended its loop, but was
        # lost before its exit was reported)
        last = starts[final]["resumed"] + len(by_attempt.get(final, [])) if final in starts else 0
        if last != c.lines:
            yield f"the succeeded attempt {final}'s lines end at line {last}, not {c.lines}"
        missing = sorted(set(range(1, c.lines + 1)) - covered)
        if missing:
            yield f"lines never received: {missing[:10]}{' ...' if len(missing) > 10 else ''} ({len(missing)})"
        if follower.error is not None:
            yield f"the follower failed: {follower.error!r}"
        else:
            followed = [x for x in follower.lines if x.rank == 0 and x.stream == types_pb2.LOG_STREAM_STDOUT]
            if [_key(x) for x in followed] != [_key(x) for x in stdout]:
                yield f"the follower received {len(followed)} lines, a fresh read {len(stdout)}: not the same"

        # Checkpoints: each one's bytes, downloaded again, hash to what (run, step) gives; and every step's is
        # there (a resume from one the store never got would skip it, and maybe the lines before it).
        stored: set[int] = set()
        for ckpt in list_artifacts(client, run_id).checkpoints:
            self.report.checkpoints += 1
            step = chaos_job.step_of(ckpt.name)
            stored.add(step if step is not None else -1)
            if step is None or step % c.every or len(ckpt.files) != 1:
                yield f"unexpected checkpoint {ckpt.name} with {len(ckpt.files)} files"
                continue
            want = chaos_job.checkpoint_sha256(run_id, step)
            with tempfile.TemporaryDirectory() as tmp:
                path = _fetch(client, run_id, ckpt.files[0], Path(tmp))
                got_sha = hashlib.sha256(path.read_bytes()).hexdigest()
            if got_sha != want or ckpt.files[0].digest.removeprefix("sha256:") != want:
                yield f"checkpoint {ckpt.name} (attempt {ckpt.attempt_number}) has SHA-256 {got_sha}, not {want}"
        absent = sorted(set(range(c.every, c.lines + 1, c.every)) - stored)
        if absent:
            yield f"checkpoints of steps {absent[:10]}{' ...' if len(absent) > 10 else ''} never reached the store"

    def _leftovers(self, wait: float = 30.0) -> list[str]:
        """Processes of the runs still alive (zombies excepted) after `wait` seconds."""
        deadline = time.monotonic() + wait
        while True:
            left = list(_run_processes(str(self.ledger)))
            if not left or time.monotonic() > deadline:
                return [f"process {p.pid} of a run is left: {' '.join(p.cmdline())}" for p in left]
            time.sleep(0.5)


def _run_processes(marker: str) -> Iterator[psutil.Process]:
    for proc in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(proc.info["cmdline"] or ()):
                yield proc


def _key(line: types_pb2.LogLine) -> tuple[int, int, str]:
    return line.attempt_number, line.seq, line.text


def _read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_chaos(config: ChaosConfig, folder: Path, log: Callable[[str], None] = print) -> Report:
    """Run the chaos scenario in `folder` (kept) and return what happened and what was lost."""
    return Chaos(config, folder, log).execute()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--slots", type=int, default=3, help="runs at once per agent")
    parser.add_argument("--lines", type=int, default=400)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--sleep", type=float, default=0.05)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of kills")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the cluster's folder (logs, state)")
    args = parser.parse_args()
    config = ChaosConfig(
        runs=args.runs,
        agents=args.agents,
        slots=args.slots,
        lines=args.lines,
        every=args.every,
        sleep=args.sleep,
        duration=args.duration,
        seed=args.seed,
    )
    folder = Path(tempfile.mkdtemp(prefix="gridlab-chaos-"))
    try:
        report = run_chaos(config, folder)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    for line in report.kill_log:
        print("kill", line)
    for loss in report.losses:
        print("LOSS", loss)
    print(report.summary())
    if args.keep:
        print(f"kept {folder}")
    return 1 if report.losses else 0


if __name__ == "__main__":
    sys.exit(main())
