"""The Python SDK: `Client`, `Run` and `RunStatus` over the scheduler's gRPC API.

A thin, synchronous layer: each method is one RPC (or one stream), every unary call has
a deadline, every failure is a typed `GridlabError` with the server's message, and the
two long streams (logs, run events) resume where they broke when the scheduler restarts,
so a user sees every log line and every event once, in order.

    from gridlab.client import submit
    run = submit(["python", "train.py"], gpus=2)
    for line in run.logs(follow=True):
        print(line)
    print(run.wait().state)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import re
import shlex
import sys
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, overload

import grpc

from gridlab.client import artifacts as _artifacts
from gridlab.client.bundles import upload_bundle
from gridlab.client.errors import (
    ClientConfigError,
    DeadlineExceeded,
    GridlabError,
    NotFound,
    RunCancelled,
    RunFailed,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from gridlab.client.resources import Resources, parse_resources
from gridlab.common import auth, grpcopts, timeutil, tls
from gridlab.common.config import ConfigError
from gridlab.common.metricrecords import metric_record
from gridlab.v1 import artifacts_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, types_pb2

if TYPE_CHECKING:
    from gridlab.client.sweep_sdk import Sweep

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

T = TypeVar("T")

ADDRESS_ENV = "GRIDLAB_ADDRESS"
TOKEN_ENV = "GRIDLAB_TOKEN"  # noqa: S105 - a variable name, not a secret
TLS_CA_ENV = "GRIDLAB_TLS_CA"
CONFIG_KEYS = ("address", "token", "token_file", "tls_ca")
# Where `gridlab-scheduler` keeps its state (and admin.token) without --state-dir; named in messages.
_DEFAULT_SCHEDULER_STATE = "~/.local/share/gridlab/scheduler"
_START_HINT = (
    "No scheduler yet? Start one with `gridlab-scheduler --state-dir DIR` (it listens on 127.0.0.1:7070), "
    "or run `make demo` in a gridlab checkout for a scheduler and an agent on this machine"
)

# State words as users read and type them (the enum names without their prefix).
STATES = ("QUEUED", "STARTING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})

# A broken stream is reopened with backoff for this long before the error is raised;
# long enough to ride out a scheduler restart.
RECONNECT_WINDOW = 60.0
_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 2.0
# A first stream that fails sooner than this, having received nothing, never connected:
# the address is wrong or the scheduler is down, and the user should hear so at once.
_CONNECTED_AFTER = 1.0


# --- settings -------------------------------------------------------------------------


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """The client config file: `$XDG_CONFIG_HOME/gridlab/config.toml`, by default
    `~/.config/gridlab/config.toml`."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME")
    if not base:
        base = str(Path(environ.get("HOME") or Path.home()) / ".config")
    return Path(base) / "gridlab" / "config.toml"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where to connect and as whom, with where each value came from (for messages)."""

    address: str
    token: str = dataclasses.field(repr=False)
    address_source: str
    token_source: str
    tls_ca: str = ""  # the CA bundle that signed the scheduler's certificate; "" for plaintext
    tls_ca_source: str = ""


def _read_config(path: Path) -> dict[str, str]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClientConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise ClientConfigError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; known keys are {', '.join(CONFIG_KEYS)}"
        )
    for key, value in data.items():
        if not isinstance(value, str):
            raise ClientConfigError(f"config file {path}: {key} must be a string, got {value!r}")
    if data.get("token") and data.get("token_file"):
        raise ClientConfigError(f"config file {path}: set token or token_file, not both")
    return data


def resolve_settings(
    address: str | None = None,
    token: str | None = None,
    *,
    tls_ca: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Find the scheduler address and token: arguments, then `GRIDLAB_ADDRESS` /
    `GRIDLAB_TOKEN`, then the config file (keys `address`, `token`, `token_file`); and the
    same way the CA bundle for TLS (`GRIDLAB_TLS_CA`, key `tls_ca`; none: plaintext).

    Each value is resolved on its own, and the file is read only when a value is still
    missing, so a broken file never gets in the way of explicit settings (with an explicit
    address and token, only a valid file lends its `tls_ca`).

    Example:
        >>> resolve_settings("head:7070", "glt_...").address
        'head:7070'

    Args:
        address: `host:port` of the scheduler; empty or None means "look further".
        token: A bearer token; empty or None means "look further".
        tls_ca: A PEM CA bundle file to verify the scheduler with; empty or None means
            "look further".
        environ: The environment to read; `os.environ` by default.

    Returns:
        The resolved `Settings`.

    Raises:
        ClientConfigError: A value is missing everywhere, or the config file is invalid
            or names a token file that cannot be read.
    """
    environ = os.environ if environ is None else environ
    found: dict[str, tuple[str, str]] = {}
    if address:
        found["address"] = (address.strip(), "the address argument")
    elif environ.get(ADDRESS_ENV, "").strip():
        found["address"] = (environ[ADDRESS_ENV].strip(), f"${ADDRESS_ENV}")
    if token:
        found["token"] = (token.strip(), "the token argument")
    elif environ.get(TOKEN_ENV, "").strip():
        found["token"] = (environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}")

    if tls_ca:
        found["tls_ca"] = (tls_ca.strip(), "the tls_ca argument")
    elif environ.get(TLS_CA_ENV, "").strip():
        found["tls_ca"] = (environ[TLS_CA_ENV].strip(), f"${TLS_CA_ENV}")

    path = config_path(environ)
    if "address" not in found or "token" not in found or "tls_ca" not in found:
        try:
            data = _read_config(path)
        except ClientConfigError:
            if "address" not in found or "token" not in found:
                raise
            data = {}
        if "tls_ca" not in found and data.get("tls_ca", "").strip():
            ca_file = Path(data["tls_ca"].strip()).expanduser()
            found["tls_ca"] = (str(ca_file if ca_file.is_absolute() else path.parent / ca_file), f"tls_ca in {path}")
        if "address" not in found and data.get("address", "").strip():
            found["address"] = (data["address"].strip(), f"address in {path}")
        if "token" not in found and data.get("token", "").strip():
            found["token"] = (data["token"].strip(), f"token in {path}")
        elif "token" not in found and data.get("token_file", "").strip():
            token_file = Path(data["token_file"]).expanduser()
            if not token_file.is_absolute():
                token_file = path.parent / token_file
            try:
                value = auth.read_secret(token_file)
            except (OSError, ValueError) as exc:
                raise ClientConfigError(f"cannot read token_file {token_file} (named in {path}): {exc}") from None
            found["token"] = (value, f"token_file {token_file}")

    if "address" not in found:
        raise ClientConfigError(
            "no scheduler address: pass --address (or Client(address=...)), "
            f'set {ADDRESS_ENV}=host:7070, or add address = "host:7070" to {path}. {_START_HINT}'
        )
    if "token" not in found:
        raise ClientConfigError(
            f"no token: looked for the token argument (--token, Client(token=...)), ${TOKEN_ENV}, and token or "
            f"token_file in {path}. A scheduler's first start writes an admin token to admin.token in its state "
            f"dir (by default {_DEFAULT_SCHEDULER_STATE}/admin.token): export {TOKEN_ENV}=$(cat DIR/admin.token) "
            f'or add token_file = "DIR/admin.token" to {path}; an admin creates tokens for others with '
            "`schedctl tokens create --user NAME`"
        )
    return Settings(
        address=found["address"][0],
        token=found["token"][0],
        address_source=found["address"][1],
        token_source=found["token"][1],
        tls_ca=found.get("tls_ca", ("", ""))[0],
        tls_ca_source=found.get("tls_ca", ("", ""))[1],
    )


# --- small conversions ----------------------------------------------------------------


def state_word(state: int) -> str:
    """`RUN_STATE_RUNNING` (or its number) as the word users read: "RUNNING"."""
    try:
        name = str(types_pb2.RunState.Name(state))  # type: ignore[arg-type, unused-ignore]
    except ValueError:  # a state from a newer scheduler
        return f"UNKNOWN({state})"
    return name.removeprefix("RUN_STATE_")


def parse_state(word: str | int) -> int:
    """ "running", "RUNNING" or "RUN_STATE_RUNNING" as the enum value.

    Raises:
        ValueError: Not a run state; the message lists the valid words.
    """
    if isinstance(word, int) and not isinstance(word, bool):
        return int(word)
    if not isinstance(word, str):
        raise TypeError(f"a run state is a word like 'RUNNING', got {word!r}")
    key = word.strip().upper().removeprefix("RUN_STATE_")
    if key not in STATES:
        raise ValueError(f"unknown run state {word!r}; use one of {', '.join(STATES)}")
    return types_pb2.RunState.Value("RUN_STATE_" + key)


def _check(name: str, value: Any, types: type | tuple[type, ...], what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, types):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")


def _argv(command: str | Iterable[str]) -> list[str]:
    if isinstance(command, str):
        return shlex.split(command)
    if isinstance(command, bytes | Mapping) or not isinstance(command, Iterable):
        raise TypeError(f"command must be a string or a list of strings, got {command!r}")
    argv = list(command)
    for arg in argv:
        if not isinstance(arg, str):
            raise TypeError(f"command arguments must be strings, got {arg!r} in {argv!r}")
    return argv


def _seconds(name: str, value: float | timedelta) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    _check(name, value, (int, float), "seconds (a number) or a timedelta")
    return float(value)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}  # fmt: skip


