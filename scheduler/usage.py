"""Cost accounting: GPU-hours and cost per user, pool or run (`schedctl usage`).

When an attempt that had started ends, the engine writes one `usage` row per node of it
(`Engine._record_cost`): the GPUs the node held, for the attempt's running time, in the pool its agent
was in then, at that pool's `pool_prices` entry (per GPU-hour). A preempted and requeued run counts each
attempt it ran; a gang counts each node. Attempts still running are not counted until they end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .auth import Principal
from .errors import denied, invalid

if TYPE_CHECKING:
    from .engine import Engine

GROUPS = {"user": "user", "pool": "pool", "run": "run_id"}


@dataclass(frozen=True)
class Row:
    key: str
    gpu_hours: float
    cost: float
    runs: int
    wall_hours: float


def get_usage(
    engine: Engine,
    who: Principal,
    *,
    group_by: str = "user",
    since: float | None = None,
    until: float | None = None,
    user: str = "",
) -> list[Row]:
    """Usage of the attempts that ended in [since, until), grouped, most costly first (then most GPU-hours,
    then key). A user sees only their own attempts; an admin everyone's, or `user`'s."""
    column = GROUPS.get(group_by or "user")
    if column is None:
        raise invalid(f"group_by is {group_by!r}: it must be one of {', '.join(GROUPS)}")
    if not who.admin:
        if user and user != who.user:
            raise denied("only an admin may see another user's usage")
        user = who.user
    if since is not None and until is not None and until < since:
        raise invalid("until is before since")
    where: list[str] = []
    args: list[str | float] = []
    if user:
        where.append("user = ?")
        args.append(user)
    if since is not None:
        where.append("finished_at >= ?")
        args.append(since)
    if until is not None:
        where.append("finished_at < ?")
        args.append(until)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = engine.store.all(
        f"SELECT {column} AS key, SUM(gpu_seconds) AS gpu_seconds, SUM(cost) AS cost, "
        f"COUNT(DISTINCT run_id) AS runs, SUM(finished_at - started_at) AS wall FROM usage {clause} "
        f"GROUP BY {column} ORDER BY SUM(cost) DESC, SUM(gpu_seconds) DESC, {column}",
        tuple(args),
    )
    return [
        Row(
            key=r["key"],
            gpu_hours=r["gpu_seconds"] / 3600.0,
            cost=r["cost"],
            runs=r["runs"],
            wall_hours=r["wall"] / 3600.0,
        )
        for r in rows
    ]
