"""Queue order and quotas, as pure functions.

Order: priority (higher first), then fair share (the user's decayed GPU-seconds, lower
first: who used little recently goes first), then submit time. Fair share is Slurm's
classic half-life decay: usage recorded at time t counts 2^-((now - t) / half_life).
Quotas cap the GPUs a user or a team holds at once; a run that would pass its cap waits
with a reason that names the cap, and does not block the runs behind it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


def decayed(value: float, since: float, now: float, half_life: float) -> float:
    """`value` recorded at `since`, as it counts at `now`."""
    if half_life <= 0 or value == 0:
        return value
    return value * math.pow(2.0, -max(0.0, now - since) / half_life)


@dataclass(frozen=True)
class Usage:
    """A user's recorded GPU-seconds, as of `at` (decayed to then)."""

    gpu_seconds: float = 0.0
    at: float = 0.0

    def add(self, gpu_seconds: float, now: float, half_life: float) -> Usage:
        return Usage(decayed(self.gpu_seconds, self.at, now, half_life) + gpu_seconds, now)

    def now(self, now: float, half_life: float) -> float:
        return decayed(self.gpu_seconds, self.at, now, half_life)


@dataclass(frozen=True)
class Entry:
    """What ordering needs to know about a queued run."""

    run_id: str
    user: str
    priority: int
    created_at: float


def order(entries: Iterable[Entry], share: Mapping[str, float]) -> list[Entry]:
    """The queue in the order placement considers it. `share`: each user's current decayed usage."""
    return sorted(entries, key=lambda e: (-e.priority, share.get(e.user, 0.0), e.created_at, e.run_id))


@dataclass(frozen=True)
class Quotas:
    """Caps on GPUs held at once: `user_gpus` for every user (0: none), `users` and `teams` by name."""

    user_gpus: int = 0
    users: Mapping[str, int] = field(default_factory=dict)
    teams: Mapping[str, int] = field(default_factory=dict)

    def user_cap(self, user: str) -> int:
        return self.users.get(user, self.user_gpus)


@dataclass
class Held:
    """GPUs held now, by user and by team; placement adds what it places within one pass."""

    users: dict[str, int] = field(default_factory=dict)
    teams: dict[str, int] = field(default_factory=dict)

    def add(self, user: str, team: str, gpus: int) -> None:
        self.users[user] = self.users.get(user, 0) + gpus
        if team:
            self.teams[team] = self.teams.get(team, 0) + gpus


def over_quota(quotas: Quotas, held: Held, user: str, team: str, gpus: int) -> str | None:
    """Why a run of `gpus` GPUs (all nodes) must wait for its quota, or None. A run bigger than its cap can
    never start: it says so rather than wait forever."""
    if gpus == 0:
        return None
    checks = [("user", user, quotas.user_cap(user), held.users.get(user, 0))]
    if team and team in quotas.teams:
        checks.append(("team", team, quotas.teams[team], held.teams.get(team, 0)))
    for kind, name, cap, used in checks:
        if cap <= 0:
            continue
        if gpus > cap:
            return f"Unsatisfiable: quota: {kind} {name} may hold {cap} GPUs, the run needs {gpus}"
        if used + gpus > cap:
            return f"Quota: {kind} {name} at {used}/{cap} GPUs"
    return None
