"""Autoscaled pools: grow a pool's machines while queued runs only it could serve wait, release idle ones.

`decide` is a pure function over a snapshot (pools, their machines, the runs waiting, the time), so
every rule is unit-tested without processes. `Autoscaler.run` is the scheduler's loop: it takes the
snapshot and decides inside the engine's group commit (so placement never uses a machine it has chosen
to release), then asks each pool's provider to create or terminate machines. Each created machine gets
an agent join token of its own, revoked when the machine is terminated.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from gridlab.common.config import ConfigError, SchedulerConfig
from gridlab.v1 import types_pb2

from .auth import AGENT
from .placement import RunRequest
from .providers import OPTIONS, PROVIDERS, MachineRequest, Provider, check_options, ec2_gpus

log = structlog.get_logger("gridlab.scheduler.autoscaler")

GIB = 1024**3
POOL_KEYS = {
    "provider",
    "machine",
    "gpus",
    "preemptible",
    "labels",
    "min_agents",
    "max_agents",
    "idle_seconds",
    "boot_seconds",
    *OPTIONS,  # a provider's own options: the [pools.NAME.ec2] or [pools.NAME.command] sub-table
}
# Waiting for these is not a lack of machines: more of them would not start the run.
NOT_DEMAND = ("Quota:", "Unsatisfiable: quota", "Preempting")
_GPU_ENTRY = re.compile(r"^(?:(?P<count>\d+)\s*[xX]\s*)?(?P<model>[^:]+?)(?::(?P<mem>[^:]*))?$")


@dataclass(frozen=True)
class Pool:
    name: str
    provider: str
    machine: str  # the machine type: for `local`, a GRIDLAB_FAKE_GPUS value such as "2xA100:80"; for `ec2`, "g5.xlarge"
    gpus: tuple[tuple[str, int], ...]  # one machine's GPUs: (model, memory bytes)
    preemptible: bool = False
    labels: tuple[tuple[str, str], ...] = ()
    min_agents: int = 0
    max_agents: int = 1
    idle_seconds: float = 300.0  # a machine idle this long is released (down to min_agents)
    boot_seconds: float = 600.0  # a machine whose agent has not joined by then is released
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)  # the provider's checked sub-table


@dataclass(frozen=True)
class Machine:
    name: str
    created_at: float
    joined: bool  # its agent is connected and ready
    busy: bool  # it holds a live attempt
    free_gpus: int = 0
    idle_since: float | None = None  # when it was last seen joined and not busy; None: busy or not joined


@dataclass(frozen=True)
class Action:
    pool: str
    create: int = 0
    terminate: tuple[str, ...] = ()


def parse_machine(spec: str) -> tuple[tuple[str, int], ...]:
    """GPUs of a machine type written like GRIDLAB_FAKE_GPUS: "2xA100:80,T4:16" or "4"."""
    gpus: list[tuple[str, int]] = []
    for raw in spec.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry.isdigit():
            gpus += [("FakeGPU", 16 * GIB)] * int(entry)
            continue
        m = _GPU_ENTRY.match(entry)
        if m is None:
            raise ConfigError(f"machine {spec!r}: expected [N x]MODEL[:MEMORY_GB] entries")
        try:
            memory = int(float(m["mem"]) * GIB) if m["mem"] else 16 * GIB
        except ValueError:
            raise ConfigError(f"machine {spec!r}: memory {m['mem']!r} is not a number") from None
        gpus += [(m["model"].strip(), memory)] * int(m["count"] or 1)
    return tuple(gpus)


def parse_pools(tables: Mapping[str, Any]) -> list[Pool]:
    """The `[pools.NAME]` tables of the scheduler's config, checked."""
    pools = []
    for name, table in tables.items():
        where = f"pools.{name}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a table")
        unknown = sorted(set(table) - POOL_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(POOL_KEYS))}")
        provider = table.get("provider")
        if provider not in PROVIDERS:
            raise ConfigError(f"{where}.provider must be one of {', '.join(sorted(PROVIDERS))}, got {provider!r}")
        labels = table.get("labels", {})
        if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
            raise ConfigError(f"{where}.labels must be a table of strings")
        stray = sorted(set(OPTIONS) & set(table) - {provider})
        if stray:
            raise ConfigError(f"{where}.{stray[0]} is for {stray[0]} pools; this pool's provider is {provider!r}")
        options = check_options(provider, f"{where}.{provider}", table.get(provider))
        machine, gpus = _machine(where, provider, table)
        try:
            pool = Pool(
                name=name,
                provider=provider,
                machine=machine,
                gpus=gpus,
                preemptible=bool(table.get("preemptible", False)),
                labels=tuple(sorted(labels.items())),
                min_agents=int(table.get("min_agents", 0)),
                max_agents=int(table.get("max_agents", 1)),
                idle_seconds=float(table.get("idle_seconds", 300.0)),
                boot_seconds=float(table.get("boot_seconds", 600.0)),
                options=options,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not 0 <= pool.min_agents <= pool.max_agents:
            raise ConfigError(f"{where}: need 0 <= min_agents <= max_agents")
        if pool.idle_seconds < 0 or pool.boot_seconds <= 0:
            raise ConfigError(f"{where}: idle_seconds must be >= 0 and boot_seconds > 0")
        pools.append(pool)
    return pools


def _machine(where: str, provider: str, table: Mapping[str, Any]) -> tuple[str, tuple[tuple[str, int], ...]]:
    """A pool's machine type and one machine's GPUs. `local`: `machine` is the GPUs ("2xA100:80"). `ec2`: the
    instance type's GPUs come from a table, or from `gpus` for a type it lacks. `command`: `gpus` is required,
    `machine` is whatever the admin's create template wants ({machine})."""
    machine = table.get("machine", "1" if provider == "local" else "")
    if not isinstance(machine, (str, int)) or isinstance(machine, bool):
        raise ConfigError(f"{where}.machine must be a string")
    machine = str(machine)
    if "gpus" in table and not isinstance(table["gpus"], str):
        raise ConfigError(f'{where}.gpus must be a string such as "4xA10G:24"')
    if provider == "local":
        if "gpus" in table:
            raise ConfigError(f"{where}.gpus: a local pool's machine is its GPUs; drop gpus")
        return machine, parse_machine(machine)
    if "gpus" in table:
        return machine, parse_machine(table["gpus"])
    if provider == "ec2":
        if not machine:
            raise ConfigError(f'{where}.machine is required: an EC2 instance type such as "g5.12xlarge"')
        gpus = ec2_gpus(machine)
        if gpus is None:
            raise ConfigError(
                f"{where}: instance type {machine!r} is not in gridlab's GPU table; "
                f'give its GPUs as gpus = "COUNTxMODEL:GB" (MODEL as nvidia-smi names it), or gpus = "0" for none'
            )
        return machine, gpus
    raise ConfigError(f'{where}.gpus is required for a {provider} pool: one machine\'s GPUs, e.g. "4xNVIDIA A10G:22"')


def fits(pool: Pool, req: RunRequest) -> bool:
    """Whether one node of `req` fits an empty machine of `pool` (and the run may use the pool at all)."""
    if req.pool and req.pool != pool.name:
        return False
    if req.no_spot and pool.preemptible:  # interrupted too often: it waits for machines that are not spot
        return False
    have = dict(pool.labels)
    if any(have.get(k) != v for k, v in req.labels):
        return False
    if req.nodes > pool.max_agents:
        return False
    ok = sum(
        1
        for model, mem in pool.gpus
        if (not req.gpu_types or model in req.gpu_types) and mem >= req.min_gpu_memory_bytes
    )
    return ok >= req.gpus


def is_demand(reason: str) -> bool:
    """A queued run's pending reason says it waits for machines (not for its quota, a preemption, or a pass)."""
    return bool(reason) and not reason.startswith(NOT_DEMAND)


def decide(
    pools: Sequence[Pool],
    machines: Mapping[str, Sequence[Machine]],
    waiting: Iterable[RunRequest],
    now: float,
) -> list[Action]:
    """What to create and terminate, pool by pool.

    `waiting` are queued runs that the last placement pass could not place for lack of machines (on-prem
    pools, being placed first, are full or unsuitable for them). Each is served by the first pool that
    fits it. A pool packs its runs' nodes (first fit, biggest first, a gang's nodes on distinct machines)
    into the room its machines have (a machine still booting counts as empty), opens new machines for the
    rest up to max_agents, and keeps at least min_agents. It releases machines idle for idle_seconds that
    none of that demand would use, and machines that never joined within boot_seconds; never a busy one."""
    todo = list(waiting)
    actions = []
    for pool in pools:
        mine = [r for r in todo if fits(pool, r)]
        todo = [r for r in todo if not fits(pool, r)]
        have = list(machines.get(pool.name, ()))
        stale = [m for m in have if not m.joined and now - m.created_at >= pool.boot_seconds]
        alive = [m for m in have if m not in stale]
        size = len(pool.gpus)
        # bins: [free gpus, machine name or "" for a new one]
        bins: list[list[Any]] = [[m.free_gpus if m.joined else size, m.name] for m in alive]
        used: set[str] = set()
        new = 0
        room = pool.max_agents - len(alive)
        for req in sorted(mine, key=lambda r: (-r.gpus * r.nodes, r.run_id)):
            chosen: list[int] = []
            opened = 0
            for _ in range(req.nodes):
                i = next((i for i, b in enumerate(bins) if i not in chosen and b[0] >= req.gpus), None)
                if i is None:
                    if new >= room:
                        break
                    bins.append([size, ""])
                    new += 1
                    opened += 1
                    i = len(bins) - 1
                chosen.append(i)
            if len(chosen) < req.nodes:  # the pool cannot grow enough for it now: undo its new machines
                del bins[len(bins) - opened :]
                new -= opened
                continue
            for i in chosen:
                bins[i][0] -= req.gpus
                if bins[i][1]:
                    used.add(bins[i][1])
        new = sum(1 for b in bins if not b[1] and b[0] < size)  # opened bins that something went into
        new = max(new, pool.min_agents - len(alive))
        idle = [
            m
            for m in alive
            if m.joined
            and not m.busy
            and m.name not in used
            and m.idle_since is not None
            and now - m.idle_since >= pool.idle_seconds
        ]
        idle.sort(key=lambda m: (m.idle_since or 0.0, m.name))
        keep = max(0, len(alive) + new - pool.min_agents)
        release = [m.name for m in stale] + [m.name for m in idle[: keep if not new else 0]]
        if new or release:
            actions.append(Action(pool.name, create=max(0, new), terminate=tuple(release)))
    return actions


@dataclass
class _Known:
    pool: str
    created_at: float
    idle_since: float | None = None


@dataclass
class Autoscaler:
    """The scheduler's loop over its autoscaled pools."""

    engine: Any  # gridlab.scheduler.engine.Engine (not imported: it imports much of the scheduler)
    pools: list[Pool]
    providers: dict[str, Provider]
    interval: float = 1.0
    known: dict[str, _Known] = field(default_factory=dict)

    @classmethod
    def from_config(cls, engine: Any, config: SchedulerConfig, scheduler_address: str, state_dir: Path) -> Autoscaler:
        pools = parse_pools(config.pools)
        providers: dict[str, Provider] = {}
        for pool in pools:
            factory = PROVIDERS[pool.provider]
            providers[pool.name] = factory(
                scheduler=scheduler_address,
                pool=pool.name,
                state_dir=state_dir / "pools" / pool.name,
                labels=dict(pool.labels),
                options=pool.options,
                preemptible=pool.preemptible,
            )
        return cls(engine, pools, providers, interval=max(0.2, min(2.0, config.placement_interval)))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception:  # a provider's failure must not stop the scheduler
                log.exception("autoscale_failed")

    async def tick(self) -> list[Action]:
        listed = {}
        for pool in self.pools:
            listed[pool.name] = await asyncio.to_thread(self.providers[pool.name].list)
        actions = await self.engine.batcher.call(lambda: self._decide(listed))
        for action in actions:
            provider = self.providers[action.pool]
            if action.terminate:
                log.info("pool_shrink", pool=action.pool, machines=list(action.terminate))
                await asyncio.to_thread(provider.terminate, list(action.terminate))
                await self.engine.batcher.call(lambda names=action.terminate: self._forget(names))
            if action.create:
                pool = next(p for p in self.pools if p.name == action.pool)
                requests = await self.engine.batcher.call(lambda pool=pool, n=action.create: self._new(pool, n))
                log.info("pool_grow", pool=action.pool, machines=[r.name for r in requests])
                await asyncio.to_thread(provider.create, pool.machine, requests)
        return actions

    def _decide(self, listed: Mapping[str, list[str]]) -> list[Action]:
        """Inside a group commit: the snapshot, the decision, and the released machines made unschedulable."""
        engine = self.engine
        now = engine.clock.time()
        machines: dict[str, list[Machine]] = {}
        for pool in self.pools:
            agents = {a.name: a for a in engine.list_agents(pool.name)}
            out = []
            for name in listed.get(pool.name, []):
                known = self.known.setdefault(name, _Known(pool.name, now))
                agent = agents.get(name)
                joined = agent is not None and agent.state == types_pb2.AGENT_STATE_READY and name in engine.sessions
                busy = agent is not None and bool(agent.attempt_ids)
                if not joined or busy:
                    known.idle_since = None
                elif known.idle_since is None:
                    known.idle_since = now
                free = agent.gpus_free if agent is not None else 0
                out.append(Machine(name, known.created_at, joined, busy, free, known.idle_since))
            machines[pool.name] = out
        waiting = []
        queued = "SELECT id, user, team, pending_reason, interruptions FROM runs WHERE state = 'QUEUED'"
        for row in engine.store.all(queued):
            if is_demand(row["pending_reason"] or ""):
                waiting.append(engine.request_for(row["id"], row["user"], row["team"] or "", row["interruptions"]))
        vanished = [n for n, k in self.known.items() if n not in listed.get(k.pool, [])]
        if vanished:
            self._forget(vanished)
        actions = decide(self.pools, machines, waiting, now)
        for action in actions:
            engine.unschedulable.update(action.terminate)  # nothing new is placed there from now on
        return actions

    def _new(self, pool: Pool, n: int) -> list[MachineRequest]:
        """Names and one-machine join tokens for `n` new machines of `pool`."""
        now = self.engine.clock.time()
        out = []
        for _ in range(n):
            name = f"{pool.name}-{secrets.token_hex(4)}"
            token = self.engine.create_token(f"pool:{name}", AGENT)
            self.known[name] = _Known(pool.name, now)
            out.append(MachineRequest(name, token))
        return out

    def _forget(self, names: Iterable[str]) -> None:
        """After termination: revoke each machine's token; its agent record stays (history), offline."""
        with self.engine.store.transaction() as conn:
            for name in names:
                self.known.pop(name, None)
                self.engine.unschedulable.discard(name)
                # By the owner the token was made for, not by a hash kept in memory: a machine adopted after a
                # scheduler restart (still listed by its provider) must lose its token too when it goes.
                hashes = [
                    row[0]
                    for row in conn.execute(
                        "SELECT hash FROM tokens WHERE user = ? AND role = ? AND revoked = 0", (f"pool:{name}", AGENT)
                    )
                ]
                conn.executemany("UPDATE tokens SET revoked = 1 WHERE hash = ?", [(h,) for h in hashes])
                for digest in hashes:
                    self.engine.forget_token(digest)

    def close(self) -> None:
        """Terminate every machine (the scheduler is stopping; `local` agents would outlive it otherwise)."""
        for pool in self.pools:
            provider = self.providers[pool.name]
            if pool.provider == "local":
                provider.terminate(provider.list())


def burst_pools(config: SchedulerConfig) -> list[str]:
    """config.burst_pools plus every autoscaled pool: placement uses them after on-prem pools."""
    return sorted(set(config.burst_pools) | set(config.pools))


__all__ = ["Action", "Autoscaler", "Machine", "Pool", "burst_pools", "decide", "fits", "parse_pools"]