def parse_size(value: float | str, name: str = "size") -> int:
    """A number of bytes from an int, or from a string with a unit: "40GB" (powers of 1000), "40GiB"
    (powers of 1024), or "40G" (as in Slurm's `--mem`: powers of 1024); units in any case.

    Example:
        >>> parse_size("40GiB"), parse_size("1.5GB"), parse_size("512M"), parse_size(1024)
        (42949672960, 1500000000, 536870912, 1024)

    Args:
        value: Bytes (a number), or a size string.
        name: The argument's name, for messages.

    Returns:
        The size in bytes.

    Raises:
        TypeError: Neither a number nor a string.
        ValueError: A negative number, or a string that is not a size; the message names `name`.
    """
    if isinstance(value, str):
        match = _SIZE.match(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _SIZE_UNITS:
            raise ValueError(
                f"{name} must be a size like '40GB', '40GiB' or '512M' (bytes without a unit), got {value!r}"
            )
        number = match.group(1)
        size = int(number) * _SIZE_UNITS[unit] if number.isdigit() else float(number) * _SIZE_UNITS[unit]
    else:
        _check(name, value, (int, float), "bytes (a number) or a size string like '40GB'")
        size = value
    if not math.isfinite(size) or size < 0:
        raise ValueError(f"{name} must be 0 or more bytes, got {value!r}")
    if size >= 2**63:
        raise ValueError(f"{name} is too large: {value!r}")
    return int(size)


_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NUMBER = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)$")
_DURATION_UNITS = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd])", re.IGNORECASE)
_CLOCK = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_duration(value: float | timedelta | str, name: str = "duration") -> float:
    """Seconds from a number, a timedelta, or a string: seconds ("90", "2.5"), units ("90m", "2h",
    "1d", "1h30m", "45s"), or Slurm's forms ("MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS").

    Example:
        >>> parse_duration("1-12:00:00"), parse_duration("90m"), parse_duration("1:30:00"), parse_duration(5)
        (129600.0, 5400.0, 5400.0, 5.0)

    Args:
        value: Seconds, a timedelta, or a duration string.
        name: The argument's name, for messages.

    Returns:
        The duration in seconds.

    Raises:
        TypeError: Not a number, a timedelta or a string.
        ValueError: A negative or non-finite duration, or a string that is not one; the message names
            `name` and the accepted forms.
    """
    if isinstance(value, str):
        text = "".join(value.split())
        seconds = _duration_text(text.removeprefix("-"))
        if seconds is None:
            raise ValueError(
                f"{name} must be seconds ('3600'), a duration with units ('90m', '2h', '1d', '1h30m') "
                f"or Slurm's 'HH:MM:SS' / 'D-HH:MM:SS', got {value!r}"
            )
        if text.startswith("-"):
            seconds = -seconds
    else:
        seconds = _seconds(name, value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name} must be a duration of 0 seconds or more, got {value!r}")
    return seconds


def _duration_text(text: str) -> float | None:
    """A duration string without spaces or sign as seconds, or None when it is not one."""
    if _NUMBER.match(text):
        return float(text)
    clock = _CLOCK.match(text)
    if clock is not None and (":" in text or "-" in text):
        days, first, second, third = clock.groups()
        if days is not None:  # D-HH[:MM[:SS]]
            hours, minutes, secs = int(first), int(second or 0), int(third or 0)
            if hours >= 24:
                return None
        elif third is not None:  # HH:MM:SS
            hours, minutes, secs = int(first), int(second), int(third)
        else:  # MM:SS (minutes may run past 60, as in Slurm)
            hours, minutes, secs = 0, int(first), int(second)
            if secs >= 60:
                return None
            return float(minutes * 60 + secs)
        if minutes >= 60 or secs >= 60:
            return None
        return float(int(days or 0) * 86400 + hours * 3600 + minutes * 60 + secs)
    parts = _DURATION_UNITS.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return float(sum(float(number) * _UNIT_SECONDS[unit.lower()] for number, unit in parts))


def build_spec(
    command: str | Iterable[str] | None = None,
    *,
    entrypoint: str | os.PathLike[str] | Sequence[str] | None = None,
    resources: str | None = None,
    gpus: int = 0,
    cpus: float = 1,
    nodes: int = 1,
    procs_per_node: int | None = 0,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
    max_retries: int = 0,
    hang_timeout: float | timedelta | None = None,
    requirements: Sequence[str] | None = (),
    gpu_type: str | Sequence[str] | None = None,
    min_gpu_memory: float | str | None = None,
    memory: float | str | None = None,
    pool: str | None = None,
    labels: Mapping[str, str] | None = None,
    priority: int = 0,
    preemptible: bool | None = False,
    time_limit: float | timedelta | str | None = None,
) -> types_pb2.RunSpec:
    """The `RunSpec` that `Client.submit` sends, without sending it (a dry run).

    Example:
        >>> build_spec("python train.py --lr 3e-4", gpus=2).command
        ['python', 'train.py', '--lr', '3e-4']
        >>> spec = build_spec("python train.py", gpus=4, gpu_type=["A100", "H100"], min_gpu_memory="40GB")
        >>> list(spec.resources.gpu_types), spec.resources.min_gpu_memory_bytes
        (['A100', 'H100'], 40000000000)
        >>> spec = build_spec(entrypoint="train.py", resources="2x4xA100-40G")
        >>> list(spec.command), spec.resources.nodes, spec.resources.gpus, list(spec.resources.gpu_types)
        (['python', 'train.py'], 2, 4, ['A100'])

    Args:
        command: An argv list, or a string split the way a shell would (`shlex`); it is
            run without a shell. Give this or `entrypoint`.
        entrypoint: A Python file to run, "train.py" meaning `python train.py` (a list adds its
            arguments: ["train.py", "--epochs", "3"]). Give this or `command`.
        resources: The compact form of nodes, gpus, gpu_type and min_gpu_memory: "2x4xA100-40G"
            is 2 nodes x 4 A100s of at least 40 GB (see `parse_resources`). It cannot be combined
            with any of those four set to something other than its default.
        gpus: GPUs per node.
        cpus: CPU cores per node.
        nodes: Machines the run spans; every node gets `gpus` GPUs and starts `procs_per_node`
            ranks, all in one torch.distributed group (a gang: all nodes start, or none).
        procs_per_node: Ranks per node; 0 (or None) means one per GPU, or one for a CPU run.
        env: Extra environment variables for every rank.
        name: A name to recognise the run by; need not be unique.
        max_retries: How many times a failed attempt (non-zero exit, or hung) is retried.
        hang_timeout: Stop the attempt when its step (from `GRIDLAB_METRICS_FILE`, which
            the trainer writes) has not advanced for this long; None for no watchdog.
        requirements: pip requirement lines ("numpy==2.1"); the agent builds (and caches)
            a virtualenv that also sees the machine's packages, and `python` in the
            command is that environment's.
        gpu_type: The GPU model the run needs ("A100"), or a list of acceptable models;
            None for any. Compared with the model each agent reports (`schedctl agents`).
        min_gpu_memory: Memory each GPU must have at least: bytes, or a size string
            ("40GB", "40GiB"; see `parse_size`). None for any.
        memory: RAM per node: bytes, or a size string ("64GiB"). None leaves it unreserved.
        pool: Only agents of this pool ("onprem", "cloud-spot", ...); None for any pool.
        labels: Only agents whose labels hold every one of these pairs ({"zone": "b"}).
        priority: Higher runs are placed first and may preempt lower preemptible ones.
        preemptible: The scheduler may stop this run for a higher-priority one; it is
            requeued (no retry spent) and resumes from its last checkpoint. None means False.
        time_limit: The longest the run may run: seconds, a timedelta, or a string ("2h",
            "90m", "1-12:00:00"; see `parse_duration`). Runs with a limit can backfill
            into holes the scheduler keeps for bigger runs. None for no limit.

    Returns:
        The `RunSpec`.

    Raises:
        TypeError: An argument has the wrong type; the message names it.
        ValueError: Both or neither of `command` and `entrypoint`; a resource, size or duration
            string that cannot be read; `resources` together with one of the values it sets; a
            negative size or duration, or a blank GPU model. Other values are checked by the scheduler.
    """
    argv = _command_argv(command, entrypoint)
    if resources is not None:
        nodes, gpus, gpu_type, min_gpu_memory = _apply_resources(
            resources, nodes=nodes, gpus=gpus, gpu_type=gpu_type, min_gpu_memory=min_gpu_memory
        )
    if procs_per_node is None:
        procs_per_node = 0
    if preemptible is None:
        preemptible = False
    if requirements is None:
        requirements = ()
    _check("gpus", gpus, int, "an int")
    _check("cpus", cpus, (int, float), "a number")
    _check("nodes", nodes, int, "an int")
    _check("procs_per_node", procs_per_node, int, "an int")
    if name is not None:
        _check("name", name, str, "a string")
    env_map: dict[str, str] = {}
    if env is not None:
        if not isinstance(env, Mapping):
            raise TypeError(f"env must be a mapping of str to str, got {env!r}")
        for key, value in env.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"env must map str to str, got {key!r}: {value!r}")
            env_map[key] = value
    _check("max_retries", max_retries, int, "an int")
    spec = types_pb2.RunSpec(
        name=name or "",
        command=argv,
        env=env_map,
        resources=types_pb2.Resources(nodes=nodes, gpus=gpus, cpus=float(cpus), procs_per_node=procs_per_node),
        max_retries=max_retries,
    )
    if isinstance(requirements, str):
        raise TypeError("requirements must be a list of requirement lines, e.g. ['numpy==2.1'], not a string")
    requirements = list(requirements)  # an iterator is read once, here
    for line in requirements:
        _check("requirements", line, str, "strings")
    spec.requirements.extend(requirements)
    if hang_timeout is not None:
        spec.hang_timeout.CopyFrom(timeutil.duration(_seconds("hang_timeout", hang_timeout)))
    spec.resources.gpu_types.extend(_gpu_types(gpu_type))
    if min_gpu_memory is not None:
        spec.resources.min_gpu_memory_bytes = parse_size(min_gpu_memory, "min_gpu_memory")
    if memory is not None:
        spec.resources.memory_bytes = parse_size(memory, "memory")
    if pool is not None:
        _check("pool", pool, str, "a pool name (a string) or None")
        spec.pool = pool
    if labels is not None:
        if not isinstance(labels, Mapping):
            raise TypeError(f"labels must be a mapping of str to str, like {{'zone': 'b'}}, got {labels!r}")
        for key, value in labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"labels must map str to str, got {key!r}: {value!r}")
            spec.labels[key] = value
    _check("priority", priority, int, "an int")
    if not -(2**31) <= priority < 2**31:
        raise ValueError(f"priority must fit in 32 bits (the scheduler allows about ±1,000,000), got {priority}")
    spec.priority = priority
    if not isinstance(preemptible, bool):
        raise TypeError(f"preemptible must be True or False, got {type(preemptible).__name__} {preemptible!r}")
    spec.preemptible = preemptible
    if time_limit is not None:
        spec.time_limit.CopyFrom(timeutil.duration(parse_duration(time_limit, "time_limit")))
    return spec


