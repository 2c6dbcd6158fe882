"""The heartbeat cadence scales with the cluster: more agents beat less often (and are given longer to
miss beats), fewer beat at the configured pace again, and no agent is declared lost while it follows."""

from __future__ import annotations

import asyncio
import time

import pytest
from simagents import SimAgents

from gridlab.client.localcluster import LocalCluster
from gridlab.common import auth
from gridlab.scheduler.cadence import Cadence, cadence_for, needs_telling, timeout_after_change
from gridlab.v1 import types_pb2


def test_small_clusters_keep_the_configured_cadence_and_big_ones_stretch_it() -> None:
    assert cadence_for(100, 5.0, 30.0, 1000) == Cadence(5.0, 30.0)
    assert cadence_for(5000, 1.0, 6.0, 1000) == Cadence(5.0, 30.0)  # 1,000 beats/s in all, lost after 6 beats
    assert cadence_for(5000, 1.0, 6.0, 0) == Cadence(1.0, 6.0)  # 0: never scaled
    assert cadence_for(0, 1.0, 6.0, 1000) == Cadence(1.0, 6.0)


def test_agents_hear_of_a_new_cadence_only_when_it_grows_by_a_quarter_or_halves() -> None:
    told = Cadence(4.0, 24.0)
    assert not needs_telling(told, Cadence(4.9, 29.4))
    assert needs_telling(told, Cadence(5.0, 30.0))
    assert not needs_telling(told, Cadence(2.5, 15.0))
    assert needs_telling(told, Cadence(2.0, 12.0))
    # While an agent may still sleep on its old interval it is not held to the new, shorter timeout.
    assert timeout_after_change(Cadence(10.0, 12.0), Cadence(5.0, 6.0)) == 22.0


def test_the_cadence_follows_the_number_of_agents_and_nobody_is_wrongly_lost(
    make_cluster, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("GRIDLAB_SCHEDULER_HEARTBEAT_MAX_RATE", "20")  # 12 agents: one beat per 0.6 s each
    cluster: LocalCluster = make_cluster(heartbeat_interval=0.2, heartbeat_timeout=1.0)
    cluster.start_scheduler()
    token = auth.read_secret(cluster.agent_token_file)

    def states() -> dict[str, int]:
        return {a.name: a.state for a in cluster.list_agents()}

    async def scenario() -> None:
        async with SimAgents(cluster.address, token, 12) as sim:
            await asyncio.sleep(1.0)  # the periodic check tells those welcomed while the cluster was small
            assert min(a.interval for a in sim.agents) >= 0.4, [a.interval for a in sim.agents]
            assert sum(a.cadences for a in sim.agents) >= 1
            before = sim.heartbeats_sent
            await asyncio.sleep(3.0)
            rate = (sim.heartbeats_sent - before) / 3.0
            assert rate < 12 / 0.4, rate  # at the configured 0.2 s it would be 60 per second
            assert set((await asyncio.to_thread(states)).values()) == {types_pb2.AGENT_STATE_READY}
            # Ten machines die: the two left go back to the configured pace, the dead are lost, but only
            # after the stretched timeout (3 s), not the configured one (1 s).
            dead = [a.name for a in sim.agents[2:]]
            told = [a.cadences for a in sim.agents[:2]]
            for name in dead:
                await sim.stop_agent(name)
            stopped = time.monotonic()
            await asyncio.sleep(1.5)
            now = await asyncio.to_thread(states)
            assert not any(now[n] == types_pb2.AGENT_STATE_LOST for n in dead), now
            assert all(a.cadences > t for a, t in zip(sim.agents[:2], told, strict=True))  # told to speed up again
            assert max(a.interval for a in sim.agents[:2]) == pytest.approx(0.2)
            while any(
                s != types_pb2.AGENT_STATE_LOST for n, s in (await asyncio.to_thread(states)).items() if n in dead
            ):
                assert time.monotonic() - stopped < 15, "dead agents were never declared lost"
                await asyncio.sleep(0.2)
            now = await asyncio.to_thread(states)
            assert {now[a.name] for a in sim.agents[:2]} == {types_pb2.AGENT_STATE_READY}

    asyncio.run(scenario())
