"""`schedctl`'s exit codes, and the one function that maps an error to one.

Scripts branch on these, so they are part of the interface (README: CLI reference):

    0    ok
    1    error (anything not below)
    2    usage: a command line, or a request, that cannot mean anything
    3    not found: no such run, agent, checkpoint or token (or one the caller may not see)
    4    permission denied: the token's role may not do this, or the token is not accepted
    5    scheduler unreachable (down, wrong address, or not answering)
    100  `wait` / `submit --wait`: the run failed
    101  `wait` / `submit --wait`: the run was cancelled
    102  `wait` / `submit --wait`: the run had not finished within --timeout
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import grpc

from gridlab.client.errors import GridlabError

OK = 0
ERROR = 1
USAGE = 2
NOT_FOUND = 3
PERMISSION_DENIED = 4
UNREACHABLE = 5
RUN_FAILED = 100
RUN_CANCELLED = 101
RUN_TIMED_OUT = 102
INTERRUPTED = 130

# Documented in README and `schedctl --help`; a test checks the two agree with this table.
TABLE: tuple[tuple[int, str], ...] = (
    (OK, "ok"),
    (ERROR, "error"),
    (USAGE, "usage error (bad flags, or a request the scheduler calls invalid)"),
    (NOT_FOUND, "not found (run, agent, checkpoint, token)"),
    (PERMISSION_DENIED, "permission denied (role), or the token is not accepted"),
    (UNREACHABLE, "scheduler unreachable"),
    (RUN_FAILED, "wait / submit --wait: the run failed"),
    (RUN_CANCELLED, "wait / submit --wait: the run was cancelled"),
    (RUN_TIMED_OUT, "wait / submit --wait: still running after --timeout"),
    (INTERRUPTED, "interrupted (Ctrl-C)"),
)

_BY_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: USAGE,
    grpc.StatusCode.NOT_FOUND: NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED: PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED: PERMISSION_DENIED,
    grpc.StatusCode.UNAVAILABLE: UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: UNREACHABLE,
}


def for_error(exc: BaseException) -> int:
    """The exit code for an error a command raised (by its gRPC status code, not its class,
    so errors the SDK raises itself, e.g. an unknown checkpoint name, map the same way)."""
    if isinstance(exc, GridlabError) and exc.code is not None:
        return _BY_CODE.get(exc.code, ERROR)
    return ERROR


def for_state(state: str) -> int:
    """The exit code for a finished run's state word: 0, 100 or 101."""
    return {"SUCCEEDED": OK, "FAILED": RUN_FAILED, "CANCELLED": RUN_CANCELLED}.get(state, ERROR)
