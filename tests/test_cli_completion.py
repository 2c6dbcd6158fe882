"""`schedctl completion bash|zsh`: static scripts from the parser, exercised in a real bash."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gridlab.client import cli, completion


def complete(words: str) -> list[str]:
    """What bash offers after `words` (the last word is the one being completed; "" for a new word)."""
    script = completion.bash_script(cli.build_parser())
    parts = words.split(" ")
    array = " ".join(f"'{w}'" for w in parts)
    program = f"""{script}
COMP_WORDS=({array})
COMP_CWORD={len(parts) - 1}
_schedctl
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    out = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True, check=True).stdout
    return sorted(line for line in out.splitlines() if line)


@pytest.fixture(autouse=True)
def _needs_bash() -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash")


def test_commands_and_aliases() -> None:
    offered = complete("schedctl ")
    for name in ("submit", "runs", "describe", "status", "logs", "wait", "cancel", "metrics", "queue", "top"):
        assert name in offered
    assert complete("schedctl de") == ["describe"]
    assert complete("schedctl tok") == ["token", "tokens"]


def test_sub_commands_flags_and_choices() -> None:
    assert complete("schedctl tokens ") == ["create", "list", "revoke"]
    assert complete("schedctl agents ") == ["cordon", "drain", "uncordon"]
    assert "--deadline" in complete("schedctl drain w1 --")
    assert "--sweep" in complete("schedctl submit --")
    assert "--output" in complete("schedctl submit --")  # global flags too
    assert complete("schedctl runs --state R") == ["RUNNING"]
    assert complete("schedctl -o ") == ["json", "table", "wide"]
    assert complete("schedctl runs -o j") == ["json"]
    assert complete("schedctl completion ") == ["bash", "zsh"]
    assert complete("schedctl submit --strategy ") == ["grid", "random"]


def test_a_flag_value_is_not_taken_for_a_command() -> None:
    assert complete("schedctl --address h:1 ") == complete("schedctl ")
    assert complete("schedctl tokens --token x ") == ["create", "list", "revoke"]


def test_after_double_dash_nothing_is_offered() -> None:
    assert complete("schedctl submit -- pyth") == []


def test_zsh_script_parses() -> None:
    script = completion.zsh_script(cli.build_parser())
    assert script.startswith("#compdef schedctl")
    assert "'describe:show one run" in script
    if shutil.which("zsh") is None:
        pytest.skip("no zsh to parse it with")
    subprocess.run(["zsh", "-n", "-c", script], check=True)


def test_unknown_shell() -> None:
    with pytest.raises(ValueError, match="bash or zsh"):
        completion.script("fish", cli.build_parser())
    assert cli.main(["completion", "fish"]) == 2


ZSH_DRIVER = r"""
compadd() { print -r -- "compadd: ${@:2}"; }
_describe() { local n=$4; print -r -- "describe $3: ${(P)n}"; }
_files() { print -r -- "files PATH=$PATH"; }
compdef() { :; }
source "$1"
t() { words=("${@}"); CURRENT=${#words}; _schedctl; }
t schedctl ""
t schedctl runs --state ""
t schedctl submit -- ""
t schedctl logs ""
"""


def test_zsh_completion_keeps_path_and_completes(tmp_path: Path) -> None:
    if shutil.which("zsh") is None:
        pytest.skip("no zsh to run it with")
    script = completion.zsh_script(cli.build_parser())
    specials = {"path", "fpath", "cdpath", "manpath", "status", "argv", "options", "commands", "functions"}
    declared = re.findall(r"^\s*local(?: -a)? (.*)$", script, re.MULTILINE)
    names = {word.split("=")[0] for line in declared for word in line.split()}
    assert "cmdpath" in names
    assert not names & specials
    (tmp_path / "_schedctl").write_text(script)
    (tmp_path / "drive.zsh").write_text(ZSH_DRIVER)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        ["zsh", "-f", str(tmp_path / "drive.zsh"), str(tmp_path / "_schedctl")],
        capture_output=True, text=True, check=True, env=env, timeout=30,
    ).stdout.splitlines()  # fmt: skip
    assert out[0].startswith("describe command: submit:queue a command")
    assert out[1].startswith("compadd: ")
    assert "QUEUED" in out[1]
    assert out[2] == "files PATH=/usr/bin:/bin"  # a local `path` would have emptied it
    assert out[3] == "files PATH=/usr/bin:/bin"
