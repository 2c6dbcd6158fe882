"""What DDP and FSDP share: joining the torch.distributed process group, collectives, a sharded
sampler for every DataLoader, and failing as a group.

Joining: when RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT are set (torchrun, the gridlab agent) this
process joins that group; otherwise the Trainer's own launcher starts the other local ranks. The
backend is NCCL on CUDA (after `torch.cuda.set_device(LOCAL_RANK)`), gloo on CPU; every collective
is bounded by `timeout`.

Failing: a rank whose fit raises leaves the group at once (its sockets close, so its peers' pending
collectives fail instead of waiting for the timeout) after writing "rank R: <error>" to the group's
store, where its peers look when their own collective fails, so every rank reports the first
failure rather than only "connection reset".
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import warnings
from typing import Any

import torch
import torch.distributed as dist

from .durations import parse_duration
from .environment import LAUNCHED_ENV, LAUNCHER_PID_ENV, ClusterEnvironment
from .errors import MisconfigurationError
from .loaders import with_sampler
from .precision import Precision
from .seed import SEED_ENV
from .strategy import Strategy

DEFAULT_TIMEOUT_S = 1800.0
TIMEOUT_ENV = "GRIDLAB_DIST_TIMEOUT"
_ERROR_KEY = "gridlab/first_error"


class GroupError(RuntimeError):
    """Another rank of the group failed; the message names it and its error."""


class DistributedStrategy(Strategy):
    """A strategy over a torch.distributed process group. `Trainer` fills in devices and precision
    when it builds the strategy from a string; construct a subclass yourself to pass options."""

    def __init__(
        self,
        *,
        timeout: float | str | datetime.timedelta | None = None,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(torch.device("cpu"), Precision())
        raw = timeout if timeout is not None else os.environ.get(TIMEOUT_ENV)
        seconds = DEFAULT_TIMEOUT_S if raw is None else _timeout_seconds(raw)
        self.timeout = datetime.timedelta(seconds=seconds)
        self.process_group_backend = process_group_backend
        self.device_ids: list[int] = [0]
        self.num_devices = 1
        self.num_nodes = 1
        self.env: ClusterEnvironment | None = None
        self._failed = False
        self._launcher: Any = None
        self._private_group = False
        self._flag_group: Any = None

    # -- wiring from the Trainer ------------------------------------------
    def configure(self, device_type: str, device_ids: list[int], num_nodes: int, precision_factory: Any) -> None:
        """Pick this rank's device from the environment (LOCAL_RANK indexes `device_ids`) before anything is built."""
        self.device_ids, self.num_devices, self.num_nodes = device_ids, len(device_ids), num_nodes
        if device_type == "cuda":
            self.root_device = torch.device("cuda", self._device_index())
        else:
            self.root_device = torch.device(device_type)
        self.precision = precision_factory(self.root_device.type)

    # -- topology ---------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.env.world_size if self.env is not None else self.num_devices * self.num_nodes

    @property
    def global_rank(self) -> int:
        return self.env.rank if self.env is not None else 0

    @property
    def local_rank(self) -> int:
        return self.env.local_rank if self.env is not None else 0

    @property
    def node_rank(self) -> int:
        return self.env.node_rank if self.env is not None else 0

    def setup_environment(self) -> None:
        if self.env is not None and dist.is_initialized():
            return
        env = ClusterEnvironment.detect()
        if env is None:
            env = self._launch()
        else:
            expected = self.num_devices * self.num_nodes
            if self.num_devices > 1 and env.world_size != expected:
                raise MisconfigurationError(
                    f"devices={self.num_devices} x num_nodes={self.num_nodes} is {expected} processes, but the "
                    f"launcher started WORLD_SIZE={env.world_size}: make them agree, or leave devices at its default."
                )
        try:
            self._join(env)
        except BaseException:
            if self._launcher is not None:  # the other ranks are started: do not leave them in the rendezvous
                self._launcher.abort()
            raise

    def _join(self, env: ClusterEnvironment) -> None:
        if os.environ.get(LAUNCHED_ENV) == "1" and LAUNCHER_PID_ENV in os.environ:
            from .launcher import set_parent_death_signal

            set_parent_death_signal(int(os.environ[LAUNCHER_PID_ENV]))
        self.env = env
        if self.root_device.type == "cuda":
            self.root_device = torch.device("cuda", self._device_index())
            torch.cuda.set_device(self.root_device)
        if not dist.is_initialized():
            backend = self.process_group_backend or self._default_backend()
            dist.init_process_group(
                backend,
                init_method=f"tcp://{_host(env.master_addr)}:{env.master_port}",
                rank=env.rank,
                world_size=env.world_size,
                timeout=self.timeout,
                device_id=self.root_device if self.root_device.type == "cuda" else None,
            )
            atexit.register(self._teardown_at_exit)
        if self._flag_group is None and dist.get_backend() != "gloo":
            # The per-step stop flags go over gloo on the CPU: an NCCL all-reduce would need the flags on the GPU
            # and a device sync every step to read them back.
            self._flag_group = dist.new_group(backend="gloo")

    def _default_backend(self) -> str:
        return "nccl" if self.root_device.type == "cuda" else "gloo"

    def _device_index(self) -> int:
        """This rank's GPU: devices=[2, 3] puts local rank 1 on cuda:3; under a launcher that set the
        topology (torchrun, the agent's CUDA_VISIBLE_DEVICES), LOCAL_RANK itself."""
        env = self.env or ClusterEnvironment.detect()
        local = env.local_rank if env is not None else 0
        return self.device_ids[local] if local < len(self.device_ids) else local

    def _launch(self) -> ClusterEnvironment:
        if self.num_nodes > 1:
            raise MisconfigurationError(
                f"num_nodes={self.num_nodes} needs a launcher on every node (the gridlab agent, or torchrun "
                "with --nnodes and a rendezvous); none set RANK/WORLD_SIZE/MASTER_ADDR here."
            )
        if self.num_devices == 1:
            # A group of one (FSDP needs a mesh even then), private to this run: nothing is exported to
            # os.environ (a later Trainer would take it for a launcher's), and end_run() destroys it.
            from .environment import free_port

            self._private_group = True
            return ClusterEnvironment(master_port=free_port())
        from .launcher import SubprocessLauncher

        self._launcher = SubprocessLauncher(self.num_devices)
        return self._launcher.launch()

    def should_fork(self) -> bool:
        """No launcher set up a group and there is no script to re-run (a notebook): fit forks the ranks."""
        from .launcher import is_interactive

        return (
            self.num_devices > 1
            and self.num_nodes == 1  # several nodes need a launcher on each: setup_environment says so
            and not dist.is_initialized()
            and ClusterEnvironment.detect() is None
            and is_interactive()
        )

    def full_state_dict(self, module: torch.nn.Module) -> dict[str, Any]:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    def close_group(self) -> None:
        self._teardown_at_exit()

    def end_run(self) -> None:
        if self._private_group:
            self.close_group()
            self.env, self._private_group = None, False

    def _teardown_at_exit(self) -> None:
        """At interpreter exit: a last barrier, then destroy the group (skipping either can abort at exit)."""
        if not dist.is_initialized():
            return
        try:
            if not self._failed:
                dist.barrier()
        except Exception:  # noqa: S110 - a peer already left; tearing down is all that is left to do
            pass
        finally:
            dist.destroy_process_group()

    # -- collectives --------------------------------------------------------
    def _ready(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self, name: str | None = None) -> None:
        if self._ready():
            dist.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not self._ready():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, device=self.root_device)
        return box[0]

    def reduce(self, value: Any, reduce_op: str = "mean") -> Any:
        if not self._ready() or not isinstance(value, torch.Tensor):
            return value
        dtype = torch.float64 if value.dtype == torch.float64 else torch.float32  # gloo reduces no bf16
        t = value.detach().to(self.root_device, dtype=dtype, copy=True)
        op = {"max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}.get(reduce_op, dist.ReduceOp.SUM)
        dist.all_reduce(t, op=op)
        if reduce_op == "mean":
            t = t / dist.get_world_size()
        return t.to(value.device, value.dtype if value.is_floating_point() else dtype)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002
        if not self._ready():
            return decision
        t = torch.tensor(int(bool(decision)), device=self.root_device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN if all else dist.ReduceOp.MAX)
        return bool(t.item())

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self._ready():
            return [obj]
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    def any_of(self, flags: list[bool]) -> list[bool]:
        if not self._ready():
            return flags
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._flag_group)
        return [bool(v) for v in t.tolist()]

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Stack every rank's `tensor` along a new first dimension."""
        if not self._ready():
            return tensor.unsqueeze(0)
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(out, tensor.contiguous())
        return torch.stack(out)

    # -- failing as a group --------------------------------------------------
    def on_exception(self, exc: BaseException) -> BaseException | None:
        if not self._ready():
            return None
        self._failed = True
        if self._launcher is not None:
            self._launcher.abort()
        store = _default_store()
        first = _read_error(store)
        if first is None and store is not None and not _is_comm_error(exc):
            # Best effort; leaving the group below is what matters.
            with contextlib.suppress(Exception):
                # compare_set: the first writer wins; a later rank's error does not overwrite it.
                store.compare_set(_ERROR_KEY, "", f"rank {self.global_rank}: {type(exc).__name__}: {exc}"[:2000])
        dist.destroy_process_group()
        if first is not None and _is_comm_error(exc):
            return GroupError(f"{first} (this is rank {self.global_rank}; its own error: {exc})")
        return None

    # -- data ---------------------------------------------------------------
    def process_dataloader(self, dataloader: Any) -> Any:
        """Give a DataLoader a DistributedSampler (shuffling when its sampler did), as Lightning does.
        Loaders with their own sampler or batch_sampler, iterable datasets and DataLoader subclasses
        are left alone: they decide their own sharding."""
        from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, SequentialSampler

        if not isinstance(dataloader, DataLoader) or self.world_size == 1:
            return dataloader
        if isinstance(dataloader.sampler, DistributedSampler):
            return dataloader
        if (
            type(dataloader) is not DataLoader
            or isinstance(dataloader.dataset, IterableDataset)
            or type(dataloader.sampler) not in (RandomSampler, SequentialSampler)
            or dataloader.batch_size is None
        ):
            warnings.warn(
                f"This {type(dataloader).__name__} has its own sampler, batch sampler or dataset type: it is not "
                f"sharded across the {self.world_size} ranks (each rank sees what it yields).",
                stacklevel=3,
            )
            return dataloader
        sampler: DistributedSampler[Any] = DistributedSampler(
            dataloader.dataset,
            num_replicas=self.world_size,
            rank=self.global_rank,
            shuffle=isinstance(dataloader.sampler, RandomSampler),
            seed=int(os.environ.get(SEED_ENV, "0")),
        )
        return with_sampler(dataloader, sampler)


def _timeout_seconds(raw: Any) -> float:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw > 0:
        return float(raw)
    if isinstance(raw, str) and raw.strip().replace(".", "", 1).isdigit():
        return float(raw)
    seconds = parse_duration(raw, "timeout")
    if seconds is None or seconds <= 0:
        raise MisconfigurationError(f"timeout must be a positive duration, got {raw!r}.")
    return seconds


def _host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr


def _default_store() -> Any:
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:
        return None


def _read_error(store: Any) -> str | None:
    if store is None:
        return None
    try:
        if store.check([_ERROR_KEY]):
            return bytes(store.get(_ERROR_KEY)).decode(errors="replace")
    except Exception:
        return None
    return None


def is_secondary_failure(exc: BaseException) -> bool:
    """A rank that failed because a peer did (a broken collective), not on its own account."""
    return isinstance(exc, GroupError) or _is_comm_error(exc)


def _is_comm_error(exc: BaseException) -> bool:
    return isinstance(exc, getattr(dist, "DistError", ())) or (
        isinstance(exc, RuntimeError) and any(w in str(exc) for w in ("Connection", "Gloo", "NCCL", "closed", "peer"))
    )