def _command_argv(
    command: str | Iterable[str] | None, entrypoint: str | os.PathLike[str] | Sequence[str] | None
) -> list[str]:
    """The argv of a run: `command` as given, or `python <entrypoint>`; exactly one of them."""
    if command is not None and entrypoint is not None:
        raise ValueError(f"give a command or an entrypoint, not both (command={command!r}, entrypoint={entrypoint!r})")
    if entrypoint is None:
        if command is None:
            raise ValueError("nothing to run: give a command (['python', 'train.py']) or an entrypoint ('train.py')")
        return _argv(command)
    if isinstance(entrypoint, str | os.PathLike):
        path = os.fspath(entrypoint)
        if not isinstance(path, str) or not path.strip():
            raise ValueError(f"entrypoint must name a Python file like 'train.py', got {entrypoint!r}")
        return ["python", path]
    args = _argv(entrypoint)
    if not args or not args[0].strip():
        raise ValueError(f"entrypoint must name a Python file like 'train.py', got {entrypoint!r}")
    return ["python", *args]


def _apply_resources(
    text: str,
    *,
    nodes: int,
    gpus: int,
    gpu_type: str | Sequence[str] | None,
    min_gpu_memory: float | str | None,
) -> tuple[int, int, str | Sequence[str] | None, float | str | None]:
    """(nodes, gpus, gpu_type, min_gpu_memory) from a resource string, refusing a value also set on its own."""
    parsed: Resources = parse_resources(text)
    explicit = {"nodes": nodes != 1, "gpus": gpus != 0, "gpu_type": gpu_type is not None}
    explicit["min_gpu_memory"] = min_gpu_memory is not None
    given = {"nodes": nodes, "gpus": gpus, "gpu_type": gpu_type, "min_gpu_memory": min_gpu_memory}
    both = [key for key, set_too in explicit.items() if set_too]
    if both:
        also = ", ".join(f"{key}={given[key]!r}" for key in both)
        raise ValueError(
            f"resources={text!r} and {also} both say what the run needs: give the resource string alone "
            f"(it sets nodes, gpus, gpu_type and min_gpu_memory) or those arguments alone"
        )
    return parsed.nodes, parsed.gpus, parsed.gpu_type, parsed.min_gpu_memory


def _gpu_types(gpu_type: str | Sequence[str] | None) -> list[str]:
    """`gpu_type` as a list of models: one string, or a sequence of them, stripped."""
    if gpu_type is None:
        return []
    models = [gpu_type] if isinstance(gpu_type, str) else gpu_type
    if isinstance(models, bytes | Mapping) or not isinstance(models, Iterable):
        raise TypeError(f"gpu_type must be a GPU model like 'A100' or a list of them, got {gpu_type!r}")
    out = []
    for model in list(models):
        if not isinstance(model, str):
            raise TypeError(f"gpu_type must be a GPU model like 'A100' or a list of them, got {model!r} in it")
        if not model.strip():
            raise ValueError(f"gpu_type must name GPU models like 'A100', got a blank one in {gpu_type!r}")
        out.append(model.strip())
    return out


_NOT_PRINTED = (types_pb2.LOG_STREAM_SYSTEM, types_pb2.LOG_STREAM_METRICS)  # the agent's notes; metrics
METRICS_RANK = -2  # the LogLine rank of forwarded metrics records


# --- RunStatus and Run ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunStatus:
    """A snapshot of a run's state, in words.

    Attributes:
        state: "QUEUED", "STARTING", "RUNNING", "SUCCEEDED", "FAILED" or "CANCELLED".
        pending_reason: Why a queued run is not placed yet ("" otherwise).
        exit_code: The last attempt's exit code once the run has finished and a process
            exited; None before that, and for a cancelled run whose process was stopped (or never started).
        message: The final reason, in words.
        attempts: How many placements the run has had so far.
    """

    state: str
    pending_reason: str = ""
    exit_code: int | None = None
    message: str = ""
    attempts: int = 0

    @property
    def done(self) -> bool:
        """True once the run has SUCCEEDED, FAILED or been CANCELLED."""
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCEEDED"

    @classmethod
    def from_proto(cls, run: types_pb2.Run) -> RunStatus:
        state = state_word(run.state)
        exit_code: int | None = None
        # A cancelled run has an exit code only when its last process exited by itself before the cancel
        # landed; an attempt that was stopped (CANCELLED, PREEMPTED, ...) never set one.
        exited = (types_pb2.ATTEMPT_STATE_SUCCEEDED, types_pb2.ATTEMPT_STATE_FAILED)
        if state in ("SUCCEEDED", "FAILED") or (
            state == "CANCELLED" and run.attempts and run.attempts[-1].state in exited
        ):
            exit_code = run.exit_code
        return cls(
            state=state,
            pending_reason=run.pending_reason,
            exit_code=exit_code,
            message=run.message,
            attempts=len(run.attempts),
        )


@dataclasses.dataclass(frozen=True)
class UsageRow:
    """One line of `Client.usage`: a user's, pool's or run's GPU-hours and cost (pool_prices) over the attempts
    that ended in the window, the number of runs they came from, and the nodes' running time in hours."""

    key: str
    gpu_hours: float
    cost: float
    runs: int
    wall_hours: float


class Metric(NamedTuple):
    """One number a run logged: a numeric field of one record in `GRIDLAB_METRICS_FILE`.

    Attributes:
        step: The record's "step" (its position among its attempt's records when it has none).
        name: The field's name ("train_loss").
        value: The value.
        attempt: The attempt that logged it (1, 2, ...).
    """

    step: int
    name: str
    value: float
    attempt: int


# Fields of a metrics record that say where it is, not what was measured.
_NOT_METRICS = frozenset({"step", "epoch", "attempt", "time"})


def metric_rows(records: Iterable[Mapping[str, Any]]) -> list[Metric]:
    """Metrics records (dicts, as `Client.metrics` yields them) as one `Metric` per numeric field.

    Fields "step", "epoch", "attempt" and "time", and values that are not finite numbers
    (booleans, strings, None), are left out.

    Example:
        >>> metric_rows([{"step": 10, "epoch": 0, "loss": 0.5, "acc": 0.9, "attempt": 1}])
        [Metric(step=10, name='loss', value=0.5, attempt=1), Metric(step=10, name='acc', value=0.9, attempt=1)]
    """
    rows: list[Metric] = []
    seen: dict[int, int] = {}  # records per attempt so far
    for record in records:
        attempt = record.get("attempt", 0)
        attempt = attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 0
        index = seen.get(attempt, 0)
        seen[attempt] = index + 1
        step = record.get("step")
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        if not isinstance(step, int) or isinstance(step, bool):
            step = index
        for name, value in record.items():
            if name in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                rows.append(Metric(step=step, name=name, value=float(value), attempt=attempt))
    return rows


