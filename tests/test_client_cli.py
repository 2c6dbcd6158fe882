"""schedctl without a scheduler: argument parsing, tables and human times."""

from __future__ import annotations

import pytest

from gridlab.client import cli


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
