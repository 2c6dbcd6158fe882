"""Scheduler policy as pure functions: order, quotas, islands and pools, reservation and backfill, preemption.
Examples first, then properties (hypothesis) over random clusters and queues."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gridlab.scheduler.placement import (
    AgentView,
    FitIndex,
    GpuView,
    NodePlacement,
    Placement,
    Running,
    RunRequest,
    _shape,
    choose_victims,
    place_gang,
    plan,
)
from gridlab.scheduler.queue import Entry, Held, Quotas, Usage, decayed, order

GB = 1024**3


def agent(
    name: str, gpus: list[tuple[str, int]] | int = 2, *, used: tuple[str, ...] = (), tier: int = 0, islands: str = ""
) -> AgentView:
    spec = [("A100", 80)] * gpus if isinstance(gpus, int) else gpus
    views = tuple(
        GpuView(f"{name}-g{i}", model, mem * GB, islands[i] if i < len(islands) and islands[i] != "." else "")
        for i, (model, mem) in enumerate(spec)
    )
    return AgentView(
        name=name,
        pool="cloud" if tier else "onprem",
        labels=(),
        gpus=views,
        free_gpus=frozenset(g.uuid for g in views) - frozenset(f"{name}-g{i}" for i in used),
        cpus_total=64,
        cpus_free=64,
        memory_total=512 * GB,
        memory_free=512 * GB,
        tier=tier,
    )


def req(run_id: str, gpus: int = 1, nodes: int = 1, **kw: object) -> RunRequest:
    return RunRequest(run_id, gpus=gpus, cpus=1, nodes=nodes, **kw)  # type: ignore[arg-type]


def holding(attempt: str, agent_name: str, gpus: tuple[int, ...], **kw: object) -> Running:
    node = NodePlacement(agent_name, tuple(f"{agent_name}-g{i}" for i in gpus), 1, 0)
    return Running(attempt, f"run-of-{attempt}", (node,), **kw)  # type: ignore[arg-type]


# --- order and quotas -----------------------------------------------------------------------------


def test_order_is_priority_then_fair_share_then_submit_time() -> None:
    entries = [Entry("a", "heavy", 0, 1.0), Entry("b", "light", 0, 2.0), Entry("c", "heavy", 5, 3.0)]
    assert [e.run_id for e in order(entries, {"heavy": 1000.0, "light": 10.0})] == ["c", "b", "a"]
    assert [e.run_id for e in order(entries, {})] == ["c", "a", "b"]


def test_usage_decays_by_half_lives() -> None:
    assert decayed(100.0, since=0, now=3600, half_life=3600) == 50.0
    usage = Usage().add(100.0, now=0, half_life=10).add(100.0, now=10, half_life=10)
    assert usage.now(20, half_life=10) == 75.0


def test_quotas_cap_users_and_teams_and_name_the_cap() -> None:
    quotas = Quotas(user_gpus=4, teams={"vision": 6})
    held = Held(users={"alice": 3}, teams={"vision": 5})
    out = plan(
        [agent("big", 8)],
        [req("a1", 2, user="alice"), req("b1", 2, user="bob", team="vision"), req("b2", 1, user="bob", team="vision")],
        quotas=quotas,
        held=held,
    )
    assert out.pending["a1"] == "Quota: user alice at 3/4 GPUs"
    assert out.pending["b1"] == "Quota: team vision at 5/6 GPUs"
    assert [p.run_id for p in out.placements] == ["b2"]  # a run behind, within its caps, still starts
    too_big = plan([agent("big", 8)], [req("huge", 5, user="carol")], quotas=quotas)
    assert too_big.pending["huge"].startswith("Unsatisfiable: quota: user carol may hold 4 GPUs")


# --- ranking ----------------------------------------------------------------------------------------


def test_a_workstation_with_mixed_models_serves_both_kinds() -> None:
    ws = agent("ws", [("RTX-3090", 24), ("A6000", 48), ("RTX-3090", 24)])
    out = plan([ws], [req("big", min_gpu_memory_bytes=40 * GB), req("pair", 2, gpu_types=("RTX-3090",))])
    assert {p.run_id: p.nodes[0].gpu_uuids for p in out.placements} == {"big": ("ws-g1",), "pair": ("ws-g0", "ws-g2")}


def test_gpus_of_one_run_come_from_one_nvlink_island_when_one_has_room() -> None:
    box = agent("box", 4, islands="aabb", used=(0,))  # island a has one free GPU left, island b two
    (p,) = plan([box], [req("pair", 2)]).placements
    assert p.nodes[0].gpu_uuids == ("box-g2", "box-g3")
    split = agent("split", 4, islands="abcd")  # four GPUs, no two on one island
    whole = agent("whole", 4, islands="aabb")
    (p,) = plan([split, whole], [req("pair", 2)]).placements
    assert p.nodes[0].agent_name == "whole"  # one island beats a split one, even though names tie-break


def test_on_prem_pools_before_burst_pools() -> None:
    out = plan([agent("cloud-1", 1, tier=1), agent("onprem-1", 8)], [req("r")])
    assert out.placements[0].nodes[0].agent_name == "onprem-1"  # though the cloud machine is the tighter fit


# --- reservation and backfill ---------------------------------------------------------------------


def test_the_head_gang_reserves_and_only_runs_that_end_in_time_backfill() -> None:
    agents = [agent("a", 2, used=(0, 1)), agent("b", 2)]
    running = [holding("t1", "a", (0, 1), ends_at=100.0)]
    queue = [
        req("gang", 2, nodes=2),
        req("short", 1, time_limit=50.0),  # ends at 50 < 100: may use the reserved hole on b
        req("long", 1, time_limit=500.0),
        req("unbounded", 1),
    ]
    out = plan(agents, queue, running=running, now=0.0)
    assert out.reservation is not None
    assert (out.reservation.run_id, out.reservation.start) == ("gang", 100.0)
    assert [p.run_id for p in out.placements] == ["short"]
    assert "behind gang, which holds a reservation" in out.pending["long"]
    assert "holds a reservation on a, b" in out.pending["gang"]


def test_a_big_gang_at_the_head_starts_in_bounded_time_while_small_runs_keep_coming() -> None:
    """A simulation: 4 agents x 2 GPUs kept busy by a stream of small runs that end at different times; a
    4-node gang at the head of the queue starts once the runs holding its reservation end, however many small
    runs keep arriving (without the reservation, each GPU that frees goes to a small run, and it never does)."""
    agents = {f"n{i}": agent(f"n{i}", 2) for i in range(4)}
    running: list[tuple[Running, float]] = []
    for i in range(8):  # busy at first, each GPU freeing at another time
        node = NodePlacement(f"n{i // 2}", (f"n{i // 2}-g{i % 2}",), 1, 0)
        running.append((Running(f"old-{i}", f"old-{i}", (node,), ends_at=1.0 + i), 1.0 + i))
    queue = [req("gang", 2, nodes=4)]
    started: dict[str, float] = {}
    serial = 0
    for tick in range(60):
        now = float(tick)
        for r, end in list(running):
            if end <= now:
                running.remove((r, end))
        for _ in range(3):  # three small runs of 5 to 17 s arrive every second, forever
            serial += 1
            queue.append(req(f"s{serial}", 1, time_limit=5.0 + (serial % 7) * 2))
        views = []
        for a in agents.values():
            used = {u for r, _ in running for n in r.nodes if n.agent_name == a.name for u in n.gpu_uuids}
            views.append(AgentView(**{**a.__dict__, "free_gpus": frozenset(g.uuid for g in a.gpus) - used}))
        out = plan(views, queue, running=[r for r, _ in running], now=now)
        for p in out.placements:
            limit = next(q.time_limit for q in queue if q.run_id == p.run_id) or 1e9
            running.append((Running(f"att-{p.run_id}", p.run_id, p.nodes, ends_at=now + limit), now + limit))
            started[p.run_id] = now
        queue = [q for q in queue if q.run_id not in started]
        if "gang" in started:
            break
    assert "gang" in started
    # Its reservation starts when the last busy GPU frees (t=8); only runs that end before then backfill.
    assert started["gang"] == 8.0


# --- preemption ------------------------------------------------------------------------------------


def test_preemption_frees_a_placeable_set_fewest_and_lowest_priority_first() -> None:
    agents = [agent("a", 2, used=(0, 1)), agent("b", 2, used=(0, 1))]
    running = [
        holding("a-low", "a", (0,), priority=1, preemptible=True),
        holding("a-lower", "a", (1,), priority=0, preemptible=True),
        holding("b-both", "b", (0, 1), priority=0, preemptible=True),
    ]
    # Freeing a-low and a-lower (two victims) or b-both (one): fewest wins.
    out = plan(agents, [req("urgent", 2, priority=5)], running=running)
    assert out.preempt == [("urgent", ("b-both",))]
    assert out.pending["urgent"].startswith("Preempting: 1 lower-priority run")
    # Nothing of lower priority, or nothing preemptible: no victims.
    assert plan(agents, [req("peer", 2, priority=0)], running=running).preempt == []
    fixed = [holding("x", "a", (0, 1), priority=0), holding("y", "b", (0, 1), priority=0)]
    assert plan(agents, [req("urgent", 2, priority=5)], running=fixed).preempt == []


def test_preemption_does_not_free_gpus_that_do_not_form_a_placement() -> None:
    """Two GPUs free across two machines are not a 2-GPU node: the victims must free two on one machine."""
    agents = [agent("a", 2, used=(0,)), agent("b", 2, used=(0,))]
    running = [holding("a0", "a", (0,), preemptible=True), holding("b0", "b", (0,), preemptible=True)]
    (run_id, victims), *_ = plan(agents, [req("pair", 2, priority=1)], running=running).preempt
    assert len(victims) == 1  # one victim on one machine makes its 2 GPUs whole
    # and attempts already stopping are not chosen again
    out = plan(agents, [req("pair", 2, priority=1)], running=running, stopping={"a0": "other", "b0": "other"})
    assert out.preempt == []


# --- properties -----------------------------------------------------------------------------------

models = st.sampled_from([("A100", 80), ("RTX-3090", 24), ("A6000", 48)])
clusters = st.lists(st.lists(models, min_size=0, max_size=4), min_size=1, max_size=6)
requests = st.lists(
    st.tuples(
        st.integers(0, 3),  # gpus
        st.integers(1, 3),  # nodes
        st.integers(0, 3),  # priority
        st.sampled_from([0.0, 5.0, 50.0]),  # time limit
        st.sampled_from(["alice", "bob", "carol"]),
    ),
    max_size=12,
)


def build(cluster: list[list[tuple[str, int]]], busy: int) -> tuple[list[AgentView], list[Running]]:
    agents, running = [], []
    for i, gpus in enumerate(cluster):
        a = agent(f"n{i}", gpus)
        taken = tuple(range(min(busy, len(gpus))))
        if taken:
            running.append(holding(f"busy-{i}", a.name, taken, priority=0, preemptible=i % 2 == 0, ends_at=10.0 + i))
        agents.append(replace_free(a, taken))
    return agents, running


def replace_free(a: AgentView, taken: tuple[int, ...]) -> AgentView:
    return AgentView(**{**a.__dict__, "free_gpus": a.free_gpus - {f"{a.name}-g{i}" for i in taken}})


@settings(max_examples=150, deadline=None)
@given(clusters, requests, st.integers(0, 2), st.integers(0, 4))
def test_plans_never_double_book_keep_gangs_whole_respect_quotas_and_preempt_into_placements(
    cluster: list[list[tuple[str, int]]], reqs: list[tuple[int, int, int, float, str]], busy: int, cap: int
) -> None:
    agents, running = build(cluster, busy)
    queue = [req(f"r{i}", g, nodes=n, priority=p, time_limit=t, user=u) for i, (g, n, p, t, u) in enumerate(reqs)]
    quotas = Quotas(user_gpus=cap)
    out = plan(agents, queue, running=running, now=0.0, quotas=quotas)
    by_id = {q.run_id: q for q in queue}
    free = {a.name: set(a.free_gpus) for a in agents}
    per_user: dict[str, int] = {}
    for p in out.placements:
        q = by_id[p.run_id]
        assert len(p.nodes) == q.nodes  # all or nothing
        assert len({n.agent_name for n in p.nodes}) == q.nodes  # one node per agent
        for node in p.nodes:
            assert len(node.gpu_uuids) == q.gpus
            assert set(node.gpu_uuids) <= free[node.agent_name]  # never a GPU held or given twice
            free[node.agent_name] -= set(node.gpu_uuids)
        per_user[q.user] = per_user.get(q.user, 0) + q.gpus * q.nodes
    if cap:
        assert all(used <= cap for used in per_user.values())
    res = out.reservation
    if res is not None:  # nothing placed after the reserving run uses its hold unless it ends in time
        order_ids = [q.run_id for q in queue]
        later = [p for p in out.placements if order_ids.index(p.run_id) > order_ids.index(res.run_id)]
        for p in later:
            uses = any(set(n.gpu_uuids) & res.holds.get(n.agent_name, frozenset()) for n in p.nodes)
            assert not uses or res.admits(by_id[p.run_id], 0.0)
    views = {a.name: a for a in agents}
    for run_id, victims in out.preempt:
        q = by_id[run_id]
        chosen = [r for r in running if r.attempt_id in victims]
        assert all(r.preemptible and r.priority < q.priority for r in chosen)
        freed = dict(views)
        for r in chosen:
            for n in r.nodes:
                a = freed[n.agent_name]
                freed[n.agent_name] = AgentView(**{**a.__dict__, "free_gpus": a.free_gpus | set(n.gpu_uuids)})
        assert place_gang(freed, q) is not None  # what the victims free forms a placement
    assert choose_victims(views, [], req("x", 1, priority=9)) in (None, ())
    assert math.isfinite(0.0)


def test_a_placement_value_is_its_nodes() -> None:
    assert Placement("r", ()).nodes == ()


def test_a_run_waiting_for_its_victims_does_not_preempt_more() -> None:
    agents = [agent("a", 1, used=(0,)), agent("b", 1, used=(0,))]
    running = [holding("att-a", "a", (0,), preemptible=True), holding("att-b", "b", (0,), preemptible=True)]
    first = plan(agents, [req("hi", 1, priority=5)], running=running)
    (run_id, victims), *_ = first.preempt
    assert run_id == "hi"
    assert len(victims) == 1
    again = plan(agents, [req("hi", 1, priority=5)], running=running, stopping={victims[0]: "hi"})
    assert again.preempt == []  # while its victim stops, it waits rather than stopping another run
    assert again.pending["hi"] == "Preempting: waiting for 1 preempted run(s) to stop"


def test_runs_placed_ahead_in_the_same_pass_count_in_the_heads_reservation() -> None:
    z = agent("z", 8)
    queue = [req("s1", 1, priority=9, time_limit=10.0), req("head", 8), req("s2", 1)]
    out = plan([z], queue, now=0.0)
    assert [p.run_id for p in out.placements] == ["s1"]
    assert out.reservation is not None
    assert (out.reservation.run_id, out.reservation.start) == ("head", 10.0)
    assert "behind head" in out.pending["s2"]  # no time limit: it may not take the reserved hole


def test_a_reservation_waiting_on_runs_without_a_time_limit_lets_time_limited_runs_backfill() -> None:
    x = agent("x", 4, used=(0, 1))
    running = [holding("forever", "x", (0, 1))]  # no time limit
    out = plan([x], [req("big", 4), req("small", 1, time_limit=60.0), req("unbounded", 1)], running=running)
    assert out.reservation is not None
    assert out.reservation.start == math.inf
    assert [p.run_id for p in out.placements] == ["small"]
    assert "behind big" in out.pending["unbounded"]


def test_a_reservation_holds_its_agents_whole_so_no_cpu_hog_can_delay_it() -> None:
    y = replace_free(agent("y", 8), (0, 1, 2, 3))
    running = [holding("busy", "y", (0, 1, 2, 3), ends_at=100.0)]
    big = RunRequest("big", gpus=8, cpus=32, nodes=1)
    hog = RunRequest("hog", gpus=0, cpus=60, nodes=1)  # no time limit: would hold the CPUs big needs for good
    out = plan([y], [big, hog], running=running, now=0.0)
    assert out.reservation is not None
    assert out.placements == []
    assert "behind big" in out.pending["hog"]


@settings(max_examples=100, deadline=None)
@given(clusters, st.lists(st.tuples(requests, st.lists(st.integers(0, 5), max_size=3)), min_size=1, max_size=5))
def test_an_index_kept_across_passes_plans_exactly_as_a_fresh_one(
    cluster: list[list[tuple[str, int]]], passes: list[tuple[list[tuple[int, int, int, float, str]], list[int]]]
) -> None:
    """The engine keeps one FitIndex for its whole life; it is a cache, so every pass must plan what a pass
    with a fresh index plans, while agents fill up, free GPUs again, and come and go between passes."""
    agents, running = build(cluster, 1)
    kept = FitIndex()
    for k, (reqs, churn) in enumerate(passes):
        queue = [
            req(f"p{k}r{i}", g, nodes=n, priority=p, time_limit=t, user=u) for i, (g, n, p, t, u) in enumerate(reqs)
        ]
        fresh = plan(agents, queue, running=running, now=0.0)
        again = plan(agents, queue, running=running, now=0.0, index=kept)
        assert again == fresh
        placed = {n.agent_name: set(n.gpu_uuids) for p in fresh.placements for n in p.nodes}
        nxt = []
        for i, a in enumerate(agents):  # the placements are committed; some agents free all, some leave
            view = AgentView(**{**a.__dict__, "free_gpus": a.free_gpus - placed.get(a.name, set())})
            if i in churn:
                view = AgentView(**{**a.__dict__, "free_gpus": frozenset(g.uuid for g in a.gpus)})
            if (i + k) % 7 != 6:
                nxt.append(view)
        agents = nxt or agents


def test_the_shape_of_a_request_covers_every_field_but_who_and_which_run() -> None:
    base = req("r", 1)
    for name, value in [
        ("gpus", 2),
        ("cpus", 3.0),
        ("memory_bytes", 1),
        ("nodes", 2),
        ("pool", "x"),
        ("labels", (("a", "b"),)),
        ("gpu_types", ("A100",)),
        ("min_gpu_memory_bytes", 1),
        ("priority", 1),
        ("time_limit", 1.0),
        ("interruptions", 1),
        ("no_spot", True),
    ]:
        assert _shape(RunRequest(**{**base.__dict__, name: value})) != _shape(base), name
    assert _shape(RunRequest(**{**base.__dict__, "run_id": "other", "user": "u", "team": "t"})) == _shape(base)
    assert {f for f in RunRequest.__dataclass_fields__} == {
        "run_id",
        "user",
        "team",
        "gpus",
        "cpus",
        "memory_bytes",
        "nodes",
        "pool",
        "labels",
        "gpu_types",
        "min_gpu_memory_bytes",
        "priority",
        "time_limit",
        "interruptions",
        "no_spot",
    }  # a new field must join _shape (or be named here as not mattering)


def test_the_index_stays_small_and_unused_shapes_cost_nothing() -> None:
    """A shape asked for once must not make every later change cost work (or memory) for it."""
    base = [agent(f"n{i}", 4) for i in range(50)]
    index = FitIndex()
    plan(base, [RunRequest("odd", gpus=1, cpus=3.5)], index=index)  # a one-off shape
    changes = 0
    for k in range(400):  # many passes of churn (a third of the agents change each time), with another shape
        agents = [replace_free(a, (k % 4,)) if i % 3 == k % 3 else a for i, a in enumerate(base)]
        changes += len(agents) // 3
        plan(agents, [req(f"r{k}", 2)], index=index)
    assert changes > 4 * (4 * len(agents) + 1024)
    sizes = {shape[1]: len(heap) for shape, (_, heap, _) in index._heaps.items()}
    assert sizes.get(3.5, 0) <= 4 * len(agents) + 64  # (dropped whole when the change log was trimmed)
    assert len(index._changes) <= 4 * len(agents) + 1024
    assert all(size <= 4 * len(agents) + 64 + 2 * len(agents) for size in sizes.values())
