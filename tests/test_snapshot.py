"""What a placement pass sees of each agent (`snapshot.ViewCache`): rebuilt only when the agent changed, so a pass
over a thousand mostly idle agents hands placement the same objects as the pass before."""

from __future__ import annotations

from gridlab.scheduler.placement import NodePlacement
from gridlab.scheduler.snapshot import ViewCache
from gridlab.v1 import types_pb2


def inventory(gpus: int, memory_gb: int = 24) -> types_pb2.Inventory:
    inv = types_pb2.Inventory(hostname="h", cpus=16, memory_bytes=64 << 30)
    for i in range(gpus):
        inv.gpus.add(uuid=f"GPU-{i}", model="RTX3090", memory_total_bytes=memory_gb << 30)
    return inv


def test_an_unchanged_agent_gets_the_same_view_and_a_change_gets_a_new_one() -> None:
    cache = ViewCache(burst_pools=["cloud"])
    inv = inventory(4)
    idle = cache.view("a", "onprem", {}, inv)
    assert idle.free_gpus == {"GPU-0", "GPU-1", "GPU-2", "GPU-3"}
    assert cache.view("a", "onprem", {}, inv) is idle
    node = NodePlacement("a", ("GPU-1",), 2.0, 1 << 30)
    busy = cache.view("a", "onprem", {}, inv, (node,))
    assert busy.free_gpus == {"GPU-0", "GPU-2", "GPU-3"}
    assert busy.cpus_free == 14.0
    assert cache.view("a", "onprem", {}, inv, (NodePlacement("a", ("GPU-1",), 2.0, 1 << 30),)) is busy  # equal: kept
    assert cache.view("a", "onprem", {}, inv, ()).free_gpus == idle.free_gpus
    beat = inventory(4)  # a heartbeat's inventory: new object, same facts
    assert cache.view("a", "onprem", {}, beat, (node,)) == busy
    bigger = cache.view("a", "onprem", {}, inventory(4, memory_gb=48), (node,))  # new facts: rebuilt
    assert {g.memory_bytes for g in bigger.gpus} == {48 << 30}
    assert bigger.free_gpus == busy.free_gpus


def test_a_forgotten_agent_is_rebuilt_from_its_next_inventory() -> None:
    cache = ViewCache(burst_pools=["cloud"])
    inv = inventory(2)
    first = cache.view("a", "onprem", {}, inv)
    cache.forget("a")
    again = cache.view("a", "cloud", {"zone": "b"}, inv)  # (a reconnect with the same object cannot happen; still)
    assert again is not first
    assert again.tier == 1
    assert again.labels == (("zone", "b"),)
