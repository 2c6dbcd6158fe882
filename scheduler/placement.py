"""Placement as pure functions over a snapshot: feasibility, then ranking, then a plan.

Nothing here touches the database or the network. The caller builds a `Snapshot` of
ready agents with what is free on each, and the queue in order; `plan` returns where each
run goes and why the others wait. The store then re-checks and commits each placement in
one transaction (a plan is a proposal, not a fact).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class GpuView:
    uuid: str
    model: str
    memory_bytes: int


@dataclass(frozen=True)
class AgentView:
    name: str
    pool: str
    labels: tuple[tuple[str, str], ...]
    gpus: tuple[GpuView, ...]  # every GPU of the machine
    free_gpus: frozenset[str]  # uuids not held by a live attempt
    cpus_total: float
    cpus_free: float
    memory_total: int
    memory_free: int


@dataclass(frozen=True)
class RunRequest:
    """A queued run's needs, per node."""

    run_id: str
    gpus: int
    cpus: float
    memory_bytes: int = 0
    nodes: int = 1
    pool: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    gpu_types: tuple[str, ...] = ()
    min_gpu_memory_bytes: int = 0


@dataclass(frozen=True)
class NodePlacement:
    """Where one node of a run goes and what it holds there."""

    agent_name: str
    gpu_uuids: tuple[str, ...]
    cpus: float
    memory_bytes: int


@dataclass(frozen=True)
class Placement:
    """A run's whole gang: `nodes[i]` is node rank i (rank 0 hosts the rendezvous)."""

    run_id: str
    nodes: tuple[NodePlacement, ...]


@dataclass
class Plan:
    placements: list[Placement] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)  # run id -> reason in words


def _gpu_fits(gpu: GpuView, req: RunRequest) -> bool:
    if req.gpu_types and gpu.model not in req.gpu_types:
        return False
    return gpu.memory_bytes >= req.min_gpu_memory_bytes


def static_reason(agent: AgentView, req: RunRequest) -> str | None:
    """Why `agent` could never hold `req`, even idle; None if it could."""
    if req.pool and agent.pool != req.pool:
        return f"pool is {agent.pool}, not {req.pool}"
    have = dict(agent.labels)
    for key, value in req.labels:
        if have.get(key) != value:
            return f"label {key}={value} missing"
    suitable = sum(1 for g in agent.gpus if _gpu_fits(g, req))
    if suitable < req.gpus:
        return f"has {suitable} suitable GPUs, run needs {req.gpus}"
    if agent.cpus_total < req.cpus:
        return f"has {agent.cpus_total:g} CPUs, run needs {req.cpus:g}"
    if req.memory_bytes and agent.memory_total < req.memory_bytes:
        return "not enough memory"
    return None


def pick_gpus(agent: AgentView, req: RunRequest) -> tuple[str, ...] | None:
    """The free GPUs `req` would take on `agent`, or None if it does not fit now."""
    if agent.cpus_free < req.cpus or (req.memory_bytes and agent.memory_free < req.memory_bytes):
        return None
    free = [g for g in agent.gpus if g.uuid in agent.free_gpus and _gpu_fits(g, req)]
    if len(free) < req.gpus:
        return None
    # Smallest suitable GPUs first, so big-memory GPUs stay free for runs that need them.
    free.sort(key=lambda g: (g.memory_bytes, g.uuid))
    return tuple(g.uuid for g in free[: req.gpus])


def rank_key(agent: AgentView, req: RunRequest) -> tuple[float, float, str]:
    """Best fit: prefer the agent left with the fewest free GPUs, then CPUs, so that
    big holes stay whole for big runs; the name breaks ties, so plans are repeatable."""
    return (len(agent.free_gpus) - req.gpus, agent.cpus_free - req.cpus, agent.name)


def _take(agent: AgentView, node: NodePlacement) -> AgentView:
    return replace(
        agent,
        free_gpus=agent.free_gpus - frozenset(node.gpu_uuids),
        cpus_free=agent.cpus_free - node.cpus,
        memory_free=agent.memory_free - node.memory_bytes,
    )


def _pending_reason(agents: list[AgentView], req: RunRequest) -> str:
    if not agents:
        return "no agent is connected"
    reasons = [static_reason(a, req) for a in agents]
    fitting = sum(1 for r in reasons if r is None)
    if fitting == 0:
        most = max(sum(1 for g in a.gpus if _gpu_fits(g, req)) for a in agents)
        if req.gpus > most:
            return f"Unsatisfiable: no agent has {req.gpus} suitable GPUs (the most on one agent is {most})"
        return "Unsatisfiable: " + "; ".join(f"{a.name}: {r}" for a, r in zip(agents, reasons, strict=True))
    if fitting < req.nodes:
        return f"Unsatisfiable: a gang of {req.nodes} nodes needs {req.nodes} agents that fit; {fitting} connected do"
    if req.nodes > 1:
        return f"Resources: waiting for {req.nodes} agents with room at once (a gang starts whole or not at all)"
    return "Resources: waiting for GPUs or CPUs to free up"


def place_gang(agents: dict[str, AgentView], req: RunRequest) -> Placement | None:
    """The `req.nodes` best-fitting distinct agents that can hold one node each now, or None: a gang
    gets every node or nothing. Node rank 0 goes to the best fit of them."""
    candidates: list[tuple[tuple[float, float, str], AgentView, tuple[str, ...]]] = []
    for agent in agents.values():
        if static_reason(agent, req) is not None:
            continue
        gpus = pick_gpus(agent, req)
        if gpus is not None:
            candidates.append((rank_key(agent, req), agent, gpus))
    if len(candidates) < req.nodes:
        return None
    candidates.sort(key=lambda c: c[0])
    nodes = tuple(
        NodePlacement(agent.name, gpus, req.cpus, req.memory_bytes) for _, agent, gpus in candidates[: req.nodes]
    )
    return Placement(req.run_id, nodes)


def plan(agents: list[AgentView], queue: list[RunRequest]) -> Plan:
    """Place `queue` (already in priority order) onto `agents`.

    Each run takes the best-fitting agents that can hold it now, one per node; a run that
    cannot be placed does not block those behind it.
    """
    out = Plan()
    current = {a.name: a for a in agents}
    for req in queue:
        placement = place_gang(current, req)
        if placement is None:
            out.pending[req.run_id] = _pending_reason(agents, req)
            continue
        out.placements.append(placement)
        for node in placement.nodes:
            current[node.agent_name] = _take(current[node.agent_name], node)
    return out
