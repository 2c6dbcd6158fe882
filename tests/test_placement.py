"""Placement as pure functions: feasibility, best fit, pending reasons."""

from __future__ import annotations

from gridlab.scheduler.placement import AgentView, GpuView, RunRequest, plan

GB = 1024**3


def agent(name: str, gpus: list[tuple[str, int]], cpus: float = 8, used: int = 0, pool: str = "onprem") -> AgentView:
    views = tuple(GpuView(f"{name}-g{i}", model, mem * GB) for i, (model, mem) in enumerate(gpus))
    return AgentView(
        name=name,
        pool=pool,
        labels=(),
        gpus=views,
        free_gpus=frozenset(g.uuid for g in views[used:]),
        cpus_total=cpus,
        cpus_free=cpus,
        memory_total=64 * GB,
        memory_free=64 * GB,
    )


def test_runs_go_where_they_fit_best() -> None:
    big = agent("big", [("A100", 80)] * 8)
    small = agent("small", [("A100", 80)] * 2)
    out = plan([big, small], [RunRequest("r1", gpus=2, cpus=1)])
    assert [(p.run_id, p.nodes[0].agent_name) for p in out.placements] == [("r1", "small")]


def test_gpus_are_not_given_twice_within_one_plan() -> None:
    one = agent("one", [("A100", 80)] * 2)
    out = plan([one], [RunRequest("a", gpus=1, cpus=1), RunRequest("b", gpus=1, cpus=1), RunRequest("c", 1, 1)])
    placed = [p.nodes[0].gpu_uuids for p in out.placements]
    assert len(placed) == 2
    assert set(placed[0]).isdisjoint(placed[1])
    assert out.pending["c"].startswith("Resources")


def test_too_many_gpus_is_pending_with_a_reason_not_an_error() -> None:
    out = plan([agent("a", [("A100", 80)] * 2)], [RunRequest("r", gpus=4, cpus=1)])
    assert not out.placements
    assert "no agent has 4 suitable GPUs" in out.pending["r"]


def test_an_unplaceable_run_does_not_block_the_ones_behind() -> None:
    out = plan([agent("a", [("A100", 80)])], [RunRequest("huge", gpus=8, cpus=1), RunRequest("ok", gpus=1, cpus=1)])
    assert [p.run_id for p in out.placements] == ["ok"]


def test_mixed_models_on_one_machine_are_matched_per_gpu() -> None:
    ws = agent("ws", [("RTX-3090", 24), ("A6000", 48), ("RTX-3090", 24)])
    out = plan(
        [ws],
        [
            RunRequest("big", gpus=1, cpus=1, min_gpu_memory_bytes=40 * GB),
            RunRequest("t", 2, 1, gpu_types=("RTX-3090",)),
        ],
    )
    by_run = {p.run_id: p.nodes[0].gpu_uuids for p in out.placements}
    assert by_run == {"big": ("ws-g1",), "t": ("ws-g0", "ws-g2")}


def test_cpu_only_runs_respect_cpus() -> None:
    out = plan([agent("a", [], cpus=2)], [RunRequest("x", 0, 2), RunRequest("y", 0, 1)])
    assert [p.run_id for p in out.placements] == ["x"]


def test_no_agents() -> None:
    assert plan([], [RunRequest("x", 0, 1)]).pending == {"x": "no agent is connected"}


def test_a_gang_takes_distinct_agents_best_fit_first() -> None:
    agents = [agent("big", [("A100", 80)] * 8), agent("s1", [("A100", 80)] * 2), agent("s2", [("A100", 80)] * 2)]
    out = plan(agents, [RunRequest("g", gpus=2, cpus=1, nodes=2)])
    (p,) = out.placements
    assert [n.agent_name for n in p.nodes] == ["s1", "s2"]
    assert all(len(n.gpu_uuids) == 2 for n in p.nodes)


def test_a_gang_is_all_or_nothing_and_says_why() -> None:
    busy = agent("busy", [("A100", 80)] * 2, used=2)
    free = agent("free", [("A100", 80)] * 2)
    out = plan([busy, free], [RunRequest("g", gpus=1, cpus=1, nodes=2), RunRequest("one", gpus=1, cpus=1)])
    assert [p.run_id for p in out.placements] == ["one"]  # the gang took nothing, so "one" fits
    assert out.pending["g"].startswith("Resources: needs 2 nodes x 1 GPU; largest feasible set now: 1 node")
    out = plan([free], [RunRequest("g", gpus=1, cpus=1, nodes=3)])
    assert "gang of 3 nodes needs 3 agents that fit; 1 connected do" in out.pending["g"]


def test_gang_nodes_are_not_given_twice_within_one_plan() -> None:
    agents = [agent(f"a{i}", [("A100", 80)]) for i in range(3)]
    out = plan(agents, [RunRequest("g1", 1, 1, nodes=2), RunRequest("g2", 1, 1, nodes=2)])
    assert [p.run_id for p in out.placements] == ["g1"]
    assert out.pending["g2"].startswith("Resources")


def test_plans_and_reasons_do_not_depend_on_the_order_of_the_agents() -> None:
    """The engine's snapshot keeps agents in no particular order (it changes as they report): a plan, and the
    text of a pending reason, must not change with it (the reason is rewritten in the store when it does)."""
    a, b, c = agent("a", [("A100", 80)] * 2), agent("b", [("RTX3090", 24)] * 4), agent("c", [("A100", 80)] * 2)
    queue = [
        RunRequest("labelled", gpus=1, cpus=1, labels=(("zone", "x"),)),
        RunRequest("fits", gpus=2, cpus=1, gpu_types=("A100",)),
        RunRequest("any", gpus=1, cpus=1),
    ]
    first = plan([a, b, c], queue)
    assert first.pending["labelled"].startswith("Unsatisfiable: a: label zone=x missing; b:")
    for order in ([c, b, a], [b, a, c], {"c": c, "a": a, "b": b}):
        again = plan(order, queue)
        assert again.pending == first.pending
        assert again.placements == first.placements
