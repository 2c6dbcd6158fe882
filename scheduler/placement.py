"""Placement as pure functions over a snapshot: feasibility, then ranking, then a plan.

Nothing here touches the database or the network. The caller builds a snapshot of
schedulable agents with what is free on each, the runs that hold resources now, and the
queue in order (`queue.order`); `plan` returns where runs go, which runs to preempt for
whom, the one reservation the head of the queue holds, and why the others wait. The
engine then re-checks and commits each placement (a plan is a proposal, not a fact).

Feasibility is per device, not per node: a workstation with an A6000 and two 3090s can
serve a run that wants the A6000 and another that wants 3090s. Ranking prefers, in order:
on-prem pools over burst pools (cloud, spot); a run's GPUs on one NVLink or PCIe island;
the best fit (the agent left with the fewest free suitable GPUs, then the least memory
beyond what was asked), so big holes stay whole for big runs.

A gang of N nodes gets N distinct agents or nothing: no partial holds, so two big gangs
can never each sit on half of the cluster waiting for the other.

Reservation and backfill (Slurm's EASY backfill, with one reservation): the highest-ranked
run that cannot start reserves the GPUs that free first (from the running attempts'
time limits). Later runs may use those GPUs only if their own time limit ends before the
reservation starts; a run without a time limit never backfills into a reserved hole.

Preemption: a run that cannot be placed may stop lower-priority preemptible runs. Victims
are chosen per agent so that what they free, together with what is free already, forms a
placement for the run (not just enough GPUs somewhere), fewest and lowest priority first.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from .queue import Held, Quotas, over_quota

INF = math.inf


@dataclass(frozen=True)
class GpuView:
    uuid: str
    model: str
    memory_bytes: int
    island: str = ""  # GPUs sharing an NVLink or PCIe-switch island share this; "" alone


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
    tier: int = 0  # 0: on-prem; 1: a burst pool (cloud or spot), used when on-prem cannot take the run
    spot: bool = False  # preemptible: the cloud may reclaim it at short notice (a spot instance)


@dataclass(frozen=True)
class RunRequest:
    """A queued run's needs, per node, and what ordering, quotas, backfill and preemption need."""

    run_id: str
    gpus: int
    cpus: float
    memory_bytes: int = 0
    nodes: int = 1
    pool: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    gpu_types: tuple[str, ...] = ()
    min_gpu_memory_bytes: int = 0
    user: str = ""
    team: str = ""
    priority: int = 0
    time_limit: float = 0.0  # seconds; 0: none
    interruptions: int = 0  # attempts of the run ended by a spot reclaim: it prefers other machines after one
    no_spot: bool = False  # interrupted too often (the scheduler's spot_fallback_after): never on a spot machine


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


@dataclass(frozen=True)
class Running:
    """A live attempt: what it holds, and what preemption and reservations need to know."""

    attempt_id: str
    run_id: str
    nodes: tuple[NodePlacement, ...]
    priority: int = 0
    preemptible: bool = False
    ends_at: float = INF  # started + time limit; INF without a limit


@dataclass(frozen=True)
class Reservation:
    """The head blocked run's claim on the agents it would start on (`holds[agent]`: the GPUs it would take
    there). Only runs it `admits` may start on those agents meanwhile."""

    run_id: str
    start: float  # when they are expected free; INF when a holder has no time limit
    holds: Mapping[str, frozenset[str]]

    def admits(self, req: RunRequest, now: float) -> bool:
        """Whether `req` may backfill into the reserved hole: it has a time limit, and ends before the
        reservation starts (or the reservation waits on runs without one: it cannot delay it then)."""
        return req.time_limit > 0 and (self.start == INF or now + req.time_limit <= self.start)


@dataclass
class Plan:
    placements: list[Placement] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)  # run id -> reason in words
    preempt: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # run id -> victim attempt ids
    reservation: Reservation | None = None


# --- feasibility ------------------------------------------------------------------------------


