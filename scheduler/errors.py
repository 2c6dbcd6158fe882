"""Errors the engine raises for the API layer to turn into gRPC statuses."""

from __future__ import annotations

import grpc


class ApiError(Exception):
    """A refusal with a status code and a message that says what to fix."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def not_found(what: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, what)


def invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def precondition(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, message)


def denied(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.PERMISSION_DENIED, message)


def aborted(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.ABORTED, message)


def exhausted(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def out_of_range(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.OUT_OF_RANGE, message)


def data_loss(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.DATA_LOSS, message)
