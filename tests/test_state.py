"""The run state machine and the decision taken when an attempt ends."""

from __future__ import annotations

import pytest

from gridlab.scheduler.state import (
    AttemptState,
    InvalidTransition,
    RunState,
    RunView,
    attempt_ended,
    check_attempt_transition,
    check_run_transition,
)


def view(**kw: object) -> RunView:
    base = {"id": "run-1", "state": RunState.RUNNING, "retries_used": 0, "max_retries": 0, "cancel_requested": False}
    base.update(kw)
    return RunView(**base)  # type: ignore[arg-type]


def test_success_ends_the_run() -> None:
    out = attempt_ended(view(), AttemptState.SUCCEEDED, 0, "")
    assert out.state is RunState.SUCCEEDED
    assert not out.spend_retry


def test_failure_without_retries_fails() -> None:
    out = attempt_ended(view(), AttemptState.FAILED, 3, "rank 0 exited with 3")
    assert (out.state, out.kind, out.message) == (RunState.FAILED, "failed", "rank 0 exited with 3")


def test_failure_with_retries_left_requeues_and_spends_one() -> None:
    out = attempt_ended(view(max_retries=2, retries_used=1), AttemptState.FAILED, 1, "")
    assert out.state is RunState.QUEUED
    assert out.spend_retry
    assert "0 retries left" in out.message


@pytest.mark.parametrize("how", [AttemptState.LOST, AttemptState.PREEMPTED, AttemptState.CANCELLED])
def test_infrastructure_failures_requeue_for_free(how: AttemptState) -> None:
    out = attempt_ended(view(), how, -1, "agent gone")
    assert out.state is RunState.QUEUED
    assert not out.spend_retry


@pytest.mark.parametrize("how", [AttemptState.LOST, AttemptState.FAILED, AttemptState.CANCELLED])
def test_a_requested_cancel_wins_over_requeue_and_retry(how: AttemptState) -> None:
    out = attempt_ended(view(cancel_requested=True, max_retries=5), how, 143, "")
    assert out.state is RunState.CANCELLED


def test_success_that_raced_a_cancel_stays_success() -> None:
    assert attempt_ended(view(cancel_requested=True), AttemptState.SUCCEEDED, 0, "").state is RunState.SUCCEEDED


def test_a_live_attempt_has_not_ended() -> None:
    with pytest.raises(InvalidTransition):
        attempt_ended(view(), AttemptState.RUNNING, 0, "")


@pytest.mark.parametrize("end", [RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED])
def test_terminal_runs_never_move(end: RunState) -> None:
    for target in RunState:
        with pytest.raises(InvalidTransition):
            check_run_transition("run-1", end, target)


def test_transitions_that_exist() -> None:
    check_run_transition("r", RunState.QUEUED, RunState.STARTING)
    check_run_transition("r", RunState.RUNNING, RunState.QUEUED)
    with pytest.raises(InvalidTransition, match="QUEUED -> RUNNING"):
        check_run_transition("r", RunState.QUEUED, RunState.RUNNING)
    check_attempt_transition("a", AttemptState.ASSIGNED, AttemptState.RUNNING)
    with pytest.raises(InvalidTransition):
        check_attempt_transition("a", AttemptState.RUNNING, AttemptState.ASSIGNED)
    with pytest.raises(InvalidTransition):
        check_attempt_transition("a", AttemptState.SUCCEEDED, AttemptState.FAILED)


def test_a_permanent_failure_spends_no_retry_and_ends_the_run() -> None:
    out = attempt_ended(view(max_retries=3), AttemptState.FAILED, 1, "requirements cannot be installed", permanent=True)
    assert out.state is RunState.FAILED
    assert not out.spend_retry
