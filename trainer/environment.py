"""Where this process sits in a distributed job, read from the environment torchrun and the gridlab
agent both set (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK/NODE_RANK, MASTER_ADDR,
MASTER_PORT). Lightning calls this seam a ClusterEnvironment; here it is a frozen value."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import MisconfigurationError

# Set in the ranks the Trainer's own launcher starts, so they do not launch again.
LAUNCHED_ENV = "GRIDLAB_LAUNCHED_BY_TRAINER"
LAUNCHER_PID_ENV = "GRIDLAB_LAUNCHER_PID"


@dataclass(frozen=True)
class ClusterEnvironment:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))

    @classmethod
    def detect(cls, environ: Mapping[str, str] | None = None) -> ClusterEnvironment | None:
        """The group described by the environment, or None when there is none (plain `python`)."""
        env = os.environ if environ is None else environ
        if "WORLD_SIZE" not in env or "RANK" not in env:
            return None

        def num(key: str, default: int | None = None) -> int:
            raw = env.get(key)
            if raw is None:
                if default is None:
                    raise MisconfigurationError(f"{key} is not set, but RANK and WORLD_SIZE are: set {key} too.")
                return default
            try:
                return int(raw)
            except ValueError:
                raise MisconfigurationError(f"{key}={raw!r} is not an integer.") from None

        world = num("WORLD_SIZE")
        rank = num("RANK")
        local_rank = num("LOCAL_RANK", 0)
        local_world = num("LOCAL_WORLD_SIZE", world)
        node_rank = num("GROUP_RANK", num("NODE_RANK", rank // max(1, local_world)))
        if world < 1 or not 0 <= rank < world:
            raise MisconfigurationError(f"RANK={rank} must be in [0, WORLD_SIZE={world}).")
        if not 0 <= local_rank < local_world:
            raise MisconfigurationError(f"LOCAL_RANK={local_rank} must be in [0, LOCAL_WORLD_SIZE={local_world}).")
        port = num("MASTER_PORT", 0)
        if world > 1 and ("MASTER_ADDR" not in env or port <= 0):
            raise MisconfigurationError(
                f"WORLD_SIZE={world} needs MASTER_ADDR and MASTER_PORT (rank 0's address and a free port)."
            )
        return cls(rank, world, local_rank, local_world, node_rank, env.get("MASTER_ADDR", "127.0.0.1"), port)

    def to_env(self) -> dict[str, str]:
        """The torchrun-compatible variables for this rank."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "GROUP_RANK": str(self.node_rank),
            "NODE_RANK": str(self.node_rank),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def cuda_device_count() -> int:
    """Visible CUDA GPUs, counted through NVML when torch can: torch.cuda.is_available() initialises the
    CUDA driver in this process, after which forked ranks (the notebook launcher) cannot use CUDA."""
    import torch

    try:
        count = torch.cuda._device_count_nvml()
    except Exception:
        count = -1
    return count if count >= 0 else torch.cuda.device_count()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now on `host` (the kernel picks it; a tiny window remains before rank 0 binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
