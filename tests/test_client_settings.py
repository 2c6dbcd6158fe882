"""Where the client finds its address and token: arguments, environment, config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridlab.client.errors import ClientConfigError
from gridlab.client.sdk import Client, config_path, resolve_settings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME with no XDG_CONFIG_HOME and no GRIDLAB_* variables."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("XDG_CONFIG_HOME", "GRIDLAB_ADDRESS", "GRIDLAB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_config_path_respects_xdg(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_path() == home / ".config" / "gridlab" / "config.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
    assert config_path() == home / "xdg" / "gridlab" / "config.toml"


def test_arguments_beat_environment_beat_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(config_path(), 'address = "file:1"\ntoken = "file-token"\n')
    s = resolve_settings()
    assert (s.address, s.token) == ("file:1", "file-token")
    assert "config.toml" in s.address_source

    monkeypatch.setenv("GRIDLAB_ADDRESS", "env:2")
    s = resolve_settings()
    assert (s.address, s.token) == ("env:2", "file-token")
    assert s.address_source == "$GRIDLAB_ADDRESS"

    monkeypatch.setenv("GRIDLAB_TOKEN", "env-token")
    s = resolve_settings()
    assert (s.address, s.token) == ("env:2", "env-token")

    s = resolve_settings("arg:3", "arg-token")
    assert (s.address, s.token) == ("arg:3", "arg-token")
    assert s.token_source == "the token argument"
    assert "arg-token" not in repr(s)


def test_token_file_relative_to_config(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
    cfg = write_config(config_path(), 'address = "h:7070"\ntoken_file = "token"\n')
    (cfg.parent / "token").write_text("glt_secret\n")
    s = resolve_settings()
    assert s.token == "glt_secret"
    assert str(cfg.parent / "token") in s.token_source


def test_explicit_values_never_read_a_broken_file(home: Path) -> None:
    write_config(config_path(), "this is not toml [")
    assert resolve_settings("h:1", "t").address == "h:1"
    with pytest.raises(ClientConfigError, match="not valid TOML"):
        resolve_settings("h:1")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('adress = "h:1"\n', "unknown key"),
        ("address = 7070\n", "must be a string"),
        ('address = "h:1"\ntoken = "a"\ntoken_file = "b"\n', "not both"),
        ('address = "h:1"\ntoken_file = "missing"\n', "cannot read token_file"),
    ],
)
def test_bad_config_files_say_what_is_wrong(home: Path, text: str, match: str) -> None:
    write_config(config_path(), text)
    with pytest.raises(ClientConfigError, match=match):
        resolve_settings()


def test_missing_address_or_token_says_how_to_set_it(home: Path) -> None:
    with pytest.raises(ClientConfigError, match="GRIDLAB_ADDRESS") as excinfo:
        Client()
    assert "config.toml" in str(excinfo.value)
    with pytest.raises(ClientConfigError, match="GRIDLAB_TOKEN"):
        Client("h:7070")
    with pytest.raises(ClientConfigError, match="GRIDLAB_TOKEN"):
        Client("h:7070", "")


def test_client_checks_its_own_arguments(home: Path) -> None:
    with pytest.raises(ValueError, match="timeout"):
        Client("h:1", "t", timeout=0)
    with pytest.raises(TypeError, match="address"):
        Client(7070, "t")  # type: ignore[arg-type]
    with Client("h:1", "t", timeout=2) as client:
        assert client.address == "h:1"
        assert client.timeout == 2.0