def _gpu_fits(gpu: GpuView, req: RunRequest) -> bool:
    if req.gpu_types and gpu.model not in req.gpu_types:
        return False
    return gpu.memory_bytes >= req.min_gpu_memory_bytes


def static_reason(agent: AgentView, req: RunRequest) -> str | None:
    """Why `agent` could never hold one node of `req`, even idle; None if it could."""
    if req.pool and agent.pool != req.pool:
        return f"pool is {agent.pool}, not {req.pool}"
    if req.no_spot and agent.spot:
        return f"a spot machine, and the run was interrupted {req.interruptions} times on such machines"
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
    """The free GPUs one node of `req` would take on `agent`, or None if it does not fit now.

    From one island when one has enough (the smallest such island: best fit), else across islands;
    within that, the smallest suitable GPUs first, so big-memory GPUs stay free for runs that need them.
    """
    if agent.cpus_free < req.cpus or (req.memory_bytes and agent.memory_free < req.memory_bytes):
        return None
    free = sorted(
        (g for g in agent.gpus if g.uuid in agent.free_gpus and _gpu_fits(g, req)),
        key=lambda g: (g.memory_bytes, g.uuid),
    )
    if len(free) < req.gpus:
        return None
    if req.gpus > 1:
        islands: dict[str, list[GpuView]] = {}
        for g in free:
            if g.island:
                islands.setdefault(g.island, []).append(g)
        whole = [members for members in islands.values() if len(members) >= req.gpus]
        if whole:
            best = min(whole, key=lambda members: (len(members), members[0].uuid))
            return tuple(g.uuid for g in best[: req.gpus])
    return tuple(g.uuid for g in free[: req.gpus])


def _one_island(agent: AgentView, uuids: tuple[str, ...]) -> bool:
    islands = {g.island for g in agent.gpus if g.uuid in uuids}
    return len(uuids) <= 1 or (len(islands) == 1 and "" not in islands)


def rank_key(agent: AgentView, req: RunRequest, gpus: tuple[str, ...]) -> tuple[float, ...]:
    """Lower is better: on-prem first; after a spot interruption, machines that are not spot; one island,
    then best fit (fewest suitable GPUs left free, least memory beyond what was asked, fewest CPUs left); the
    name breaks ties, so plans are repeatable."""
    chosen = [g for g in agent.gpus if g.uuid in gpus]
    left = sum(1 for g in agent.gpus if g.uuid in agent.free_gpus and _gpu_fits(g, req)) - len(gpus)
    waste = sum(g.memory_bytes - req.min_gpu_memory_bytes for g in chosen)
    respot = 1 if agent.spot and req.interruptions else 0
    return (agent.tier, respot, 0 if _one_island(agent, gpus) else 1, left, waste, agent.cpus_free - req.cpus)


def _take(agent: AgentView, node: NodePlacement) -> AgentView:
    return replace(
        agent,
        free_gpus=agent.free_gpus - frozenset(node.gpu_uuids),
        cpus_free=agent.cpus_free - node.cpus,
        memory_free=agent.memory_free - node.memory_bytes,
    )


def _give(agent: AgentView, node: NodePlacement) -> AgentView:
    return replace(
        agent,
        free_gpus=agent.free_gpus | frozenset(node.gpu_uuids),
        cpus_free=agent.cpus_free + node.cpus,
        memory_free=agent.memory_free + node.memory_bytes,
    )


Fit = tuple[tuple[float, ...], tuple[str, ...]] | None  # an agent's rank and GPUs for one node, or no fit
Candidate = tuple[tuple[float, ...], str, tuple[str, ...]]  # (rank, agent name, GPUs): ordered best first


def _fit(agent: AgentView, req: RunRequest) -> Fit:
    if len(agent.free_gpus) < req.gpus or agent.cpus_free < req.cpus:  # the common case in a busy cluster
        return None
    if static_reason(agent, req) is not None:
        return None
    gpus = pick_gpus(agent, req)
    return None if gpus is None else (rank_key(agent, req, gpus), gpus)