class Run:
    """A handle on one run: its status, logs, metrics, checkpoints and artifacts; wait for it, cancel it.

    `Client.submit` returns one; `Client.run(run_id)` makes one for an existing run.

    Example:
        >>> run = client.submit("python train.py", resources="4xA100")
        >>> run.wait(timeout=3600)  # raises RunFailed if it fails
        >>> [m.value for m in run.metrics() if m.name == "val_loss"]
        [0.71, 0.52]
    """

    def __init__(self, client: Client, run_id: str, *, name: str | None = None) -> None:
        _check("run_id", run_id, str, "a string")
        self._client = client
        self._id = run_id
        self._name = name

    @property
    def id(self) -> str:
        """The run's id ("run-...")."""
        return self._id

    @property
    def name(self) -> str:
        """The run's name ("" when it has none); asked from the scheduler once if the handle was made from an id."""
        if self._name is None:
            self._name = str(self._client.get_run(self._id).spec.name)
        return self._name

    def status(self) -> RunStatus:
        """The run's current status, with why it is still queued (`pending_reason`). See `Client.status`."""
        return self._client.status(self._id)

    def wait(self, timeout: float | None = None, raise_on_failure: bool = True) -> RunStatus:
        """Block until the run has finished, and raise unless it succeeded.

        Example:
            >>> run.wait(timeout=3600).state
            'SUCCEEDED'
            >>> run.wait(raise_on_failure=False).exit_code
            3

        Args:
            timeout: Seconds to wait at most; None waits as long as it takes.
            raise_on_failure: Raise `RunFailed` / `RunCancelled` when the run ends FAILED /
                CANCELLED; False returns the final status whatever it is (as `Client.wait` does).

        Returns:
            The final `RunStatus`.

        Raises:
            RunFailed: The run ended FAILED; `.status` has its exit code and message.
            RunCancelled: The run ended CANCELLED.
            TimeoutError: The run had not finished after `timeout` seconds.
            NotFound: No such run, or another user's.
        """
        status = self._client.wait(self._id, timeout=timeout)
        if raise_on_failure and status.state == "FAILED":
            code = f" with exit code {status.exit_code}" if status.exit_code is not None else ""
            why = f": {status.message}" if status.message else ""
            raise RunFailed(
                f"run {self._id} FAILED{code}{why} (its output: `schedctl logs {self._id}`)",
                run_id=self._id,
                status=status,
            )
        if raise_on_failure and status.state == "CANCELLED":
            why = f": {status.message}" if status.message else ""
            raise RunCancelled(f"run {self._id} was CANCELLED{why}", run_id=self._id, status=status)
        return status

    def logs(
        self,
        follow: bool = False,
        timeout: float | None = None,
        *,
        rank: int | None = None,
        attempt: int | None = None,
    ) -> Iterator[str]:
        """The lines the run's ranks printed, every line once and in order. See `Client.logs`.

        Example:
            >>> for line in run.logs(follow=True, rank=0):
            ...     print(line)

        Args:
            follow: Keep waiting for new lines until the run has finished.
            timeout: Seconds the whole iteration may take; None for no limit.
            rank: Only this global rank's lines; None for every rank.
            attempt: Only this attempt's lines (1, 2, ...); None for every attempt.

        Returns:
            An iterator of lines, without their newline.
        """
        return self._client.logs(self._id, follow=follow, rank=rank, attempt=attempt, timeout=timeout)

    def metrics(self) -> list[Metric]:
        """What the run has logged so far to `GRIDLAB_METRICS_FILE`, one row per number.

        Example:
            >>> [(m.step, m.value) for m in run.metrics() if m.name == "train_loss"]
            [(100, 0.91), (200, 0.62)]

        Returns:
            A list of `Metric(step, name, value, attempt)`, in the order logged, every attempt's
            (see `metric_rows`).

        Raises:
            NotFound: No such run, or another user's.
        """
        return metric_rows(self._client.metrics(self._id))

    def checkpoints(self) -> list[types_pb2.Checkpoint]:
        """The run's complete checkpoints, oldest first (`gridlab.v1.Checkpoint`: name, step, files).

        Raises:
            NotFound: No such run, or another user's.
        """
        return list(_artifacts.list_artifacts(self._client, self._id).checkpoints)

    def artifacts(self) -> list[types_pb2.Artifact]:
        """The files the run left in `GRIDLAB_ARTIFACT_DIR`: the newest copy of each path, by path.

        Raises:
            NotFound: No such run, or another user's.
        """
        chosen = _artifacts.newest_artifacts(_artifacts.list_artifacts(self._client, self._id).artifacts)
        return [chosen[path] for path in sorted(chosen)]

    def download(self, path: str, dest: str | os.PathLike[str] = ".") -> Path:
        """Fetch an artifact, or a checkpoint, into the folder `dest`.

        Files are verified against their digest and an interrupted download resumes when run again.

        Example:
            >>> run.download("model.onnx", dest="out")
            PosixPath('out/model.onnx')
            >>> run.download("latest", dest="ckpt")  # the checkpoint a retry would resume from
            PosixPath('ckpt/step-200')

        Args:
            path: An artifact's path, a checkpoint's name, or "latest" for the newest checkpoint.
            dest: The folder to write into; created if missing.

        Returns:
            Where the artifact, or the checkpoint (a file or a folder), now is.

        Raises:
            NotFound: The run has no artifact or checkpoint of that name; the message lists what it has.
        """
        _check("path", path, str, "an artifact's path or a checkpoint's name (a string)")
        listing = _artifacts.list_artifacts(self._client, self._id)
        if path in _artifacts.newest_artifacts(listing.artifacts):
            return _artifacts.download_artifact(self._client, self._id, path, dest=dest)
        if path == _artifacts.LATEST or any(c.name == path for c in listing.checkpoints):
            return _artifacts.download_checkpoint(self._client, self._id, path, dest=dest)
        arts = sorted({a.file.path for a in listing.artifacts})[:10]
        ckpts = sorted({c.name for c in listing.checkpoints})[:10]
        raise NotFound(
            f"run {self._id} has no artifact or checkpoint {path!r} "
            f"(artifacts: {', '.join(arts) or 'none'}; checkpoints: {', '.join(ckpts) or 'none'})"
        )

    def cancel(self, grace: float | timedelta | None = None) -> RunStatus:
        """Ask the scheduler to stop the run; returns at once. See `Client.cancel`.

        Raises:
            FailedPrecondition: The run has already finished.
        """
        return RunStatus.from_proto(self._client.cancel(self._id, grace=grace))

    def attempts(self) -> list[types_pb2.Attempt]:
        """The run's placements, oldest first (`gridlab.v1.Attempt`: number, state, nodes, exit code, reason).

        Raises:
            NotFound: No such run, or another user's.
        """
        return list(self._client.get_run(self._id).attempts)

    def __repr__(self) -> str:
        name = "" if self._name is None else f", name={self._name!r}"
        return f"Run(id={self._id!r}{name})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)


def _last_cursor(batch: types_pb2.LogLine) -> int:
    """The cursor of a batch's last line (0 when the scheduler set none)."""
    return batch.cursor + max(1, batch.count) - 1 if batch.cursor else 0


def _single_lines(
    batches: Generator[tuple[types_pb2.LogLine, list[str]], None, None],
) -> Generator[types_pb2.LogLine, None, None]:
    """Batches as one LogLine per line (each a copy of its batch with the line's text, seq and cursor)."""
    with contextlib.closing(batches):
        for batch, texts in batches:
            if batch.count <= 1 and len(texts) == 1:
                yield batch
                continue
            template = types_pb2.LogLine()
            template.CopyFrom(batch)
            template.count = 0
            template.text = ""
            seq, cursor = batch.seq, batch.cursor
            for i, text in enumerate(texts):
                line = types_pb2.LogLine()
                line.CopyFrom(template)
                line.seq = seq + i
                if cursor:
                    line.cursor = cursor + i
                line.text = text
                yield line


def _timing_out(items: Generator[T, None, None], message: str) -> Generator[T, None, None]:
    """`items`, whose deadline (DeadlineExceeded) becomes TimeoutError(message)."""
    with contextlib.closing(items):
        try:
            yield from items
        except DeadlineExceeded:
            raise TimeoutError(message) from None


# --- Client ---------------------------------------------------------------------------


