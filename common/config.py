"""Daemon configuration: defaults, then a TOML file, then GRIDLAB_* variables, then flags.

Each daemon describes its keys as a dataclass whose defaults are the documented defaults;
`load` layers the sources in that order, so every key can be set in every way and a
typo in the file is an error, not a silently ignored key.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, variable or flag has a value that cannot be used."""


def default_state_dir(component: str) -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "gridlab" / component)


@dataclasses.dataclass
class SchedulerConfig:
    """Keys of `gridlab-scheduler`'s TOML file (env: GRIDLAB_SCHEDULER_<KEY>)."""

    listen: str = "127.0.0.1:7070"
    agent_listen: str = ""  # a second HOST:PORT for agents; with tls_client_ca it requires their certificates
    tls_cert: str = ""  # PEM certificate chain: with tls_key, every port serves TLS (else plaintext)
    tls_key: str = ""  # PEM private key of tls_cert
    tls_client_ca: str = ""  # PEM CA bundle: agents must present a certificate from it naming them (mTLS)
    state_dir: str = dataclasses.field(default_factory=lambda: default_state_dir("scheduler"))
    heartbeat_interval: float = 5.0  # seconds between agent heartbeats
    heartbeat_timeout: float = 30.0  # an agent silent this long is lost
    heartbeat_max_rate: float = 1000.0  # heartbeats/s from all agents at most: bigger clusters beat slower (0: off)
    placement_interval: float = 1.0  # the queue is also retried at least this often
    prepare_timeout: float = 900.0  # a gang whose nodes are not all prepared by then is released whole
    artifact_dir: str = ""  # the content-addressed blob store; default <state_dir>/artifacts
    bundle_max_bytes: int = 1024 * 1024 * 1024  # largest code bundle a user may upload (compressed)
    blob_max_bytes: int = 256 * 1024**3  # largest checkpoint or artifact file an agent may upload
    fair_share_half_life: float = 7 * 86400.0  # seconds for a user's past GPU-seconds to count half
    spot_fallback_after: int = 2  # spot interruptions of a run after which it avoids spot machines (0: never)
    max_user_priority: int = 100  # the highest priority a user (not an admin) may give a run, at submit or later
    share_runs_with_team: bool = False  # users may also read (not cancel or reprioritize) their team's runs
    max_queued_runs_per_user: int = 10_000  # queued runs one user may have; SubmitRun past it: RESOURCE_EXHAUSTED
    max_submits_per_second_per_user: float = 50.0  # one user's SubmitRun rate (burst: as many); 0 disables
    quota_user_gpus: int = 0  # GPUs one user may hold at once (0: no cap)
    quota_users: dict[str, int] = dataclasses.field(default_factory=dict)  # per-user caps that override it
    quota_teams: dict[str, int] = dataclasses.field(default_factory=dict)  # GPUs one team may hold at once
    burst_pools: list[str] = dataclasses.field(default_factory=list)  # pools used after on-prem ones (cloud, spot)
    # autoscaled pools, `[pools.NAME]` tables: provider, machine, preemptible, labels, min/max_agents, idle_seconds
    pools: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    pool_prices: dict[str, float] = dataclasses.field(default_factory=dict)  # a pool's price per GPU-hour (else 0)
    web_listen: str = ""  # HOST:PORT of the read-only web dashboard and /metrics (port 0: any free one); "" = off
    web_metrics_public: bool = False  # /metrics without a token (else: Authorization: Bearer <user or admin token>)
    log_format: str = "auto"  # auto (pretty on a terminal, else JSON), json, console
    log_level: str = "info"


@dataclasses.dataclass
class AgentConfig:
    """Keys of `gridlab-agent`'s TOML file (env: GRIDLAB_AGENT_<KEY>)."""

    scheduler: str = "127.0.0.1:7070"
    tls_ca: str = ""  # PEM CA bundle that signed the scheduler's certificate: set, the agent speaks TLS
    tls_cert: str = ""  # PEM client certificate naming this agent (CN or DNS/URI SAN), for mTLS
    tls_key: str = ""  # PEM private key of tls_cert
    token_file: str = ""  # file holding the join token; else GRIDLAB_AGENT_TOKEN
    token: str = ""
    name: str = dataclasses.field(default_factory=socket.gethostname)
    pool: str = "onprem"
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    state_dir: str = dataclasses.field(default_factory=lambda: default_state_dir("agent"))
    address: str = ""  # how peers reach this machine; default: its hostname's address
    grace_period: float = 60.0  # SIGTERM to SIGKILL when stopping an attempt
    env_dir: str = ""  # cached run environments (requirements); default <state_dir>/envs
    pip_args: str = (
        ""  # extra pip options for those builds, shell-split: e.g. "--index-url URL" or "--no-index --find-links DIR"
    )
    checkpoint_poll: float = 2.0  # seconds between scans of GRIDLAB_CHECKPOINT_DIR for finished checkpoints
    preemptible: bool = False  # a spot machine: its attempts end as interruptions when it stops (SIGTERM, notice)
    spot_notice_url: str = ""  # poll this for a reclaim notice ("ec2": EC2's instance metadata); "" off
    spot_poll: float = 2.0  # seconds between those polls
    reconnect_min: float = 0.2  # first retry delay after the scheduler is unreachable
    reconnect_max: float = 10.0  # retry delay cap (exponential backoff with jitter)
    log_format: str = "auto"
    log_level: str = "info"


def _coerce(value: str, typ: Any, key: str) -> Any:
    """Turn an environment variable's text into the field's type."""
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if typ is int:
            return int(value)
        if typ is float:
            return float(value)
        if origin is dict:
            item = typing.get_args(typ)[1] if typing.get_args(typ) else str
            pairs = [p for p in value.split(",") if p.strip()]
            out: dict[str, Any] = {}
            for pair in pairs:
                k, sep, v = pair.partition("=")
                if not sep or not k.strip():
                    raise ValueError(pair)
                out[k.strip()] = item(v.strip())
            return out
        if origin is list:
            return [v.strip() for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"{key}={value!r} is not a valid {typ}: {exc}") from None
    return value


def _check_type(key: str, value: Any, typ: Any) -> Any:
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = typing.get_origin(typ) or typ
    if isinstance(expected, types.UnionType):
        return value
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        kind = getattr(expected, "__name__", expected)
        raise ConfigError(f"{key} must be a {kind}, got {value!r}")
    return value


def load(
    cls: type[T],
    *,
    config_file: str | None = None,
    env_prefix: str,
    overrides: dict[str, Any] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> T:
    """Build `cls` from its defaults, a TOML file, `<env_prefix><KEY>` variables and flags.

    Flags (`overrides`) whose value is None are treated as not given.
    """
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file).expanduser()
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"config file {path}: unknown key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(names))}"
            )
        for key, value in data.items():
            values[key] = _check_type(key, value, hints[key])
    for name in names:
        var = f"{env_prefix}{name.upper()}"
        if var in environ:
            values[name] = _coerce(environ[var], hints[name], var)
    for key, value in (overrides or {}).items():
        if value is not None:
            if key not in names:
                raise ConfigError(f"unknown setting {key}")
            values[key] = value
    return cls(**values)
