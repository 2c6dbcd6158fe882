"""`schedctl`: the command line for people who use or run a gridlab cluster.

kubectl's grammar (verb, then what), Slurm's meanings (states, pending reasons, priorities):

    schedctl [--address HOST:PORT] [--token T] [--tls-ca FILE] [-o table|wide|json] [--no-headers] [-q] COMMAND ...

    submit [RESOURCES] [--sweep NAME=EXPR ...] [--wait|--follow] -- CMD ...
    runs [--me] [--user U] [--state S ...] [--sweep ID] [--pool P]      queue [--pool P]
    describe RUN (alias: status)   logs RUN[/RANK] [-f] [--tail N] [--attempt N]   wait RUN
    cancel RUN ... | --sweep ID | --user U      priority RUN N      metrics RUN [--chart NAME]
    artifacts RUN    download RUN [PATH]        agents [--pool P]   cordon|uncordon|drain AGENT
    tokens create|list|revoke     top [--once] [--interval S]      version    whoami
    usage [--by user|pool|run] [--since DURATION|DATE] [--user U]
    completion bash|zsh

Tables by default (columns as wide as their content, times as "12s ago"); `-o json` prints
exactly one JSON document on stdout for scripts (`logs -f -o json`, a stream, prints JSON Lines:
one object a line); `-q` prints ids only. `download` has no output format: its `-o` is the
folder, and it prints the paths it wrote. Failures print
`error: <message>` (and a `hint:` where a newcomer needs one), never a traceback (set
SCHEDCTL_DEBUG=1 to see one for an unexpected error). Exit codes: see `gridlab.client.exitcodes`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import math
import os
import shlex
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, TextIO

import grpc

from gridlab import __version__
from gridlab.client import artifacts, exitcodes
from gridlab.client.chart import line_chart
from gridlab.client.completion import script as completion_script
from gridlab.client.errors import ClientConfigError, GridlabError
from gridlab.client.output import (
    ago,
    cut,
    dumps,
    elapsed,
    format_table,
    human_ago,
    human_bytes,
    human_duration,
    print_json,
    to_dict,
    when,
)
from gridlab.client.sdk import (
    ADDRESS_ENV,
    STATES,
    TERMINAL_STATES,
    TOKEN_ENV,
    Client,
    RunStatus,
    parse_duration,
    parse_size,
    state_word,
)
from gridlab.common import timeutil
from gridlab.v1 import types_pb2

__all__ = ["build_parser", "format_table", "human_ago", "human_bytes", "human_duration", "main", "parse_args"]

# Kept under their old names: scripts and tests import them from here.
EXIT_OK = exitcodes.OK
EXIT_FAILED = exitcodes.ERROR
EXIT_USAGE = exitcodes.USAGE
EXIT_INTERRUPTED = exitcodes.INTERRUPTED

ACTIVE_STATES = ("QUEUED", "STARTING", "RUNNING")
TOP_FINISHED = 100  # finished runs `top` fetches to fill the screen below the active ones
# How long `submit` looks for a pending reason that says the run can never be placed.
_UNPLACEABLE_CHECK_S = 1.5
_NOT_RANKED_YET = "Priority: waiting for the scheduler's next pass"  # the reason a run has before a pass

START_HINT = (
    "start one with `gridlab-scheduler --state-dir ~/.local/share/gridlab/scheduler --listen 0.0.0.0:7070`"
    " (its first start writes admin.token into that folder), or point schedctl at a running one with"
    f" --address HOST:PORT or {ADDRESS_ENV}"
)
TOKEN_HINT = (
    f"export {TOKEN_ENV}=<token>: an admin creates one with `schedctl tokens create --user NAME`;"
    " the scheduler's own admin token is the file admin.token in its --state-dir"
)


class UsageError(Exception):
    """A command line that parses but cannot mean anything; exits 2."""


# --- small pieces of output ------------------------------------------------------------


def _output(args: argparse.Namespace) -> str:
    return str(getattr(args, "output", "table"))


def _json(args: argparse.Namespace) -> bool:
    return _output(args) == "json"


def _wide(args: argparse.Namespace) -> bool:
    return _output(args) == "wide"


def _quiet(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quiet", False))


def _table(args: argparse.Namespace, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    print(format_table(headers, rows, no_headers=bool(getattr(args, "no_headers", False))))


def _enum_word(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        return f"UNKNOWN({value})"


def _resources(spec: types_pb2.RunSpec) -> str:
    res = spec.resources
    nodes = res.nodes or 1
    cpus = res.cpus or 1
    parts = [f"{nodes} node{'s' if nodes != 1 else ''}"]
    gpus = f"{res.gpus} GPU{'s' if res.gpus != 1 else ''}"
    if res.gpu_types:
        gpus += " of " + "/".join(res.gpu_types)
    if res.min_gpu_memory_bytes:
        gpus += f" with >= {human_bytes(res.min_gpu_memory_bytes)}"
    parts.append(gpus + (" each" if nodes > 1 else ""))
    parts.append(f"{cpus:g} CPU{'s' if cpus != 1 else ''}")
    if res.memory_bytes:
        parts.append(human_bytes(res.memory_bytes))
    return ", ".join(parts)


def _placement(spec: types_pb2.RunSpec) -> str:
    """Pool, labels, priority, preemptible and time limit, in words ("-" when all are defaults)."""
    parts = []
    if spec.pool:
        parts.append(f"pool {spec.pool}")
    if spec.labels:
        parts.append("labels " + ",".join(f"{k}={v}" for k, v in sorted(spec.labels.items())))
    if spec.priority:
        parts.append(f"priority {spec.priority}")
    if spec.preemptible:
        parts.append("preemptible")
    if spec.HasField("time_limit"):
        parts.append(f"time limit {human_duration(timeutil.from_duration(spec.time_limit))}")
    return ", ".join(parts) or "-"


def _gpu_count(spec: types_pb2.RunSpec) -> str:
    nodes = spec.resources.nodes or 1
    return f"{nodes}x{spec.resources.gpus}" if nodes > 1 else str(spec.resources.gpus)


def _reason(run: types_pb2.Run) -> str:
    return str(run.pending_reason if run.state == types_pb2.RUN_STATE_QUEUED else run.message)


def _print_line(line: types_pb2.LogLine, out: TextIO) -> None:
    """A rank's line to `out`; the agent's own notes to stderr, marked, so that
    `schedctl logs RUN > file` keeps only what the program printed."""
    if line.stream == types_pb2.LOG_STREAM_SYSTEM:
        print(f"gridlab: {line.text}", file=sys.stderr, flush=True)
    else:
        print(line.text, file=out, flush=True)


def _final_line(run_id: str, status: RunStatus) -> str:
    """The line that ends a wait ("run-1 FAILED (exit code 3): ..."): an exit code only when a process
    exited, and the state said once."""
    line = f"{run_id} {status.state}"
    if status.exit_code is not None:
        line += f" (exit code {status.exit_code})"
    message = status.message
    prefix = f"{status.state.lower()}: "
    if message.lower().startswith(prefix):  # the agent's "cancelled: <reason>" after "CANCELLED"
        message = message[len(prefix) :]
    if message:
        line += f": {message}"
    return line


def _status_dict(run_id: str, status: RunStatus, *, timed_out: bool = False) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "state": status.state,
        "exit_code": status.exit_code,
        "message": status.message,
        "pending_reason": status.pending_reason,
        "attempts": status.attempts,
        "timed_out": timed_out,
    }


def _only_given(**kwargs: Any) -> dict[str, Any]:
    """Keyword arguments whose value was given (not None/False), so SDK calls name only what the user asked."""
    return {k: v for k, v in kwargs.items() if v is not None and v is not False}


# --- submit and wait ---------------------------------------------------------------------


def _warn_if_unplaceable(client: Client, run_id: str) -> None:
    """Tell a newcomer at once when a run cannot be placed: it would otherwise wait, queued, forever
    (the scheduler keeps it, since a machine that fits may join later)."""
    deadline = time.monotonic() + _UNPLACEABLE_CHECK_S
    while True:
        run = client.get_run(run_id)
        reason = run.pending_reason
        ranked = run.queue_position > 0 or (reason and not reason.startswith(_NOT_RANKED_YET))
        if run.state != types_pb2.RUN_STATE_QUEUED or ranked or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if run.state != types_pb2.RUN_STATE_QUEUED:
        return
    if reason.startswith("Unsatisfiable"):
        print(
            f"warning: {run_id} cannot be placed on any connected agent and stays queued: {reason}\n"
            f"hint: see what agents offer with `schedctl agents`; stop the run with `schedctl cancel {run_id}`",
            file=sys.stderr,
        )
    elif reason == "no agent is connected":
        print(
            f"warning: {run_id} is queued but no agent is connected to the scheduler\n"
            "hint: start one with `gridlab-agent --scheduler HOST:PORT --token-file agent.token`"
            " (agent.token is in the scheduler's --state-dir)",
            file=sys.stderr,
        )


def _submit_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "gpus": args.gpus,
        "cpus": args.cpus,
        "nodes": args.nodes,
        "procs_per_node": args.procs_per_node,
        "env": dict(args.env or ()),
        "name": args.name,
        "idempotency_key": args.idempotency_key,
        "max_retries": args.max_retries,
        "hang_timeout": args.hang_timeout,
        "requirements": args.pip or (),
        "code": args.code,
        "workdir": args.workdir,
        "gpu_type": args.gpu_type,
        "min_gpu_memory": args.min_gpu_memory,
        "memory": args.memory,
        "pool": args.pool,
        "labels": dict(args.label) if args.label else None,
        "priority": args.priority,
        "preemptible": args.preemptible,
        "time_limit": args.time_limit,
    }
    # Newer arguments are passed only when used, so a plain submit works with any SDK.
    kwargs.update(_only_given(resources=args.resources))
    if args.sweep:
        kwargs["sweep"] = dict(args.sweep)
        kwargs["strategy"] = args.strategy
        kwargs.update(_only_given(trials=args.trials, seed=args.seed, metric=args.metric))
        if args.maximize:
            kwargs["maximize"] = True
    return kwargs


def _deadline(timeout: float | None) -> Callable[[], float | None]:
    """A function giving the seconds left until `timeout` from now (None: no limit), so one
    --timeout bounds following the logs and waiting together, not each on its own."""
    end = None if timeout is None else time.monotonic() + timeout

    def left() -> float | None:
        return None if end is None else max(0.0, end - time.monotonic())

    return left


def _interrupted(run_id: str) -> int:
    print(f"\ninterrupted: {run_id} keeps running; stop it with `schedctl cancel {run_id}`", file=sys.stderr)
    return exitcodes.INTERRUPTED


def _timed_out(client: Client, run_id: str, timeout: float | None, args: argparse.Namespace) -> int:
    status = client.status(run_id)
    if _json(args):
        print_json(_status_dict(run_id, status, timed_out=True), sys.stdout)
    print(
        f"error: run {run_id} is still {status.state} after {timeout or 0:g}s; it keeps running"
        f" (stop it with `schedctl cancel {run_id}`)",
        file=sys.stderr,
    )
    return exitcodes.RUN_TIMED_OUT


def _follow_and_wait(client: Client, run_id: str, args: argparse.Namespace) -> int:
    """Stream the logs (with --follow), wait for the end; the exit code says how the run ended."""
    left = _deadline(args.timeout)
    try:
        if args.follow:
            log_out = sys.stderr if _json(args) else sys.stdout  # keep stdout one JSON document
            for line in client.log_lines(run_id, follow=True, timeout=left()):
                if line.stream != types_pb2.LOG_STREAM_METRICS:
                    _print_line(line, log_out)
        status = client.wait(run_id, timeout=left())
    except TimeoutError:
        return _timed_out(client, run_id, args.timeout, args)
    except KeyboardInterrupt:
        return _interrupted(run_id)
    if _json(args):
        print_json(client.get_run(run_id), sys.stdout)
    elif not _quiet(args):
        print(_final_line(run_id, status))
    return exitcodes.for_state(status.state)


def _trial_rows(trials: list[dict[str, Any]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for trial in trials:
        params = trial.get("params") or {}
        text = " ".join(f"{k}={v}" for k, v in params.items()) if isinstance(params, dict) else str(params)
        run_id = trial.get("run_id") or trial.get("run") or trial.get("id") or "-"
        rows.append([trial.get("index", "-"), run_id, trial.get("state", "-"), text or "-"])
    return rows


def _submit_sweep(client: Client, args: argparse.Namespace, sweep: Any) -> int:
    if not args.wait:
        if _json(args):
            print_json({"sweep": sweep.id, "trials": sweep.trials()}, sys.stdout)
        elif _quiet(args):
            print(sweep.id)
        else:
            print(sweep.id)
            _table(args, ["TRIAL", "RUN", "STATE", "PARAMS"], _trial_rows(sweep.trials()))
        return exitcodes.OK
    if not _json(args):
        print(sweep.id, flush=True)
    try:
        statuses = sweep.wait(timeout=args.timeout)
    except TimeoutError:
        if _json(args):  # as for one run: the document of where things stand, marked timed out
            print_json({"sweep": sweep.id, "trials": sweep.trials(), "timed_out": True}, sys.stdout)
        print(
            f"error: sweep {sweep.id} has trials still running after {args.timeout or 0:g}s; they keep running"
            f" (stop them with `schedctl cancel --sweep {sweep.id}`)",
            file=sys.stderr,
        )
        return exitcodes.RUN_TIMED_OUT
    except KeyboardInterrupt:
        return _interrupted(sweep.id)
    states = [status.state for status in statuses]
    best = None
    with contextlib.suppress(GridlabError, ValueError, TypeError):
        best = sweep.best() if args.metric else None
    if _json(args):
        document: dict[str, Any] = {"sweep": sweep.id, "trials": sweep.trials(), "timed_out": False}
        if best is not None:
            document["best"] = {"run_id": best[0].id, "value": best[1]}
        print_json(document, sys.stdout)
    elif not _quiet(args):
        _table(args, ["TRIAL", "RUN", "STATE", "PARAMS"], _trial_rows(sweep.trials()))
        counts = Counter(states)
        print(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
        if best is not None:
            print(f"best: {best[0].id} ({args.metric} = {best[1]:g})")
    if "FAILED" in states:
        return exitcodes.RUN_FAILED
    if "CANCELLED" in states:
        return exitcodes.RUN_CANCELLED
    return exitcodes.OK


def cmd_submit(args: argparse.Namespace, client: Client) -> int:
    """Queue a run (or a sweep of them); with --wait/--follow the exit code says how it ended."""
    kwargs = _submit_kwargs(args)
    if args.entrypoint:
        kwargs["entrypoint"] = [args.entrypoint, *args.command] if args.command else args.entrypoint
        result = client.submit(**kwargs)
    else:
        result = client.submit(args.command, **kwargs)
    if args.sweep:
        return _submit_sweep(client, args, result)
    run_id = str(result.id)
    if not _json(args):
        print(run_id, flush=True)
    _warn_if_unplaceable(client, run_id)
    if not args.wait:
        if _json(args):
            print_json(client.get_run(run_id), sys.stdout)
        return exitcodes.OK
    return _follow_and_wait(client, run_id, args)


def cmd_wait(args: argparse.Namespace, client: Client) -> int:
    """Block until a run ends: exit 0 if it succeeded, 100 failed, 101 cancelled, 102 timed out."""
    try:
        status = client.wait(args.run, timeout=args.timeout)
    except TimeoutError:
        return _timed_out(client, args.run, args.timeout, args)
    except KeyboardInterrupt:
        return _interrupted(args.run)
    if _json(args):
        print_json(_status_dict(args.run, status), sys.stdout)
    elif not _quiet(args):
        print(_final_line(args.run, status))
    return exitcodes.for_state(status.state)


# --- runs, queue, describe ---------------------------------------------------------------


def _runs_table(args: argparse.Namespace, runs: list[types_pb2.Run], now: float) -> None:
    wide = _wide(args)
    headers = ["ID", "NAME", "USER", "STATE", "GPUS", "AGE", "DURATION", "REASON"]
    if wide:
        headers += ["PRIORITY", "POOL", "SWEEP", "ATTEMPTS", "NODES", "COMMAND"]
    rows = []
    for run in runs:
        reason = _reason(run)
        row: list[object] = [
            run.id,
            run.spec.name or "-",
            run.user or "-",
            state_word(run.state),
            _gpu_count(run.spec),
            ago(run.created_at, now),
            elapsed(run.started_at, run.finished_at, now),
            (reason if wide else cut(reason)) or "-",
        ]
        if wide:
            last = run.attempts[-1] if run.attempts else None
            nodes = ",".join(n.agent_name or n.agent_id for n in last.nodes) if last else ""
            sweep = f"{run.spec.sweep.name}#{run.spec.sweep.index}" if run.spec.sweep.name else "-"
            row += [
                run.spec.priority,
                run.spec.pool or "-",
                sweep,
                len(run.attempts),
                nodes or "-",
                shlex.join(run.spec.command) or "-",
            ]
        rows.append(row)
    _table(args, headers, rows)


def _list_runs(client: Client, args: argparse.Namespace, *, states: Sequence[str] | None, limit: int | None) -> Any:
    extra = _only_given(sweep=getattr(args, "sweep", None), pool=getattr(args, "pool", None))
    if getattr(args, "me", False):
        extra["me"] = True
    return client.runs(states=states, user=getattr(args, "user", None), limit=limit, **extra)


def cmd_runs(args: argparse.Namespace, client: Client) -> int:
    runs = _list_runs(client, args, states=args.state, limit=args.limit)
    if _json(args):
        print_json(runs, sys.stdout)
    elif _quiet(args):
        for run in runs:
            print(run.id)
    elif not runs:
        print("no runs found", file=sys.stderr)
    else:
        _runs_table(args, runs, time.time())
    return exitcodes.OK


def queue_order(runs: Iterable[types_pb2.Run]) -> list[types_pb2.Run]:
    """Queued runs in the order the scheduler serves them: its last pass's positions where it set
    them, then (runs it has not ranked yet) priority, highest first, then submit time."""

    def key(run: types_pb2.Run) -> tuple[int, int, int, float]:
        created = run.created_at.seconds + run.created_at.nanos / 1e9
        if run.queue_position > 0:
            return (0, run.queue_position, 0, created)
        return (1, 0, -run.spec.priority, created)

    return sorted(runs, key=key)


def cmd_queue(args: argparse.Namespace, client: Client) -> int:
    """The queue as the scheduler serves it, with why each run waits (Slurm's squeue --state=PD)."""
    runs = queue_order(_list_runs(client, args, states=["QUEUED"], limit=None))
    if _json(args):
        print_json(runs, sys.stdout)
        return exitcodes.OK
    if _quiet(args):
        for run in runs:
            print(run.id)
        return exitcodes.OK
    if not runs:
        print("the queue is empty", file=sys.stderr)
        return exitcodes.OK
    now = time.time()
    headers = ["POS", "ID", "NAME", "USER", "PRIORITY", "GPUS", "WAITING", "REASON"]
    rows = []
    for run in runs:
        reason = run.pending_reason or "-"
        rows.append(
            [
                run.queue_position or "-",
                run.id,
                run.spec.name or "-",
                run.user or "-",
                run.spec.priority,
                _gpu_count(run.spec),
                elapsed(run.created_at, types_pb2.Run().finished_at, now),
                reason if _wide(args) else cut(reason),
            ]
        )
    _table(args, headers, rows)
    return exitcodes.OK


def _events(client: Client, run_id: str) -> list[types_pb2.RunEvent] | None:
    """The run's events, or None from a scheduler that does not keep them for clients yet."""
    try:
        return list(client.events(run_id))
    except GridlabError as exc:
        if exc.code == grpc.StatusCode.UNIMPLEMENTED:
            return None
        raise


def describe_text(run: types_pb2.Run, events: list[types_pb2.RunEvent] | None, now: float) -> str:
    """A run as `kubectl describe` shows a pod: fields, then attempts, then events."""
    status = RunStatus.from_proto(run)
    user = run.user + (f" (team {run.team})" if run.team else "")
    fields: list[tuple[str, object]] = [
        ("ID:", run.id),
        ("Name:", run.spec.name or "-"),
        ("User:", user or "-"),
        ("State:", status.state),
        ("Reason:", run.pending_reason or "-"),
    ]
    if run.queue_position:
        fields.append(("Queue position:", run.queue_position))
    fields += [
        ("Message:", run.message or "-"),
        ("Exit code:", "-" if status.exit_code is None else status.exit_code),
        ("Attempts:", f"{status.attempts} (retries used: {run.retries_used} of {run.spec.max_retries})"),
        *([("Interrupted:", f"{run.interruptions} (spot reclaims; no retry spent)")] if run.interruptions else []),
        ("Command:", shlex.join(run.spec.command) or "-"),
        ("Resources:", _resources(run.spec)),
        ("Placement:", _placement(run.spec)),
    ]
    if run.spec.sweep.name:
        trial = run.spec.sweep
        params = " ".join(f"{k}={v}" for k, v in sorted(trial.params.items()))
        fields.append(("Sweep:", f"{trial.name} trial {trial.index} of {trial.size}: {params or '-'}"))
    if run.spec.env:
        fields.append(("Env:", " ".join(f"{k}={v}" for k, v in sorted(run.spec.env.items()))))
    fields += [
        ("Created:", when(run.created_at, now)),
        ("Started:", when(run.started_at, now)),
        ("Finished:", when(run.finished_at, now)),
        ("Duration:", elapsed(run.started_at, run.finished_at, now)),
    ]
    text = format_table(["", ""], fields, no_headers=True)
    if run.attempts:
        rows = []
        for attempt in run.attempts:
            finished = attempt.state in (types_pb2.ATTEMPT_STATE_SUCCEEDED, types_pb2.ATTEMPT_STATE_FAILED)
            rows.append(
                [
                    attempt.number,
                    _enum_word(types_pb2.AttemptState, attempt.state, "ATTEMPT_STATE_"),
                    ",".join(n.agent_name or n.agent_id for n in attempt.nodes) or "-",
                    attempt.exit_code if finished else "-",
                    ago(attempt.started_at, now),
                    elapsed(attempt.started_at, attempt.finished_at, now),
                    cut(attempt.reason) or "-",
                ]
            )
        headers = ["ATTEMPT", "STATE", "AGENTS", "EXIT", "STARTED", "DURATION", "REASON"]
        text += "\n\nAttempts:\n" + format_table(headers, rows)
    if events is None:
        text += "\n\nEvents: (this scheduler does not serve them yet)"
    elif events:
        rows = [
            [ago(e.time, now), e.kind, state_word(e.state), cut(e.message, 80) or "-"]
            for e in sorted(events, key=lambda e: e.id)
        ]
        text += "\n\nEvents:\n" + format_table(["WHEN", "KIND", "STATE", "MESSAGE"], rows)
    return text


def cmd_describe(args: argparse.Namespace, client: Client) -> int:
    run = client.get_run(args.run)
    events = _events(client, args.run)
    if _json(args):
        document = to_dict(run)
        document["events"] = [to_dict(e) for e in events or ()]
        print_json(document, sys.stdout)
    elif _quiet(args):
        print(run.id)
    else:
        print(describe_text(run, events, time.time()))
    return exitcodes.OK


cmd_status = cmd_describe  # the old name of the command (and of its function)


def cmd_priority(args: argparse.Namespace, client: Client) -> int:
    """Change a run's priority: a queued run moves in the queue; a running one keeps running."""
    client.set_priority(args.run, args.priority)
    run = client.get_run(args.run)
    if _json(args):
        print_json(run, sys.stdout)
    elif not _quiet(args):
        where = f" (queue position {run.queue_position})" if run.queue_position else ""
        print(f"{run.id}: priority {run.spec.priority}{where}")
    return exitcodes.OK


# --- logs and metrics --------------------------------------------------------------------


def run_and_rank(text: str) -> tuple[str, int | None]:
    """`RUN` or `RUN/RANK` (as `kubectl logs pod/container`): the run id and the rank, if any."""
    run_id, sep, rank = text.rpartition("/")
    if not sep:
        return text, None
    try:
        return run_id, int(rank)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RUN or RUN/RANK (a number), got {text!r}") from None


def _shown_lines(
    client: Client, run_id: str, *, follow: bool, attempt: int | None, rank: int | None
) -> Iterator[types_pb2.LogLine]:
    for line in client.log_lines(run_id, follow=follow, attempt=attempt, rank=rank):
        if line.stream != types_pb2.LOG_STREAM_METRICS:  # `schedctl metrics` shows those
            yield line


def cmd_logs(args: argparse.Namespace, client: Client) -> int:
    run_id, rank = args.run
    rank = args.rank if args.rank is not None else rank
    as_json = _json(args)
    lines: Iterable[types_pb2.LogLine]
    if args.tail is not None:
        # The last N lines so far; with -f, then everything after them. Lines come in one fixed
        # order, so skipping as many as the first pass counted joins the two passes exactly.
        seen = list(_shown_lines(client, run_id, follow=False, attempt=args.attempt, rank=rank))
        count = len(seen)
        tail = seen[tail_start(seen, args.tail) :]
        lines = tail
        if args.follow:
            rest = _shown_lines(client, run_id, follow=True, attempt=args.attempt, rank=rank)
            lines = _chain(tail, _skip(rest, count))
    else:
        lines = _shown_lines(client, run_id, follow=args.follow, attempt=args.attempt, rank=rank)
    if as_json and not args.follow:
        print_json(list(lines), sys.stdout)
        return exitcodes.OK
    for line in lines:
        if as_json:  # following: JSON Lines, one object per line as it comes (a stream has no end to wait for)
            print(dumps(line), flush=True)
        else:
            _print_line(line, sys.stdout)
    return exitcodes.OK


def tail_start(lines: Sequence[types_pb2.LogLine], count: int) -> int:
    """Where the last `count` lines the program printed begin; the agent's own notes among them
    (which go to stderr) come along but are not counted, so `--tail 1` shows the last line of output."""
    if count <= 0:
        return len(lines)
    printed = [i for i, line in enumerate(lines) if line.stream != types_pb2.LOG_STREAM_SYSTEM]
    return printed[-count] if len(printed) >= count else 0


def _skip(items: Iterator[types_pb2.LogLine], count: int) -> Iterator[types_pb2.LogLine]:
    for i, item in enumerate(items):
        if i >= count:
            yield item


def _chain(first: Iterable[types_pb2.LogLine], then: Iterator[types_pb2.LogLine]) -> Iterator[types_pb2.LogLine]:
    yield from first
    yield from then


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return "-"
    return str(value)


def metrics_table(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows for metric records: attempt and step first, then every other key a record has."""
    keys: list[str] = []
    for record in records:
        keys.extend(k for k in record if k not in keys)
    first = [k for k in ("attempt", "step", "epoch") if k in keys]
    order = first + sorted(k for k in keys if k not in first)
    rows = [[_cell(record.get(k)) for k in order] for record in records]
    return [k.upper() for k in order], rows


def chart_points(records: list[dict[str, Any]], name: str) -> list[tuple[float, float]]:
    """(step, value) of metric `name`; records without a step are placed by their order."""
    points = []
    for i, record in enumerate(records):
        value = _number(record.get(name))
        if value is None:
            continue
        step = _number(record.get("step"))
        points.append((float(i) if step is None else step, value))
    return points


def cmd_metrics(args: argparse.Namespace, client: Client) -> int:
    """What a run wrote to GRIDLAB_METRICS_FILE: a table, JSON, or a line chart of one metric."""
    if args.follow:
        records: list[dict[str, Any]] = []
        for record in client.metrics(args.run, follow=True):
            if args.attempt and record.get("attempt") != args.attempt:
                continue
            if _json(args):
                records.append(record)  # one document, printed when the run has ended
            else:
                print(" ".join(f"{k}={_cell(v)}" for k, v in record.items()), flush=True)
        if _json(args):
            print_json(records, sys.stdout)
        return exitcodes.OK
    records = [r for r in client.metrics(args.run) if not args.attempt or r.get("attempt") == args.attempt]
    if args.chart:
        points = chart_points(records, args.chart)
        if not points:
            names = sorted({k for r in records for k, v in r.items() if _number(v) is not None} - {"attempt", "step"})
            logged = f"it logged: {', '.join(names)}" if names else "it logged no numeric metrics yet"
            raise GridlabError(f"run {args.run} has no metric {args.chart!r}; {logged}", grpc.StatusCode.NOT_FOUND)
        if _json(args):
            print_json({"run_id": args.run, "metric": args.chart, "points": points}, sys.stdout)
            return exitcodes.OK
        columns = shutil.get_terminal_size((80, 24)).columns
        width = args.width or max(20, min(120, columns - 14))
        print(line_chart(points, width=width, height=args.height, title=f"{args.chart} ({args.run})"))
        return exitcodes.OK
    if _json(args):
        print_json(records, sys.stdout)
    elif not records:
        print(f"run {args.run} has logged no metrics (yet)", file=sys.stderr)
    else:
        headers, rows = metrics_table(records)
        _table(args, headers, rows)
    return exitcodes.OK


# --- cancel ------------------------------------------------------------------------------


def cmd_cancel(args: argparse.Namespace, client: Client) -> int:
    """Cancel runs by id, every active trial of a sweep, or (admins) every active run of a user."""
    targets = list(args.runs)
    if args.sweep or args.user:
        extra = _only_given(sweep=args.sweep)
        found = client.runs(states=list(ACTIVE_STATES), user=args.user, limit=None, **extra)
        if args.sweep and found:
            # A sweep is one user's runs: never another user's that happen to carry the same sweep id.
            owner = client.sweep(args.sweep).owner
            found = [run for run in found if run.user == owner]
        targets += [run.id for run in found if run.id not in targets]
        if not found and not args.runs:
            what = f"sweep {args.sweep}" if args.sweep else f"user {args.user}"
            print(f"{what} has no queued or running runs", file=sys.stderr)
    code = exitcodes.OK
    done: list[types_pb2.Run] = []
    for run_id in targets:
        try:
            run = client.cancel(run_id, grace=args.grace, reason=args.reason)
        except GridlabError as exc:
            message = str(exc) if run_id in str(exc) else f"{run_id}: {exc}"
            print(f"error: {message}", file=sys.stderr)
            code = code or exitcodes.for_error(exc)
            continue
        done.append(run)
        if _quiet(args):
            print(run.id)
        elif not _json(args):
            state = state_word(run.state)
            print(f"{run.id}: cancelled" if state == "CANCELLED" else f"{run.id}: cancelling (still {state})")
    if _json(args):
        print_json(done, sys.stdout)
    return code


# --- agents ------------------------------------------------------------------------------


def held_gpus(runs: Iterable[types_pb2.Run]) -> set[str]:
    """UUIDs of GPUs that the live attempts of `runs` hold."""
    used: set[str] = set()
    for run in runs:
        if run.state in (types_pb2.RUN_STATE_STARTING, types_pb2.RUN_STATE_RUNNING) and run.attempts:
            for node in run.attempts[-1].nodes:
                used.update(node.gpu_uuids)
    return used


def _used_gpus(client: Client) -> set[str]:
    """UUIDs of GPUs that live attempts hold (as far as the caller may see runs)."""
    return held_gpus(client.runs(states=["STARTING", "RUNNING"], limit=None))


def agent_rows(agent: types_pb2.Agent, used: set[str] | None, now: float, *, wide: bool = False) -> list[list[object]]:
    """One row per GPU model on the agent (one row for a machine without GPUs).

    FREE is exact for a machine of one model (the scheduler's count); for a mixed machine it
    comes from the GPUs live attempts hold, and reads `?` when those do not add up (runs the
    caller may not see)."""
    inv = agent.inventory
    state = _enum_word(types_pb2.AgentState, agent.state, "AGENT_STATE_")
    groups: dict[str, list[types_pb2.Gpu]] = {}
    for gpu in inv.gpus:
        groups.setdefault(gpu.model or "?", []).append(gpu)
    # A mixed machine's per-model counts are trusted only when they add up to the scheduler's total.
    consistent = used is not None and sum(1 for gpu in inv.gpus if gpu.uuid not in used) == agent.gpus_free
    pool = (agent.pool or "-") + (" (spot)" if agent.preemptible else "")
    common = [agent.name or "-", pool, state]
    tail: list[object] = [f"{agent.cpus_free:g}/{inv.cpus:g}", len(agent.attempt_ids), ago(agent.last_heartbeat, now)]
    extra: list[object] = []
    if wide:
        labels = ",".join(f"{k}={v}" for k, v in sorted(agent.labels.items()))
        ram = human_bytes(inv.memory_bytes) if inv.memory_bytes else "-"
        extra = [ram, agent.id, inv.address or "-", labels or "-"]
    if not groups:
        return [[*common, "-", "-", "-", "0/0", *tail, *extra]]
    rows: list[list[object]] = []
    for model, gpus in groups.items():
        memory = max(g.memory_total_bytes for g in gpus)
        util = sum(g.utilization for g in gpus) / len(gpus)
        if len(groups) == 1:
            free: object = agent.gpus_free
        elif used is not None and consistent:
            free = sum(1 for g in gpus if g.uuid not in used)
        else:
            free = "?"
        name = model + (" (fake)" if inv.fake_gpus else "")
        size = human_bytes(memory) if memory else "-"
        rows.append([*common, name, size, f"{util:.0f}%", f"{free}/{len(gpus)}", *tail, *extra])
    return rows


AGENT_HEADERS = ["NAME", "POOL", "STATE", "MODEL", "MEMORY", "UTIL", "FREE", "CPUS", "LIVE", "HEARTBEAT"]
AGENT_WIDE_HEADERS = ["RAM", "ID", "ADDRESS", "LABELS"]


def _agents_rows(client: Client, agents: list[types_pb2.Agent], wide: bool) -> list[list[object]]:
    mixed = any(len({g.model for g in a.inventory.gpus}) > 1 for a in agents)
    used = _used_gpus(client) if mixed else None
    now = time.time()
    return [row for agent in agents for row in agent_rows(agent, used, now, wide=wide)]


def cmd_agents(args: argparse.Namespace, client: Client) -> int:
    agents = client.agents(pool=args.pool)
    if _json(args):
        print_json(agents, sys.stdout)
    elif _quiet(args):
        for agent in agents:
            print(agent.name)
    elif not agents:
        print("no agents found (start one with `gridlab-agent --scheduler HOST:PORT`)", file=sys.stderr)
    else:
        headers = AGENT_HEADERS + (AGENT_WIDE_HEADERS if _wide(args) else [])
        _table(args, headers, _agents_rows(client, agents, _wide(args)))
    return exitcodes.OK


def _agent_done(agent: types_pb2.Agent, what: str, args: argparse.Namespace) -> int:
    if _json(args):
        print_json(agent, sys.stdout)
        return exitcodes.OK
    if _quiet(args):
        print(agent.name)
        return exitcodes.OK
    line = f"{agent.name}: {what}"
    if agent.attempt_ids:
        n = len(agent.attempt_ids)
        line += f" ({n} attempt{'s' if n != 1 else ''} still on it)"
    print(line)
    return exitcodes.OK


def cmd_agents_cordon(args: argparse.Namespace, client: Client) -> int:
    agent = client.cordon(args.name, reason=args.reason or "")
    return _agent_done(agent, "cordoned: no new runs are placed on it", args)


def cmd_agents_drain(args: argparse.Namespace, client: Client) -> int:
    agent = client.drain(args.name, deadline=args.deadline, reason=args.reason or "")
    if args.deadline is None:
        what = "draining: no new runs; running attempts finish"
    elif args.deadline == 0:
        what = "draining: running attempts are being preempted and requeued"
    else:
        what = f"draining: attempts still running in {human_duration(args.deadline)} are preempted and requeued"
    return _agent_done(agent, what, args)


def cmd_agents_uncordon(args: argparse.Namespace, client: Client) -> int:
    agent = client.uncordon(args.name)
    return _agent_done(agent, "uncordoned: takes new runs again", args)


# --- artifacts ---------------------------------------------------------------------------


def _checkpoint_row(ck: types_pb2.Checkpoint, latest: bool, now: float) -> list[object]:
    size = sum(f.size for f in ck.files)
    name = ck.name + (" (latest)" if latest else "")
    step = "-" if ck.step < 0 else ck.step
    return ["checkpoint", name, step, ck.attempt_number, "-", len(ck.files), human_bytes(size), ago(ck.time, now)]


def cmd_artifacts(args: argparse.Namespace, client: Client) -> int:
    """A run's checkpoints (the one a retry resumes from marked latest), then its artifacts."""
    listing = artifacts.list_artifacts(client, args.run)
    if _json(args):
        print_json(listing, sys.stdout)
        return exitcodes.OK
    if _quiet(args):
        for ck in listing.checkpoints:
            print(ck.name)
        for art in listing.artifacts:
            print(art.file.path)
        return exitcodes.OK
    now = time.time()
    latest = artifacts.newest(listing.checkpoints)
    rows = [_checkpoint_row(ck, ck is latest, now) for ck in listing.checkpoints]
    rows += [
        ["artifact", a.file.path, "-", a.attempt_number, a.node_rank, 1, human_bytes(a.file.size), ago(a.time, now)]
        for a in listing.artifacts
    ]
    if not rows:
        print(f"run {args.run} has no checkpoints or artifacts yet", file=sys.stderr)
        return exitcodes.OK
    _table(args, ["KIND", "NAME", "STEP", "ATTEMPT", "NODE", "FILES", "SIZE", "AGE"], rows)
    return exitcodes.OK


def cmd_download(args: argparse.Namespace, client: Client) -> int:
    """Fetch a checkpoint and/or artifacts; with neither, every artifact. Prints what it wrote."""
    written = []
    wanted = list(args.artifact or []) + ([args.path] if args.path else [])
    if args.checkpoint:
        written.append(artifacts.download_checkpoint(client, args.run, args.checkpoint, dest=args.dest))
    for path in wanted:
        written.append(artifacts.download_artifact(client, args.run, path, dest=args.dest))
    if not args.checkpoint and not wanted:
        written = artifacts.download_artifacts(client, args.run, dest=args.dest)
        if not written:
            print(f"run {args.run} has no artifacts (for a checkpoint: --checkpoint latest)", file=sys.stderr)
    for path in written:
        print(path)
    return exitcodes.OK


# --- tokens, identity, version -----------------------------------------------------------


def cmd_token_create(args: argparse.Namespace, client: Client) -> int:
    token = client.create_token(args.user, args.role, team=args.team, ttl=args.ttl)
    if _json(args):
        doc = {"user": args.user, "role": args.role, "team": args.team or "", "token": token}
        doc["expires_at"] = None if args.ttl is None else time.time() + args.ttl
        print_json(doc, sys.stdout)
    else:
        print(token)
        if sys.stderr.isatty():
            print("(shown once: store it now, e.g. in a 0600 file named by token_file)", file=sys.stderr)
    return exitcodes.OK


def _token_field(info: Any, name: str) -> Any:
    return getattr(info, name, None)


def _token_dict(info: Any) -> dict[str, Any]:
    if hasattr(info, "DESCRIPTOR"):
        return to_dict(info)
    created = _token_field(info, "created_at")
    if hasattr(created, "seconds"):
        created = timeutil.from_ts(created)
    expires = _token_field(info, "expires_at")
    if hasattr(expires, "seconds"):
        expires = timeutil.from_ts(expires) if expires.seconds or expires.nanos else None
    return {
        "id": info.id,
        "user": info.user,
        "role": info.role,
        "team": info.team or "",
        "created_at": created,
        "revoked": bool(info.revoked),
        "expires_at": expires,
    }


def _expires(info: Any, now: float) -> str:
    """EXPIRES: "never", "in 6d23h", or "expired 2h ago"."""
    expires = _token_field(info, "expires_at")
    if hasattr(expires, "seconds"):
        expires = timeutil.from_ts(expires) if expires.seconds or expires.nanos else None
    if not isinstance(expires, int | float) or not expires:
        return "never"
    if expires <= now:
        return "expired " + human_ago(now - expires)
    return "in " + human_duration(expires - now)


def _created(info: Any, now: float) -> str:
    created = _token_field(info, "created_at")
    if created is None:
        return "-"
    if hasattr(created, "seconds"):
        return ago(created, now)
    if hasattr(created, "timestamp"):
        return human_ago(now - created.timestamp())
    if isinstance(created, int | float):
        return human_ago(now - created) if created else "-"
    return str(created)


def cmd_tokens_list(args: argparse.Namespace, client: Client) -> int:
    infos = list(client.tokens())
    if not args.all:
        infos = [t for t in infos if not t.revoked]
    if _json(args):
        print_json([_token_dict(t) for t in infos], sys.stdout)
    elif _quiet(args):
        for info in infos:
            print(info.id)
    else:
        now = time.time()
        rows = [
            [t.id, t.user, t.role, t.team or "-", _created(t, now), _expires(t, now), "yes" if t.revoked else "no"]
            for t in infos
        ]
        _table(args, ["ID", "USER", "ROLE", "TEAM", "CREATED", "EXPIRES", "REVOKED"], rows)
    return exitcodes.OK


def cmd_tokens_revoke(args: argparse.Namespace, client: Client) -> int:
    code = exitcodes.OK
    done = []
    for token_id in args.ids:
        try:
            info = client.revoke_token(token_id)
        except GridlabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = code or exitcodes.for_error(exc)
            continue
        done.append(info)
        if not _json(args):
            print(info.id if _quiet(args) else f"{info.id}: revoked ({info.user}, {info.role})")
    if _json(args):
        print_json([_token_dict(t) for t in done], sys.stdout)
    return code


def _whoami_dict(me: Any) -> dict[str, Any]:
    return {k: str(getattr(me, k, "") or "") for k in ("user", "role", "team", "server_version")}


def cmd_whoami(args: argparse.Namespace, client: Client) -> int:
    me = _whoami_dict(client.whoami())
    if _json(args):
        print_json({**me, "address": client.address}, sys.stdout)
    elif _quiet(args):
        print(me["user"])
    else:
        team = f", team {me['team']}" if me["team"] else ""
        print(f"{me['user']} (role {me['role']}{team}) at {client.address}, scheduler {me['server_version'] or '?'}")
    return exitcodes.OK


def _when_arg(text: str) -> float:
    """--since/--until: a duration ago (7d, 12h, 3600) or a date or date-time (2026-11-01, 2026-11-01T09:00,
    local time unless it names a zone), as epoch seconds."""
    try:
        return time.time() - parse_duration(text, "duration")
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration ago (7d, 12h, 3600) or a date (2026-11-01, 2026-11-01T09:00), got {text!r}"
        ) from None


def cmd_usage(args: argparse.Namespace, client: Client) -> int:
    rows = client.usage(args.by, since=args.since, until=args.until, user=args.user)
    if _json(args):
        print_json([dataclasses.asdict(r) for r in rows], sys.stdout)
    elif _quiet(args):
        for r in rows:
            print(r.key)
    else:
        table = [[r.key, f"{r.gpu_hours:.2f}", f"{r.cost:.2f}", str(r.runs), f"{r.wall_hours:.2f}"] for r in rows]
        if len(rows) > 1:
            total = [sum(getattr(r, k) for r in rows) for k in ("gpu_hours", "cost", "wall_hours")]
            table.append(["TOTAL", f"{total[0]:.2f}", f"{total[1]:.2f}", "", f"{total[2]:.2f}"])
        _table(args, [args.by.upper(), "GPU_HOURS", "COST", "RUNS", "WALL_HOURS"], table)
    return exitcodes.OK


def client_version() -> str:
    """This schedctl's version: the installed distribution's, else the package's own."""
    try:
        return importlib.metadata.version("gridlab")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def cmd_version(args: argparse.Namespace) -> int:
    """The client's version always; the server's when it can be reached (exit 0 either way)."""
    document: dict[str, Any] = {"client": client_version(), "server": None, "address": None, "error": None}
    try:
        with Client(
            getattr(args, "address", None),
            getattr(args, "token", None),
            timeout=5,
            tls_ca=getattr(args, "tls_ca", None),
        ) as client:
            document["address"] = client.address
            document["server"] = _whoami_dict(client.whoami())["server_version"] or None
    except GridlabError as exc:
        document["error"] = str(exc)
    if _json(args):
        print_json(document, sys.stdout)
    elif _quiet(args):
        print(document["client"])
    else:
        print(f"Client: {document['client']}")
        if document["server"]:
            print(f"Server: {document['server']} (at {document['address']})")
        else:
            print(f"Server: not reached ({document['error']})")
    return exitcodes.OK


def cmd_completion(args: argparse.Namespace) -> int:
    """Print a static completion script (no Python runs on TAB)."""
    print(completion_script(args.shell, build_parser()), end="")
    return exitcodes.OK


# --- top ---------------------------------------------------------------------------------

_CLEAR = "\x1b[H\x1b[2J"
_HIDE_CURSOR = "\x1b[?25l"
_SHOW_CURSOR = "\x1b[?25h"
_BOLD = "\x1b[1m"
_RESET = "\x1b[0m"


def top_frame(
    address: str, agents: list[types_pb2.Agent], runs: list[types_pb2.Run], now: float, *, rows: int, ansi: bool
) -> str:
    """One screen of `top`: a summary line, the agents (a row per GPU model), the active runs,
    then the most recent finished ones while the screen has room."""
    gpus_total = sum(len(a.inventory.gpus) for a in agents)
    gpus_free = sum(a.gpus_free for a in agents)
    counts = Counter(state_word(r.state) for r in runs)
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    summary = (
        f"gridlab {address}  {stamp}  agents {len(agents)}  GPUs free {gpus_free}/{gpus_total}  "
        f"running {counts['RUNNING'] + counts['STARTING']}  queued {counts['QUEUED']}"
    )
    lines = [f"{_BOLD}{summary}{_RESET}" if ansi else summary, ""]
    used = held_gpus(runs)  # enough for per-model FREE: top lists every live run it may see
    agent_rows_ = [row for a in agents for row in agent_rows(a, used, now)]
    lines += format_table(AGENT_HEADERS, agent_rows_).splitlines() if agents else ["(no agents)"]
    lines.append("")
    active = [r for r in runs if state_word(r.state) in ACTIVE_STATES]
    active = [r for r in active if r.state != types_pb2.RUN_STATE_QUEUED] + queue_order(
        r for r in active if r.state == types_pb2.RUN_STATE_QUEUED
    )
    finished = [r for r in runs if state_word(r.state) in TERMINAL_STATES]
    room = max(len(active), rows - len(lines) - 2)
    shown = (active + finished)[:room]
    headers = ["ID", "NAME", "USER", "STATE", "GPUS", "AGE", "DURATION", "REASON"]
    run_rows = [
        [
            r.id,
            r.spec.name or "-",
            r.user or "-",
            state_word(r.state),
            _gpu_count(r.spec),
            ago(r.created_at, now),
            elapsed(r.started_at, r.finished_at, now),
            cut(_reason(r), 50) or "-",
        ]
        for r in shown
    ]
    lines += format_table(headers, run_rows).splitlines() if shown else ["(no runs)"]
    return "\n".join(lines)


def cmd_top(args: argparse.Namespace, client: Client) -> int:
    """A live view of agents and runs, redrawn every --interval seconds with plain ANSI; Ctrl-C exits 0.
    With --once (or -o json) it prints one snapshot, without escape codes, and exits."""
    once = args.once or _json(args)

    def snapshot() -> tuple[list[types_pb2.Agent], list[types_pb2.Run]]:
        # Every queued and running run (all pages: the counts and the GPUs in use must be right on a deep
        # queue), then only the most recent finished ones, which merely fill the screen.
        active = client.runs(states=list(ACTIVE_STATES), limit=None)
        finished = client.runs(states=sorted(TERMINAL_STATES), limit=TOP_FINISHED)
        return client.agents(pool=args.pool), active + finished

    if once:
        agents, runs = snapshot()
        if _json(args):
            print_json({"agents": agents, "runs": runs}, sys.stdout)
        else:
            rows = shutil.get_terminal_size((120, 40)).lines
            print(top_frame(client.address, agents, runs, time.time(), rows=rows, ansi=False))
        return exitcodes.OK

    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly, cursor restored, on kill too
    out = sys.stdout
    out.write(_HIDE_CURSOR)
    try:
        while True:
            agents, runs = snapshot()
            size = shutil.get_terminal_size((120, 40))
            frame = top_frame(client.address, agents, runs, time.time(), rows=size.lines, ansi=True)
            lines = [line[: size.columns + 16] for line in frame.splitlines()]  # +16: room for the escapes
            out.write(_CLEAR + "\n".join(lines) + "\n")
            out.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return exitcodes.OK
    finally:
        out.write(_SHOW_CURSOR + "\n")
        out.flush()
        signal.signal(signal.SIGTERM, previous)


# --- parsing -----------------------------------------------------------------------------


def env_pair(text: str) -> tuple[str, str]:
    """`KEY=VALUE` for `--env` (the value may itself contain "=")."""
    key, sep, value = text.partition("=")
    if not sep or not key or key != key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def label_pair(text: str) -> tuple[str, str]:
    """`KEY=VALUE` for `--label`: the key without spaces around it, the value as given."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or key != key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. zone=b), got {text!r}")
    return key, value


def sweep_pair(text: str) -> tuple[str, str]:
    """`NAME=EXPR` for `--sweep`: a parameter name and its values (`lr=[0.1,0.01]`, `wd=logspace(-5,-2,4)`)."""
    name, sep, expr = text.partition("=")
    if not sep or not name.strip() or not expr.strip():
        raise argparse.ArgumentTypeError(
            f"expected NAME=EXPR (e.g. lr=[0.1,0.01] or lr=logspace(-4,-1,4)), got {text!r}"
        )
    return name.strip(), expr.strip()


def _size_arg(text: str) -> int:
    try:
        return parse_size(text, "size")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size like 40GB, 40GiB or 512M (bytes without a unit), got {text!r}"
        ) from None


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text, "duration")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds (3600), a duration with units (90m, 2h, 1d) or HH:MM:SS / D-HH:MM:SS, got {text!r}"
        ) from None


def _gpu_types_arg(text: str) -> list[str]:
    """One --gpu-type value: a model, or several separated by commas ("A100,H100")."""
    models = [m.strip() for m in text.split(",")]
    if not all(models):
        raise argparse.ArgumentTypeError(f"expected a GPU model like A100 (or A100,H100), got {text!r}")
    return models


def _state(text: str) -> str:
    word = text.strip().upper().removeprefix("RUN_STATE_")
    if word not in STATES:
        raise argparse.ArgumentTypeError(f"unknown state {text!r}; use one of {', '.join(STATES)}")
    return word


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _interval_arg(text: str) -> float:
    value = _seconds_arg(text)
    if value < 0.1:
        raise argparse.ArgumentTypeError(f"expected at least 0.1 seconds, got {text!r}")
    return value


EPILOG = "exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in exitcodes.TABLE)


def build_parser() -> argparse.ArgumentParser:
    """The `schedctl` parser. Global flags are accepted before or after the command."""

    # SUPPRESS: a flag given after the command must not be reset by the default of the
    # same flag on the other level.
    def connection(title: str) -> tuple[argparse.ArgumentParser, Any]:
        parent = argparse.ArgumentParser(add_help=False)
        group = parent.add_argument_group(title)
        group.add_argument(
            "--address",
            default=argparse.SUPPRESS,
            metavar="HOST:PORT",
            help=f"scheduler address (default: ${ADDRESS_ENV}, then ~/.config/gridlab/config.toml)",
        )
        group.add_argument(
            "--token",
            default=argparse.SUPPRESS,
            help=f"bearer token (default: ${TOKEN_ENV}, then the config file; prefer those, a flag shows in `ps`)",
        )
        group.add_argument(
            "--tls-ca",
            default=argparse.SUPPRESS,
            metavar="FILE",
            help="PEM CA bundle that signed the scheduler's certificate: connect with TLS "
            "(default: $GRIDLAB_TLS_CA, then tls_ca in the config file; none: plaintext)",
        )
        return parent, group

    # `download` has its own -o (the folder, as in curl), so it takes the connection flags alone.
    connection_only, _ = connection("connection")
    common, group = connection("connection and output")
    group.add_argument(
        "-o",
        "--output",
        choices=("table", "wide", "json"),
        default=argparse.SUPPRESS,
        help="output format (default: table; json: one JSON document on stdout; `logs -f`: JSON Lines)",
    )
    group.add_argument(
        "--no-headers", action="store_true", default=argparse.SUPPRESS, help="tables without their header row"
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="print ids (or names) only"
    )

    parser = argparse.ArgumentParser(
        prog="schedctl",
        description="Submit, inspect and cancel runs on a gridlab cluster; run it (admins).",
        parents=[common],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")

    def add(
        name: str,
        func: Callable[..., int],
        help_: str,
        *,
        aliases: Sequence[str] = (),
        offline: bool = False,
        parents: Sequence[argparse.ArgumentParser] = (common,),
        where: Any = sub,
    ) -> argparse.ArgumentParser:
        p = where.add_parser(name, parents=list(parents), help=help_, description=help_, aliases=list(aliases))
        p.set_defaults(func=func, parser=p, offline=offline)
        return p

    # -- runs
    p = add("submit", cmd_submit, "queue a command (or a sweep of them); prints the run id")
    p.add_argument("--gpus", type=int, default=0, help="GPUs per node (default 0)")
    p.add_argument(
        "--gpu-type",
        type=_gpu_types_arg,
        action="extend",
        metavar="MODEL",
        help="acceptable GPU model, e.g. A100 (repeatable, or comma-separated: A100,H100; default: any)",
    )
    p.add_argument("--min-gpu-memory", type=_size_arg, metavar="SIZE", help="memory per GPU at least, e.g. 40GB, 40GiB")
    p.add_argument("--cpus", type=float, default=1, help="CPU cores per node (default 1)")
    p.add_argument("--memory", type=_size_arg, metavar="SIZE", help="RAM per node, e.g. 64GiB (default: unreserved)")
    p.add_argument("--nodes", type=_positive_int, default=1, help="machines, started together as one group (default 1)")
    p.add_argument(
        "--resources",
        metavar="SPEC",
        help="NODESxGPUSxMODEL[-MEM], e.g. 2x4xA100-40G: instead of --nodes, --gpus, --gpu-type, --min-gpu-memory",
    )
    p.add_argument("--pool", help="only agents of this pool (default: any)")
    p.add_argument(
        "--label",
        type=label_pair,
        action="append",
        metavar="KEY=VALUE",
        help="only agents with this label (repeatable: every one must match)",
    )
    p.add_argument("--priority", type=int, default=0, help="higher is placed first (default 0)")
    p.add_argument(
        "--preemptible",
        action="store_true",
        help="may be stopped for a higher-priority run (requeued, no retry spent, resumed from its checkpoint)",
    )
    p.add_argument(
        "--time-limit",
        type=_duration_arg,
        metavar="DURATION",
        help="the longest it may run: seconds, 90m, 2h, HH:MM:SS or D-HH:MM:SS (lets it backfill; default: none)",
    )
    p.add_argument("--procs-per-node", type=int, default=0, help="ranks per node (default: one per GPU, or 1)")
    p.add_argument(
        "--code",
        metavar="DIR",
        help="ship this folder (honouring .gitignore/.gridlabignore) and run the command in it on every node",
    )
    p.add_argument("--workdir", default="", metavar="PATH", help="with --code: start in this folder inside it")
    p.add_argument(
        "--entrypoint",
        metavar="FILE",
        help="a Python file to run (`python FILE`); words after -- become its arguments",
    )
    p.add_argument("--name", help="a name to recognise the run by")
    p.add_argument(
        "-e",
        "--env",
        type=env_pair,
        action="append",
        metavar="KEY=VALUE",
        help="environment variable for the run (repeatable)",
    )
    p.add_argument("--idempotency-key", metavar="KEY", help="submitting again with this key returns the same run")
    p.add_argument("--max-retries", type=int, default=0, help="retries after a failed or hung attempt (default 0)")
    p.add_argument(
        "--pip",
        action="append",
        metavar="REQUIREMENT",
        help="a pip requirement for the run's environment, e.g. 'numpy==2.1' (repeatable; cached per machine)",
    )
    p.add_argument(
        "--hang-timeout",
        type=_seconds_arg,
        metavar="SECONDS",
        help="stop (and retry) an attempt whose step has not advanced this long (needs GRIDLAB_METRICS_FILE)",
    )
    p.add_argument(
        "--sweep",
        type=sweep_pair,
        action="append",
        metavar="NAME=EXPR",
        help="sweep a parameter: {NAME} in the command becomes each value (repeatable); EXPR is [a,b,...],"
        " range(), linspace(), logspace(), uniform(), loguniform() or randint()",
    )
    p.add_argument("--strategy", choices=("grid", "random"), default="grid", help="with --sweep (default grid)")
    p.add_argument("--trials", type=_positive_int, metavar="N", help="with --sweep --strategy random: how many")
    p.add_argument("--seed", type=int, metavar="N", help="with --sweep: the seed random values are drawn from")
    p.add_argument("--metric", metavar="NAME", help="with --sweep: the metric that ranks trials (for the best one)")
    p.add_argument("--maximize", action="store_true", help="with --metric: higher is better (default: lower)")
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for the end; exit 0 succeeded, 100 failed, 101 cancelled, 102 --timeout passed",
    )
    p.add_argument(
        "-f", "--follow", action="store_true", help="stream the logs, then print the final state (implies --wait)"
    )
    p.add_argument(
        "--timeout", type=_seconds_arg, metavar="SECONDS", help="with --wait/--follow: give up after this long"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command, after --")

    p = add("runs", cmd_runs, "list runs, newest first")
    p.add_argument(
        "--state", type=_state, nargs="+", action="extend", metavar="STATE", help=f"only these ({', '.join(STATES)})"
    )
    p.add_argument("--me", action="store_true", help="only my runs (admins see everyone's by default)")
    p.add_argument("--user", help="only this user's runs (another user's: admins)")
    p.add_argument("--sweep", metavar="SWEEP", help="only the trials of this sweep")
    p.add_argument("--pool", help="only runs that asked for this pool")
    p.add_argument("--limit", type=_positive_int, default=100, help="at most this many (default 100)")

    p = add("queue", cmd_queue, "queued runs in the order the scheduler serves them, with why each waits")
    p.add_argument("--me", action="store_true", help="only my runs")
    p.add_argument("--user", help="only this user's runs")
    p.add_argument("--pool", help="only runs that asked for this pool")

    p = add(
        "describe",
        cmd_describe,
        "show one run: state, pending reason, spec, attempts, events",
        aliases=["status"],
    )
    p.add_argument("run", metavar="RUN", help="run id")

    p = add("logs", cmd_logs, "print a run's logs (RUN/RANK: one rank's)")
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new lines until the run ends (with -o json: JSON Lines, one object a line)",
    )
    p.add_argument("--tail", type=_count_arg, metavar="N", help="only the last N lines (then new ones, with -f)")
    p.add_argument("--rank", type=int, help="only this global rank (-1: the agent's own lines)")
    p.add_argument("--attempt", type=_positive_int, help="only this attempt number")
    p.add_argument("run", type=run_and_rank, metavar="RUN[/RANK]", help="run id, optionally /rank")

    p = add("wait", cmd_wait, "wait for a run to end; exit 0 succeeded, 100 failed, 101 cancelled, 102 timed out")
    p.add_argument("--timeout", type=_seconds_arg, metavar="SECONDS", help="give up after this long (exit 102)")
    p.add_argument("run", metavar="RUN", help="run id")

    p = add("cancel", cmd_cancel, "stop runs (SIGTERM, then SIGKILL after the grace period)")
    p.add_argument("--sweep", metavar="SWEEP", help="every queued or running trial of this sweep")
    p.add_argument("--user", help="every queued or running run of this user (admins)")
    p.add_argument("--grace", type=_seconds_arg, metavar="SECONDS", help="SIGTERM to SIGKILL (default: the agent's)")
    p.add_argument("--reason", help="recorded with the run")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run id")

    help_ = "set a run's priority (higher is placed first; above the users' cap, 100 by default: admins)"
    p = add("priority", cmd_priority, help_)
    p.add_argument("run", metavar="RUN", help="run id")
    p.add_argument("priority", type=int, metavar="N", help="the new priority")

    p = add("metrics", cmd_metrics, "what a run logged to GRIDLAB_METRICS_FILE: a table, or a chart of one metric")
    p.add_argument("--chart", metavar="NAME", help="draw this metric against the step as a line chart")
    p.add_argument("--width", type=_positive_int, metavar="COLUMNS", help="with --chart (default: the terminal's)")
    p.add_argument("--height", type=_positive_int, default=15, metavar="ROWS", help="with --chart (default 15)")
    p.add_argument("--attempt", type=_positive_int, help="only this attempt's records")
    p.add_argument("-f", "--follow", action="store_true", help="print records as they come until the run ends")
    p.add_argument("run", metavar="RUN", help="run id")

    p = add("artifacts", cmd_artifacts, "list a run's checkpoints and artifacts")
    p.add_argument("run", metavar="RUN", help="run id")

    help_ = "fetch a run's artifacts or a checkpoint into a folder; prints the paths written (resumes)"
    p = add("download", cmd_download, help_, parents=(connection_only,))
    p.add_argument("--checkpoint", metavar="NAME", help="a checkpoint's name, or 'latest' (what a retry resumes from)")
    p.add_argument(
        "--artifact", action="append", metavar="PATH", help="an artifact's path (repeatable); default: all of them"
    )
    p.add_argument(
        "-o", "--dest", default=".", metavar="DIR", help="the folder to write into (default: .); not an output format"
    )
    p.add_argument("run", metavar="RUN", help="run id")
    p.add_argument("path", nargs="?", metavar="PATH", help="an artifact's path (as `schedctl artifacts` lists it)")

    # -- cluster
    p = add("agents", cmd_agents, "list machines, a row per GPU model: memory, utilization, free, state, pool")
    p.add_argument("--pool", help="only this pool")
    agents_sub = p.add_subparsers(dest="agents_cmd", metavar="ACTION")

    def add_agent_action(name: str, func: Callable[..., int], help_: str) -> list[argparse.ArgumentParser]:
        """The action as `schedctl NAME AGENT` and, as before, `schedctl agents NAME AGENT`."""
        made = []
        for where in (sub, agents_sub):
            a = add(name, func, help_, where=where)
            a.add_argument("name", metavar="AGENT", help="the agent's name, as `schedctl agents` lists it")
            made.append(a)
        return made

    for a in add_agent_action("cordon", cmd_agents_cordon, "place no new runs on an agent (admins); running ones stay"):
        a.add_argument("--reason", help="why, recorded with the agent")
    for a in add_agent_action(
        "drain", cmd_agents_drain, "place no new runs on an agent and let running ones finish (admins)"
    ):
        a.add_argument(
            "--deadline",
            type=_duration_arg,
            metavar="DURATION",
            help="then preempt and requeue what is left (seconds, 30m, 2h, HH:MM:SS; 0: at once); default: wait",
        )
        a.add_argument("--reason", help="why, recorded and given to preempted attempts")
    add_agent_action("uncordon", cmd_agents_uncordon, "let an agent take new runs again, ending a cordon or drain")

    p = add("top", cmd_top, "a live view of agents and runs (Ctrl-C quits)")
    p.add_argument("--once", action="store_true", help="print one snapshot, without escape codes, and exit")
    p.add_argument("--interval", type=_interval_arg, default=2.0, metavar="SECONDS", help="redraw period (default 2)")
    p.add_argument("--pool", help="only this pool's agents")

    # -- tokens and identity
    p = sub.add_parser("tokens", aliases=["token"], parents=[common], help="create, list and revoke tokens (admins)")
    p.set_defaults(parser=p)
    tokens_sub = p.add_subparsers(dest="tokens_cmd", metavar="ACTION")
    t = add("create", cmd_token_create, "create a token; printed once", where=tokens_sub)
    t.add_argument("--user", required=True, help="who the token acts as")
    t.add_argument("--role", choices=("user", "admin", "agent"), default="user", help="default: user")
    t.add_argument("--team", help="the user's team, for team quotas")
    t.add_argument(
        "--ttl",
        type=_duration_arg,
        metavar="DURATION",
        help="how long the token works (3600, 12h, 30d); default: until revoked",
    )
    t = add("list", cmd_tokens_list, "list tokens (ids, never secrets)", where=tokens_sub)
    t.add_argument("--all", action="store_true", help="revoked ones too")
    t = add("revoke", cmd_tokens_revoke, "revoke tokens by id (or a prefix of 8+ characters of one)", where=tokens_sub)
    t.add_argument("ids", nargs="+", metavar="TOKEN_ID", help="as `schedctl tokens list` shows it")

    add("whoami", cmd_whoami, "who the token acts as: user, role, team")
    p = add("usage", cmd_usage, "GPU-hours and cost (pool_prices) of ended attempts, per user, pool or run")
    p.add_argument("--by", choices=("user", "pool", "run"), default="user", help="group by (default: user)")
    p.add_argument("--since", type=_when_arg, metavar="DURATION|DATE", help="ended since (7d, 2026-11-01)")
    p.add_argument("--until", type=_when_arg, metavar="DURATION|DATE", help="and before this; default: now")
    p.add_argument("--user", help="only this user's (admins; a user sees only their own)")
    add("version", cmd_version, "schedctl's version, and the scheduler's when reachable", offline=True)
    p = add("completion", cmd_completion, "print a bash or zsh completion script", offline=True)
    p.add_argument("shell", choices=("bash", "zsh"), help='e.g. eval "$(schedctl completion bash)"')
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check a `schedctl` command line.

    Raises:
        SystemExit: On --help (code 0) or a usage error (code 2), after printing why.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        (getattr(args, "parser", None) or parser).error("a command is required")
    if args.func is cmd_submit:
        _check_submit(args)
    elif args.func is cmd_cancel and not (args.runs or args.sweep or args.user):
        args.parser.error("name runs to cancel, or --sweep SWEEP, or --user USER")
    elif args.func is cmd_logs and args.rank is not None and args.run[1] is not None and args.rank != args.run[1]:
        args.parser.error(f"RUN/RANK names rank {args.run[1]} but --rank says {args.rank}")
    elif args.func is cmd_metrics and args.chart and args.follow:
        args.parser.error("--chart draws what is there now; drop -f (or watch it with `watch schedctl metrics ...`)")
    if _quiet(args) and args.func in NO_IDS:
        args.parser.error(f"-q prints ids only, and `{NO_IDS[args.func]}` shows no ids: leave -q out (or use -o json)")
    return args


# Commands whose output has no ids, so `-q` (ids only) has nothing to print: a usage error, not silence.
NO_IDS: dict[Callable[..., int], str] = {cmd_logs: "logs", cmd_metrics: "metrics", cmd_top: "top"}


def _check_submit(args: argparse.Namespace) -> None:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command and not args.entrypoint:
        args.parser.error("a command to run is required: schedctl submit [OPTIONS] -- CMD [ARGS ...]")
    args.command = command
    if args.follow:
        args.wait = True
    if args.timeout is not None and not args.wait:
        args.parser.error("--timeout needs --wait or --follow")
    if args.sweep and args.follow:
        args.parser.error("--follow streams one run's logs; with --sweep use --wait (and `schedctl logs RUN`)")
    names = [name for name, _ in args.sweep or ()]
    if len(set(names)) != len(names):
        twice = sorted(n for n in set(names) if names.count(n) > 1)
        args.parser.error(f"--sweep names a parameter twice: {', '.join(twice)}")
    if not args.sweep:
        for flag, value in (("--trials", args.trials), ("--seed", args.seed), ("--metric", args.metric)):
            if value is not None:
                args.parser.error(f"{flag} needs --sweep")
        if args.maximize or args.strategy != "grid":
            args.parser.error("--strategy and --maximize need --sweep")


# --- errors a person reads ---------------------------------------------------------------


def explain(exc: BaseException, args: argparse.Namespace | None = None) -> str:
    """The message for an error, with a hint where a newcomer needs one (what to run next)."""
    text = str(exc)
    code = exc.code if isinstance(exc, GridlabError) else None
    # The SDK's own messages may already say how to start a scheduler: say it once.
    told_start = "gridlab-scheduler" in text
    if isinstance(exc, ClientConfigError):
        if text.startswith("no scheduler address"):
            return text if told_start else f"{text}\nhint: no scheduler yet? {START_HINT}"
        if text.startswith("no token"):
            return f"{text}\nhint: {TOKEN_HINT}"
        return text
    if code == grpc.StatusCode.UNAVAILABLE:
        return text if told_start else f"{text}\nhint: {START_HINT}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"{text}\nhint: {TOKEN_HINT}"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return (
            f"the scheduler does not support `{getattr(args, 'cmd', 'this command')}` yet"
            f" (it runs an older gridlab than schedctl {client_version()}; upgrade it): {text}"
        )
    return text


def _quiet_broken_pipe() -> None:
    """stdout's reader went away (`schedctl logs RUN | head`): stop without a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run `schedctl` with `argv` (default: sys.argv[1:]) and return its exit code."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (exitcodes.OK if exc.code is None else exitcodes.USAGE)
    try:
        if args.offline:
            return int(args.func(args))
        with Client(
            getattr(args, "address", None), getattr(args, "token", None), tls_ca=getattr(args, "tls_ca", None)
        ) as client:
            return int(args.func(args, client))
    except GridlabError as exc:
        print(f"error: {explain(exc, args)}", file=sys.stderr)
        return exitcodes.for_error(exc)
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.ERROR
    except ValueError as exc:  # the SDK's checks of what the user typed (e.g. a sweep expression)
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED
    except BrokenPipeError:
        _quiet_broken_pipe()
        return exitcodes.OK
    except Exception as exc:  # never a traceback for a user; opt in to see one
        if os.environ.get("SCHEDCTL_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc} (set SCHEDCTL_DEBUG=1 for a traceback)", file=sys.stderr)
        return exitcodes.ERROR


if __name__ == "__main__":
    sys.exit(main())
