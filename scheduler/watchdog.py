"""The progress watchdog: which running attempts have stopped advancing.

Agents report each attempt's last step (from its GRIDLAB_METRICS_FILE) with every heartbeat and
update. This keeps, per live attempt, the highest step seen and when (on the scheduler's own clock,
so agents' clocks do not matter) it last went up. Like heartbeats it lives in memory: after a
scheduler restart every attempt's timer starts again at its first report, a generous grace rather
than a false alarm. Pure bookkeeping: the engine decides what a hang does.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Progress:
    step: int
    since: float  # when `step` was first seen (scheduler clock)
    timeout: float  # the run's hang_timeout in seconds; 0: no watchdog
    flagged: bool = False
    reason: str = ""
    exited: set[str] = field(default_factory=set)  # nodes whose ranks have all exited (logs draining)
    nodes: int = 1


class Watchdog:
    def __init__(self) -> None:
        self._attempts: dict[str, Progress] = {}

    def tracks(self, attempt_id: str) -> bool:
        return attempt_id in self._attempts

    def track(self, attempt_id: str, timeout: float, now: float) -> None:
        """Start watching an attempt (its timer starts now, at step -1: nothing reported yet)."""
        self._attempts.setdefault(attempt_id, Progress(step=-1, since=now, timeout=max(0.0, timeout)))

    def report(self, attempt_id: str, step: int, now: float) -> None:
        p = self._attempts.get(attempt_id)
        if p is not None and step > p.step:
            p.step, p.since = step, now

    def ranks_exited(self, attempt_id: str, node: str, nodes: int, now: float) -> None:
        """A node's ranks are gone and its last logs drain: no progress is due from it. The attempt is
        exempt once every node is there (one node still running can still hang)."""
        self.track(attempt_id, 0.0, now)
        p = self._attempts[attempt_id]
        p.exited.add(node)
        p.nodes = max(1, nodes)

    def forget(self, attempt_id: str) -> None:
        self._attempts.pop(attempt_id, None)

    def stop_reason(self, attempt_id: str) -> str:
        """Why a flagged attempt is being stopped ("" when it is not): resent to a reconnecting agent."""
        p = self._attempts.get(attempt_id)
        return p.reason if p is not None and p.flagged else ""

    def newly_hung(self, now: float) -> list[tuple[str, Progress]]:
        """Attempts past their timeout without progress, each returned once."""
        out = []
        for attempt_id, p in self._attempts.items():
            if len(p.exited) >= p.nodes:
                continue
            if p.timeout > 0 and not p.flagged and now - p.since > p.timeout:
                seen = f"step {p.step}" if p.step >= 0 else "no step reported"
                p.flagged, p.reason = True, f"hung: {seen}, no progress for {p.timeout:g}s (hang_timeout)"
                out.append((attempt_id, p))
        return out
