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
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
    if res.memory_bytes < 0:
        raise SpecError(f"resources.memory_bytes is {res.memory_bytes}: it must be 0 or more")
    if res.min_gpu_memory_bytes < 0:
        raise SpecError(f"resources.min_gpu_memory_bytes is {res.min_gpu_memory_bytes}: it must be 0 or more")
    for i, model in enumerate(res.gpu_types):
        if not model.strip():
            raise SpecError(f"resources.gpu_types[{i}] is blank")
    if not 0 <= spec.max_retries <= MAX_RETRIES:
        raise SpecError(f"max_retries is {spec.max_retries}: it must be between 0 and {MAX_RETRIES}")
    if abs(spec.priority) > MAX_PRIORITY:
        raise SpecError(f"priority is {spec.priority}: it must be within ±{MAX_PRIORITY}")
    if spec.time_limit.ToNanoseconds() < 0:
        raise SpecError("time_limit is negative")
    if spec.requirements:
        try:
            normalize_requirements(list(spec.requirements))
        except ValueError as exc:
            raise SpecError(str(exc)) from None
    _check_bundle(spec)
    if spec.hang_timeout.ToNanoseconds() < 0:
        raise SpecError("hang_timeout is negative: give a positive duration, or none for no watchdog")

    # Defaults.
    if res.nodes == 0:
        res.nodes = 1
    if res.cpus == 0:
        res.cpus = 1.0
    if res.procs_per_node == 0:
        res.procs_per_node = max(1, res.gpus)