class Client:
    """A connection to the scheduler, authenticated with a bearer token.

    Example:
        >>> with Client("head:7070", token) as client:
        ...     run = client.submit(["python", "train.py"], gpus=4)
        ...     run.wait()

    Args:
        address: `host:port` of the scheduler; else `GRIDLAB_ADDRESS`, else the config
            file (`~/.config/gridlab/config.toml`).
        token: Bearer token; else `GRIDLAB_TOKEN`, else the config file's `token` or
            `token_file`.
        timeout: Deadline in seconds for every unary call (streams have none).
        tls_ca: PEM CA bundle that signed the scheduler's certificate, which turns TLS on;
            else `GRIDLAB_TLS_CA`, else the config file's `tls_ca`; none: plaintext.

    Raises:
        ClientConfigError: No address or token was found, the config file is invalid, or
            the CA bundle cannot be read.
    """

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        tls_ca: str | os.PathLike[str] | None = None,
    ) -> None:
        if address is not None:
            _check("address", address, str, "a 'host:port' string")
        if token is not None:
            _check("token", token, str, "a string")
        _check("timeout", timeout, (int, float), "a number of seconds")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._settings = resolve_settings(address, token, tls_ca=None if tls_ca is None else os.fspath(tls_ca))
        self.address = self._settings.address
        self.timeout = float(timeout)
        self._metadata = auth.metadata(self._settings.token)  # explicit: call credentials need TLS
        try:
            credentials = tls.channel_credentials(self._settings.tls_ca)
        except ConfigError as exc:
            raise ClientConfigError(f"{exc} (tls_ca from {self._settings.tls_ca_source})") from None
        if credentials is None:
            self._channel = grpc.insecure_channel(self.address, options=grpcopts.CLIENT_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.secure_channel(self.address, credentials, options=grpcopts.CLIENT_CHANNEL_OPTIONS)
        self._stub = scheduler_pb2_grpc.SchedulerStub(self._channel)

    # -- plumbing

    def _error(self, err: grpc.RpcError, timeout: float | None = None) -> GridlabError:
        error = from_rpc_error(err, address=self.address, timeout=timeout)
        if isinstance(error, Unauthenticated):
            error = Unauthenticated(f"{error.message} (the token came from {self._settings.token_source})")
        elif isinstance(error, Unavailable):
            details_fn = getattr(err, "details", None)
            details = (details_fn() if callable(details_fn) else None) or ""
            settings = self._settings
            if hint := tls.explain_failure(
                details, address=self.address, ca=settings.tls_ca, ca_source=settings.tls_ca_source
            ):
                return Unavailable(f"{hint} (the address came from {settings.address_source})")
            error = Unavailable(
                f"cannot reach the scheduler at {self.address} (from {self._settings.address_source})"
                + (f": {details}" if details else "")
                + ". Is it running? Point at another with --address HOST:PORT or GRIDLAB_ADDRESS=HOST:PORT. "
                + _START_HINT
            )
        elif isinstance(error, NotFound) and error.message.startswith("no run "):
            error = NotFound(f"{error.message} (`schedctl runs` lists yours; another user's runs are hidden)")
        return error

    def _unary(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise self._error(err, self.timeout) from None

    def _resumable(
        self,
        open_stream: Callable[[int, float | None], Any],
        items: Callable[[Any], Iterable[T]],
        position: Callable[[T], int],
        *,
        start: int = 0,
        deadline: float | None = None,
    ) -> Generator[T, None, None]:
        """Items of a server stream, reopened after `position` of the last item whenever
        it breaks with UNAVAILABLE; items at or before that position are skipped.

        `deadline` (monotonic) bounds the whole iteration with DeadlineExceeded.
        """
        pos = start
        reopened = 0
        failing_since: float | None = None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded("deadline reached", grpc.StatusCode.DEADLINE_EXCEEDED)
            opened = time.monotonic()
            received = False
            call = open_stream(pos, remaining)
            try:
                for response in call:
                    received = True
                    failing_since = None
                    for item in items(response):
                        at = position(item)
                        if at and at <= pos:
                            continue  # sent again after a reconnect
                        pos = max(pos, at)
                        yield item
                return
            except grpc.RpcError as err:
                error = self._error(err, remaining)
                if not isinstance(error, Unavailable):
                    raise error from None
                now = time.monotonic()
                if not received and not reopened and now - opened < _CONNECTED_AFTER:
                    raise error from None  # never connected: say so now
                failing_since = failing_since or now
                if now - failing_since > RECONNECT_WINDOW:
                    raise error from None
                pause = min(_BACKOFF_MAX, _BACKOFF_MIN * 2 ** min(reopened, 10))
                pause *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto
                if deadline is not None:
                    pause = max(0.0, min(pause, deadline - now))
                time.sleep(pause)
                reopened += 1
            finally:
                call.cancel()

    # -- runs

    @overload
    def submit(
        self,
        command: str | Iterable[str] | None = None,
        *,
        entrypoint: str | os.PathLike[str] | Sequence[str] | None = None,
        resources: str | None = None,
        gpus: int = 0,
        cpus: float = 1,
        nodes: int = 1,
        procs_per_node: int | None = 0,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
        max_retries: int = 0,
        hang_timeout: float | timedelta | None = None,
        requirements: Sequence[str] | None = (),
        code: str | os.PathLike[str] | None = None,
        workdir: str = "",
        gpu_type: str | Sequence[str] | None = None,
        min_gpu_memory: float | str | None = None,
        memory: float | str | None = None,
        pool: str | None = None,
        labels: Mapping[str, str] | None = None,
        priority: int = 0,
        preemptible: bool | None = None,
        time_limit: float | timedelta | str | None = None,
        sweep: None = None,
        strategy: str = "grid",
        trials: int | None = None,
        seed: int | None = None,
        metric: str | None = None,
        maximize: bool = False,
    ) -> Run: ...

    @overload
    def submit(
        self,
        command: str | Iterable[str] | None = None,
        *,
        entrypoint: str | os.PathLike[str] | Sequence[str] | None = None,
        resources: str | None = None,
        gpus: int = 0,
        cpus: float = 1,
        nodes: int = 1,
        procs_per_node: int | None = 0,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
        max_retries: int = 0,
        hang_timeout: float | timedelta | None = None,
        requirements: Sequence[str] | None = (),
        code: str | os.PathLike[str] | None = None,
        workdir: str = "",
        gpu_type: str | Sequence[str] | None = None,
        min_gpu_memory: float | str | None = None,
        memory: float | str | None = None,
        pool: str | None = None,
        labels: Mapping[str, str] | None = None,
        priority: int = 0,
        preemptible: bool | None = None,
        time_limit: float | timedelta | str | None = None,
        sweep: Mapping[str, str],
        strategy: str = "grid",
        trials: int | None = None,
        seed: int | None = None,
        metric: str | None = None,
        maximize: bool = False,
    ) -> Sweep: ...

    def submit(
        self,
        command: str | Iterable[str] | None = None,
        *,
        entrypoint: str | os.PathLike[str] | Sequence[str] | None = None,
        resources: str | None = None,
        gpus: int = 0,
        cpus: float = 1,
        nodes: int = 1,
        procs_per_node: int | None = 0,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
        max_retries: int = 0,
        hang_timeout: float | timedelta | None = None,
        requirements: Sequence[str] | None = (),
        code: str | os.PathLike[str] | None = None,
        workdir: str = "",
        gpu_type: str | Sequence[str] | None = None,
        min_gpu_memory: float | str | None = None,
        memory: float | str | None = None,
        pool: str | None = None,
        labels: Mapping[str, str] | None = None,
        priority: int = 0,
        preemptible: bool | None = None,
        time_limit: float | timedelta | str | None = None,
        sweep: Mapping[str, str] | None = None,
        strategy: str = "grid",
        trials: int | None = None,
        seed: int | None = None,
        metric: str | None = None,
        maximize: bool = False,
    ) -> Run | Sweep:
        """Queue a command to run on the cluster, or, with `sweep`, one run per trial of a sweep.

        Example:
            >>> run = client.submit("python train.py --epochs 3", gpus=1, name="mnist")
            >>> run.id
            'run-01jd8x3k2m9q4f7a2b6c'
            >>> client.submit(entrypoint="train.py", resources="2x4xA100-40G", time_limit="12h", preemptible=True)
            >>> sweep = client.submit("python train.py --lr {lr}", sweep={"lr": "[0.1,0.01]", "bs": "[32,64]"},
            ...                       metric="val_loss")  # 4 runs; each gets --bs 32 or --bs 64 appended

        Args:
            command: An argv list, or a string split the way a shell would; it is run
                without a shell on the agent. Give this or `entrypoint`.
            entrypoint: A Python file: "train.py" runs `python train.py` (a list adds arguments).
            resources: "NODESxGPUSxMODEL[-MEM]", e.g. "2x4xA100-40G" (see `parse_resources`); instead of
                nodes, gpus, gpu_type and min_gpu_memory, not with them.
            gpus: GPUs per node.
            cpus: CPU cores per node.
            nodes: Machines the run spans, started together as one process group (see `build_spec`).
            procs_per_node: Ranks per node; 0 (or None) means one per GPU, or one for a CPU run.
            env: Extra environment variables for every rank.
            name: A name to recognise the run by; a sweep's runs are named `<name or 'sweep'>-<k>`.
            idempotency_key: A key you choose; submitting again with the same key
                returns the run the first submit created instead of a second one, so a
                retried submit is safe (for a sweep: the same sweep, trial by trial).
            max_retries: How many times a failed attempt (non-zero exit, or hung) is retried.
            hang_timeout: Stop an attempt whose step has not advanced for this long (see
                `build_spec`).
            requirements: pip requirement lines for the run's environment (see `build_spec`).
            code: A folder to ship with the run (usually "."): packed into a tarball that honours
                `.gitignore` and `.gridlabignore`, uploaded once per content (the scheduler keeps it by
                digest), and extracted on every node as the ranks' working directory. Its top-level
                `requirements.txt` is installed when `requirements` is empty. None: the command runs in
                an empty folder and must name files the machines already have.
            workdir: Where in `code` the ranks start ("" or "." for its top).
            gpu_type: A GPU model ("A100") or a list of acceptable ones; None for any.
            min_gpu_memory: Memory per GPU at least: bytes or a size string ("40GB", "40GiB").
            memory: RAM per node: bytes or a size string ("64GiB").
            pool: Only agents of this pool; None for any.
            labels: Only agents whose labels hold all these pairs.
            priority: Higher is placed first (and may preempt lower preemptible runs).
            preemptible: The run may be stopped for a higher-priority one (requeued, no retry
                spent, resumed from its checkpoint). None means False.
            time_limit: The longest the run may run: seconds, a timedelta or a string ("2h",
                "1-12:00:00"); None for no limit. See `build_spec` for all of these.
            sweep: {parameter: expression} in Grid's syntax ("[0.1,0.01]", "range(1,4)",
                "loguniform(1e-5,1e-2)", ...; see `gridlab.client.sweeps`). Each trial's values replace
                `{name}` in the command, or are appended as `--name value` when it has no placeholder.
            strategy: "grid" (every combination; every expression must be finite) or "random".
            trials: How many runs a random sweep makes.
            seed: The random sweep's seed (default 0); trial k always gets the same values.
            metric: The metric that ranks a sweep's trials (`Sweep.best`), e.g. "val_loss".
            maximize: Whether a higher `metric` is better.

        Returns:
            A `Run` handle, or a `Sweep` when `sweep` is given.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: Both or neither of command and entrypoint; a resource, size or duration string
                that cannot be read; `resources` with nodes/gpus/gpu_type/min_gpu_memory; a sweep that
                cannot be expanded (`SweepError`, e.g. an unbounded distribution under grid); sweep
                options without `sweep`.
            InvalidArgument: The scheduler rejected the spec; the message says why.
            ResourceExhausted: A quota forbids the run.
            Unavailable: The scheduler could not be reached.
        """
        spec = build_spec(
            command,
            entrypoint=entrypoint,
            resources=resources,
            gpus=gpus,
            cpus=cpus,
            nodes=nodes,
            procs_per_node=procs_per_node,
            env=env,
            name=name,
            max_retries=max_retries,
            hang_timeout=hang_timeout,
            requirements=requirements,
            gpu_type=gpu_type,
            min_gpu_memory=min_gpu_memory,
            memory=memory,
            pool=pool,
            labels=labels,
            priority=priority,
            preemptible=preemptible,
            time_limit=time_limit,
        )
        if idempotency_key is not None:
            _check("idempotency_key", idempotency_key, str, "a string")
        _check("workdir", workdir, str, "a string")
        if sweep is None:
            extra = {"trials": trials, "seed": seed, "metric": metric}
            stray = [f"{key}={value!r}" for key, value in extra.items() if value is not None]
            stray += [f"strategy={strategy!r}"] if strategy != "grid" else []
            stray += ["maximize=True"] if maximize else []
            if stray:
                raise ValueError(f"{', '.join(stray)} only apply to a sweep: pass sweep={{'lr': '[0.1,0.01]'}} too")
        if code is not None:
            spec.code_digest = self.upload_code(code)
        spec.workdir = "" if workdir.strip() in (".", "./") else workdir
        if sweep is not None:
            from gridlab.client.sweep_sdk import submit_sweep

            return submit_sweep(
                self, spec, sweep, strategy=strategy, trials=trials, seed=seed, metric=metric, maximize=maximize,
                idempotency_key=idempotency_key,
            )  # fmt: skip
        return self._run_from(self._submit_spec(spec, idempotency_key or ""))

    def _submit_spec(self, spec: types_pb2.RunSpec, idempotency_key: str) -> types_pb2.Run:
        """Send one SubmitRun; the scheduler's record of the run."""
        request = scheduler_pb2.SubmitRunRequest(spec=spec, idempotency_key=idempotency_key)
        return self._unary(self._stub.SubmitRun, request).run

    def _run_from(self, run: types_pb2.Run) -> Run:
        """A `Run` handle on a run the scheduler has described (its name known)."""
        return Run(self, run.id, name=run.spec.name)

    def upload_code(self, folder: str | os.PathLike[str]) -> str:
        """Pack `folder` into a code bundle and upload it unless the scheduler already has it; returns its
        digest for `RunSpec.code_digest`. Pack's warnings (a bundle over 50 MB, unreadable ignore files)
        are issued as `UserWarning`s.

        Raises:
            BundleError: The folder cannot be packed (too big, a link leaving it); the message says why.
            ResourceExhausted: The bundle is larger than the scheduler accepts.
        """
        stub = artifacts_pb2_grpc.ArtifactsStub(self._channel)
        try:
            digest, notes = upload_bundle(stub, self._metadata, Path(folder))
        except grpc.RpcError as err:
            raise self._error(err) from None
        for note in notes:
            warnings.warn(note, UserWarning, stacklevel=3)
        return digest

    def run(self, run_id: str) -> Run:
        """A `Run` handle on an existing run, to wait for it or follow its logs. Makes no
        call: an unknown id shows up as `NotFound` on first use.

        Example:
            >>> client.run("run-01jd8x3k2m9q4f7a2b6c").wait(timeout=60).state
            'SUCCEEDED'

        Args:
            run_id: The run's id.

        Returns:
            A `Run` (its `name` is asked from the scheduler on first use).
        """
        return Run(self, run_id)

    def get_run(self, run_id: str) -> types_pb2.Run:
        """Everything the scheduler knows about one run.

        Example:
            >>> client.get_run("run-01jd8x3k2m9q4f7a2b6c").attempts[-1].nodes[0].agent_name
            'gpu-box-3'

        Args:
            run_id: The run's id.

        Returns:
            The `gridlab.v1.Run` message (spec, state, attempts, times).

        Raises:
            NotFound: No such run, or another user's.
        """
        _check("run_id", run_id, str, "a string")
        return self._unary(self._stub.GetRun, scheduler_pb2.GetRunRequest(run_id=run_id)).run

    def status(self, run_id: str) -> RunStatus:
        """A run's state in words, with its pending reason and exit code.

        Example:
            >>> client.status(run.id)
            RunStatus(state='QUEUED', pending_reason='waiting for 4 free GPUs', ...)

        Args:
            run_id: The run's id.

        Returns:
            A `RunStatus`.

        Raises:
            NotFound: No such run, or another user's.
        """
        return RunStatus.from_proto(self.get_run(run_id))

    def runs(
        self,
        *,
        states: Iterable[str] | str | None = None,
        user: str | None = None,
        limit: int | None = 100,
        sweep: str | None = None,
        pool: str | None = None,
        me: bool = False,
    ) -> list[types_pb2.Run]:
        """Runs the caller may see, newest first as the scheduler orders them.

        Example:
            >>> [r.id for r in client.runs(states=["QUEUED", "RUNNING"], limit=10)]
            >>> [r.spec.sweep.index for r in client.runs(sweep="swp-01jd8x3k2m9q4f7a2b6c", limit=None)]

        Args:
            states: State words to keep ("RUNNING", ...); None keeps every state.
            user: Another user's runs (admins only); None means the caller's own (every
                user's, for an admin).
            limit: At most this many runs; None fetches every page.
            sweep: Only the runs of this sweep (its id, "swp-...").
            pool: Only runs that asked for this pool.
            me: Only the caller's own runs, also for an admin (the user `whoami` names).

        Returns:
            A list of `gridlab.v1.Run` messages.

        Raises:
            ValueError: An unknown state word, a limit below 1, or both `me` and `user`.
            PermissionDenied: `user` names someone else and the caller is not an admin.
        """
        if isinstance(states, str):
            states = [states]
        wanted = [parse_state(s) for s in states or ()]
        if user is not None:
            _check("user", user, str, "a string")
        if sweep is not None:
            _check("sweep", sweep, str, "a sweep's id (a string)")
        if pool is not None:
            _check("pool", pool, str, "a pool's name (a string)")
        if not isinstance(me, bool):
            raise TypeError(f"me must be True or False, got {me!r}")
        if me:
            if user is not None:
                raise ValueError(f"give me=True or user={user!r}, not both")
            user = self.whoami().user
        if limit is not None:
            _check("limit", limit, int, "an int or None")
            if limit < 1:
                raise ValueError(f"limit must be at least 1, got {limit}")
        out: list[types_pb2.Run] = []
        page_token = ""
        while True:
            ask = 0 if limit is None else min(limit - len(out), 2**31 - 1)
            request = scheduler_pb2.ListRunsRequest(
                states=[types_pb2.RunState.Name(s) for s in wanted],
                user=user or "",
                limit=ask,
                page_token=page_token,
                sweep=sweep or "",
                pool=pool or "",
            )
            response = self._unary(self._stub.ListRuns, request)
            out.extend(response.runs)
            page_token = response.next_page_token
            if not page_token or not response.runs or (limit is not None and len(out) >= limit):
                return out if limit is None else out[:limit]

    def cancel(
        self, run_id: str, *, grace: float | timedelta | None = None, reason: str | None = None
    ) -> types_pb2.Run:
        """Ask the scheduler to stop a run. Returns at once; `wait()` to see it stop.

        Ranks get SIGTERM (a trainer saves a checkpoint), then SIGKILL after `grace`.
        Cancelling a run that is already being cancelled is harmless.

        Example:
            >>> client.cancel(run.id, grace=30).state
            2

        Args:
            run_id: The run's id.
            grace: Seconds (or a timedelta) between SIGTERM and SIGKILL; None uses the
                agent's default.
            reason: Recorded with the run, in words.

        Returns:
            The `gridlab.v1.Run` message after the request.

        Raises:
            NotFound: No such run, or another user's.
            FailedPrecondition: The run has already finished.
        """
        _check("run_id", run_id, str, "a string")
        request = scheduler_pb2.CancelRunRequest(run_id=run_id, reason=reason or "")
        if grace is not None:
            request.grace.CopyFrom(timeutil.duration(_seconds("grace", grace)))
        return self._unary(self._stub.CancelRun, request).run

    def wait(self, run_id: str, *, timeout: float | None = None) -> RunStatus:
        """Block until a run has SUCCEEDED, FAILED or been CANCELLED.

        Follows the run's events as the scheduler records them (no polling); if the
        stream breaks, it resumes after the last event seen.

        Example:
            >>> client.wait(run.id, timeout=600).exit_code
            0

        Args:
            run_id: The run's id.
            timeout: Seconds to wait at most; None waits as long as it takes.

        Returns:
            The final `RunStatus`.

        Raises:
            TimeoutError: The run had not finished after `timeout` seconds; the message
                names the run and its state.
            NotFound: No such run, or another user's.
            Unavailable: The scheduler stayed unreachable.
        """
        _check("run_id", run_id, str, "a string")
        if timeout is not None:
            _check("timeout", timeout, (int, float), "a number of seconds or None")
        deadline = None if timeout is None else time.monotonic() + timeout
        after = 0
        while True:
            events = self._watch([run_id], after_event_id=after, deadline=deadline)
            try:
                with contextlib.closing(events):
                    for event in events:
                        after = max(after, event.id)
                        if event.run_id == run_id and state_word(event.state) in TERMINAL_STATES:
                            break  # no need to wait for the stream to end
            except DeadlineExceeded:
                pass
            status = self.status(run_id)  # the full record, and the truth if the stream ended early
            if status.done:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                why = f" ({status.pending_reason})" if status.pending_reason else ""
                raise TimeoutError(f"run {run_id} is still {status.state} after waiting {timeout:g}s{why}")
            time.sleep(0.2 if deadline is None else min(0.2, max(0.0, deadline - time.monotonic())))

    def _watch(
        self, run_ids: list[str], *, after_event_id: int, deadline: float | None
    ) -> Generator[types_pb2.RunEvent, None, None]:
        def open_stream(after: int, timeout: float | None) -> Any:
            request = scheduler_pb2.WatchRunsRequest(run_ids=run_ids, after_event_id=after)
            return self._stub.WatchRuns(request, timeout=timeout, metadata=self._metadata)

        return self._resumable(
            open_stream, lambda event: (event,), lambda event: event.id,
            start=after_event_id, deadline=deadline,
        )  # fmt: skip

    def watch(
        self, run_ids: Iterable[str] | str | None = None, *, after_event_id: int = 0
    ) -> Iterator[types_pb2.RunEvent]:
        """Run state changes as they are recorded, oldest first.

        With run ids the iterator ends once every one of them has finished; without, it
        follows every run the caller may see and never ends. A broken stream resumes
        after the last event seen.

        Example:
            >>> for event in client.watch([run.id]):
            ...     print(event.kind, event.message)

        Args:
            run_ids: Runs to follow; None (or empty) follows all.
            after_event_id: Start after this event id; 0 replays each run's history.

        Returns:
            An iterator of `gridlab.v1.RunEvent` messages.

        Raises:
            NotFound: A run id is unknown (raised while iterating).
            Unavailable: The scheduler stayed unreachable.
        """
        if isinstance(run_ids, str):
            run_ids = [run_ids]
        ids = list(run_ids or ())
        for run_id in ids:
            _check("run_ids", run_id, str, "strings")
        _check("after_event_id", after_event_id, int, "an int")
        return self._watch(ids, after_event_id=after_event_id, deadline=None)

    def log_lines(
        self,
        run_id: str,
        *,
        follow: bool = False,
        attempt: int | None = None,
        rank: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[types_pb2.LogLine]:
        """A run's log lines with their rank, stream, attempt and time.

        Like `logs`, but yields the `gridlab.v1.LogLine` messages, the agent's own lines
        (stream LOG_STREAM_SYSTEM) included.

        Args:
            run_id: The run's id.
            follow: Keep waiting for new lines until the run has finished.
            attempt: Only this attempt number (1, 2, ...); None for every attempt.
            rank: Only this global rank (-1 for the agent's own lines); None for all.
            timeout: Seconds for the whole iteration, reconnects included; None for no
                limit. See `logs`.

        Returns:
            An iterator of `gridlab.v1.LogLine` messages.

        Raises:
            NotFound: No such run, or another user's (raised while iterating).
            TimeoutError: The lines had not ended after `timeout` seconds (raised while
                iterating); the message names the run.
        """
        _check("run_id", run_id, str, "a string")
        if attempt is not None:
            _check("attempt", attempt, int, "an int or None")
        if rank is not None:
            _check("rank", rank, int, "an int or None")
        if timeout is not None:
            _check("timeout", timeout, (int, float), "a number of seconds or None")

        deadline = None if timeout is None else time.monotonic() + timeout
        batches = self._log_batches(run_id, follow=follow, attempt=attempt, rank=rank, deadline=deadline)
        lines = _single_lines(batches)
        if timeout is None:
            return lines
        return _timing_out(lines, f"run {run_id} was still sending logs after {timeout:g}s")

    def _log_batches(
        self, run_id: str, *, follow: bool, attempt: int | None, rank: int | None, deadline: float | None
    ) -> Generator[tuple[types_pb2.LogLine, list[str]], None, None]:
        """A run's lines as (batch, its lines' texts): the scheduler sends batches of a rank's consecutive
        lines (LogLine.count), and this splits them, with no protobuf message per line. Every line comes
        once and in order across reconnects; a batch's seq and cursor are its first line's."""

        def open_stream(after: int, timeout: float | None) -> Any:
            request = scheduler_pb2.StreamLogsRequest(
                run_id=run_id,
                follow=follow,
                after_cursor=after,
                attempt_number=attempt or 0,
                rank=rank if rank is not None else 0,
                has_rank=rank is not None,
                batched=True,
            )
            return self._stub.StreamLogs(request, timeout=timeout, metadata=self._metadata)

        batches = self._resumable(
            open_stream, lambda response: response.lines, _last_cursor, deadline=deadline
        )  # fmt: skip
        seen = 0  # the last cursor yielded
        with contextlib.closing(batches):
            for batch in batches:
                texts = batch.text.split("\n") if batch.count > 1 else [batch.text]
                if batch.cursor:
                    if batch.cursor <= seen:  # partly sent before a reconnect: the rest only
                        skip = seen - batch.cursor + 1
                        del texts[:skip]
                        batch.seq += skip
                        batch.cursor += skip
                    seen = max(seen, batch.cursor + len(texts) - 1)
                if texts:
                    yield batch, texts

    def logs(
        self,
        run_id: str,
        *,
        follow: bool = False,
        rank: int | None = None,
        attempt: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[str]:
        """What a run's ranks printed (stdout and stderr), every line once and in order.

        The agent's own notes about an attempt ("rank 0 exited with 3") are left out:
        they are in `status().message`, and `log_lines` has them. With `follow`, waits
        for new lines and ends once the run has finished and every line has been sent;
        if the scheduler restarts meanwhile, it picks up after the last line received.

        Example:
            >>> for line in client.logs(run.id, follow=True):
            ...     print(line)

        Args:
            run_id: The run's id.
            follow: Keep waiting for new lines until the run has finished.
            rank: Only this global rank's lines (0, 1, ...); None for every rank.
            attempt: Only this attempt's lines (1, 2, ...); None for every attempt.
            timeout: Seconds the whole iteration may take, counted from this call and
                reconnects included; None (the default) for no limit, so that with
                `follow` the iterator lasts as long as the run.

        Returns:
            An iterator of lines, without their newline.

        Raises:
            NotFound: No such run, or another user's (raised while iterating).
            Unavailable: The scheduler could not be reached, or stayed unreachable.
            TimeoutError: The lines had not ended after `timeout` seconds (raised while
                iterating); the message names the run, which keeps running.
        """
        _check("run_id", run_id, str, "a string")
        if rank is not None:
            _check("rank", rank, int, "an int or None")
        if attempt is not None:
            _check("attempt", attempt, int, "an int or None")
        if timeout is not None:
            _check("timeout", timeout, (int, float), "a number of seconds or None")
        deadline = None if timeout is None else time.monotonic() + timeout
        batches = self._log_batches(run_id, follow=follow, attempt=attempt, rank=rank, deadline=deadline)
        texts = (text for batch, texts in batches if batch.stream not in _NOT_PRINTED for text in texts)
        if timeout is None:
            return texts
        return _timing_out(texts, f"run {run_id} was still sending logs after {timeout:g}s")

    def metrics(self, run_id: str, *, follow: bool = False, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """What the run logged to `GRIDLAB_METRICS_FILE` (the trainer's metrics: step, epoch, loss, ...), one
        dict per record, in order, every attempt's (each dict gets `"attempt"`, the attempt number).

        Example:
            >>> [m["train_loss"] for m in client.metrics(run.id) if "train_loss" in m]
            [0.91, 0.62, 0.48]

        Args:
            run_id: The run's id.
            follow: Keep waiting for new records until the run has finished.
            timeout: Seconds the whole iteration may take; None for no limit.

        Returns:
            An iterator of dicts.

        Raises:
            NotFound: No such run, or another user's (raised while iterating).
            TimeoutError: The records had not ended after `timeout` seconds.
        """
        for line in self.log_lines(run_id, follow=follow, rank=METRICS_RANK, timeout=timeout):
            record = metric_record(line)
            if record is not None:
                yield record

    # -- cluster

    def agents(self, *, pool: str | None = None) -> list[types_pb2.Agent]:
        """The machines the scheduler knows, with their GPUs and what they run.

        Example:
            >>> [(a.name, a.gpus_free) for a in client.agents(pool="onprem")]

        Args:
            pool: Only this pool's agents; None for every pool.

        Returns:
            A list of `gridlab.v1.Agent` messages.

        Raises:
            Unavailable: The scheduler could not be reached.
        """
        if pool is not None:
            _check("pool", pool, str, "a string")
        request = scheduler_pb2.ListAgentsRequest(pool=pool or "")
        return list(self._unary(self._stub.ListAgents, request).agents)

    def _set_agent_state(
        self,
        name: str,
        action: scheduler_pb2.AgentAction,
        *,
        deadline: float | timedelta | str | None = None,
        reason: str = "",
    ) -> types_pb2.Agent:
        _check("name", name, str, "an agent's name (a string)")
        _check("reason", reason, str, "a string")
        request = scheduler_pb2.SetAgentStateRequest(name=name, action=action, reason=reason)
        if deadline is not None:
            request.deadline.CopyFrom(timeutil.duration(parse_duration(deadline, "deadline")))
        return self._unary(self._stub.SetAgentState, request).agent

    def cordon(self, name: str, reason: str = "") -> types_pb2.Agent:
        """Place nothing new on an agent (admins only); what runs there keeps running.

        The choice survives scheduler restarts and the agent's reconnects, until `uncordon`.

        Example:
            >>> client.cordon("ws-03", reason="fan replacement").state == types_pb2.AGENT_STATE_CORDONED
            True

        Args:
            name: The agent's name, as `agents()` lists it.
            reason: Why, in words; recorded with the agent.

        Returns:
            The `gridlab.v1.Agent` message after the change.

        Raises:
            PermissionDenied: The caller is not an admin.
            NotFound: The scheduler has never seen an agent of that name.
        """
        return self._set_agent_state(name, scheduler_pb2.AGENT_ACTION_CORDON, reason=reason)

    def drain(self, name: str, deadline: float | timedelta | str | None = None, reason: str = "") -> types_pb2.Agent:
        """Empty an agent (admins only): place nothing new on it, and let what runs there finish.

        With a `deadline`, attempts still running when it passes are stopped (SIGTERM, so a
        trainer checkpoints) and their runs requeued elsewhere without spending a retry. Draining
        again replaces the deadline. `uncordon` ends the drain.

        Example:
            >>> client.drain("ws-03", deadline="1h", reason="kernel upgrade").state == types_pb2.AGENT_STATE_DRAINING
            True

        Args:
            name: The agent's name, as `agents()` lists it.
            deadline: How long running attempts may take to finish: seconds, a timedelta, or a
                string ("30m", "2h", "1:00:00"); 0 preempts them at once; None waits for them.
            reason: Why, in words; recorded, and given to preempted attempts.

        Returns:
            The `gridlab.v1.Agent` message after the change.

        Raises:
            ValueError: A deadline that cannot be read, or a negative one.
            PermissionDenied: The caller is not an admin.
            NotFound: The scheduler has never seen an agent of that name.
            InvalidArgument: The deadline is too long (over 365 days).
        """
        return self._set_agent_state(name, scheduler_pb2.AGENT_ACTION_DRAIN, deadline=deadline, reason=reason)

    def uncordon(self, name: str) -> types_pb2.Agent:
        """Let an agent take new runs again (admins only), ending a cordon or a drain.

        Example:
            >>> client.uncordon("ws-03").state == types_pb2.AGENT_STATE_READY
            True

        Args:
            name: The agent's name, as `agents()` lists it.

        Returns:
            The `gridlab.v1.Agent` message after the change.

        Raises:
            PermissionDenied: The caller is not an admin.
            NotFound: The scheduler has never seen an agent of that name.
        """
        return self._set_agent_state(name, scheduler_pb2.AGENT_ACTION_UNCORDON)

    def create_token(
        self,
        user: str,
        role: str = "user",
        *,
        team: str | None = None,
        ttl: float | timedelta | str | None = None,
    ) -> str:
        """Create a bearer token for a user (admins only). It is shown only this once.

        Example:
            >>> client.create_token("alice")
            'glt_...'
            >>> client.create_token("ci", ttl="7d")  # stops working in a week
            'glt_...'

        Args:
            user: Who the token acts as.
            role: "user", "admin" or "agent".
            team: The user's team, for team quotas (and team visibility, when the scheduler shares runs).
            ttl: How long the token works: seconds, a timedelta or a string ("12h", "30d"; see
                `parse_duration`). None: until it is revoked.

        Returns:
            The new token.

        Raises:
            PermissionDenied: The caller is not an admin.
            InvalidArgument: An unknown role, an empty user, or a ttl the scheduler refuses.
            ValueError: A ttl that is not a duration, or is zero or negative.
        """
        _check("user", user, str, "a string")
        _check("role", role, str, "a string")
        if team is not None:
            _check("team", team, str, "a string")
        request = scheduler_pb2.CreateTokenRequest(user=user, role=role, team=team or "")
        if ttl is not None:
            seconds = parse_duration(ttl, "ttl")
            if seconds <= 0:
                raise ValueError(f"ttl must be more than 0 seconds (None: no expiry), got {ttl!r}")
            request.ttl.CopyFrom(timeutil.duration(seconds))
        return str(self._unary(self._stub.CreateToken, request).token)

    def tokens(self) -> list[scheduler_pb2.TokenInfo]:
        """Every token the scheduler knows (admins only), never their secrets.

        Example:
            >>> [(t.id, t.user, t.role, t.revoked) for t in client.tokens()]
            [('3f9a1c2b7d0e', 'admin', 'admin', False), ...]

        Returns:
            A list of `gridlab.v1.TokenInfo` messages (id, user, role, team, created_at, revoked,
            expires_at: unset when it never expires).

        Raises:
            PermissionDenied: The caller is not an admin.
        """
        return list(self._unary(self._stub.ListTokens, scheduler_pb2.ListTokensRequest()).tokens)

    def revoke_token(self, token_id: str) -> scheduler_pb2.TokenInfo:
        """Revoke a token (admins only): calls made with it fail from then on. Revoking again is harmless.

        Example:
            >>> client.revoke_token("3f9a1c2b").revoked
            True

        Args:
            token_id: The token's id as `tokens()` lists it, or a unique prefix of 8 or more characters.

        Returns:
            The `gridlab.v1.TokenInfo` of the revoked token.

        Raises:
            PermissionDenied: The caller is not an admin.
            NotFound: No token has that id (or the prefix matches several).
        """
        _check("token_id", token_id, str, "a token's id (a string)")
        request = scheduler_pb2.RevokeTokenRequest(token_id=token_id)
        return self._unary(self._stub.RevokeToken, request).token

    def whoami(self) -> scheduler_pb2.WhoAmIResponse:
        """Who the scheduler takes the caller for, and its version.

        Example:
            >>> me = client.whoami()
            >>> me.user, me.role
            ('alice', 'user')

        Returns:
            The `gridlab.v1.WhoAmIResponse` (user, role, team, server_version).

        Raises:
            Unauthenticated: The token is unknown or revoked.
            Unavailable: The scheduler could not be reached.
        """
        return self._unary(self._stub.WhoAmI, scheduler_pb2.WhoAmIRequest())

    def usage(
        self,
        group_by: str = "user",
        since: float | datetime | None = None,
        until: float | datetime | None = None,
        user: str | None = None,
    ) -> list[UsageRow]:
        """GPU-hours and cost of the attempts that ended in [since, until), per user, pool or run, most costly
        first. Each node of an attempt counts its GPUs times the attempt's running time, priced at its pool's
        `pool_prices` entry (per GPU-hour); a requeued run counts every attempt it ran.

        Example:
            >>> [(r.key, round(r.gpu_hours, 2), r.cost) for r in client.usage("pool")]
            [('cloud', 4.0, 10.0), ('onprem', 12.5, 0.0)]

        Args:
            group_by: "user", "pool" or "run".
            since: Epoch seconds or a datetime; None: from the beginning.
            until: Likewise; None: up to now.
            user: Only this user's usage (an admin may name anyone; a user sees only their own anyway).

        Raises:
            InvalidArgument: An unknown group_by, or until before since.
            PermissionDenied: A user named another user.
        """
        request = scheduler_pb2.GetUsageRequest(group_by=group_by, user=user or "")
        for field, value in (("since", since), ("until", until)):
            if value is not None:
                seconds = value.timestamp() if isinstance(value, datetime) else float(value)
                getattr(request, field).CopyFrom(timeutil.ts(seconds))
        reply = self._unary(self._stub.GetUsage, request)
        return [UsageRow(r.key, r.gpu_hours, r.cost, r.runs, r.wall_hours) for r in reply.rows]

    def set_priority(self, run_id: str, priority: int) -> RunStatus:
        """Change a run's priority, queued or running. Its owner may set any priority up to the scheduler's
        `max_user_priority` (100 by default; so a run they lowered can go back up); above it, only an admin.

        Example:
            >>> client.set_priority(run.id, -10).state
            'QUEUED'

        Args:
            run_id: The run's id.
            priority: The new priority; higher is placed first.

        Returns:
            The run's `RunStatus` after the change.

        Raises:
            PermissionDenied: A user asked for a priority above `max_user_priority`.
            FailedPrecondition: The run has already finished.
            NotFound: No such run, or another user's.
        """
        _check("run_id", run_id, str, "a string")
        _check("priority", priority, int, "an int")
        if not -(2**31) <= priority < 2**31:
            raise ValueError(f"priority must fit in 32 bits (the scheduler allows about ±1,000,000), got {priority}")
        request = scheduler_pb2.SetRunPriorityRequest(run_id=run_id, priority=priority)
        return RunStatus.from_proto(self._unary(self._stub.SetRunPriority, request).run)

    def events(self, run_id: str) -> list[types_pb2.RunEvent]:
        """A run's recorded events so far, oldest first (submitted, placed, running, ...); `watch` follows them.

        Example:
            >>> [e.kind for e in client.events(run.id)]
            ['submitted', 'placed', 'running', 'succeeded']

        Args:
            run_id: The run's id.

        Returns:
            A list of `gridlab.v1.RunEvent` messages.

        Raises:
            NotFound: No such run, or another user's.
        """
        _check("run_id", run_id, str, "a string")
        request = scheduler_pb2.ListRunEventsRequest(run_id=run_id)
        return list(self._unary(self._stub.ListRunEvents, request).events)

    def sweep(self, sweep_id: str) -> Sweep:
        """A `Sweep` handle on an existing sweep, by its id ("swp-..."). Makes no call: an unknown id shows
        up as `NotFound` on first use.

        Example:
            >>> [t["state"] for t in client.sweep("swp-01jd8x3k2m9q4f7a2b6c").trials()]
            ['SUCCEEDED', 'RUNNING']
        """
        from gridlab.client.sweep_sdk import Sweep

        _check("sweep_id", sweep_id, str, "a sweep's id (a string)")
        return Sweep(self, sweep_id)

    # -- lifetime

    def close(self) -> None:
        """Close the channel; streams in progress end with an error."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(address={self.address!r})"


# --- module-level conveniences --------------------------------------------------------

_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """A shared `Client` whose address and token come from the environment or the config
    file; made on first use.

    Raises:
        ClientConfigError: No address or token was found.
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default


@overload
def submit(command: str | Iterable[str] | None = None, *, sweep: None = None, **kwargs: Any) -> Run: ...


@overload
def submit(command: str | Iterable[str] | None = None, *, sweep: Mapping[str, str], **kwargs: Any) -> Sweep: ...


def submit(command: str | Iterable[str] | None = None, **kwargs: Any) -> Run | Sweep:
    """`Client.submit` on the `default_client()`.

    Example:
        >>> from gridlab.client import submit
        >>> submit(["python", "train.py"], gpus=2).wait().state
        'SUCCEEDED'
        >>> submit(entrypoint="train.py", resources="4xA100", sweep={"lr": "[0.1,0.01]"}, metric="val_loss")
        Sweep(id='swp-01jd8x3k2m9q4f7a2b6c')
    """
    return default_client().submit(command, **kwargs)
