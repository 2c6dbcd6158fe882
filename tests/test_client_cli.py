"""schedctl without a scheduler: argument parsing, tables and human times."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import grpc
import pytest

from gridlab.client import cli, exitcodes
from gridlab.client.errors import ClientConfigError, GridlabError, NotFound, Unavailable
from gridlab.v1 import types_pb2


def test_table_columns_are_as_wide_as_their_content() -> None:
    text = cli.format_table(["ID", "STATE", "REASON"], [["run-1", "RUNNING", ""], ["run-22", "QUEUED", "no GPUs"]])
    assert text.splitlines() == [
        "ID      STATE    REASON",
        "run-1   RUNNING",
        "run-22  QUEUED   no GPUs",
    ]
    assert cli.format_table(["A", "B"], []) == "A  B"
    assert cli.format_table(["N"], [[3]]) == "N\n3"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (63, "1m03s"), (3600, "1h00m"), (7500, "2h05m"), (90000, "1d01h"), (-5, "0s")],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert cli.human_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "just now"), (12, "12s ago"), (300, "5m ago"), (10800, "3h ago"), (200000, "2d ago")]
)
def test_human_ago(seconds: float, text: str) -> None:
    assert cli.human_ago(seconds) == text


def test_human_bytes() -> None:
    assert cli.human_bytes(512) == "512B"
    assert cli.human_bytes(1536) == "1.5KiB"
    assert cli.human_bytes(80 * 1024**3) == "80.0GiB"


def test_submit_takes_everything_after_double_dash_as_the_command() -> None:
    args = cli.parse_args(["submit", "--gpus", "2", "--name", "x", "--", "python", "train.py", "--gpus", "8", "--"])
    assert args.command == ["python", "train.py", "--gpus", "8", "--"]
    assert args.gpus == 2
    assert args.name == "x"
    assert args.cpus == 1
    assert not args.wait


def test_submit_without_double_dash_stops_options_at_the_command() -> None:
    args = cli.parse_args(["submit", "--wait", "echo", "--wait"])
    assert args.command == ["echo", "--wait"]
    assert args.wait


def test_env_pairs_and_follow_implies_wait() -> None:
    args = cli.parse_args(["submit", "-e", "A=1", "--env", "B=x=y", "--env", "C=", "-f", "--", "true"])
    assert dict(args.env) == {"A": "1", "B": "x=y", "C": ""}
    assert args.follow
    assert args.wait


@pytest.mark.parametrize("bad", ["NOEQUALS", "=value", " A=1"])
def test_bad_env_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["submit", "--env", bad, "--", "true"]) == 2
    err = capsys.readouterr().err
    assert "expected KEY=VALUE" in err
    assert "Traceback" not in err


def test_submit_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["submit", "--gpus", "1", "--"]) == 2
    assert "a command to run is required" in capsys.readouterr().err
    assert cli.main(["submit", "--timeout", "3", "--", "true"]) == 2


def test_global_flags_work_before_and_after_the_command() -> None:
    before = cli.parse_args(["-o", "json", "--address", "h:1", "runs"])
    after = cli.parse_args(["runs", "-o", "json", "--address", "h:1"])
    for args in (before, after):
        assert args.output == "json"
        assert args.address == "h:1"
    assert not hasattr(cli.parse_args(["runs"]), "output")


def test_runs_states_are_words_in_any_case() -> None:
    args = cli.parse_args(["runs", "--state", "running", "QUEUED", "--state", "run_state_failed", "--limit", "5"])
    assert args.state == ["RUNNING", "QUEUED", "FAILED"]
    assert args.limit == 5


@pytest.mark.parametrize(
    "argv",
    [[], ["runs", "--state", "BOGUS"], ["runs", "--limit", "0"], ["token"], ["token", "create"], ["status"], ["nope"]],
)
def test_usage_errors_exit_2_without_traceback(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert "Traceback" not in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "submit" in capsys.readouterr().out


def test_token_create_and_cancel_parse() -> None:
    args = cli.parse_args(["token", "create", "--user", "alice", "--role", "admin"])
    assert (args.user, args.role, args.func) == ("alice", "admin", cli.cmd_token_create)
    args = cli.parse_args(["cancel", "--grace", "2.5", "run-a", "run-b"])
    assert (args.runs, args.grace) == (["run-a", "run-b"], 2.5)


def test_missing_settings_are_an_error_not_a_traceback(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("XDG_CONFIG_HOME", "GRIDLAB_ADDRESS", "GRIDLAB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["runs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no scheduler address")


def test_submit_takes_retries_and_a_hang_timeout_into_the_spec() -> None:
    from gridlab.client.sdk import build_spec

    args = cli.parse_args(["submit", "--max-retries", "2", "--hang-timeout", "90", "--", "python", "t.py"])
    assert (args.max_retries, args.hang_timeout) == (2, 90.0)
    spec = build_spec(args.command, max_retries=args.max_retries, hang_timeout=args.hang_timeout)
    assert spec.max_retries == 2
    assert spec.hang_timeout.ToSeconds() == 90
    assert not build_spec(["true"]).HasField("hang_timeout")  # no watchdog unless asked


def test_metrics_takes_a_run_and_follow() -> None:
    args = cli.parse_args(["metrics", "-f", "run-1"])
    assert (args.run, args.follow) == ("run-1", True)


def test_submit_takes_nodes_and_code() -> None:
    args = cli.parse_args(
        ["submit", "--nodes", "2", "--procs-per-node", "4", "--code", ".", "--workdir", "src", "--", "python", "t.py"]
    )
    assert (args.nodes, args.procs_per_node, args.code, args.workdir) == (2, 4, ".", "src")
    assert cli.parse_args(["submit", "--", "true"]).code is None
    with pytest.raises(SystemExit):
        cli.parse_args(["submit", "--nodes", "0", "--", "true"])


def test_help_lists_the_resource_flags_and_agent_actions(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["submit", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--gpu-type", "--min-gpu-memory", "--memory", "--pool", "--label", "--priority", "--preemptible"):
        assert flag in out
    assert "--time-limit DURATION" in out
    assert cli.main(["agents", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(word in out for word in ("cordon", "drain", "uncordon"))
    assert cli.main(["agents", "drain", "--help"]) == 0
    assert "--deadline DURATION" in capsys.readouterr().out


# --- the commands added for the kubectl grammar ------------------------------------------


def test_renamed_commands_keep_their_old_names() -> None:
    assert cli.parse_args(["status", "run-1"]).func is cli.cmd_describe
    assert cli.parse_args(["describe", "run-1"]).func is cli.cmd_describe
    assert cli.parse_args(["cordon", "ws"]).func is cli.parse_args(["agents", "cordon", "ws"]).func
    assert cli.parse_args(["drain", "ws", "--deadline", "1h"]).deadline == 3600
    assert cli.parse_args(["tokens", "create", "--user", "a"]).func is cli.cmd_token_create
    assert cli.parse_args(["token", "create", "--user", "a"]).func is cli.cmd_token_create


def test_new_commands_parse() -> None:
    args = cli.parse_args(["logs", "run-1/3", "-f", "--tail", "20", "--attempt", "2"])
    assert (args.run, args.follow, args.tail, args.attempt) == (("run-1", 3), True, 20, 2)
    assert cli.parse_args(["logs", "run-1"]).run == ("run-1", None)
    args = cli.parse_args(["runs", "--me", "--sweep", "swp-1", "--pool", "spot", "--no-headers", "-q"])
    assert (args.me, args.sweep, args.pool, args.no_headers, args.quiet) == (True, "swp-1", "spot", True, True)
    args = cli.parse_args(["cancel", "--sweep", "swp-1"])
    assert (args.runs, args.sweep) == ([], "swp-1")
    assert cli.parse_args(["priority", "run-1", "-3"]).priority == -3
    args = cli.parse_args(["metrics", "run-1", "--chart", "loss", "--height", "8"])
    assert (args.chart, args.height) == ("loss", 8)
    args = cli.parse_args(["top", "--once", "--interval", "0.5"])
    assert (args.once, args.interval) == (True, 0.5)
    args = cli.parse_args(
        ["submit", "--sweep", "lr=[0.1,0.01]", "--sweep", "bs=range(2)", "--metric", "loss", "--", "t"]
    )
    assert args.sweep == [("lr", "[0.1,0.01]"), ("bs", "range(2)")]
    args = cli.parse_args(["submit", "--entrypoint", "train.py", "--", "--lr", "0.1"])
    assert (args.entrypoint, args.command) == ("train.py", ["--lr", "0.1"])
    assert cli.parse_args(["version"]).offline
    assert not cli.parse_args(["runs"]).offline


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cancel"], "name runs to cancel"),
        (["logs", "run-1/x"], "expected RUN or RUN/RANK"),
        (["logs", "run-1/2", "--rank", "3"], "names rank 2 but --rank says 3"),
        (["metrics", "run-1", "--chart", "loss", "-f"], "--chart draws what is there now"),
        (["submit", "--sweep", "lr", "--", "t"], "expected NAME=EXPR"),
        (["submit", "--sweep", "a=[1]", "--sweep", "a=[2]", "--", "t"], "names a parameter twice: a"),
        (["submit", "--sweep", "a=[1]", "-f", "--", "t"], "with --sweep use --wait"),
        (["submit", "--metric", "loss", "--", "t"], "--metric needs --sweep"),
        (["top", "--interval", "0"], "at least 0.1 seconds"),
        (["completion", "fish"], "invalid choice"),
        (["logs", "r", "--tail", "-1"], "expected 0 or more"),
    ],
)
def test_new_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == exitcodes.USAGE
    assert message in capsys.readouterr().err


def test_no_headers_leaves_out_the_header_row() -> None:
    assert cli.format_table(["A", "B"], [["x", "yy"]], no_headers=True) == "x  yy"
    assert cli.format_table(["A"], [], no_headers=True) == ""


def _run(run_id: str, position: int = 0, priority: int = 0, created: int = 0) -> types_pb2.Run:
    run = types_pb2.Run(id=run_id, state=types_pb2.RUN_STATE_QUEUED, queue_position=position)
    run.spec.priority = priority
    run.created_at.seconds = created
    return run


def test_queue_order_uses_the_schedulers_positions_then_priority_then_age() -> None:
    runs = [_run("a", 2), _run("b", 1), _run("c", 0, 5, 3), _run("d", 0, 5, 1), _run("e", 0, 9, 9)]
    assert [r.id for r in cli.queue_order(runs)] == ["b", "a", "e", "d", "c"]


def test_agents_get_one_row_per_gpu_model() -> None:
    agent = types_pb2.Agent(name="ws", pool="onprem", state=types_pb2.AGENT_STATE_READY, gpus_free=2)
    for i, (model, util) in enumerate([("A100", 50.0), ("A100", 0.0), ("H100", 10.0)]):
        agent.inventory.gpus.add(uuid=f"g{i}", model=model, memory_total_bytes=80 * 1024**3, utilization=util)
    rows = cli.agent_rows(agent, {"g0"}, 0.0)
    assert [row[3:7] for row in rows] == [["A100", "80.0GiB", "25%", "1/2"], ["H100", "80.0GiB", "10%", "1/1"]]
    assert [row[6] for row in cli.agent_rows(agent, set(), 0.0)] == ["?/2", "?/1"]  # does not add up: unknown
    cpu_only = types_pb2.Agent(name="cpu", state=types_pb2.AGENT_STATE_CORDONED)
    assert cli.agent_rows(cpu_only, None, 0.0)[0][2:7] == ["CORDONED", "-", "-", "-", "0/0"]


def test_tail_counts_the_programs_lines_not_the_agents_notes() -> None:
    out, note = types_pb2.LOG_STREAM_STDOUT, types_pb2.LOG_STREAM_SYSTEM
    lines = [types_pb2.LogLine(text=t, stream=s) for t, s in [("a", out), ("b", out), ("n", note), ("c", out)]]
    assert cli.tail_start(lines, 1) == 3
    assert cli.tail_start(lines, 2) == 1
    assert cli.tail_start(lines, 9) == 0
    assert cli.tail_start(lines, 0) == 4


def test_metrics_table_and_chart_points() -> None:
    records = [{"step": 1, "loss": 0.5, "attempt": 1}, {"step": 2, "acc": 0.9, "attempt": 1}]
    headers, rows = cli.metrics_table(records)
    assert headers == ["ATTEMPT", "STEP", "ACC", "LOSS"]
    assert rows == [["1", "1", "-", "0.5"], ["1", "2", "0.9", "-"]]
    assert cli.chart_points(records, "loss") == [(1.0, 0.5)]
    assert cli.chart_points([{"loss": 2}, {"loss": True}], "loss") == [(0.0, 2.0)]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotFound("no run 'x'"), 3),
        (GridlabError("denied", grpc.StatusCode.PERMISSION_DENIED), 4),
        (GridlabError("who?", grpc.StatusCode.UNAUTHENTICATED), 4),
        (Unavailable("cannot reach"), 5),
        (GridlabError("bad spec", grpc.StatusCode.INVALID_ARGUMENT), 2),
        (GridlabError("finished", grpc.StatusCode.FAILED_PRECONDITION), 1),
        (ClientConfigError("no token"), 1),
        (RuntimeError("?"), 1),
    ],
)
def test_exit_code_for_each_error(error: BaseException, code: int) -> None:
    assert exitcodes.for_error(error) == code


def test_hints_for_what_a_newcomer_meets() -> None:
    assert "gridlab-scheduler --state-dir" in cli.explain(Unavailable("cannot reach scheduler at h:1"))
    assert "tokens create" in cli.explain(ClientConfigError("no token: pass --token"))
    assert "gridlab-scheduler" in cli.explain(ClientConfigError("no scheduler address: pass --address"))
    unimplemented = GridlabError("Method not found!", grpc.StatusCode.UNIMPLEMENTED)
    assert "upgrade it" in cli.explain(unimplemented, cli.parse_args(["tokens", "list"]))


def test_the_exit_code_table_is_documented_in_help_and_readme(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for code, meaning in exitcodes.TABLE:
        assert re.search(rf"^  {code}\s+{re.escape(meaning)}$", out, re.MULTILINE), (code, out)
        assert re.search(rf"^\|\s*{code}\s*\|", readme, re.MULTILINE), f"README lacks exit code {code}"


def test_every_command_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "cmd").choices
    for name in commands:
        pattern = rf"(^schedctl {name}\b|`schedctl {name}\b|`{name}\b|alias: {name}\b)"
        assert re.search(pattern, readme, re.MULTILINE), f"README's schedctl reference lacks {name}"


# --- review fixes: strict JSON, -q, the final line, hints said once, top on a deep queue ---------------


def test_json_output_has_no_nan_or_infinity(capsys: pytest.CaptureFixture[str]) -> None:
    from gridlab.client.output import print_json

    print_json([{"step": 1, "loss": float("nan")}, {"loss": float("inf"), "acc": [-float("inf"), 0.5]}], sys.stdout)
    out = capsys.readouterr().out

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in JSON output")

    assert json.loads(out, parse_constant=refuse) == [{"step": 1, "loss": None}, {"loss": None, "acc": [None, 0.5]}]


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["-q", "metrics", "run-1"], "metrics"),
        (["metrics", "run-1", "-q"], "metrics"),
        (["-q", "top", "--once"], "top"),
        (["logs", "-q", "run-1"], "logs"),
    ],
)
def test_quiet_is_a_usage_error_where_there_are_no_ids(
    argv: list[str], command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == exitcodes.USAGE
    assert f"-q prints ids only, and `{command}` shows no ids" in capsys.readouterr().err


def test_help_documents_json_lines_for_logs_follow_and_the_download_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["logs", "--help"]) == 0
    assert "JSON Lines" in " ".join(capsys.readouterr().out.split())
    assert cli.main(["download", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "prints the paths written" in text
    assert "not an output format" in text


def _cancelled(attempt_state: int, message: str, exit_code: int = 0) -> types_pb2.Run:
    run = types_pb2.Run(id="run-1", state=types_pb2.RUN_STATE_CANCELLED, message=message, exit_code=exit_code)
    attempt = run.attempts.add(state=attempt_state, exit_code=exit_code)
    attempt.started_at.seconds = 1
    return run


def test_a_cancelled_running_run_reads_once_without_an_exit_code() -> None:
    from gridlab.client.sdk import RunStatus

    stopped = RunStatus.from_proto(_cancelled(types_pb2.ATTEMPT_STATE_CANCELLED, "cancelled: cancelled by alice"))
    assert stopped.exit_code is None
    assert cli._final_line("run-1", stopped) == "run-1 CANCELLED: cancelled by alice"
    # A process that exited by itself before the cancel landed keeps its code.
    exited = RunStatus.from_proto(_cancelled(types_pb2.ATTEMPT_STATE_FAILED, "cancelled on request", 3))
    assert cli._final_line("run-1", exited) == "run-1 CANCELLED (exit code 3): cancelled on request"


def test_the_start_hint_is_said_once() -> None:
    from gridlab.client import sdk

    told = Unavailable(f"cannot reach the scheduler at h:1. {sdk._START_HINT}")
    assert cli.explain(told).count("gridlab-scheduler") == 1
    assert "hint:" not in cli.explain(told)
    assert cli.explain(Unavailable("cannot reach scheduler at h:1")).count("gridlab-scheduler") == 1
    config = ClientConfigError(f"no scheduler address: pass --address. {sdk._START_HINT}")
    assert cli.explain(config).count("gridlab-scheduler") == 1


class _DeepQueue:
    """A scheduler with 300 queued runs and 5 finished ones, newest first, serving `runs` like ListRuns."""

    address = "fake:1"

    def __init__(self) -> None:
        finished = [types_pb2.Run(id=f"run-f{i}", state=types_pb2.RUN_STATE_SUCCEEDED, user="u") for i in range(5)]
        queued = [types_pb2.Run(id=f"run-q{i}", state=types_pb2.RUN_STATE_QUEUED, user="u") for i in range(300)]
        self.all = finished + queued

    def agents(self, pool: str | None = None) -> list[types_pb2.Agent]:
        return []

    def runs(self, *, states: list[str] | None = None, limit: int | None = 100, **_: object) -> list[types_pb2.Run]:
        from gridlab.client.sdk import state_word

        found = [r for r in self.all if not states or state_word(r.state) in states]
        return found if limit is None else found[:limit]


def test_top_counts_every_queued_run_of_a_deep_queue(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.parse_args(["top", "--once"])
    assert cli.cmd_top(args, _DeepQueue()) == exitcodes.OK  # type: ignore[arg-type]
    assert "queued 300" in capsys.readouterr().out
