"""How often agents heartbeat: the scheduler's call, scaled with the size of the cluster.

Each heartbeat is a stream message, and receiving one costs the scheduler about 0.1 ms of
CPU in grpc.aio whatever it does with it: 5,000 agents at one per second would take half a
core before any scheduling. As Nomad does (`max_heartbeats_per_second`), the scheduler
stretches the interval so that all agents together send at most `max_rate` heartbeats a
second, and stretches the timeout by the same factor, so an agent is still declared lost
after the same number of missed beats. A small cluster keeps the configured cadence.

Agents learn the cadence in their Welcome, and in a `Cadence` message when the cluster has
grown or shrunk enough (by a quarter or more, or halved: not on every join) to change it. Right after a
change the scheduler gives each agent the longer of the two timeouts plus one old interval,
since the agent may be asleep on its old interval when the news arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

RESCALE_UP = 1.25  # tell agents when the wanted interval grew this much...
RESCALE_DOWN = 0.5  # ...or shrank to this fraction of what they were told


@dataclass(frozen=True)
class Cadence:
    interval: float  # seconds between heartbeats
    timeout: float  # seconds of silence before the agent is lost


def cadence_for(agents: int, interval: float, timeout: float, max_rate: float) -> Cadence:
    """The cadence for a cluster of `agents`: the configured one, stretched so that they send at most
    `max_rate` heartbeats per second in all (0: never stretched)."""
    if max_rate <= 0 or agents <= 0:
        return Cadence(interval, timeout)
    scaled = max(interval, agents / max_rate)
    return Cadence(scaled, timeout * scaled / interval)


def needs_telling(told: Cadence, wanted: Cadence) -> bool:
    """Whether an agent told `told` should hear `wanted` (hysteresis: not every join moves every agent)."""
    return wanted.interval >= told.interval * RESCALE_UP or wanted.interval <= told.interval * RESCALE_DOWN


def timeout_after_change(told: Cadence, wanted: Cadence) -> float:
    """The silence allowed right after telling an agent `wanted` in place of `told`."""
    return max(told.timeout, wanted.timeout) + told.interval
