"""Checks on a submitted RunSpec. Each error says which field is wrong and how to fix it.

`normalize` fills defaults in place, so what is stored (and shown back) is what will run.
"""

from __future__ import annotations

import re
from pathlib import PureWindowsPath

from gridlab.common.requirements import normalize_requirements
from gridlab.common.transfer import is_digest
from gridlab.v1 import types_pb2

MAX_ARGV_ITEMS = 4096
MAX_ARGV_BYTES = 128 * 1024
MAX_ENV_ITEMS = 1024
MAX_ENV_BYTES = 256 * 1024
MAX_NAME = 200
MAX_NODES = 1024
MAX_GPUS = 1024
MAX_CPUS = 4096.0
MAX_RETRIES = 100
MAX_PRIORITY = 1_000_000
MAX_WORKDIR = 1024
MAX_MEMORY_BYTES = 1 << 50  # per node: 1 PiB
MAX_GPU_MEMORY_BYTES = 1 << 44  # per GPU: 16 TiB
MAX_GPU_TYPES = 32
MAX_GPU_TYPE = 128  # characters of one model name
MAX_POOL = 64
MAX_LABELS = 64
MAX_LABEL_KEY = 128
MAX_LABEL_VALUE = 256
MAX_TIME_LIMIT = 365 * 86_400  # seconds
MAX_SWEEP_NAME = 128
MAX_SWEEP_PARAMS = 64
MAX_SWEEP_KEY = 100  # as client/sweeps.py's parameter names
MAX_SWEEP_VALUE = 1000
MAX_SWEEP_METRIC = 200
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_POOL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SpecError(ValueError):
    """The spec cannot run as given; the message names the field."""


def _no_nul(field: str, text: str) -> None:
    if "\x00" in text:
        raise SpecError(f"{field} contains a NUL character")


