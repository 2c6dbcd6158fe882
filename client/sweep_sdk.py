"""Hyper-parameter sweeps in the SDK: `submit(..., sweep={...})` queues one run per trial and returns a `Sweep`.

    sweep = client.submit("python train.py --lr {lr}", sweep={"lr": "[0.1,0.01]", "wd": "loguniform(1e-5,1e-2,3)"},
                          metric="val_loss")
    sweep.wait()
    run, loss = sweep.best()

A sweep is no object on the scheduler: it is the runs that share a `SweepTrial.name` (the sweep's id, "swp-..."),
each carrying its trial index, parameters, the sweep's size and the metric that ranks them. So `Client.sweep(id)`
works from any machine, and a sweep outlives the process that submitted it. Expressions and expansion are
`gridlab.client.sweeps`'.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from gridlab.client import sweeps
from gridlab.client.errors import DeadlineExceeded, FailedPrecondition, GridlabError, NotFound, Unavailable
from gridlab.client.sdk import TERMINAL_STATES, Client, Run, RunStatus, state_word
from gridlab.common.ids import new_id
from gridlab.v1 import types_pb2

SWEEP_PREFIX = "swp"
# A trial's submit that cannot reach the scheduler is tried again this many times, with the same
# idempotency key, so a retry never makes a second run.
SUBMIT_TRIES = 4
# Runs that ended this way are not ranked by `Sweep.best`: their last value is no result.
UNRANKED_STATES = frozenset({"FAILED", "CANCELLED"})
# The scheduler's limits on a trial (scheduler/validate.py `_check_sweep`, scheduler/engine.py `submit`),
# checked for every trial before the first is submitted, so a refused trial never leaves a sweep half-queued.
MAX_PARAMS = 64
MAX_PARAM_KEY = 100
MAX_PARAM_VALUE = 1000
MAX_IDEMPOTENCY_KEY = 200
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Sweep:
    """A handle on a sweep: its runs, their parameters, waiting for them, and the best of them.

    `Client.submit(..., sweep=...)` returns one; `Client.sweep(sweep_id)` makes one for an existing sweep.

    Example:
        >>> sweep = client.submit("python train.py", sweep={"lr": "[0.1,0.01]"}, metric="val_loss")
        >>> [t["params"] for t in sweep.trials()]
        [{'lr': '0.1'}, {'lr': '0.01'}]
        >>> sweep.wait()
        >>> run, value = sweep.best()
    """

    def __init__(
        self,
        client: Client,
        sweep_id: str,
        *,
        metric: str | None = None,
        maximize: bool | None = None,
        owner: str | None = None,
    ) -> None:
        if not isinstance(sweep_id, str) or not sweep_id:
            raise TypeError(f"sweep_id must be a sweep's id like 'swp-...', got {sweep_id!r}")
        self._client = client
        self._id = sweep_id
        self._metric = metric
        self._maximize = maximize
        self._owner = owner

    @property
    def id(self) -> str:
        """The sweep's id ("swp-..."), the `SweepTrial.name` its runs share."""
        return self._id

    @property
    def owner(self) -> str:
        """The user whose runs make up the sweep: the submitter, or else the user of its trial 0.

        A sweep's runs are always one user's; should runs of another user carry the same sweep id (an admin
        sees every user's), they are not part of this sweep.

        Raises:
            NotFound: No run of the caller's belongs to this sweep.
        """
        if self._owner is None:
            self._owner = owner_of(self._fetch())
        return self._owner

    def _fetch(self) -> list[types_pb2.Run]:
        """Every run the caller may see that carries this sweep's id, of any user."""
        found = [r for r in self._client.runs(sweep=self._id, limit=None) if r.spec.sweep.name == self._id]
        if not found:
            raise NotFound(
                f"no sweep {self._id!r}: no run of yours belongs to it (`schedctl runs` lists your runs; "
                "another user's are hidden)"
            )
        return found

    def _records(self) -> list[types_pb2.Run]:
        """The sweep's runs as the scheduler has them, by trial index: only its owner's."""
        found = self._fetch()
        if self._owner is None:
            self._owner = owner_of(found)
        mine = [r for r in found if r.user == self._owner]
        if not mine:
            raise NotFound(f"no sweep {self._id!r} of user {self._owner!r}: no run of theirs belongs to it")
        return sorted(mine, key=lambda r: (r.spec.sweep.index, r.id))

    def runs(self) -> list[Run]:
        """The sweep's runs, by trial index.

        Example:
            >>> [run.name for run in sweep.runs()]
            ['sweep-0', 'sweep-1']

        Returns:
            A list of `Run` handles.

        Raises:
            NotFound: No run of the caller's belongs to this sweep.
        """
        return [self._client._run_from(r) for r in self._records()]

    def trials(self) -> list[dict[str, Any]]:
        """One dict per trial, by index: "index", "params" ({name: value as substituted}), "run_id", "name", "state".

        Example:
            >>> sweep.trials()[0]
            {'index': 0, 'params': {'lr': '0.1'}, 'run_id': 'run-...', 'name': 'sweep-0', 'state': 'RUNNING'}

        Raises:
            NotFound: No run of the caller's belongs to this sweep.
        """
        return [
            {
                "index": r.spec.sweep.index,
                "params": dict(r.spec.sweep.params),
                "run_id": r.id,
                "name": r.spec.name,
                "state": state_word(r.state),
            }
            for r in self._records()
        ]

    def wait(self, timeout: float | None = None) -> list[RunStatus]:
        """Block until every run of the sweep has finished; a failed trial does not raise.

        Example:
            >>> [s.state for s in sweep.wait(timeout=3600)]
            ['SUCCEEDED', 'FAILED']

        Args:
            timeout: Seconds to wait at most, for all runs together; None waits as long as it takes.

        Returns:
            The final `RunStatus` of each run, by trial index.

        Raises:
            TimeoutError: Some run had not finished after `timeout` seconds; the message says how many.
            NotFound: No run of the caller's belongs to this sweep.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        records = self._records()
        done: list[RunStatus] = []
        for i, record in enumerate(records):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                done.append(self._client.wait(record.id, timeout=left))
            except TimeoutError:
                raise TimeoutError(
                    f"sweep {self._id}: {len(records) - i} of {len(records)} runs still running after {timeout:g}s "
                    f"(first: {record.id})"
                ) from None
        return done

    def best(self, metric: str | None = None, maximize: bool | None = None) -> tuple[Run, float] | None:
        """The run whose last logged value of `metric` is the best, with that value.

        Each run's value is the last one it logged (in `GRIDLAB_METRICS_FILE`, every attempt's records in
        order). Left out: runs that never logged the metric, runs whose last value is not a finite number
        (NaN or infinity: the run diverged; an earlier finite value does not count), and FAILED or CANCELLED
        runs (their last value is no result). Queued, running and succeeded runs are ranked; a tie goes to
        the lower trial index.

        Example:
            >>> run, loss = sweep.best()                     # the metric given at submit
            >>> run, acc = sweep.best("val_acc", maximize=True)

        Args:
            metric: The metric's name; None for the one given to `submit(metric=...)`.
            maximize: Whether higher is better; None for what was given at submit (False when `metric` differs
                from the submitted one).

        Returns:
            (run, value), or None when no run has logged the metric yet.

        Raises:
            ValueError: No metric was named here or at submit.
            NotFound: No run of the caller's belongs to this sweep.
        """
        records = self._records()
        trial = next((r.spec.sweep for r in records if r.spec.sweep.metric), None)
        submitted = self._metric or (trial.metric if trial is not None else "")
        name = metric or submitted
        if not name:
            raise ValueError(
                f"sweep {self._id} was submitted without a metric: name one, e.g. best('val_loss') "
                "or best('val_acc', maximize=True)"
            )
        if maximize is None:
            if name != submitted:
                maximize = False
            elif self._maximize is not None:
                maximize = self._maximize
            else:
                maximize = bool(trial.maximize) if trial is not None else False
        best: tuple[types_pb2.Run, float] | None = None
        for record in records:
            if state_word(record.state) in UNRANKED_STATES:
                continue
            value = last_value(self._client.metrics(record.id), name)
            if value is None:
                continue
            if best is None or (value > best[1] if maximize else value < best[1]):
                best = (record, value)
        if best is None:
            return None
        return self._client._run_from(best[0]), best[1]

    def cancel(self) -> list[RunStatus]:
        """Cancel every run of the sweep that has not finished; returns at once. Finished runs are left as they are.

        Example:
            >>> [s.state for s in sweep.cancel()]
            ['SUCCEEDED', 'CANCELLED']

        Returns:
            Each run's `RunStatus` after the request, by trial index.

        Raises:
            NotFound: No run of the caller's belongs to this sweep.
        """
        out: list[RunStatus] = []
        for record in self._records():
            if state_word(record.state) not in TERMINAL_STATES:
                with contextlib.suppress(FailedPrecondition):  # it finished meanwhile
                    record = self._client.cancel(record.id, reason=f"sweep {self._id} cancelled")
            out.append(RunStatus.from_proto(record))
        return out

    def __repr__(self) -> str:
        return f"Sweep(id={self._id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sweep) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)


def owner_of(records: list[types_pb2.Run]) -> str:
    """The user a sweep belongs to: the user of its trial 0 (the lowest index), the earliest created on a tie."""
    first = min(records, key=lambda r: (r.spec.sweep.index, r.created_at.seconds, r.created_at.nanos, r.id))
    return first.user


def last_value(records: Any, metric: str) -> float | None:
    """The last value logged for `metric` in metrics records (dicts), or None when it was never logged as a
    number, or when that last value is NaN or infinite (a diverged run; an earlier finite value does not count)."""
    value: float | None = None
    for record in records:
        got = record.get(metric)
        if isinstance(got, int | float) and not isinstance(got, bool):
            value = float(got)
    if value is None or not math.isfinite(value):
        return None
    return value


def sweep_id_for(idempotency_key: str | None, user: str = "") -> str:
    """A new sweep id, or, for a submit with an idempotency key, the same id every time for that user and key.

    The scheduler scopes idempotency keys per user, so the id hashes both: two users' sweeps with one key differ.
    """
    if idempotency_key is None:
        return new_id(SWEEP_PREFIX)
    digest = hashlib.sha256(json.dumps([user, idempotency_key]).encode()).hexdigest()
    return f"{SWEEP_PREFIX}-k{digest[:21]}"


def submit_sweep(
    client: Client,
    spec: types_pb2.RunSpec,
    params: Mapping[str, str],
    *,
    strategy: str,
    trials: int | None,
    seed: int | None,
    metric: str | None,
    maximize: bool,
    idempotency_key: str | None,
) -> Sweep:
    """Queue one run per trial of `params` from the base `spec` (its command holds `{name}` placeholders).

    Each run gets trial k's values substituted into its command (or appended as `--name value`), the name
    `<spec.name or 'sweep'>-k`, and `spec.sweep` set; its idempotency key is derived from the sweep id and k.

    Raises:
        SweepError: A bad expression or option (a ValueError), e.g. an unbounded distribution under grid.
        ValueError: A trial over the scheduler's limits (a value over 1000 characters, more than 64 parameters,
            an idempotency key too long for '/trial-k'); every trial is checked before the first is submitted.
        GridlabError: A trial was refused; the message names it and the trials already queued.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"sweep must map parameter names to expressions, like {{'lr': '[0.1,0.01]'}}, got {params!r}")
    for key, expr in params.items():
        if not isinstance(key, str) or not isinstance(expr, str):
            raise TypeError(
                f"sweep must map str to an expression string, like {{'lr': '[0.1,0.01]'}}, got {key!r}: {expr!r}"
            )
    if metric is not None and (not isinstance(metric, str) or not metric.strip()):
        raise TypeError(f"metric must be a metric's name like 'val_loss', got {metric!r}")
    if not isinstance(maximize, bool):
        raise TypeError(f"maximize must be True or False, got {maximize!r}")
    points = sweeps.expand(params, strategy=strategy, trials=trials, seed=seed)
    owner = client.whoami().user if idempotency_key is not None else None
    sweep_id = sweep_id_for(idempotency_key, owner or "")
    key_base = idempotency_key if idempotency_key is not None else sweep_id
    base = spec.name or "sweep"
    specs: list[types_pb2.RunSpec] = []
    for k, values in enumerate(points):
        trial = types_pb2.RunSpec()
        trial.CopyFrom(spec)
        del trial.command[:]
        trial.command.extend(sweeps.substitute(list(spec.command), values))
        trial.name = sweeps.trial_name(base, k)
        trial.sweep.CopyFrom(
            types_pb2.SweepTrial(
                name=sweep_id,
                index=k,
                params={name: sweeps.format_value(value) for name, value in values.items()},
                size=len(points),
                metric=(metric or "").strip(),
                maximize=maximize,
            )
        )
        check_trial(trial.sweep, f"{key_base}/trial-{k}", len(points))
        specs.append(trial)
    for k, trial in enumerate(specs):
        try:
            # A scheduler that is down at the first trial is reported at once; later, a retry with the same
            # key cannot queue a trial twice.
            _submit_trial(client, trial, f"{key_base}/trial-{k}", tries=SUBMIT_TRIES if k else 1)
        except GridlabError as err:
            message = f"sweep {sweep_id}: trial {k} of {len(points)} ({trial.name}) was not queued: {err.message}"
            if k:
                message += f"; trials 0-{k - 1} are queued (Client.sweep({sweep_id!r}).cancel() stops them"
                message += (
                    ", or submit again with the same idempotency_key to queue the rest)" if idempotency_key else ")"
                )
            raise type(err)(message, err.code) from None
    return Sweep(client, sweep_id, metric=(metric or "").strip() or None, maximize=maximize, owner=owner)


