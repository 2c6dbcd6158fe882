"""Config layering: defaults < TOML file < GRIDLAB_* variables < flags; typos are errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gridlab.common.config import AgentConfig, ConfigError, SchedulerConfig, load

ROOT = Path(__file__).resolve().parents[1]


def test_layers_override_in_order(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('listen = "0.0.0.0:1"\nheartbeat_timeout = 12\nlog_level = "debug"\n')
    env = {"GRIDLAB_SCHEDULER_HEARTBEAT_TIMEOUT": "9.5", "GRIDLAB_SCHEDULER_LISTEN": "h:2"}
    cfg = load(
        SchedulerConfig,
        config_file=str(f),
        env_prefix="GRIDLAB_SCHEDULER_",
        environ=env,
        overrides={"listen": "h:3", "log_level": None},
    )
    assert cfg.listen == "h:3"  # flag beats env beats file
    assert cfg.heartbeat_timeout == 9.5  # env beats file
    assert cfg.log_level == "debug"  # file, since the flag was not given
    assert cfg.heartbeat_interval == 5.0  # default


def test_unknown_key_and_wrong_type_are_clear_errors(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text('schedular = "x"\n')
    with pytest.raises(ConfigError, match="unknown key.*schedular"):
        load(AgentConfig, config_file=str(f), env_prefix="GRIDLAB_AGENT_", environ={})
    f.write_text('grace_period = "soon"\n')
    with pytest.raises(ConfigError, match="grace_period must be a float"):
        load(AgentConfig, config_file=str(f), env_prefix="GRIDLAB_AGENT_", environ={})
    with pytest.raises(ConfigError, match="GRIDLAB_AGENT_GRACE_PERIOD"):
        load(AgentConfig, env_prefix="GRIDLAB_AGENT_", environ={"GRIDLAB_AGENT_GRACE_PERIOD": "x"})
    with pytest.raises(ConfigError, match="does not exist"):
        load(AgentConfig, config_file=str(tmp_path / "nope.toml"), env_prefix="GRIDLAB_AGENT_", environ={})


def test_labels_from_the_environment() -> None:
    cfg = load(AgentConfig, env_prefix="GRIDLAB_AGENT_", environ={"GRIDLAB_AGENT_LABELS": "rack=a, nvlink=yes"})
    assert cfg.labels == {"rack": "a", "nvlink": "yes"}


@pytest.mark.parametrize(
    ("name", "cls", "prefix"),
    [("scheduler.toml", SchedulerConfig, "GRIDLAB_SCHEDULER_"), ("agent.toml", AgentConfig, "GRIDLAB_AGENT_")],
)
def test_example_configs_load_and_mention_every_key(name: str, cls: type, prefix: str) -> None:
    path = ROOT / "deploy" / name
    load(cls, config_file=str(path), env_prefix=prefix, environ={})
    text = path.read_text()
    for field in dataclasses.fields(cls):
        assert field.name in text, f"deploy/{name} does not document {field.name}"
