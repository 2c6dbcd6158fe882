"""Typed errors for the SDK and schedctl, built from the scheduler's gRPC status.

Users catch `NotFound` or `InvalidArgument`, not `grpc.RpcError`, and read the server's
own words (which say what to fix), never a gRPC traceback. `from_rpc_error` is the one
place a status code becomes an exception class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from gridlab.client.sdk import RunStatus


class GridlabError(Exception):
    """Base of every error the client raises on purpose.

    Attributes:
        code: The gRPC status code the scheduler answered with; None for errors raised
            before any call (bad configuration).
        message: What went wrong, in words meant for the user.
    """

    code: grpc.StatusCode | None = None

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ClientConfigError(GridlabError, ValueError):
    """No scheduler address or token could be found, or the config file is unusable."""


class InvalidArgument(GridlabError):
    """The request was malformed, e.g. a bad run spec (INVALID_ARGUMENT)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(GridlabError):
    """No such run or agent, or one the caller may not see (NOT_FOUND)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(GridlabError):
    """The thing to create exists already (ALREADY_EXISTS)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(GridlabError):
    """The request does not fit the current state, e.g. cancelling a finished run."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(GridlabError):
    """The token is valid but its role may not do this (PERMISSION_DENIED)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(GridlabError):
    """No token, or one the scheduler does not know (UNAUTHENTICATED)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(GridlabError):
    """A quota or size limit was hit (RESOURCE_EXHAUSTED)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(GridlabError):
    """The scheduler could not be reached (UNAVAILABLE); the message names the address."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(GridlabError):
    """The scheduler did not answer within the call's deadline (DEADLINE_EXCEEDED)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class RunEndedBadly(GridlabError):
    """`Run.wait` saw the run end without succeeding; `status` is its final `RunStatus`.

    Example:
        >>> try:
        ...     run.wait()
        ... except RunEndedBadly as err:
        ...     print(err.status.state, err.status.exit_code)
        FAILED 3

    Attributes:
        run_id: The run's id.
        status: The final `gridlab.client.RunStatus` (state, exit code, message).
    """

    def __init__(self, message: str, *, run_id: str, status: RunStatus) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status


class RunFailed(RunEndedBadly):
    """The run ended FAILED: its command exited non-zero (retries spent), could not start, or ran past its limit."""


class RunCancelled(RunEndedBadly):
    """The run ended CANCELLED: someone (or a sweep's `cancel`) stopped it."""


_BY_CODE: dict[grpc.StatusCode, type[GridlabError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
    )
}


def from_rpc_error(err: grpc.RpcError, *, address: str | None = None, timeout: float | None = None) -> GridlabError:
    """The typed error for a failed call, carrying the server's message.

    Example:
        >>> try:
        ...     stub.GetRun(request, timeout=10)
        ... except grpc.RpcError as err:
        ...     raise from_rpc_error(err, address="head:7070") from None

    Args:
        err: What grpc raised; a `grpc.Call` gives the code and details.
        address: The scheduler's address, named in UNAVAILABLE and DEADLINE_EXCEEDED
            messages so the user sees which address failed.
        timeout: The call's deadline in seconds, named in DEADLINE_EXCEEDED messages.

    Returns:
        An instance of the subclass for the code, or `GridlabError` for other codes.
    """
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details = (details_fn() if callable(details_fn) else None) or ""
    where = f"scheduler at {address}" if address else "the scheduler"
    if code == grpc.StatusCode.UNAVAILABLE:
        message = f"cannot reach {where}"
        if details:
            message += f": {details}"
        message += " (is it running? set the address with --address or GRIDLAB_ADDRESS)"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within {timeout:g}s" if timeout is not None else " in time"
        message = f"{where} did not answer{within}"
    else:
        label = code.name.lower().replace("_", " ") if code is not None else "unknown error"
        message = details or f"{where} answered {label}"
    cls = _BY_CODE.get(code, GridlabError)
    return cls(message, code)