def check_trial(trial: types_pb2.SweepTrial, key: str, size: int) -> None:
    """Refuse a trial the scheduler would refuse, before any trial is submitted.

    Raises:
        ValueError: A parameter name, a value or the trial's idempotency key is over the scheduler's limits.
    """
    where = f"sweep trial {trial.index} of {size}"
    if len(trial.params) > MAX_PARAMS:
        raise ValueError(f"{where}: {len(trial.params)} parameters; the scheduler takes at most {MAX_PARAMS}")
    for name, value in trial.params.items():
        if len(name) > MAX_PARAM_KEY or not _IDENTIFIER.fullmatch(name):
            raise ValueError(
                f"{where}: parameter name {name[:50]!r} must be an identifier ([A-Za-z_][A-Za-z0-9_]*) "
                f"of at most {MAX_PARAM_KEY} characters"
            )
        if len(value) > MAX_PARAM_VALUE:
            raise ValueError(
                f"{where}: {name}={value[:40]!r}... is {len(value)} characters; the scheduler takes values of at "
                f"most {MAX_PARAM_VALUE}"
            )
        if "\0" in value:
            raise ValueError(f"{where}: {name}={value[:40]!r} contains a NUL character")
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise ValueError(
            f"{where}: its idempotency key {key[:40]!r}... is {len(key)} characters (the sweep's key plus "
            f"'/trial-{trial.index}'); the scheduler takes at most {MAX_IDEMPOTENCY_KEY}: use a shorter "
            "idempotency_key"
        )


def _submit_trial(client: Client, spec: types_pb2.RunSpec, key: str, *, tries: int) -> None:
    """Submit one trial, again (same key) after UNAVAILABLE or DEADLINE_EXCEEDED, `tries` times at most."""
    for attempt in range(tries):
        try:
            client._submit_spec(spec, key)
            return
        except (Unavailable, DeadlineExceeded):
            if attempt == tries - 1:
                raise
            time.sleep(0.5 * 2**attempt)
