"""Gangs: the nodes of one multi-node attempt, which prepare apart and start together.

```
 placed --> every node PREPARING ... each reports `prepared` (node 0 with its port)
              |                                  |
              | prepare deadline passes           | the last node is prepared
              v                                  v
        released whole (LOST: requeued,    StartAttempt to every node
        no retry spent)                    (master = node 0's address and port)
```

Once started, a node that ends badly ends the attempt (its peers are stopped: a lone dead
rank leaves NCCL peers waiting forever); the attempt succeeds when every node has.
Pure bookkeeping, in memory like heartbeats: after a scheduler restart a gang still
preparing is re-learnt from its nodes' reports, with a fresh deadline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .state import AttemptState


@dataclass
class Gang:
    nodes: int
    deadline: float  # scheduler monotonic clock
    master_addr: str
    ports: dict[int, int] = field(default_factory=dict)  # node rank -> port it reported (node 0's is used)
    started: bool = False  # every node was sent the start order

    @property
    def ready(self) -> bool:
        return len(self.ports) >= self.nodes

    def missing(self) -> list[int]:
        return [rank for rank in range(self.nodes) if rank not in self.ports]


class GangTracker:
    def __init__(self) -> None:
        self._gangs: dict[str, Gang] = {}

    def add(self, attempt_id: str, nodes: int, master_addr: str, deadline: float) -> None:
        self._gangs.setdefault(attempt_id, Gang(nodes, deadline, master_addr))

    def get(self, attempt_id: str) -> Gang | None:
        return self._gangs.get(attempt_id)

    def prepared(self, attempt_id: str, node_rank: int, port: int) -> Gang | None:
        """Record that a node is ready; returns the gang once every node is (repeat reports are harmless)."""
        gang = self._gangs.get(attempt_id)
        if gang is None or not 0 <= node_rank < gang.nodes or (node_rank == 0 and port <= 0):
            return None  # node 0 without a port cannot host the rendezvous: it is not ready
        gang.ports.setdefault(node_rank, port)
        return gang if gang.ready else None

    def expired(self, now: float) -> list[tuple[str, list[int]]]:
        """Gangs past their prepare deadline with nodes not ready, and which; each returned once."""
        out = [(a, g.missing()) for a, g in self._gangs.items() if not g.ready and now > g.deadline]
        for attempt_id, _ in out:
            del self._gangs[attempt_id]
        return out

    def forget(self, attempt_id: str) -> None:
        self._gangs.pop(attempt_id, None)


def gang_end(nodes: Mapping[int, AttemptState], reporter: int) -> AttemptState | None:
    """What the attempt becomes when node `reporter` has ended (its state is in `nodes`): its own end if
    that was not a success (the first bad end wins), SUCCEEDED once every node succeeded, else nothing
    yet (the other nodes are still finishing)."""
    state = nodes[reporter]
    if state is not AttemptState.SUCCEEDED:
        return state
    if all(s is AttemptState.SUCCEEDED for s in nodes.values()):
        return AttemptState.SUCCEEDED
    return None
