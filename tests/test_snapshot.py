"""What a placement pass sees of each agent (`snapshot.ViewCache`): rebuilt only when the agent changed, so a pass
over a thousand mostly idle agents hands placement the same objects as the pass before."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from gridlab.scheduler.placement import AgentView, NodePlacement
from gridlab.scheduler.snapshot import ViewCache
from gridlab.v1 import types_pb2


def inventory(gpus: int, memory_gb: int = 24) -> types_pb2.Inventory:
    inv = types_pb2.Inventory(hostname="h", cpus=16, memory_bytes=64 << 30)
    for i in range(gpus):
        inv.gpus.add(uuid=f"GPU-{i}", model="RTX3090", memory_total_bytes=memory_gb << 30)
    return inv


def snap(
    cache: ViewCache, agents: dict[str, Agent], used: dict[str, tuple[NodePlacement, ...]], cordoned: set[str]
) -> tuple[list[AgentView], list[AgentView]]:
    free, parked = cache.snapshot(agents, used, cordoned)
    assert list(free) == [v.name for v in free.values()]
    return list(free.values()), parked


@dataclass
class Agent:
    name: str
    inventory: types_pb2.Inventory
    pool: str = "onprem"
    labels: dict[str, str] = field(default_factory=dict)
    draining: bool = False
    preemptible: bool = False


def test_an_unchanged_agent_gets_the_same_view_and_a_change_gets_a_new_one() -> None:
    cache = ViewCache(burst_pools=["cloud"])
    a, b = Agent("a", inventory(4)), Agent("b", inventory(2))
    node = NodePlacement("a", ("GPU-1",), 2.0, 1 << 30)
    (busy, idle), parked = snap(cache, {"a": a, "b": b}, {"a": (node,)}, set())
    assert parked == []
    assert busy.free_gpus == {"GPU-0", "GPU-2", "GPU-3"}
    assert busy.cpus_free == 14.0
    assert idle.free_gpus == {"GPU-0", "GPU-1"}
    again, _ = snap(cache, {"a": a, "b": b}, {"a": (NodePlacement("a", ("GPU-1",), 2.0, 1 << 30),)}, set())
    assert again[0] is busy  # the same nodes (equal, not the same objects: a pass reads them anew)
    assert again[1] is idle
    ended, _ = snap(cache, {"a": a, "b": b}, {}, set())
    ended_a = next(v for v in ended if v.name == "a")
    assert ended_a.free_gpus == {"GPU-0", "GPU-1", "GPU-2", "GPU-3"}
    assert next(v for v in ended if v.name == "b") is idle
    a.inventory = inventory(4)  # a heartbeat's inventory: a new object with the same facts
    cache.touch("a")
    assert snap(cache, {"a": a, "b": b}, {"a": (node,)}, set())[0] == [busy, idle]  # (each keeps its place)
    a.inventory = inventory(4, memory_gb=48)  # new facts: rebuilt
    cache.touch("a")
    (bigger, _), _ = snap(cache, {"a": a, "b": b}, {"a": (node,)}, set())
    assert {g.memory_bytes for g in bigger.gpus} == {48 << 30}
    assert bigger.free_gpus == busy.free_gpus


def test_parked_agents_are_whole_and_apart() -> None:
    cache = ViewCache(burst_pools=[])
    a, b = Agent("a", inventory(2)), Agent("b", inventory(2), draining=True)
    node = NodePlacement("a", ("GPU-0",), 1.0, 0)
    free, parked = snap(cache, {"a": a, "b": b}, {"a": (node,)}, {"a"})  # a cordoned
    assert free == []
    assert [v.name for v in parked] == ["a", "b"]
    assert parked[0].free_gpus == {"GPU-0", "GPU-1"}
    cache.forget("b")
    (back,), _ = snap(cache, {"a": a}, {"a": (node,)}, set())  # uncordoned: less what it holds again
    assert back.free_gpus == {"GPU-1"}


def test_a_reconnected_or_forgotten_agent_is_built_anew() -> None:
    cache = ViewCache(burst_pools=["cloud"])
    inv = inventory(2)
    (first,), _ = snap(cache, {"a": Agent("a", inv)}, {}, set())
    cache.touch("a")  # a new session (a Hello): its facts are read again
    (hello,), _ = snap(cache, {"a": Agent("a", inv, pool="cloud")}, {}, set())
    assert hello.tier == 1
    cache.forget("a")
    (again,), _ = snap(cache, {"a": Agent("a", inv, labels={"zone": "b"})}, {}, set())
    assert again is not first
    assert again.labels == (("zone", "b"),)


def test_kept_from_pass_to_pass_it_equals_a_snapshot_built_afresh() -> None:
    """Random sessions coming and going, heartbeats, drains, cordons and placements; after every step the kept
    snapshot is what a new cache would build from scratch."""
    rng = random.Random(7)
    kept = ViewCache(burst_pools=["cloud"], spot_pools=["spot"])
    agents: dict[str, Agent] = {}
    used: dict[str, tuple[NodePlacement, ...]] = {}
    cordoned: set[str] = set()
    for _ in range(400):
        name = f"a{rng.randrange(12)}"
        step = rng.randrange(7)
        if step == 0:  # a Hello (a new session)
            agents[name] = Agent(name, inventory(rng.choice([2, 4])), pool=rng.choice(["onprem", "cloud", "spot"]))
            kept.touch(name)
        elif step == 1 and name in agents:  # it left
            del agents[name]
            used.pop(name, None)
            kept.forget(name)
        elif step == 2 and name in agents:  # a heartbeat, sometimes with new facts
            agents[name].inventory = inventory(len(agents[name].inventory.gpus), rng.choice([24, 48]))
            agents[name].draining = rng.random() < 0.2
            kept.touch(name)
        elif step == 3:
            cordoned ^= {name}
        elif step in (4, 5) and name in agents:  # a placement, or an end
            gpus = [g.uuid for g in agents[name].inventory.gpus]
            taken = tuple(rng.sample(gpus, rng.randrange(len(gpus) + 1)))
            used[name] = (NodePlacement(name, taken, 1.0, 1 << 30),) if taken else ()
            if not taken:
                del used[name]
        free, parked = snap(kept, agents, dict(used), cordoned)
        fresh_free, fresh_parked = snap(
            ViewCache(burst_pools=["cloud"], spot_pools=["spot"]), agents, dict(used), cordoned
        )
        assert sorted(free, key=lambda v: v.name) == sorted(fresh_free, key=lambda v: v.name)
        assert sorted(parked, key=lambda v: v.name) == sorted(fresh_parked, key=lambda v: v.name)