def place_gang(agents: Mapping[str, AgentView], req: RunRequest) -> Placement | None:
    """The `req.nodes` best-ranked distinct agents that can hold one node each now, or None: a gang gets
    every node or nothing. Node rank 0 goes to the best of them."""
    candidates: list[Candidate] = []
    for agent in agents.values():
        fit = _fit(agent, req)
        if fit is not None:
            candidates.append((fit[0], agent.name, fit[1]))
    if len(candidates) < req.nodes:
        return None
    return _placement(req, heapq.nsmallest(req.nodes, candidates))  # not a full sort: thousands of agents


def _placement(req: RunRequest, best: Iterable[Candidate]) -> Placement:
    nodes = tuple(NodePlacement(name, gpus, req.cpus, req.memory_bytes) for _, name, gpus in best)
    return Placement(req.run_id, nodes)


class FitIndex:
    """Per request shape, a heap of the agents that can hold one node of it, best first; kept from one pass
    to the next, so a pass costs work for the agents that changed, not for every agent per queued run.

    A cache and nothing more: `place` answers exactly as `place_gang` over the same views. Entries are
    tagged with their agent's version. A change to an agent (`sync` with a new snapshot, `update` after a
    plan takes from it) bumps the version and goes on a change log; each heap catches up on the log when
    its shape is next asked for (so shapes nobody asks for cost nothing), and stale entries are skipped
    when popped. A heap, or the log, that grows past a few times the number of agents is dropped and
    rebuilt on demand.
    """

    MAX_SHAPES = 256  # request shapes remembered; the least recently used is forgotten past it

    def __init__(self) -> None:
        self._views: dict[str, AgentView] = {}
        self._version: dict[str, int] = {}  # agent -> the tick of its last change (unique across agents)
        self._tick = 0
        self._changes: list[str] = []  # agent names, in the order they changed
        # shape -> (a request of that shape, its heap, how much of the change log the heap has seen)
        self._heaps: dict[tuple[object, ...], tuple[RunRequest, list[tuple[Candidate, int]], int]] = {}

    def sync(self, agents: Mapping[str, AgentView]) -> None:
        """Take a pass's snapshot (agents by name): agents that changed or appeared get fresh entries; gone ones
        are dropped. The engine's snapshot hands over the same objects for agents that did not change, so
        finding the others is one comprehension over identities."""
        known = self._views
        for name in known.keys() - agents.keys():
            del known[name]
            del self._version[name]  # its entries are stale: no tick matches a missing agent, or a new one
        for view in [v for n, v in agents.items() if known.get(n) is not v]:
            if known.get(view.name) == view:  # equal, a new object: the entries stand
                known[view.name] = view
            else:
                self.update(view)
        if len(self._changes) > 4 * len(self._views) + 1024:  # cheaper to rebuild a heap than to replay
            self._changes.clear()
            self._heaps.clear()

    def update(self, view: AgentView) -> None:
        """`view` is what its agent has free now."""
        self._views[view.name] = view
        self._tick += 1
        self._version[view.name] = self._tick
        self._changes.append(view.name)

    def place(self, req: RunRequest, exclude: Mapping[str, object] | frozenset[str] = frozenset()) -> Placement | None:
        """`place_gang` over the indexed views minus the agents in `exclude`."""
        heap = self._heap(req)
        taken: list[tuple[Candidate, int]] = []
        skipped: list[tuple[Candidate, int]] = []
        while heap and len(taken) < req.nodes:
            entry = heapq.heappop(heap)
            (_, name, _), version = entry
            if self._version.get(name) != version:
                continue  # stale: a fresher entry for this agent is in the heap, or it is gone
            (taken if name not in exclude else skipped).append(entry)
        for entry in taken + skipped:  # still true: placing is the caller's to `update`
            heapq.heappush(heap, entry)
        return _placement(req, [c for c, _ in taken]) if len(taken) == req.nodes else None

    def _heap(self, req: RunRequest) -> list[tuple[Candidate, int]]:
        shape = _fit_shape(req)
        known = self._heaps.pop(shape, None)  # re-inserted last: dicts keep insertion order, so first is LRU
        if known is None or len(known[1]) > 4 * len(self._views) + 64:  # new, or mostly stale entries
            heap = self._entries(req, self._views)
            heapq.heapify(heap)
        else:
            req, heap, read = known
            for entry in self._entries(req, dict.fromkeys(self._changes[read:])):
                heapq.heappush(heap, entry)
        self._heaps[shape] = (req, heap, len(self._changes))
        if len(self._heaps) > self.MAX_SHAPES:
            del self._heaps[next(iter(self._heaps))]
        return heap

    def _entries(self, req: RunRequest, names: Iterable[str]) -> list[tuple[Candidate, int]]:
        out = []
        for name in names:
            view = self._views.get(name)
            if view is not None and (fit := _fit(view, req)) is not None:
                out.append(((fit[0], name, fit[1]), self._version[name]))
        return out


