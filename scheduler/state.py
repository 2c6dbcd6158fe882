"""The run and attempt state machines, as data and pure functions (no I/O).

```
            place                 all ranks up            exit 0
  QUEUED ----------> STARTING ------------------> RUNNING --------> SUCCEEDED
   ^  |                 |  |                        | |  |
   |  | cancel          |  '-------- exit != 0, retries left? ----> QUEUED (retry spent)
   |  '--> CANCELLED    |                           | |  '--------> FAILED (no retries left)
   |                    |                           | '-- cancel --> CANCELLED
   '---- agent lost / preempted (infrastructure: no retry spent) ----'
```

The store applies what these functions decide; tests drive them directly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RunState(str, enum.Enum):
    QUEUED = "QUEUED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_RUN_STATES


class AttemptState(str, enum.Enum):
    ASSIGNED = "ASSIGNED"
    PREPARING = "PREPARING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LOST = "LOST"
    PREEMPTED = "PREEMPTED"

    @property
    def live(self) -> bool:
        return self in LIVE_ATTEMPT_STATES


TERMINAL_RUN_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})
LIVE_ATTEMPT_STATES = frozenset({AttemptState.ASSIGNED, AttemptState.PREPARING, AttemptState.RUNNING})
# The live states as an SQL list, in one spelling everywhere: SQLite uses the partial index of live nodes
# (attempt_nodes_held, store.py) only for a query whose `state IN` list is written exactly as the index's.
LIVE_STATES_SQL = "(" + ",".join(f"'{s.value}'" for s in sorted(LIVE_ATTEMPT_STATES, key=lambda s: s.value)) + ")"

_R = RunState
RUN_TRANSITIONS: frozenset[tuple[RunState, RunState]] = frozenset(
    {
        (_R.QUEUED, _R.STARTING),
        (_R.QUEUED, _R.CANCELLED),
        (_R.STARTING, _R.RUNNING),
        (_R.STARTING, _R.QUEUED),
        (_R.STARTING, _R.SUCCEEDED),  # a rank that exits before RUNNING is reported
        (_R.STARTING, _R.FAILED),
        (_R.STARTING, _R.CANCELLED),
        (_R.RUNNING, _R.QUEUED),
        (_R.RUNNING, _R.SUCCEEDED),
        (_R.RUNNING, _R.FAILED),
        (_R.RUNNING, _R.CANCELLED),
    }
)

_A = AttemptState
_ENDINGS = (_A.SUCCEEDED, _A.FAILED, _A.CANCELLED, _A.LOST, _A.PREEMPTED)
ATTEMPT_TRANSITIONS: frozenset[tuple[AttemptState, AttemptState]] = frozenset(
    {
        (_A.ASSIGNED, _A.PREPARING),
        (_A.ASSIGNED, _A.RUNNING),
        (_A.PREPARING, _A.RUNNING),
        *((live, end) for live in (_A.ASSIGNED, _A.PREPARING, _A.RUNNING) for end in _ENDINGS),
    }
)


class InvalidTransition(RuntimeError):
    """A state change the machine does not allow: a bug, never user input."""


def check_run_transition(run_id: str, old: RunState, new: RunState) -> None:
    if (old, new) not in RUN_TRANSITIONS:
        raise InvalidTransition(f"run {run_id}: {old.value} -> {new.value} is not a transition")


def check_attempt_transition(attempt_id: str, old: AttemptState, new: AttemptState) -> None:
    if (old, new) not in ATTEMPT_TRANSITIONS:
        raise InvalidTransition(f"attempt {attempt_id}: {old.value} -> {new.value} is not a transition")


@dataclass(frozen=True)
class RunView:
    """What the decision below needs to know about a run."""

    id: str
    state: RunState
    retries_used: int
    max_retries: int
    cancel_requested: bool


@dataclass(frozen=True)
class Outcome:
    """What becomes of a run when one of its attempts ends."""

    state: RunState
    kind: str  # the event's kind
    message: str
    spend_retry: bool = False

    @property
    def requeue(self) -> bool:
        return self.state is RunState.QUEUED


def attempt_ended(
    run: RunView,
    attempt: AttemptState,
    exit_code: int,
    reason: str,
    *,
    permanent: bool = False,
    infrastructure: bool = False,
) -> Outcome:
    """Decide a run's next state from the end of its live attempt.

    User failures (a non-zero exit) spend `max_retries`, unless `permanent` (the same attempt
    would fail the same way, e.g. its requirements cannot be installed); infrastructure failures (lost
    agent, preemption, an agent that stopped the attempt on its own, or one that failed it for a reason
    outside the run: `infrastructure`, e.g. the scheduler was unreachable while it fetched the code)
    requeue for free.
    A run whose cancel was requested ends CANCELLED whatever its attempt did, except
    that a run that finished successfully before the cancel landed stays SUCCEEDED.
    """
    if attempt.live:
        raise InvalidTransition(f"attempt of run {run.id} has not ended ({attempt.value})")
    if attempt is AttemptState.SUCCEEDED:
        return Outcome(RunState.SUCCEEDED, "succeeded", reason or "exited 0")
    if run.cancel_requested:
        return Outcome(RunState.CANCELLED, "cancelled", reason or "cancelled on request")
    if attempt is AttemptState.FAILED and not infrastructure:
        if run.retries_used < run.max_retries and not permanent:
            left = run.max_retries - run.retries_used - 1
            return Outcome(
                RunState.QUEUED,
                "retrying",
                f"{reason or f'exited with {exit_code}'}; retrying ({left} retries left)",
                spend_retry=True,
            )
        return Outcome(RunState.FAILED, "failed", reason or f"exited with {exit_code}")
    # LOST, PREEMPTED, or CANCELLED by the agent itself (it was shutting down).
    return Outcome(RunState.QUEUED, "requeued", f"{attempt.value.lower()}: {reason}".rstrip(": "))
