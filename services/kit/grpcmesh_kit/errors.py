"""The kit's error vocabulary.

Servicers and domain code raise these; one server layer (``interceptors.ErrorLayer``)
turns them into gRPC statuses. Anything else becomes INTERNAL without a traceback for the caller.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base of every error the kit maps to a gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """A request field is malformed or out of range. Names the field (dotted path)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(ServiceError):
    """The named entity does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    """The system is not in a state that allows the operation (e.g. stock too low)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ServiceError):
    """The operation conflicts with a concurrent or earlier one (e.g. reserve after release)."""

    code = grpc.StatusCode.ABORTED


class Unavailable(ServiceError):
    """A dependency is down; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE
