"""`schedctl`: the command line for people who use or run a gridlab cluster.

    schedctl [--address HOST:PORT] [--token T] [-o table|wide|json] COMMAND ...

    submit [--gpus N] [--gpu-type MODEL ...] [--min-gpu-memory SIZE] [--cpus N] [--memory SIZE]
           [--pool P] [--label K=V ...] [--priority N] [--preemptible] [--time-limit DURATION]
           [--name N] [-e K=V ...] [--wait|--follow] -- CMD ...
    runs [--state S ...] [--user U] [--limit N]
    status RUN            logs [-f] RUN            cancel RUN ...
    artifacts RUN         download RUN [--checkpoint NAME|latest] [--artifact PATH ...] [-o DIR]
    agents [--pool P]     agents cordon|uncordon NAME    agents drain NAME [--deadline DURATION]
    token create --user U [--role user|admin|agent]

Tables by default (columns as wide as their content, times as "12s ago"), JSON with
`-o json` for scripts. Failures print `error: <message>` and exit 1; usage errors exit 2;
never a traceback (set SCHEDCTL_DEBUG=1 to see one for an unexpected error).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from gridlab.client import artifacts
from gridlab.client.errors import GridlabError
from gridlab.client.sdk import (
    ADDRESS_ENV,
    STATES,
    TOKEN_ENV,
    Client,
    RunStatus,
    parse_duration,
    parse_size,
    state_word,
)
from gridlab.common import timeutil
from gridlab.v1 import types_pb2

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_REASON_WIDTH = 60  # long reasons are cut in tables (not in -o wide or json)


class UsageError(Exception):
    """A command line that parses but cannot mean anything; exits 2."""


# --- formatting -----------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns, each as wide as its widest cell, two spaces apart.

    The last column is not padded, so no line ends in spaces.

    Example:
        >>> print(format_table(["ID", "STATE"], [["run-1", "RUNNING"]]))
        ID     STATE
        run-1  RUNNING
    """
    table = [[str(cell) for cell in headers]] + [[str(cell) for cell in row] for row in rows]
    columns = max(len(row) for row in table)
    widths = [max((len(row[i]) for row in table if i < len(row)), default=0) for i in range(columns)]
    lines = []
    for row in table:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def human_duration(seconds: float) -> str:
    """A length of time as people say it: "45s", "1m03s", "2h05m", "3d04h"."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def human_ago(seconds: float) -> str:
    """How long ago, to one unit: "just now", "12s ago", "5m ago", "3h ago", "2d ago"."""
    total = int(seconds)
    if total < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total >= size:
            return f"{total // size}{unit} ago"
    return f"{total}s ago"


def human_bytes(count: float) -> str:
    """Bytes in binary units: "512B", "1.5KiB", "251.4GiB"."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _seconds(stamp: Timestamp) -> float | None:
    """A Timestamp as epoch seconds, or None when it is unset."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return float(timeutil.from_ts(stamp))


def _ago(stamp: Timestamp, now: float) -> str:
    when = _seconds(stamp)
    return "-" if when is None else human_ago(now - when)


def _elapsed(start: Timestamp, end: Timestamp, now: float) -> str:
    """How long something ran: from start to end, or to now while it still runs."""
    began = _seconds(start)
    if began is None:
        return "-"
    ended = _seconds(end)
    return human_duration((now if ended is None else ended) - began)


def _when(stamp: Timestamp, now: float) -> str:
    when = _seconds(stamp)
    if when is None:
        return "-"
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    return f"{local} ({human_ago(now - when)})"


def _cut(text: str, width: int = _REASON_WIDTH) -> str:
    text = " ".join(text.split())  # one line, whatever the server sent
    return text if len(text) <= width else text[: width - 3] + "..."


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


def _to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def _print_json(value: Any, out: TextIO) -> None:
    if isinstance(value, Message):
        value = _to_dict(value)
    elif isinstance(value, list):
        value = [_to_dict(v) if isinstance(v, Message) else v for v in value]
    print(json.dumps(value, indent=2, sort_keys=False), file=out)


def _print_line(line: types_pb2.LogLine, out: TextIO) -> None:
    """A rank's line to `out`; the agent's own notes to stderr, marked, so that
    `schedctl logs RUN > file` keeps only what the program printed."""
    if line.stream == types_pb2.LOG_STREAM_SYSTEM:
        print(f"gridlab: {line.text}", file=sys.stderr, flush=True)
    else:
        print(line.text, file=out, flush=True)


def _final_line(run_id: str, status: RunStatus) -> str:
    line = f"{run_id} {status.state}"
    if status.exit_code is not None:
        line += f" (exit code {status.exit_code})"
    if status.message:
        line += f": {status.message}"
    return line


# --- commands -------------------------------------------------------------------------


def _output(args: argparse.Namespace) -> str:
    return str(getattr(args, "output", "table"))


def cmd_submit(args: argparse.Namespace, client: Client) -> int:
    run = client.submit(
        args.command,
        gpus=args.gpus,
        cpus=args.cpus,
        nodes=args.nodes,
        procs_per_node=args.procs_per_node,
        env=dict(args.env or ()),
        name=args.name,
        idempotency_key=args.idempotency_key,
        max_retries=args.max_retries,
        hang_timeout=args.hang_timeout,
        requirements=args.pip or (),
        code=args.code,
        workdir=args.workdir,
        gpu_type=args.gpu_type,
        min_gpu_memory=args.min_gpu_memory,
        memory=args.memory,
        pool=args.pool,
        labels=dict(args.label) if args.label else None,
        priority=args.priority,
        preemptible=args.preemptible,
        time_limit=args.time_limit,
    )
    as_json = _output(args) == "json"
    if not as_json:
        print(run.id, flush=True)
    if not (args.wait or args.follow):
        if as_json:
            _print_json(client.get_run(run.id), sys.stdout)
        return EXIT_OK
    # --timeout bounds following the logs and waiting together, not each on its own.
    deadline = None if args.timeout is None else time.monotonic() + args.timeout

    def left() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    try:
        if args.follow:
            log_out = sys.stderr if as_json else sys.stdout  # keep stdout valid JSON
            for line in client.log_lines(run.id, follow=True, timeout=left()):
                _print_line(line, log_out)
        status = client.wait(run.id, timeout=left())
    except TimeoutError:
        state = client.status(run.id).state
        raise TimeoutError(
            f"run {run.id} is still {state} after {args.timeout:g}s; it keeps running"
            f" (stop it with `schedctl cancel {run.id}`)"
        ) from None
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {run.id} keeps running; stop it with `schedctl cancel {run.id}`",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if as_json:
        _print_json(client.get_run(run.id), sys.stdout)
    else:
        print(_final_line(run.id, status))
    return EXIT_OK if status.succeeded else EXIT_FAILED


def _runs_table(runs: list[types_pb2.Run], wide: bool, now: float) -> str:
    headers = ["ID", "NAME", "USER", "STATE", "GPUS", "AGE", "DURATION", "REASON"]
    if wide:
        headers += ["ATTEMPTS", "NODES", "COMMAND"]
    rows = []
    for run in runs:
        reason = _reason(run)
        row = [
            run.id,
            run.spec.name or "-",
            run.user or "-",
            state_word(run.state),
            _gpu_count(run.spec),
            _ago(run.created_at, now),
            _elapsed(run.started_at, run.finished_at, now),
            (reason if wide else _cut(reason)) or "-",
        ]
        if wide:
            last = run.attempts[-1] if run.attempts else None
            nodes = ",".join(n.agent_name or n.agent_id for n in last.nodes) if last else ""
            row += [str(len(run.attempts)), nodes or "-", shlex.join(run.spec.command)]
        rows.append(row)
    return format_table(headers, rows)


def cmd_runs(args: argparse.Namespace, client: Client) -> int:
    runs = client.runs(states=args.state, user=args.user, limit=args.limit)
    if _output(args) == "json":
        _print_json(runs, sys.stdout)
    elif not runs:
        print("no runs found", file=sys.stderr)
    else:
        print(_runs_table(runs, _output(args) == "wide", time.time()))
    return EXIT_OK


def _status_text(run: types_pb2.Run, now: float) -> str:
    status = RunStatus.from_proto(run)
    user = run.user + (f" (team {run.team})" if run.team else "")
    fields = [
        ("ID:", run.id),
        ("Name:", run.spec.name or "-"),
        ("User:", user or "-"),
        ("State:", status.state),
        ("Reason:", run.pending_reason or "-"),
        ("Message:", run.message or "-"),
        ("Exit code:", "-" if status.exit_code is None else status.exit_code),
        ("Attempts:", f"{status.attempts} (retries used: {run.retries_used})"),
        ("Command:", shlex.join(run.spec.command) or "-"),
        ("Resources:", _resources(run.spec)),
        ("Placement:", _placement(run.spec)),
        ("Created:", _when(run.created_at, now)),
        ("Started:", _when(run.started_at, now)),
        ("Finished:", _when(run.finished_at, now)),
        ("Duration:", _elapsed(run.started_at, run.finished_at, now)),
    ]
    text = format_table(["", ""], fields).split("\n", 1)[1]
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
                    _ago(attempt.started_at, now),
                    _elapsed(attempt.started_at, attempt.finished_at, now),
                    _cut(attempt.reason) or "-",
                ]
            )
        headers = ["ATTEMPT", "STATE", "AGENTS", "EXIT", "STARTED", "DURATION", "REASON"]
        text += "\n\n" + format_table(headers, rows)
    return text


def cmd_status(args: argparse.Namespace, client: Client) -> int:
    run = client.get_run(args.run)
    if _output(args) == "json":
        _print_json(run, sys.stdout)
    else:
        print(_status_text(run, time.time()))
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace, client: Client) -> int:
    """One JSON object per line: what the run wrote to GRIDLAB_METRICS_FILE, with its attempt number."""
    for record in client.metrics(args.run, follow=args.follow):
        print(json.dumps(record), flush=args.follow)
    return EXIT_OK


def cmd_logs(args: argparse.Namespace, client: Client) -> int:
    as_json = _output(args) == "json"
    for line in client.log_lines(args.run, follow=args.follow, attempt=args.attempt, rank=args.rank):
        if line.stream == types_pb2.LOG_STREAM_METRICS:  # `schedctl metrics` shows those
            continue
        if as_json:
            print(json.dumps(_to_dict(line)), flush=args.follow)
        else:
            _print_line(line, sys.stdout)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, client: Client) -> int:
    code = EXIT_OK
    done: list[types_pb2.Run] = []
    for run_id in args.runs:
        try:
            run = client.cancel(run_id, grace=args.grace, reason=args.reason)
        except GridlabError as exc:
            message = str(exc) if run_id in str(exc) else f"{run_id}: {exc}"
            print(f"error: {message}", file=sys.stderr)
            code = EXIT_FAILED
            continue
        done.append(run)
        if _output(args) != "json":
            state = state_word(run.state)
            print(f"{run.id}: cancelled" if state == "CANCELLED" else f"{run.id}: cancelling (still {state})")
    if _output(args) == "json":
        _print_json(done, sys.stdout)
    return code


def _gpu_models(inventory: types_pb2.Inventory) -> str:
    counts = Counter(gpu.model or "?" for gpu in inventory.gpus)
    text = ", ".join(f"{n}x{model}" for model, n in counts.items()) or "-"
    return text + " (fake)" if inventory.fake_gpus and counts else text


def _agents_table(agents: list[types_pb2.Agent], wide: bool, now: float) -> str:
    headers = ["NAME", "POOL", "STATE", "GPUS", "MODELS", "CPUS", "MEMORY", "LIVE", "HEARTBEAT"]
    if wide:
        headers += ["ID", "ADDRESS", "LABELS"]
    rows = []
    for agent in agents:
        inv = agent.inventory
        row = [
            agent.name or "-",
            agent.pool or "-",
            _enum_word(types_pb2.AgentState, agent.state, "AGENT_STATE_"),
            f"{agent.gpus_free}/{len(inv.gpus)}",
            _gpu_models(inv),
            f"{agent.cpus_free:g}/{inv.cpus:g}",
            human_bytes(inv.memory_bytes) if inv.memory_bytes else "-",
            len(agent.attempt_ids),
            _ago(agent.last_heartbeat, now),
        ]
        if wide:
            labels = ",".join(f"{k}={v}" for k, v in sorted(agent.labels.items()))
            row += [agent.id, inv.address or "-", labels or "-"]
        rows.append(row)
    return format_table(headers, rows)


def _checkpoint_row(ck: types_pb2.Checkpoint, latest: bool, now: float) -> list[object]:
    size = sum(f.size for f in ck.files)
    name = ck.name + (" (latest)" if latest else "")
    step = "-" if ck.step < 0 else ck.step
    return ["checkpoint", name, step, ck.attempt_number, "-", len(ck.files), human_bytes(size), _ago(ck.time, now)]


def cmd_artifacts(args: argparse.Namespace, client: Client) -> int:
    """A run's checkpoints (the one a retry resumes from marked latest), then its artifacts."""
    listing = artifacts.list_artifacts(client, args.run)
    if _output(args) == "json":
        _print_json(listing, sys.stdout)
        return EXIT_OK
    now = time.time()
    latest = artifacts.newest(listing.checkpoints)
    rows = [_checkpoint_row(ck, ck is latest, now) for ck in listing.checkpoints]
    rows += [
        ["artifact", a.file.path, "-", a.attempt_number, a.node_rank, 1, human_bytes(a.file.size), _ago(a.time, now)]
        for a in listing.artifacts
    ]
    if not rows:
        print(f"run {args.run} has no checkpoints or artifacts yet", file=sys.stderr)
        return EXIT_OK
    print(format_table(["KIND", "NAME", "STEP", "ATTEMPT", "NODE", "FILES", "SIZE", "AGE"], rows))
    return EXIT_OK


def cmd_download(args: argparse.Namespace, client: Client) -> int:
    """Fetch a checkpoint and/or artifacts; with neither flag, every artifact. Prints what it wrote."""
    written = []
    if args.checkpoint:
        written.append(artifacts.download_checkpoint(client, args.run, args.checkpoint, dest=args.dest))
    for path in args.artifact or []:
        written.append(artifacts.download_artifact(client, args.run, path, dest=args.dest))
    if not args.checkpoint and not args.artifact:
        written = artifacts.download_artifacts(client, args.run, dest=args.dest)
        if not written:
            print(f"run {args.run} has no artifacts (for a checkpoint: --checkpoint latest)", file=sys.stderr)
    for path in written:
        print(path)
    return EXIT_OK


def cmd_agents(args: argparse.Namespace, client: Client) -> int:
    agents = client.agents(pool=args.pool)
    if _output(args) == "json":
        _print_json(agents, sys.stdout)
    elif not agents:
        print("no agents found", file=sys.stderr)
    else:
        print(_agents_table(agents, _output(args) == "wide", time.time()))
    return EXIT_OK


def _agent_done(agent: types_pb2.Agent, what: str, args: argparse.Namespace) -> int:
    if _output(args) == "json":
        _print_json(agent, sys.stdout)
        return EXIT_OK
    line = f"{agent.name}: {what}"
    if agent.attempt_ids:
        n = len(agent.attempt_ids)
        line += f" ({n} attempt{'s' if n != 1 else ''} still on it)"
    print(line)
    return EXIT_OK


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


