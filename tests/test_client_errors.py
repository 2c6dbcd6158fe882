"""Status codes become typed errors that carry the server's words."""

from __future__ import annotations

import grpc
import pytest

from gridlab.client import errors


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
    ],
)
def test_codes_map_to_classes_with_the_server_message(code: grpc.StatusCode, cls: type) -> None:
    err = errors.from_rpc_error(FakeRpcError(code, "resources.gpus is -1: it must be between 0 and 1024"))
    assert type(err) is cls
    assert isinstance(err, errors.GridlabError)
    assert err.code == code
    assert err.message == "resources.gpus is -1: it must be between 0 and 1024"
    assert str(err) == err.message


def test_unavailable_names_the_address() -> None:
    err = errors.from_rpc_error(
        FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"), address="head:7070"
    )
    assert isinstance(err, errors.Unavailable)
    assert "head:7070" in err.message
    assert "failed to connect" in err.message
    assert "GRIDLAB_ADDRESS" in err.message


def test_deadline_names_address_and_timeout() -> None:
    err = errors.from_rpc_error(
        FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), address="h:1", timeout=10
    )
    assert isinstance(err, errors.DeadlineExceeded)
    assert err.message == "scheduler at h:1 did not answer within 10s"


def test_other_codes_fall_back_to_the_base_class() -> None:
    err = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, "boom"))
    assert type(err) is errors.GridlabError
    assert err.code == grpc.StatusCode.INTERNAL
    assert err.message == "boom"
    empty = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.ABORTED, None), address="h:1")
    assert empty.message == "scheduler at h:1 answered aborted"


def test_config_error_is_both_kinds() -> None:
    err = errors.ClientConfigError("no address")
    assert isinstance(err, errors.GridlabError)
    assert isinstance(err, ValueError)
    assert err.code is None
