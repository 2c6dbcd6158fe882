"""The chaos suite's workload (tests/test_chaos.py, bench/chaos.py): prints numbered lines, checkpoints, resumes.

    python chaos_job.py --lines N --every K --sleep S --ledger DIR

Prints `line <GRIDLAB_RUN_ID> <n>` for n = first..N (flushed, `S` seconds apart). After every K-th line it
appends {"step": n} to GRIDLAB_METRICS_FILE and writes `step-<n>.ckpt` into GRIDLAB_CHECKPOINT_DIR
atomically (temp file, fsync, rename); the bytes are `checkpoint_bytes(run_id, n)`, so a reader can compute
each checkpoint's SHA-256. With GRIDLAB_RESUME_FROM it checks that file's bytes and continues after its step
(first = step + 1), else first = 1. Exits 0 after line N.

The ledger is the ground truth the suite compares the scheduler's account with. Each attempt appends JSON
lines to `DIR/<run_id>.jsonl` (one `write` each, O_APPEND): `start` (attempt, pid, time, the step resumed
from), `end` (the last line printed, time), and `overlap` or `bad_resume` when something is wrong. It holds
an exclusive flock on `DIR/<run_id>.lock` while it runs: the kernel drops it when the process dies however
it dies, so an attempt that finds it taken knows that another attempt of its run is alive at this moment.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

CHECKPOINT = re.compile(r"step-(\d+)\.ckpt")
CHECKPOINT_BLOCKS = 1024  # 32 KiB per checkpoint


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}.ckpt"


def checkpoint_bytes(run_id: str, step: int) -> bytes:
    """The content of run `run_id`'s checkpoint at `step`: 32 KiB that depend on both."""
    return b"".join(hashlib.sha256(f"{run_id}:{step}:{i}".encode()).digest() for i in range(CHECKPOINT_BLOCKS))


def checkpoint_sha256(run_id: str, step: int) -> str:
    return hashlib.sha256(checkpoint_bytes(run_id, step)).hexdigest()


def step_of(name: str) -> int | None:
    """The step in a checkpoint's file name, or None when it is not one of ours."""
    match = CHECKPOINT.fullmatch(name)
    return int(match.group(1)) if match else None


def record(ledger: Path, **fields: object) -> None:
    """Append one JSON line in one write, so concurrent writers never interleave inside a line."""
    data = (json.dumps(fields, sort_keys=True) + "\n").encode()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_checkpoint(folder: Path, run_id: str, step: int) -> None:
    target = folder / checkpoint_name(step)
    temp = folder / f".{target.name}.tmp"
    with open(temp, "wb") as f:
        f.write(checkpoint_bytes(run_id, step))
        f.flush()
        os.fsync(f.fileno())
    os.rename(temp, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, required=True)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--sleep", type=float, default=0.05)
    parser.add_argument("--ledger", type=Path, required=True)
    args = parser.parse_args(argv)
    run_id = os.environ["GRIDLAB_RUN_ID"]
    attempt = int(os.environ.get("GRIDLAB_ATTEMPT", "0"))
    ledger = args.ledger / f"{run_id}.jsonl"
    ckpt_dir = Path(os.environ["GRIDLAB_CHECKPOINT_DIR"])
    metrics = os.environ.get("GRIDLAB_METRICS_FILE")

    lock = open(args.ledger / f"{run_id}.lock", "a")  # noqa: SIM115 - held until the process ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        record(ledger, event="overlap", attempt=attempt, pid=os.getpid(), t=time.time())
        fcntl.flock(lock, fcntl.LOCK_EX)  # go on once the other ends, so the run still finishes

    resumed = 0
    resume = os.environ.get("GRIDLAB_RESUME_FROM")
    if resume:
        step = step_of(Path(resume).name)
        if step is None or Path(resume).read_bytes() != checkpoint_bytes(run_id, step):
            record(ledger, event="bad_resume", attempt=attempt, path=resume, t=time.time())
            print(f"bad checkpoint to resume from: {resume}", file=sys.stderr, flush=True)
            return 4
        resumed = step
    record(ledger, event="start", attempt=attempt, pid=os.getpid(), resumed=resumed, t=time.time())

    for n in range(resumed + 1, args.lines + 1):
        print(f"line {run_id} {n}", flush=True)
        if n % args.every == 0:
            if metrics:
                with open(metrics, "a") as f:
                    f.write(json.dumps({"step": n}) + "\n")
            write_checkpoint(ckpt_dir, run_id, n)
        time.sleep(args.sleep)
    record(ledger, event="end", attempt=attempt, pid=os.getpid(), last=args.lines, t=time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main())
