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
class Placement:
    run_id: str
    agent_name: str
    gpu_uuids: tuple[str, ...]
    cpus: float
    memory_bytes: int


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


def _take(agent: AgentView, p: Placement) -> AgentView:
    return replace(
        agent,
        free_gpus=agent.free_gpus - frozenset(p.gpu_uuids),
        cpus_free=agent.cpus_free - p.cpus,
        memory_free=agent.memory_free - p.memory_bytes,
    )


def _pending_reason(agents: list[AgentView], req: RunRequest) -> str:
    if not agents:
        return "no agent is connected"
    reasons = [static_reason(a, req) for a in agents]
    if all(r is not None for r in reasons):
        most = max(sum(1 for g in a.gpus if _gpu_fits(g, req)) for a in agents)
        if req.gpus > most:
            return f"Unsatisfiable: no agent has {req.gpus} suitable GPUs (the most on one agent is {most})"
        return "Unsatisfiable: " + "; ".join(f"{a.name}: {r}" for a, r in zip(agents, reasons, strict=True))
    return "Resources: waiting for GPUs or CPUs to free up"


def plan(agents: list[AgentView], queue: list[RunRequest]) -> Plan:
    """Place `queue` (already in priority order) onto `agents`.

    Single-node runs only. Each run takes the best-fitting agent that can hold it now;
    a run that cannot be placed does not block those behind it.
    """
    out = Plan()
    current = {a.name: a for a in agents}
    for req in queue:
        if req.nodes != 1:
            out.pending[req.run_id] = "Unsupported: multi-node runs need gang placement"
            continue
        best: tuple[tuple[float, float, str], AgentView, tuple[str, ...]] | None = None
        for agent in current.values():
            if static_reason(agent, req) is not None:
                continue
            gpus = pick_gpus(agent, req)
            if gpus is None:
                continue
            key = rank_key(agent, req)
            if best is None or key < best[0]:
                best = (key, agent, gpus)
        if best is None:
            out.pending[req.run_id] = _pending_reason(agents, req)
            continue
        _, agent, gpus = best
        placement = Placement(req.run_id, agent.name, gpus, req.cpus, req.memory_bytes)
        out.placements.append(placement)
        current[agent.name] = _take(agent, placement)
    return out
