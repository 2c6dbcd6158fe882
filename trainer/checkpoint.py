"""Checkpoint format and IO.

Keys: format_version, epoch, global_step, state_dict, hyper_parameters, optimizer_states,
lr_schedulers, precision (GradScaler), loops (progress counters, the position inside the epoch, the
epoch's starting RNG state, elapsed time, epoch-metric accumulators), callbacks (by state_key),
datamodule, rng_states (python, torch, torch.cuda).

Two layouts hold that dict:
- a file (`torch.save`), written by rank 0, atomically (temp file, fsync, rename): single device, DDP,
  and FSDP with `state_dict_type="full"`;
- a sharded folder (FSDP's default): `torch.distributed.checkpoint` (DCP) files for `state_dict` and
  `optimizer_states` written by every rank, plus `meta.pt` with everything else. Optimizer states
  there are keyed by parameter name (torch's `get_optimizer_state_dict`), so the folder loads at any
  world size, including one process without a process group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

FORMAT_VERSION = 1
META_FILE = "meta.pt"
_TENSOR_KEYS = ("state_dict", "optimizer_states")


def is_sharded(path: str | os.PathLike) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))


def _torch_load(path: str | os.PathLike) -> dict[str, Any]:
    # Checkpoints hold python objects (RNG states, hyperparameters): load them in full.
    return torch.load(os.fspath(path), map_location="cpu", weights_only=False)  # noqa: S614


def write_file(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save to a temp file in the same folder, fsync, then os.replace: readers never see half a file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        if is_sharded(path):  # a sharded folder of the same name (an FSDP attempt before this one)
            _swap_in(tmp, path)
        elif os.path.isdir(path):
            raise IsADirectoryError(f"{path} is a folder, not a checkpoint: give the checkpoint a file name.")
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _swap_in(new: str, path: str) -> None:
    """Put `new` (a file or a folder) at `path`, whatever `path` is now. rename() cannot replace a folder,
    so the old one steps aside first; a crash between the two renames leaves it as `<path>.old-*`."""
    old = f"{path}.old-{uuid.uuid4().hex[:8]}"
    if os.path.lexists(path):
        os.replace(path, old)
    os.replace(new, path)
    remove(old)


def remove(path: str | os.PathLike) -> None:
    """Delete a checkpoint of either layout; a missing one is not an error."""
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def save_sharded(
    checkpoint: dict[str, Any],
    path: str | os.PathLike,
    *,
    is_global_zero: bool,
    barrier: Callable[[], None],
    is_local_zero: bool | None = None,
) -> None:
    """Every rank calls this with its shard. The folder appears whole or not at all: DCP writes into
    `<path>.partial`, rank 0 adds meta.pt and swaps it into place.

    On nodes that do not share the folder with rank 0 (each machine's own GRIDLAB_CHECKPOINT_DIR), the
    node's local rank 0 then finishes its own `.partial` the same way, so that node's shards form a
    complete folder there too (the agent uploads it; the union of the nodes' folders is the checkpoint).
    On shared storage rank 0 has already moved the folder, and there is nothing left to finish."""
    import torch.distributed.checkpoint as dcp

    path = os.path.abspath(os.fspath(path))
    partial = path + ".partial"
    if is_global_zero:
        remove(partial)
        os.makedirs(partial)
    barrier()
    tensors = {k: checkpoint[k] for k in _TENSOR_KEYS if k in checkpoint}
    if "optimizer_states" in tensors:
        tensors["optimizer_states"] = {str(i): s for i, s in enumerate(tensors["optimizer_states"])}
    dcp.save(tensors, checkpoint_id=partial)
    meta = {k: v for k, v in checkpoint.items() if k not in _TENSOR_KEYS}
    meta["sharded"] = {"optimizers": len(checkpoint.get("optimizer_states", []))}
    if is_global_zero:
        write_file(meta, os.path.join(partial, META_FILE))
        _swap_in(partial, path)
    barrier()
    if is_local_zero and not is_global_zero and os.path.isdir(partial):
        write_file(meta, os.path.join(partial, META_FILE))
        _swap_in(partial, path)
    barrier()


def load_sharded(
    path: str | os.PathLike,
    module: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    *,
    no_dist: bool = False,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read a sharded folder into state dicts shaped like `module`'s and `optimizers`' current ones
    (sharded DTensors under FSDP, plain tensors in one process): DCP reshards on the way in. `meta`:
    the folder's meta.pt when the caller has read it already."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    if meta is None:
        meta = read_meta(path)
    template: dict[str, Any] = {"state_dict": get_model_state_dict(module)}
    saved_opts = meta.get("sharded", {}).get("optimizers", 0)
    if optimizers and saved_opts:
        if saved_opts != len(optimizers):
            from .errors import MisconfigurationError

            raise MisconfigurationError(
                f"{path} holds {saved_opts} optimizer state(s) but configure_optimizers returned {len(optimizers)}."
            )
        template["optimizer_states"] = {str(i): get_optimizer_state_dict(module, o) for i, o in enumerate(optimizers)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load(template, checkpoint_id=os.fspath(path), no_dist=no_dist)
    meta["state_dict"] = template["state_dict"]
    if "optimizer_states" in template:
        meta["optimizer_states"] = [template["optimizer_states"][str(i)] for i in range(len(optimizers))]
    return meta


def read(
    path: str | os.PathLike,
    module: torch.nn.Module | None = None,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    *,
    no_dist: bool = False,
) -> dict[str, Any]:
    """Either layout. A sharded folder needs the module (and optimizers) to shape what it loads."""
    if is_sharded(path):
        if module is None:
            raise ValueError(f"{path} is a sharded checkpoint folder: loading it needs the module.")
        return load_sharded(path, module, optimizers, no_dist=no_dist)
    if os.path.isdir(path):
        raise FileNotFoundError(f"{path} is a folder without {META_FILE}: not a gridlab checkpoint.")
    return _torch_load(path)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Everything but the tensors: the whole file for a file checkpoint, meta.pt for a folder."""
    return _torch_load(os.path.join(path, META_FILE)) if is_sharded(path) else _torch_load(path)


def is_name_keyed(optimizer_state: dict[str, Any]) -> bool:
    """True for torch.distributed.checkpoint's layout (state keyed by parameter name), False for
    `Optimizer.state_dict()`'s (keyed by position)."""
    groups = optimizer_state.get("param_groups") or [{}]
    params = groups[0].get("params") or []
    return bool(params) and isinstance(params[0], str)


def name_keyed(module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """Translate a positional optimizer state to the name-keyed layout, matching positions to the
    parameters of `optimizer` as it stands (built by the same configure_optimizers)."""
    names = {id(p): n for n, p in module.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    saved = [i for g in state["param_groups"] for i in g["params"]]
    if len(saved) != len(order):
        raise ValueError(f"the checkpoint's optimizer has {len(saved)} parameters, this one {len(order)}.")
    fqn = dict(zip(saved, order, strict=True))
    return {
        "state": {fqn[i]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": [fqn[i] for i in g["params"]]} for g in state["param_groups"]],
    }