def _check_bundle(spec: types_pb2.RunSpec) -> None:
    """`code_digest` names a bundle by content; `workdir` is a folder inside it, normalized in place
    ("./src/" -> "src"). Whether the bundle was uploaded is the engine's check; the agent checks again
    that the folder exists in the extracted bundle without leaving it through links."""
    if spec.code_digest and not is_digest(spec.code_digest):
        raise SpecError(
            f"code_digest {spec.code_digest[:80]!r} is not 'sha256:' followed by 64 lowercase hex digits; "
            "upload the folder with the SDK and pass the digest it returns"
        )
    if not spec.workdir:
        return
    if not spec.code_digest:
        raise SpecError("workdir is a folder inside the code bundle: set code_digest too, or leave workdir empty")
    workdir = spec.workdir
    if len(workdir) > MAX_WORKDIR:
        raise SpecError(f"workdir is {len(workdir)} characters; the limit is {MAX_WORKDIR}")
    if not workdir.isprintable():
        raise SpecError(f"workdir {workdir!r} contains a control character; give a plain relative path like 'src'")
    if workdir.startswith(("/", "\\")) or PureWindowsPath(workdir).drive:
        raise SpecError(f"workdir {workdir!r} is absolute; give a path relative to the bundle's root, like 'src'")
    parts = [p for p in workdir.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SpecError(f"workdir {workdir!r} contains '..'; it must stay inside the bundle")
    spec.workdir = "/".join(parts)


def _size(field: str, value: int, limit: int) -> None:
    if not 0 <= value <= limit:
        raise SpecError(f"{field} is {value}: it must be between 0 (any) and {limit} bytes ({limit >> 40} TiB)")


def _check_gpu_types(res: types_pb2.Resources) -> None:
    """Acceptable GPU models, stored stripped and without repeats; they are compared with the model the
    agent reports (`schedctl agents` shows them)."""
    if len(res.gpu_types) > MAX_GPU_TYPES:
        raise SpecError(f"resources.gpu_types lists {len(res.gpu_types)} models; the limit is {MAX_GPU_TYPES}")
    models: list[str] = []
    for i, model in enumerate(res.gpu_types):
        model = model.strip()
        if not model:
            raise SpecError(f"resources.gpu_types[{i}] is blank: give a GPU model such as 'A100'")
        if len(model) > MAX_GPU_TYPE:
            raise SpecError(f"resources.gpu_types[{i}] is {len(model)} characters; the limit is {MAX_GPU_TYPE}")
        if not model.isprintable():
            raise SpecError(f"resources.gpu_types[{i}] {model[:50]!r} contains a control character")
        if model not in models:
            models.append(model)
    if (res.gpu_types or res.min_gpu_memory_bytes) and res.gpus == 0:
        asked = "resources.gpu_types" if res.gpu_types else "resources.min_gpu_memory_bytes"
        raise SpecError(f"{asked} is set but resources.gpus is 0: ask for GPUs (e.g. gpus=1), or drop {asked}")
    res.ClearField("gpu_types")
    res.gpu_types.extend(models)


def _check_placement(spec: types_pb2.RunSpec) -> None:
    """`pool` names one pool; `labels` select agents whose labels hold every pair."""
    if spec.pool:
        if len(spec.pool) > MAX_POOL:
            raise SpecError(f"pool is {len(spec.pool)} characters; the limit is {MAX_POOL}")
        if not _POOL.match(spec.pool):
            raise SpecError(
                f"pool {spec.pool[:80]!r} is not a pool name: letters, digits, '.', '_' and '-', "
                "starting with a letter or digit (e.g. 'onprem')"
            )
    if len(spec.labels) > MAX_LABELS:
        raise SpecError(f"labels has {len(spec.labels)} pairs; the limit is {MAX_LABELS}")
    for key, value in spec.labels.items():
        if not key or len(key) > MAX_LABEL_KEY:
            raise SpecError(f"label key {key[:50]!r} must be 1 to {MAX_LABEL_KEY} characters")
        if not key.isprintable() or key != key.strip() or "=" in key:
            raise SpecError(
                f"label key {key[:50]!r} must be printable, without '=' or surrounding spaces (e.g. 'zone')"
            )
        if len(value) > MAX_LABEL_VALUE:
            raise SpecError(f"label {key!r} has a value of {len(value)} characters; the limit is {MAX_LABEL_VALUE}")
        if not value.isprintable():
            raise SpecError(f"label {key!r} has a value with a control character: {value[:50]!r}")


def _check_time_limit(spec: types_pb2.RunSpec) -> None:
    if not spec.HasField("time_limit"):
        return
    seconds = spec.time_limit.ToNanoseconds() / 1e9
    if seconds <= 0:
        raise SpecError(
            f"time_limit is {seconds:g}s: give a positive duration (e.g. 3600s), or leave it unset for no limit"
        )
    if seconds > MAX_TIME_LIMIT:
        raise SpecError(f"time_limit is {seconds:g}s; the limit is {MAX_TIME_LIMIT}s (365 days)")


def _check_sweep(spec: types_pb2.RunSpec) -> None:
    """A sweep trial: its name is what ListRuns filters on and its params what `schedctl` shows, so both are
    kept short and plain; the index places the trial in its sweep."""
    if not spec.HasField("sweep"):
        return
    sweep = spec.sweep
    if not sweep.name or len(sweep.name) > MAX_SWEEP_NAME or not sweep.name.isprintable():
        raise SpecError(
            f"sweep.name {sweep.name[:50]!r} must be 1 to {MAX_SWEEP_NAME} printable characters "
            "(the sweep's id, shared by its trials), or leave sweep unset"
        )
    if sweep.index < 0:
        raise SpecError(f"sweep.index is {sweep.index}: trials are numbered from 0")
    if sweep.size < 0:
        raise SpecError(f"sweep.size is {sweep.size}: give the sweep's number of trials, or 0 if unknown")
    if sweep.size > 0 and sweep.index >= sweep.size:
        raise SpecError(f"sweep.index is {sweep.index} but sweep.size is {sweep.size}: the index must be below it")
    if len(sweep.params) > MAX_SWEEP_PARAMS:
        raise SpecError(f"sweep.params has {len(sweep.params)} parameters; the limit is {MAX_SWEEP_PARAMS}")
    for key, value in sweep.params.items():
        if len(key) > MAX_SWEEP_KEY or not _ENV_KEY.match(key):
            raise SpecError(
                f"sweep.params key {key[:50]!r} must be an identifier ([A-Za-z_][A-Za-z0-9_]*) "
                f"of at most {MAX_SWEEP_KEY} characters"
            )
        if len(value) > MAX_SWEEP_VALUE:
            raise SpecError(f"sweep.params[{key}] is {len(value)} characters; the limit is {MAX_SWEEP_VALUE}")
        _no_nul(f"sweep.params[{key}]", value)
    if len(sweep.metric) > MAX_SWEEP_METRIC or not sweep.metric.isprintable():
        raise SpecError(f"sweep.metric must be at most {MAX_SWEEP_METRIC} printable characters")


def normalize(spec: types_pb2.RunSpec) -> None:
    """Validate `spec` and fill its defaults. Raises SpecError."""
    if not spec.command:
        raise SpecError("command is empty: give the program and its arguments, e.g. ['python', 'train.py']")
    if len(spec.command) > MAX_ARGV_ITEMS:
        raise SpecError(f"command has {len(spec.command)} arguments; the limit is {MAX_ARGV_ITEMS}")
    if sum(len(a.encode()) for a in spec.command) > MAX_ARGV_BYTES:
        raise SpecError(f"command is longer than {MAX_ARGV_BYTES} bytes")
    if not spec.command[0].strip():
        raise SpecError("command[0] is blank: it must name the program to run")
    for i, arg in enumerate(spec.command):
        _no_nul(f"command[{i}]", arg)
    if len(spec.name) > MAX_NAME:
        raise SpecError(f"name is {len(spec.name)} characters; the limit is {MAX_NAME}")
    _no_nul("name", spec.name)
    if len(spec.env) > MAX_ENV_ITEMS:
        raise SpecError(f"env has {len(spec.env)} variables; the limit is {MAX_ENV_ITEMS}")
    size = 0
    for key, value in spec.env.items():
        if not _ENV_KEY.match(key):
            raise SpecError(f"env key {key[:50]!r} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)")
        _no_nul(f"env[{key}]", value)
        size += len(key) + len(value.encode())
    if size > MAX_ENV_BYTES:
        raise SpecError(f"env is larger than {MAX_ENV_BYTES} bytes")

    res = spec.resources
    if res.gpus < 0 or res.gpus > MAX_GPUS:
        raise SpecError(f"resources.gpus is {res.gpus}: it must be between 0 and {MAX_GPUS}")
    if res.cpus < 0 or res.cpus > MAX_CPUS or res.cpus != res.cpus:
        raise SpecError(f"resources.cpus is {res.cpus}: it must be between 0 and {MAX_CPUS:g}")
    if res.nodes < 0 or res.nodes > MAX_NODES:
        raise SpecError(f"resources.nodes is {res.nodes}: it must be between 1 and {MAX_NODES}")
    if res.procs_per_node < 0:
        raise SpecError(f"resources.procs_per_node is {res.procs_per_node}: it must be 0 or more")
    _size("resources.memory_bytes", res.memory_bytes, MAX_MEMORY_BYTES)
    _size("resources.min_gpu_memory_bytes", res.min_gpu_memory_bytes, MAX_GPU_MEMORY_BYTES)
    _check_gpu_types(res)
    _check_placement(spec)
    if not 0 <= spec.max_retries <= MAX_RETRIES:
        raise SpecError(f"max_retries is {spec.max_retries}: it must be between 0 and {MAX_RETRIES}")
    if abs(spec.priority) > MAX_PRIORITY:
        raise SpecError(f"priority is {spec.priority}: it must be between -{MAX_PRIORITY} and {MAX_PRIORITY}")
    _check_time_limit(spec)
    if spec.requirements:
        try:
            normalize_requirements(list(spec.requirements))
        except ValueError as exc:
            raise SpecError(str(exc)) from None
    _check_bundle(spec)
    _check_sweep(spec)
    if spec.hang_timeout.ToNanoseconds() < 0:
        raise SpecError("hang_timeout is negative: give a positive duration, or none for no watchdog")

    # Defaults.
    if res.nodes == 0:
        res.nodes = 1
    if res.cpus == 0:
        res.cpus = 1.0
    if res.procs_per_node == 0:
        res.procs_per_node = max(1, res.gpus)