def _fit_shape(req: RunRequest) -> tuple[object, ...]:
    """What one node's fit on an agent depends on (`_fit`)."""
    return (
        req.gpus,
        req.cpus,
        req.memory_bytes,
        req.pool,
        req.labels,
        req.gpu_types,
        req.min_gpu_memory_bytes,
        req.interruptions > 0,
        req.no_spot,
    )


def _shape(req: RunRequest) -> tuple[object, ...]:
    """What placement of `req` depends on (not who asks, nor which run it is)."""
    return (*_fit_shape(req), req.nodes, req.priority, req.time_limit)


def _without(agents: Mapping[str, AgentView], holds: Mapping[str, frozenset[str]]) -> dict[str, AgentView]:
    """The agents minus those a reservation holds. Whole agents, not just their GPUs: a run on the same
    machine could otherwise take the CPUs or memory the reserved run needs and delay it for ever."""
    return {name: a for name, a in agents.items() if name not in holds}


# --- why a run waits ----------------------------------------------------------------------------


def describe(req: RunRequest) -> str:
    """What a run asks for, in words: "2 nodes x 4 GPUs of A100 >= 40 GB"."""
    gib = 1024**3
    parts = f"{req.gpus} GPU{'s' if req.gpus != 1 else ''}" if req.gpus else f"{req.cpus:g} CPUs"
    if req.gpu_types:
        parts += " of " + "/".join(req.gpu_types)
    if req.min_gpu_memory_bytes:
        parts += f" >= {req.min_gpu_memory_bytes / gib:g} GB"
    return f"{req.nodes} nodes x {parts}" if req.nodes > 1 else parts


def _pending_reason(agents: list[AgentView], current: Mapping[str, AgentView], req: RunRequest) -> str:
    if not agents:
        return "no agent is connected"
    reasons = [static_reason(a, req) for a in agents]
    fitting = sum(1 for r in reasons if r is None)
    if fitting == 0:
        most = max(sum(1 for g in a.gpus if _gpu_fits(g, req)) for a in agents)
        if req.gpus > most:
            return (
                f"Unsatisfiable: no agent has {req.gpus} suitable GPUs (the most on one agent is {most}); "
                f"the biggest machine offers {_offer(agents)}"
            )
        why = sorted((a.name, r) for a, r in zip(agents, reasons, strict=True))  # the same text from pass to pass
        return "Unsatisfiable: " + "; ".join(f"{name}: {r}" for name, r in why)
    if fitting < req.nodes:
        return f"Unsatisfiable: a gang of {req.nodes} nodes needs {req.nodes} agents that fit; {fitting} connected do"
    now = sum(1 for a in current.values() if static_reason(a, req) is None and pick_gpus(a, req) is not None)
    if req.nodes > 1:
        return (
            f"Resources: needs {describe(req)}; largest feasible set now: {now} node{'s' if now != 1 else ''} "
            "(a gang starts whole or not at all)"
        )
    return f"Resources: needs {describe(req)}; waiting for GPUs or CPUs to free up"


def _offer(agents: list[AgentView]) -> str:
    """What the agent with the most GPUs has, for a user to size a request that would fit: "ws-01: 2x A100
    80 GB + 4x RTX3090 24 GB"."""
    biggest = max(agents, key=lambda a: (len(a.gpus), a.name))
    if not biggest.gpus:
        return f"{biggest.name}: no GPUs"
    counts: dict[tuple[str, int], int] = {}
    for g in biggest.gpus:
        key = (g.model, round(g.memory_bytes / 1024**3))
        counts[key] = counts.get(key, 0) + 1
    return f"{biggest.name}: " + " + ".join(f"{n}x {model} {gb} GB" for (model, gb), n in sorted(counts.items()))


# --- reservation ---------------------------------------------------------------------------------


def reserve(
    agents: Mapping[str, AgentView], running: Iterable[Running], req: RunRequest, now: float
) -> Reservation | None:
    """When and where `req` could start if nothing new started: replay the running attempts' ends in order
    (INF for those without a time limit) until it fits. None when it never would on these agents."""
    views = dict(agents)
    ends = sorted((r for r in running), key=lambda r: (r.ends_at, r.attempt_id))
    start = max(now, 0.0)
    for r in [None, *ends]:
        if r is not None:
            for node in r.nodes:
                if node.agent_name in views:
                    views[node.agent_name] = _give(views[node.agent_name], node)
            start = max(start, r.ends_at)
        placement = place_gang(views, req)
        if placement is not None:
            holds = {n.agent_name: frozenset(n.gpu_uuids) for n in placement.nodes}
            return Reservation(req.run_id, start, holds)
    return None


# --- preemption ----------------------------------------------------------------------------------


def choose_victims(
    agents: Mapping[str, AgentView], running: Iterable[Running], req: RunRequest
) -> tuple[str, ...] | None:
    """The attempts to stop so that `req` fits: on each agent, the fewest lowest-priority preemptible
    attempts of lower priority whose stop lets one node fit there; the `req.nodes` cheapest agents; checked
    as a whole (a victim that is a gang frees GPUs on all its agents). None when no choice makes it fit."""
    candidates = [r for r in running if r.preemptible and r.priority < req.priority]
    options: list[tuple[tuple[int, int, int, str], frozenset[str]]] = []
    for agent in agents.values():
        if static_reason(agent, req) is not None:
            continue
        here = sorted(
            (r for r in candidates if any(n.agent_name == agent.name for n in r.nodes)),
            key=lambda r: (r.priority, -sum(len(n.gpu_uuids) for n in r.nodes if n.agent_name == agent.name)),
        )
        view, chosen = agent, []
        for r in here:
            if pick_gpus(view, req) is not None:
                break
            for node in r.nodes:
                if node.agent_name == agent.name:
                    view = _give(view, node)
            chosen.append(r)
        if pick_gpus(view, req) is None:
            continue
        cost = (len(chosen), sum(r.priority for r in chosen), agent.tier, agent.name)
        options.append((cost, frozenset(r.attempt_id for r in chosen)))
    if len(options) < req.nodes:
        return None
    options.sort(key=lambda o: o[0])
    victims = frozenset().union(*(ids for _, ids in options[: req.nodes]))
    if not victims:
        return None  # it fits without stopping anything: not a preemption (placement will take it)
    freed = dict(agents)
    for r in candidates:
        if r.attempt_id in victims:
            for node in r.nodes:
                if node.agent_name in freed:
                    freed[node.agent_name] = _give(freed[node.agent_name], node)
    return tuple(sorted(victims)) if place_gang(freed, req) is not None else None


# --- the plan ----------------------------------------------------------------------------------


