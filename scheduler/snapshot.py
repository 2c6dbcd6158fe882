"""What placement sees, built from the store's rows and the connected agents' inventories.

Kept apart from the engine so that the translation (inventory topology into islands, spec
fields into requests, live attempts into what they hold and when they end) is plain code
over plain values, testable without a database.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from gridlab.v1 import types_pb2

from .placement import AgentView, GpuView, NodePlacement, Running, RunRequest
from .queue import Held


def islands(gpus: Iterable[types_pb2.Gpu]) -> dict[str, str]:
    """Each GPU's island: the GPUs it reaches over NVLink; for GPUs without NVLink, those behind the same
    PCIe switch (connected components, named by their smallest uuid). "" for a GPU on its own."""
    gpus = list(gpus)
    known = {g.uuid for g in gpus}
    parent = {u: u for u in known}

    def find(u: str) -> str:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    nvlinked = {g.uuid for g in gpus if any(p in known for p in g.nvlink_peers)}
    for g in gpus:
        for peer in g.nvlink_peers:
            if peer in known:
                union(g.uuid, peer)
    for g in gpus:
        if g.uuid not in nvlinked:
            for peer in g.pcie_switch_peers:
                if peer in known and peer not in nvlinked:
                    union(g.uuid, peer)
    groups: dict[str, list[str]] = {}
    for u in known:
        groups.setdefault(find(u), []).append(u)
    return {u: (min(members) if len(members) > 1 else "") for members in groups.values() for u in members}


class Connected(Protocol):
    """What the cache reads of a connected agent (the engine's AgentSession)."""

    name: str
    pool: str
    labels: dict[str, str]
    inventory: types_pb2.Inventory
    draining: bool
    preemptible: bool


class ViewCache:
    """Each agent's view without what is used, rebuilt only when its inventory's static facts change (GPUs,
    topology, CPUs, memory), not on every heartbeat's utilization; and, for `snapshot`, the view less what is
    used, kept from one pass to the next and rebuilt only for the agents that changed: those `touch`ed (a Hello,
    a new inventory, draining, gone) and those whose live nodes or cordon changed. A pass over a thousand
    agents, most of them as they were in the pass before, then costs work for the few that are not, and hands
    placement the same objects as before for the rest (which `placement.FitIndex.sync` skips by identity)."""

    def __init__(self, burst_pools: Iterable[str], spot_pools: Iterable[str] = ()) -> None:
        self.burst_pools = frozenset(burst_pools)
        self.spot_pools = frozenset(spot_pools)  # pools whose machines are all spot (the [pools] config)
        self._views: dict[str, tuple[tuple[object, ...], AgentView]] = {}
        self._seen: dict[str, types_pb2.Inventory] = {}  # the inventory object each view was last checked against
        # The last snapshot: schedulable agents less what they hold, parked ones whole; what was held and
        # cordoned then; and the agents changed since (None: all of them).
        self._free: dict[str, AgentView] = {}
        self._parked: dict[str, AgentView] = {}
        self._held: Mapping[str, tuple[NodePlacement, ...]] = {}
        self._cordoned: frozenset[str] = frozenset()
        self._dirty: set[str] | None = None

    def touch(self, name: str) -> None:
        """The agent's session changed (a Hello, a new inventory, draining) or ended: see it anew next pass."""
        if self._dirty is not None:
            self._dirty.add(name)
        self._seen.pop(name, None)  # (a new session may bring new pool, labels or spot with the same inventory)

    def touch_all(self) -> None:
        self._dirty = None
        self._seen.clear()

    def snapshot(
        self,
        agents: Mapping[str, Connected],
        used: Mapping[str, tuple[NodePlacement, ...]],
        unschedulable: Iterable[str],
    ) -> tuple[dict[str, AgentView], list[AgentView]]:
        """The schedulable agents less what their live nodes (`used`) hold, by name; and the parked ones
        (draining, or named in `unschedulable`: cordoned, or being scaled in), whole. `agents` are the connected
        ones by name."""
        cordoned = frozenset(unschedulable)
        dirty = self._dirty
        if dirty is None:
            self._free.clear()
            self._parked.clear()
            dirty = set(agents)
        dirty.update(cordoned ^ self._cordoned)
        for name in self._held.keys() | used.keys():
            if self._held.get(name) != used.get(name):
                dirty.add(name)
        for name in sorted(dirty):  # an agent keeps its place in the order while it stays free (or parked)
            agent = agents.get(name)
            if agent is None:
                self._free.pop(name, None)
                self._parked.pop(name, None)
                continue
            whole = self.view(name, agent.pool, agent.labels, agent.inventory, agent.preemptible)
            if agent.draining or name in cordoned:
                self._free.pop(name, None)
                self._parked[name] = whole
            else:
                self._parked.pop(name, None)
                self._free[name] = _minus(whole, used.get(name, ()))
        self._held, self._cordoned, self._dirty = dict(used), cordoned, set()
        return dict(self._free), list(self._parked.values())

    def view(
        self, name: str, pool: str, labels: Mapping[str, str], inventory: types_pb2.Inventory, spot: bool = False
    ) -> AgentView:
        """The agent's view, all of it free."""
        cached = self._views.get(name)
        if cached is None or self._seen.get(name) is not inventory:  # a new Hello or heartbeat: compare facts
            spot = spot or pool in self.spot_pools
            gpus = tuple(
                (g.uuid, g.model, g.memory_total_bytes, tuple(g.nvlink_peers), tuple(g.pcie_switch_peers))
                for g in inventory.gpus
            )
            key = (pool, tuple(sorted(labels.items())), inventory.cpus, inventory.memory_bytes, gpus, spot)
            if cached is None or cached[0] != key:
                cached = (key, agent_view(name, pool, labels, inventory, self.burst_pools, spot))
                self._views[name] = cached
            self._seen[name] = inventory
        return cached[1]

    def forget(self, name: str) -> None:
        """The agent is gone (its session ended): its views go with it."""
        self.touch(name)
        self._views.pop(name, None)


def _minus(view: AgentView, used: Iterable[NodePlacement]) -> AgentView:
    """`view` less what live nodes hold."""
    taken: set[str] = set()
    cpus = 0.0
    memory = 0
    for node in used:
        taken.update(node.gpu_uuids)
        cpus += node.cpus
        memory += node.memory_bytes
    if not taken and not cpus and not memory:
        return view
    return replace(
        view, free_gpus=view.free_gpus - taken, cpus_free=view.cpus_free - cpus, memory_free=view.memory_free - memory
    )


def agent_view(
    name: str,
    pool: str,
    labels: Mapping[str, str],
    inventory: types_pb2.Inventory,
    burst_pools: Iterable[str],
    spot: bool = False,
) -> AgentView:
    """One agent, all of it free (what live nodes hold is taken off per pass: `_minus`)."""
    island = islands(inventory.gpus)
    gpus = tuple(GpuView(g.uuid, g.model, g.memory_total_bytes, island.get(g.uuid, "")) for g in inventory.gpus)
    return AgentView(
        name=name,
        pool=pool,
        labels=tuple(sorted(labels.items())),
        gpus=gpus,
        free_gpus=frozenset(g.uuid for g in gpus),
        cpus_total=inventory.cpus,
        cpus_free=inventory.cpus,
        memory_total=inventory.memory_bytes,
        memory_free=inventory.memory_bytes,
        tier=1 if pool in set(burst_pools) else 0,
        spot=spot,
    )


def request(run_id: str, spec: types_pb2.RunSpec, user: str, team: str) -> RunRequest:
    res = spec.resources
    return RunRequest(
        run_id=run_id,
        gpus=res.gpus,
        cpus=res.cpus,
        memory_bytes=res.memory_bytes,
        nodes=res.nodes,
        pool=spec.pool,
        labels=tuple(sorted(spec.labels.items())),
        gpu_types=tuple(res.gpu_types),
        min_gpu_memory_bytes=res.min_gpu_memory_bytes,
        user=user,
        team=team,
        priority=spec.priority,
        time_limit=spec.time_limit.ToNanoseconds() / 1e9,
    )


@dataclass
class Live:
    """The live attempts, as placement needs them, and the GPUs each user and team holds."""

    running: list[Running]
    held: Held
    used: dict[str, float]  # user -> GPU-seconds their running attempts have used so far


def live_attempts(rows: Iterable[sqlite3.Row], specs: Mapping[str, types_pb2.RunSpec], now: float) -> Live:
    """From rows of live nodes joined with their attempt and run (attempt_id, run_id, started_at, created_at,
    agent_name, gpu_uuids, cpus, memory_bytes, user, team, priority)."""
    nodes: dict[str, list[sqlite3.Row]] = {}
    for row in rows:
        nodes.setdefault(row["attempt_id"], []).append(row)
    running: list[Running] = []
    held = Held()
    used: dict[str, float] = {}
    for attempt_id, rs in nodes.items():
        first = rs[0]
        spec = specs.get(first["run_id"], types_pb2.RunSpec())
        limit = spec.time_limit.ToNanoseconds() / 1e9
        began = first["started_at"] or first["created_at"] or now
        placed = tuple(
            NodePlacement(r["agent_name"], tuple(json.loads(r["gpu_uuids"])), r["cpus"], r["memory_bytes"] or 0)
            for r in rs
        )
        running.append(
            Running(
                attempt_id,
                first["run_id"],
                placed,
                priority=first["priority"] or 0,
                preemptible=spec.preemptible,
                ends_at=began + limit if limit > 0 else math.inf,
            )
        )
        gpus = sum(len(n.gpu_uuids) for n in placed)
        held.add(first["user"], first["team"] or "", gpus)
        if first["started_at"]:
            used[first["user"]] = used.get(first["user"], 0.0) + gpus * max(0.0, now - first["started_at"])
    return Live(running, held, used)