def cmd_token_create(args: argparse.Namespace, client: Client) -> int:
    token = client.create_token(args.user, args.role, team=args.team)
    if _output(args) == "json":
        _print_json({"user": args.user, "role": args.role, "token": token}, sys.stdout)
    else:
        print(token)
    return EXIT_OK


# --- parsing --------------------------------------------------------------------------


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


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


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
        return parent, group

    # `download` has its own -o (the folder, as in curl), so it takes the connection flags alone.
    connection_only, _ = connection("connection")
    common, group = connection("connection and output")
    group.add_argument(
        "-o",
        "--output",
        choices=("table", "wide", "json"),
        default=argparse.SUPPRESS,
        help="output format (default: table)",
    )

    parser = argparse.ArgumentParser(
        prog="schedctl",
        description="Submit, inspect and cancel runs on a gridlab cluster.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace, Client], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_, description=help_)
        p.set_defaults(func=func, parser=p)
        return p

    p = add("submit", cmd_submit, "queue a command; prints the run id")
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
    p.add_argument("--wait", action="store_true", help="wait for the run to finish; exit 0 only if it succeeded")
    p.add_argument(
        "-f", "--follow", action="store_true", help="stream the logs, then print the final state (implies --wait)"
    )
    p.add_argument(
        "--timeout", type=_seconds_arg, metavar="SECONDS", help="with --wait/--follow: give up after this long"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command, after --")

    p = add("runs", cmd_runs, "list runs")
    p.add_argument(
        "--state", type=_state, nargs="+", action="extend", metavar="STATE", help=f"only these ({', '.join(STATES)})"
    )
    p.add_argument("--user", help="another user's runs (admins)")
    p.add_argument("--limit", type=_positive_int, default=100, help="at most this many (default 100)")

    p = add("status", cmd_status, "show one run: state, reason, exit code, attempts, times")
    p.add_argument("run", metavar="RUN", help="run id")

    p = add("logs", cmd_logs, "print a run's logs")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the run ends")
    p.add_argument("--rank", type=int, help="only this global rank (-1: the agent's own lines)")
    p.add_argument("--attempt", type=_positive_int, help="only this attempt number")
    p.add_argument("run", metavar="RUN", help="run id")

    p = add("metrics", cmd_metrics, "print what a run logged to GRIDLAB_METRICS_FILE, one JSON object per line")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new records until the run ends")
    p.add_argument("run", metavar="RUN", help="run id")

    p = add("cancel", cmd_cancel, "stop runs (SIGTERM, then SIGKILL after the grace period)")
    p.add_argument("--grace", type=_seconds_arg, metavar="SECONDS", help="SIGTERM to SIGKILL (default: the agent's)")
    p.add_argument("--reason", help="recorded with the run")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run id")

    p = add("artifacts", cmd_artifacts, "list a run's checkpoints and artifacts")
    p.add_argument("run", metavar="RUN", help="run id")

    help_ = "fetch a run's checkpoint or artifacts into a folder (resumes an interrupted download)"
    p = sub.add_parser("download", parents=[connection_only], help=help_, description=help_)
    p.set_defaults(func=cmd_download, parser=p)
    p.add_argument("--checkpoint", metavar="NAME", help="a checkpoint's name, or 'latest' (what a retry resumes from)")
    p.add_argument(
        "--artifact", action="append", metavar="PATH", help="an artifact's path (repeatable); default: all of them"
    )
    p.add_argument("-o", "--dest", default=".", metavar="DIR", help="the folder to write into (default: .)")
    p.add_argument("run", metavar="RUN", help="run id")

    p = add("agents", cmd_agents, "list machines: GPUs free/total, CPUs, memory, live attempts; cordon, drain")
    p.add_argument("--pool", help="only this pool")
    agents_sub = p.add_subparsers(dest="agents_cmd", metavar="ACTION")

    def add_agent_action(name: str, func: Callable[[argparse.Namespace, Client], int], help_: str) -> Any:
        a = agents_sub.add_parser(name, parents=[common], help=help_, description=help_)
        a.set_defaults(func=func, parser=a)
        a.add_argument("name", metavar="NAME", help="the agent's name, as `schedctl agents` lists it")
        return a

    a = add_agent_action("cordon", cmd_agents_cordon, "place no new runs on an agent (admins); running ones stay")
    a.add_argument("--reason", help="why, recorded with the agent")
    a = add_agent_action(
        "drain", cmd_agents_drain, "place no new runs on an agent and let running ones finish (admins)"
    )
    a.add_argument(
        "--deadline",
        type=_duration_arg,
        metavar="DURATION",
        help="then preempt and requeue what is left (seconds, 30m, 2h, HH:MM:SS; 0: at once); default: wait",
    )
    a.add_argument("--reason", help="why, recorded and given to preempted attempts")
    add_agent_action("uncordon", cmd_agents_uncordon, "let an agent take new runs again, ending a cordon or drain")

    p = sub.add_parser("token", parents=[common], help="manage tokens (admins)", description="manage tokens")
    p.set_defaults(parser=p)
    token_sub = p.add_subparsers(dest="token_cmd", metavar="COMMAND")
    t = token_sub.add_parser("create", parents=[common], help="create a token; printed once")
    t.set_defaults(func=cmd_token_create, parser=t)
    t.add_argument("--user", required=True, help="who the token acts as")
    t.add_argument("--role", choices=("user", "admin", "agent"), default="user", help="default: user")
    t.add_argument("--team", help="the user's team, for team quotas")
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
    if args.cmd == "submit":
        command = list(args.command)
        if command[:1] == ["--"]:
            command = command[1:]
        if not command:
            args.parser.error("a command to run is required: schedctl submit [OPTIONS] -- CMD [ARGS ...]")
        args.command = command
        if args.follow:
            args.wait = True
        if args.timeout is not None and not args.wait:
            args.parser.error("--timeout needs --wait or --follow")
    return args


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
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    try:
        with Client(getattr(args, "address", None), getattr(args, "token", None)) as client:
            return int(args.func(args, client))
    except (GridlabError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_broken_pipe()
        return EXIT_OK
    except Exception as exc:  # never a traceback for a user; opt in to see one
        if os.environ.get("SCHEDCTL_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc} (set SCHEDCTL_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