def plan(
    agents: list[AgentView] | Mapping[str, AgentView],
    queue: list[RunRequest],
    *,
    running: Iterable[Running] = (),
    now: float = 0.0,
    quotas: Quotas | None = None,
    held: Held | None = None,
    stopping: Mapping[str, str] | None = None,
    parked: Iterable[AgentView] = (),
    index: FitIndex | None = None,
) -> Plan:
    """Place `queue` (already in order: `queue.order`) onto `agents`.

    `running`: live attempts (for reservations and preemption); `stopping`: attempts already being
    preempted -> the run they make room for (not chosen again; that run waits for them rather than
    preempting more); `held`: GPUs held now per user and team (for quotas; updated with what this plan
    places); `parked`: connected agents that take nothing new (cordoned, draining): a run that only they
    could hold waits for them, it is not unsatisfiable. `index`: the engine's FitIndex, kept from one pass
    to the next (a cache: the plan is the same without it).
    """
    out = Plan()
    quotas = quotas or Quotas()
    held = held or Held()
    if isinstance(agents, Mapping):  # by name already: copied in C, not rebuilt an agent at a time
        current = dict(agents)
        agents = list(current.values())
    else:
        current = {a.name: a for a in agents}
    stopping = stopping or {}
    running = [r for r in running]
    live = [r for r in running if r.attempt_id not in stopping]
    waiting_for = {run: sum(1 for r in stopping.values() if r == run) for run in stopping.values()}
    # What a run of a given shape met when it could not be placed. Within a pass resources only shrink, so a
    # later run of the same shape meets the same: thousands of queued runs cost a few placement searches.
    failed: dict[tuple[object, ...], str] = {}
    index = index or FitIndex()
    index.sync(current)
    for req in queue:
        if why := over_quota(quotas, held, req.user, req.team, req.gpus * req.nodes):
            out.pending[req.run_id] = why
            continue
        shape = _shape(req)
        res = out.reservation
        if shape in failed:
            out.pending[req.run_id] = _behind(failed[shape], res)
            continue
        placement = index.place(req, res.holds if res else frozenset())
        if placement is None and res is not None and res.admits(req, now):
            placement = index.place(req)  # backfill: it ends before the reservation starts
        if placement is not None:
            out.placements.append(placement)
            for node in placement.nodes:
                current[node.agent_name] = _take(current[node.agent_name], node)
                index.update(current[node.agent_name])
            held.add(req.user, req.team, req.gpus * req.nodes)
            running.append(
                Running(f"planned:{req.run_id}", req.run_id, placement.nodes, req.priority, False, _end(req, now))
            )
            continue
        reason = _pending_reason(agents, current, req)
        if parked and not reason.startswith("Resources"):
            everyone = [*agents, *parked]
            if not _pending_reason(everyone, {a.name: a for a in everyone}, req).startswith(("Unsat", "no agent")):
                names = ", ".join(sorted(a.name for a in parked if static_reason(a, req) is None))
                reason = f"Resources: needs {describe(req)}; the agents that could hold it take nothing new ({names})"
        if reason.startswith("Resources"):
            if req.run_id in waiting_for:
                out.pending[req.run_id] = f"Preempting: waiting for {waiting_for[req.run_id]} preempted run(s) to stop"
                held.add(req.user, req.team, req.gpus * req.nodes)  # what it will hold: later runs see the quota
                continue
            victims = choose_victims(
                _without(current, res.holds) if res and not res.admits(req, now) else current, live, req
            )
            if victims:
                out.preempt.append((req.run_id, victims))
                live = [r for r in live if r.attempt_id not in victims]
                held.add(req.user, req.team, req.gpus * req.nodes)
                out.pending[req.run_id] = f"Preempting: {len(victims)} lower-priority run(s) are stopping to make room"
                continue
            if res is None and (reservation := reserve(current, running, req, now)) is not None:
                out.reservation = reservation
                when = "when runs without a time limit end" if reservation.start == INF else "soonest"
                out.pending[req.run_id] = (
                    f"{reason}; holds a reservation on {', '.join(sorted(reservation.holds))} ({when})"
                )
                continue
        failed[shape] = reason
        out.pending[req.run_id] = _behind(reason, res)
    return out


def _end(req: RunRequest, now: float) -> float:
    return now + req.time_limit if req.time_limit > 0 else INF


def _behind(reason: str, reservation: Reservation | None) -> str:
    if reservation is not None and reason.startswith("Resources"):
        return f"{reason}; behind {reservation.run_id}, which holds a reservation"
    return reason
